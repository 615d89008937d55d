"""Local RBAC through the official SDK: ``KeyVaultAccessControlClient`` manages role
definitions and assignments, and what each principal may do follows at once."""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import (
    KeyVaultAccessControlClient,
    KeyVaultDataAction,
    KeyVaultPermission,
    KeyVaultRoleScope,
    KeyVaultSettingsClient,
)

from conftest import StaticTokenCredential, make_key_client

BUILT_IN = {
    "a290e904-7015-4bba-90c8-60543313cdb4": "Managed HSM Administrator",
    "515eb02d-2335-4d2d-92f2-b1cbdf9c3778": "Managed HSM Crypto Officer",
    "21dbd100-6940-42c2-9190-5d6cb909625b": "Managed HSM Crypto User",
    "4bd23610-cdcf-4971-bdee-bdc562cc28e4": "Managed HSM Policy Administrator",
    "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3": "Managed HSM Crypto Auditor",
    "33413926-3206-4cdd-b39a-83574fe37a17": "Managed HSM Crypto Service Encryption User",
    "21dbd100-6940-42c2-9190-5d6cb909625c": "Managed HSM Crypto Service Release User",
    "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8": "Managed HSM Backup",
}


def access_client(service, token=None) -> KeyVaultAccessControlClient:
    return KeyVaultAccessControlClient(
        service.url,
        StaticTokenCredential(token or service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
    )


def assert_denied(call) -> None:
    with pytest.raises(HttpResponseError) as info:
        call()
    assert info.value.status_code == 403
    assert info.value.error.code == "AccessDenied"


def test_built_in_roles_are_listed_with_their_ids_and_actions(service):
    client = access_client(service)
    roles = {r.name: r for r in client.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    for role_id, role_name in BUILT_IN.items():
        assert roles[role_id].role_name == role_name
        assert roles[role_id].role_type == "AKVBuiltInRole"
        assert roles[role_id].id.endswith(f"/roleDefinitions/{role_id}")
    user = roles["21dbd100-6940-42c2-9190-5d6cb909625b"].permissions[0].data_actions
    assert KeyVaultDataAction.SIGN_HSM_KEY in user
    assert KeyVaultDataAction.READ_DELETED_HSM_KEY in user
    assert KeyVaultDataAction.PURGE_DELETED_HSM_KEY not in user
    assert KeyVaultDataAction.RECOVER_DELETED_HSM_KEY not in user
    officer = roles["515eb02d-2335-4d2d-92f2-b1cbdf9c3778"].permissions[0].data_actions
    assert KeyVaultDataAction.PURGE_DELETED_HSM_KEY in officer
    assert client.get_role_definition("/", "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8").role_name == "Managed HSM Backup"


def test_assignments_grant_and_withdraw_access_through_the_sdk(service, unique_name):
    admin = access_client(service)
    principal_id, token = service.new_principal(unique_name("rbac-app"))
    keys = make_key_client(service, token=token)
    name = unique_name("rbac")
    make_key_client(service).create_ec_key(name)

    with pytest.raises(HttpResponseError) as info:
        keys.get_key(name)
    assert info.value.status_code == 403, "no assignment, no access"

    assignment = admin.create_role_assignment(
        KeyVaultRoleScope.KEYS,
        "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/2c18b078-7c48-4d3a-af88-5a3a1b3f82b3",
        principal_id,
    )
    assert assignment.properties.principal_id == principal_id
    assert assignment.properties.scope == "/keys"
    assert keys.get_key(name).name == name
    fetched = admin.get_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
    assert fetched.properties.role_definition_id == assignment.properties.role_definition_id
    listed = [a.name for a in admin.list_role_assignments(KeyVaultRoleScope.KEYS)]
    assert assignment.name in listed

    # A Crypto Auditor reads but does not delete.
    assert_denied(lambda: keys.begin_delete_key(name))

    admin.delete_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
    with pytest.raises(HttpResponseError) as info:
        keys.get_key(name)
    assert info.value.status_code == 403
    with pytest.raises(ResourceNotFoundError):
        admin.get_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)


def test_a_custom_role_definition_round_trips(service, unique_name):
    admin = access_client(service)
    role_id = str(uuid.uuid4())
    permission = KeyVaultPermission(
        data_actions=[KeyVaultDataAction.READ_HSM_KEY, KeyVaultDataAction.SIGN_HSM_KEY],
        not_data_actions=[],
    )
    created = admin.set_role_definition(
        KeyVaultRoleScope.GLOBAL,
        name=role_id,
        role_name=unique_name("signer role"),
        description="reads and signs",
        permissions=[permission],
    )
    assert created.name == role_id
    assert created.role_type == "CustomRole"
    assert set(created.permissions[0].data_actions) == {
        KeyVaultDataAction.READ_HSM_KEY,
        KeyVaultDataAction.SIGN_HSM_KEY,
    }
    principal_id, token = service.new_principal(unique_name("signer"))
    assignment = admin.create_role_assignment(KeyVaultRoleScope.GLOBAL, created.id, principal_id)
    name = unique_name("signed")
    key = make_key_client(service).create_ec_key(name)
    from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

    crypto = CryptographyClient(
        key.id,
        StaticTokenCredential(token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
    )
    assert len(crypto.sign(SignatureAlgorithm.es256, b"\x01" * 32).signature) == 64
    assert_denied(lambda: make_key_client(service, token=token).create_ec_key(unique_name("no")))

    # Changing the definition changes what its holders may do, at once.
    admin.set_role_definition(
        KeyVaultRoleScope.GLOBAL,
        name=role_id,
        role_name=created.role_name,
        permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])],
    )
    assert_denied(lambda: crypto.sign(SignatureAlgorithm.es256, b"\x01" * 32))

    with pytest.raises(HttpResponseError) as info:
        admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role_id)
    assert info.value.status_code == 409, "still assigned"
    admin.delete_role_assignment(KeyVaultRoleScope.GLOBAL, assignment.name)
    admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role_id)
    with pytest.raises(ResourceNotFoundError):
        admin.get_role_definition(KeyVaultRoleScope.GLOBAL, role_id)


