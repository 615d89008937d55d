"""Interop tests: key rotation policies through the official Azure SDK (azure-keyvault-keys).

``get_key_rotation_policy``, ``update_key_rotation_policy`` (as the SDK's own tests call it:
an empty policy, keyword overrides, a round-tripped policy) and ``rotate_key`` with the policy's
expiry, plus Managed HSM's refusals as ``HttpResponseError``s that change nothing. Automatic
rotation by the maintenance task needs the service's test clock: tests/rotation.rs covers it.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
)

from conftest import Service

DAY = 86_400


def sval(v) -> str:
    return getattr(v, "value", v)


def assert_policies_equal(a: KeyRotationPolicy, b: KeyRotationPolicy) -> None:
    """What the SDK's own tests compare (test_key_client.py)."""
    assert a.id == b.id
    assert a.expires_in == b.expires_in
    assert a.created_on == b.created_on
    assert a.updated_on == b.updated_on
    assert len(a.lifetime_actions) == len(b.lifetime_actions)
    for x, y in zip(a.lifetime_actions, b.lifetime_actions):
        assert sval(x.action) == sval(y.action)
        assert x.time_after_create == y.time_after_create
        assert x.time_before_expiry == y.time_before_expiry


def test_a_key_without_a_policy_has_the_empty_default(key_client: KeyClient, service: Service, unique_name):
    name = unique_name("rp-default")
    key_client.create_ec_key(name, curve="P-256")
    policy = key_client.get_key_rotation_policy(name)
    assert policy.id == f"{service.url}/keys/{name}/rotationpolicy"
    assert policy.lifetime_actions == []
    assert policy.expires_in is None
    assert policy.created_on is None and policy.updated_on is None


def test_update_and_get_round_trip_as_the_sdk_tests_do(key_client: KeyClient, unique_name):
    name = unique_name("rp-update")
    key_client.create_rsa_key(name, size=2048)

    # An empty policy with no keyword arguments is accepted.
    key_client.update_key_rotation_policy(name, KeyRotationPolicy())

    actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P2M")]
    updated = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions)
    fetched = key_client.get_key_rotation_policy(name)
    assert updated.expires_in is None
    assert_policies_equal(updated, fetched)
    (action,) = updated.lifetime_actions
    assert sval(action.action) == "Rotate"
    assert action.time_after_create == "P2M"
    assert action.time_before_expiry is None
    assert isinstance(updated.created_on, datetime)

    # A round-tripped policy, with expires_in overridden.
    time.sleep(1.1)
    newer = key_client.update_key_rotation_policy(name, policy=updated, expires_in="P90D")
    assert newer.expires_in == "P90D"
    assert [a.time_after_create for a in newer.lifetime_actions] == ["P2M"]
    assert newer.created_on == updated.created_on
    assert newer.updated_on > updated.updated_on
    assert_policies_equal(newer, key_client.get_key_rotation_policy(name))

    # Before expiry: Managed HSM caps it at expiryTime minus 28 days.
    before = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_before_expiry="P28D")]
    policy = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=before, expires_in="P1Y")
    (action,) = policy.lifetime_actions
    assert action.time_before_expiry == "P28D" and action.time_after_create is None
    assert policy.expires_in == "P1Y"


@pytest.mark.parametrize(
    "actions, expires_in, says",
    [
        ([KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P30D")], None, "only the Rotate"),
        (
            [
                KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D"),
                KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P30D"),
            ],
            "P1Y",
            "only the Rotate",
        ),
        ([KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P7D")], None, "28 days"),
        ([KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_before_expiry="P30D")], None, "expiryTime"),
        ([KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_before_expiry="P30D")], "P40D", "minus 28 days"),
        ([KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="90 days")], None, "ISO 8601"),
        ([], "P10D", "28 days"),
    ],
)
def test_managed_hsm_refusals_change_nothing(key_client: KeyClient, unique_name, actions, expires_in, says):
    name = unique_name("rp-refused")
    key_client.create_ec_key(name, curve="P-256")
    good = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P60D")]
    kept = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=good, expires_in="P1Y")
    with pytest.raises(HttpResponseError) as ei:
        key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions, expires_in=expires_in)
    assert ei.value.status_code == 400, ei.value
    assert ei.value.error is not None and ei.value.error.code == "BadParameter"
    assert says in ei.value.error.message, ei.value.error.message
    assert_policies_equal(key_client.get_key_rotation_policy(name), kept)


def test_rotate_key_applies_the_policy_expiry(key_client: KeyClient, unique_name):
    name = unique_name("rp-rotate")
    old = key_client.create_ec_key(name, curve="P-384", key_operations=["sign", "verify"], tags={"t": "1"})
    actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P18M")]
    key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions, expires_in="P2Y")

    new = key_client.rotate_key(name)
    assert new.properties.version != old.properties.version
    assert (new.key.x, new.key.y) != (old.key.x, old.key.y)
    assert new.properties.tags == {"t": "1"}
    assert sorted(sval(op) for op in new.key_operations) == ["sign", "verify"]
    assert new.properties.expires_on is not None
    lived = (new.properties.expires_on - new.properties.created_on).total_seconds()
    assert abs(lived - 730 * DAY) <= 2, lived
    assert old.properties.expires_on is None

    # With the policy blanked, a rotation sets no expiry.
    key_client.update_key_rotation_policy(name, KeyRotationPolicy(lifetime_actions=[]))
    assert key_client.get_key_rotation_policy(name).expires_in is None
    plain = key_client.rotate_key(name)
    assert plain.properties.expires_on is None
    assert len(list(key_client.list_properties_of_key_versions(name))) == 3


def test_a_missing_key_has_no_policy(key_client: KeyClient, unique_name):
    name = unique_name("rp-missing")
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key_rotation_policy(name)
    actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D")]
    with pytest.raises(ResourceNotFoundError):
        key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions)


def test_the_policy_survives_soft_delete_and_recovery(key_client: KeyClient, unique_name):
    name = unique_name("rp-recover")
    key_client.create_ec_key(name, curve="P-256")
    actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D")]
    kept = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions, expires_in="P60D")
    key_client.begin_delete_key(name).wait()
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key_rotation_policy(name)
    key_client.begin_recover_deleted_key(name).wait()
    assert_policies_equal(key_client.get_key_rotation_policy(name), kept)
    assert kept.created_on is not None and kept.created_on <= datetime.now(timezone.utc)
