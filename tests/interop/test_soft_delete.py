"""Soft-delete through the official SDK: begin_delete_key(...).wait(), get_deleted_key,
list_deleted_keys, begin_recover_deleted_key(...).wait(), purge_deleted_key, and the 409 that
reserves a deleted key's name."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient


def test_delete_get_deleted_recover_and_purge_through_the_sdk(key_client: KeyClient, unique_name) -> None:
    name = unique_name("sd")
    created = key_client.create_ec_key(name, curve="P-256", tags={"purpose": "interop"})
    second = key_client.create_ec_key(name, curve="P-384")

    deleted = key_client.begin_delete_key(name).result()
    assert deleted.name == name
    assert deleted.recovery_id.endswith(f"/deletedkeys/{name}")
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
    assert (deleted.scheduled_purge_date - deleted.deleted_date).days == 90
    assert deleted.properties.recovery_level == "Recoverable+Purgeable"
    assert deleted.key.crv == "P-384"

    # The poller finishes once the key shows up under /deletedkeys.
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    got = key_client.get_deleted_key(name)
    assert got.id == second.id

    listed = [d.name for d in key_client.list_deleted_keys()]
    assert name in listed

    with pytest.raises(ResourceExistsError) as conflict:
        key_client.create_ec_key(name)
    assert "deleted but recoverable" in str(conflict.value)

    recovered = key_client.begin_recover_deleted_key(name).result()
    assert recovered.id == second.id
    old = key_client.get_key(name, version=created.properties.version)
    assert old.properties.tags == {"purpose": "interop"}
    assert old.key.x == created.key.x

    key_client.begin_delete_key(name).wait()
    key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(name)
    fresh = key_client.create_ec_key(name)
    assert fresh.key.x != created.key.x


def test_purge_and_recover_of_a_live_key_are_not_found(key_client: KeyClient, unique_name) -> None:
    name = unique_name("live")
    key_client.create_oct_key(name, size=256)
    with pytest.raises(ResourceNotFoundError):
        key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.begin_recover_deleted_key(name).result()
    assert key_client.get_key(name).name == name