def test_a_built_in_role_cannot_be_replaced(service):
    with pytest.raises(HttpResponseError) as info:
        access_client(service).set_role_definition(
            KeyVaultRoleScope.GLOBAL,
            name="21dbd100-6940-42c2-9190-5d6cb909625b",
            role_name="takeover",
            permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.PURGE_DELETED_HSM_KEY])],
        )
    assert info.value.status_code == 400
    role = access_client(service).get_role_definition("/", "21dbd100-6940-42c2-9190-5d6cb909625b")
    assert role.role_name == "Managed HSM Crypto User"


def test_a_crypto_user_lists_deleted_keys_but_cannot_recover_or_purge(service, unique_name):
    _, token = service.new_principal(unique_name("user"), "Managed HSM Crypto User")
    user = make_key_client(service, token=token)
    name = unique_name("gone")
    user.create_rsa_key(name, size=2048)
    user.begin_delete_key(name).wait()
    assert name in [k.name for k in user.list_deleted_keys()]
    assert user.get_deleted_key(name).name == name
    assert_denied(lambda: user.begin_recover_deleted_key(name))
    assert_denied(lambda: user.purge_deleted_key(name))
    assert user.get_deleted_key(name).name == name, "the refusals changed nothing"

    _, officer_token = service.new_principal(unique_name("officer"), "Managed HSM Crypto Officer")
    officer = make_key_client(service, token=officer_token)
    officer.begin_recover_deleted_key(name).wait()
    assert user.get_key(name).name == name


def test_settings_need_the_administrator_role(service, unique_name):
    _, token = service.new_principal(unique_name("officer"), "Managed HSM Crypto Officer")
    officer = KeyVaultSettingsClient(
        service.url,
        StaticTokenCredential(token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
    )
    names = [s.name for s in officer.list_settings()]
    assert "EnablePurgeProtection" in names
    setting = officer.get_setting("EnablePurgeProtection")
    setting.value = "false"
    assert_denied(lambda: officer.update_setting(setting))
