"""Backups through the official SDKs: a key's backup blob (``KeyClient.backup_key`` /
``restore_key_backup``) and the Managed HSM full backup, full restore and selective key restore
(``azure-keyvault-administration``'s ``KeyVaultBackupClient``).

A full restore replaces every key and role assignment of the session's service with a backup's
state; the test that does it takes its first backup itself, so only what that test created in
between is rolled back.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Set, Tuple

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultBackupClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    SignatureAlgorithm,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

from conftest import SHUTDOWN_TIMEOUT_S, Service, StaticTokenCredential, _start_service, make_key_client
from cryptohelp import b64u, operate_ok, raw_to_der, unb64u

CONTAINER = "backups"
BLOB_URL = f"https://anyaccount.blob.core.windows.net/{CONTAINER}"
FOLDER_RE = re.compile(
    r"^https://anyaccount\.blob\.core\.windows\.net/backups/(mhsm-p11vault-(\d{14}))$"
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def backup_client(service: Service, token: Optional[str] = None) -> KeyVaultBackupClient:
    return KeyVaultBackupClient(
        service.url,
        StaticTokenCredential(token or service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


def access_client(service: Service) -> KeyVaultAccessControlClient:
    return KeyVaultAccessControlClient(
        service.url,
        StaticTokenCredential(service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


def crypto_client(service: Service, key: Any) -> CryptographyClient:
    return CryptographyClient(
        key,
        StaticTokenCredential(service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


def sval(x: Any) -> Any:
    return getattr(x, "value", x)


def full_backup(client: KeyVaultBackupClient) -> str:
    """Runs a full backup to the end; returns its folder URL (checked for shape and place)."""
    started = datetime.now(timezone.utc).replace(microsecond=0)
    poller = client.begin_backup(BLOB_URL, sas_token="anything")
    result = poller.result()
    ended = datetime.now(timezone.utc)
    assert poller.status().lower() == "succeeded"
    match = FOLDER_RE.match(result.folder_url or "")
    assert match, f"unexpected folder URL {result.folder_url!r}"
    stamp = datetime.strptime(match.group(2), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    # The name's time is UTC and taken during the job (the service may wait a second to keep
    # two folder names apart).
    assert started - timedelta(seconds=1) <= stamp <= ended + timedelta(seconds=1), (stamp, started, ended)
    return result.folder_url


def folder_dir(service: Service, folder_url: str) -> Path:
    return service.data_dir / "backups" / CONTAINER / folder_url.rsplit("/", 1)[1]


def destroy(key_client: KeyClient, name: str) -> None:
    """Delete, then purge: the name is free afterwards."""
    key_client.begin_delete_key(name).wait()
    key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(name)


def material(key: KeyVaultKey) -> Tuple[Any, ...]:
    jwk = key.key
    return (sval(key.key_type), jwk.n, jwk.e, jwk.crv, jwk.x, jwk.y)


def snapshot(key_client: KeyClient, name: str) -> Dict[str, Dict[str, Any]]:
    """Per version: kid, public material, key_ops, tags, enabled/nbf/exp/created, as the
    version list and a GET of each version show them."""
    listed = {p.version: p for p in key_client.list_properties_of_key_versions(name)}
    out: Dict[str, Dict[str, Any]] = {}
    for version, props in listed.items():
        key = key_client.get_key(name, version)
        out[version] = {
            "kid": key.id,
            "material": material(key),
            "ops": sorted(str(sval(o)) for o in key.key_operations or []),
            "tags": key.properties.tags,
            "enabled": key.properties.enabled,
            "listed_enabled": props.enabled,
            "nbf": key.properties.not_before,
            "exp": key.properties.expires_on,
            "created": key.properties.created_on,
        }
    return out


def key_names(key_client: KeyClient) -> Set[str]:
    return {p.name for p in key_client.list_properties_of_keys()}


def deleted_names(key_client: KeyClient) -> Set[str]:
    return {d.name for d in key_client.list_deleted_keys()}


def error_body(exc: HttpResponseError) -> Dict[str, Any]:
    return exc.response.json()["error"]


def rsa_signs(service: Service, key: KeyVaultKey, public: KeyVaultKey) -> None:
    """The service signs with ``key``; the signature verifies under ``public``'s n/e locally."""
    digest = hashlib.sha256(b"backed up").digest()
    sig = crypto_client(service, key.id).sign(SignatureAlgorithm.ps256, digest).signature
    pub = RSAPublicNumbers(int.from_bytes(public.key.e, "big"), int.from_bytes(public.key.n, "big")).public_key()
    pub.verify(
        sig,
        b"backed up",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert crypto_client(service, key).verify(SignatureAlgorithm.ps256, digest, sig).is_valid


def ec_signs(service: Service, key: KeyVaultKey, public: KeyVaultKey) -> None:
    digest = hashlib.sha256(b"backed up").digest()
    sig = crypto_client(service, key.id).sign(SignatureAlgorithm.es256, digest).signature
    pub = ec.EllipticCurvePublicNumbers(
        int.from_bytes(public.key.x, "big"), int.from_bytes(public.key.y, "big"), ec.SECP256R1()
    ).public_key()
    pub.verify(raw_to_der(sig), b"backed up", ec.ECDSA(hashes.SHA256()))
    assert crypto_client(service, key).verify(SignatureAlgorithm.es256, digest, sig).is_valid


@pytest.fixture(scope="module")
def other_service() -> Iterator[Service]:
    """A second p11vault with its own data dir, token and security domain."""
    bin_path = Path(os.environ.get("P11VAULT_BIN") or Path(__file__).resolve().parents[2] / "target/debug/p11vault")
    base = Path(tempfile.mkdtemp(prefix="p11vault-interop-other-"))
    data_dir = base / "data"
    data_dir.mkdir()
    svc = _start_service(bin_path, data_dir)
    try:
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
        if not os.environ.get("P11VAULT_KEEP_DATA"):
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# A key's backup blob
# --------------------------------------------------------------------------------------------


def test_key_backup_round_trip_keeps_versions_attributes_and_material(service, key_client, raw, unique_name):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    nbf, exp = now - timedelta(hours=1), now + timedelta(days=365)

    rsa_name = unique_name("bk-rsa")
    rsa_v1 = key_client.create_rsa_key(
        rsa_name, size=2048, tags={"team": "blue"}, not_before=nbf, expires_on=exp
    )
    rsa_v2 = key_client.rotate_key(rsa_name)
    key_client.update_key_properties(rsa_name, rsa_v1.properties.version, enabled=False)
    key_client.update_key_properties(rsa_name, rsa_v2.properties.version, tags={"team": "red", "v": "2"})
    ec_name = unique_name("bk-ec")
    ec_key = key_client.create_ec_key(ec_name, curve="P-256", tags={"kind": "ec"}, expires_on=exp)
    oct_name = unique_name("bk-oct")
    oct_key = key_client.create_oct_key(oct_name, size=256, hardware_protected=True, tags={"kind": "oct"})

    # Something sealed under the oct key before the backup must open after the restore. GCM
    # goes to the service through the SDK. AES key wrap does not: the SDK's CryptographyClient
    # takes an oct key without "k" for a local key and wraps under os.urandom bytes
    # (SymmetricKey.from_jwk), so the wrap is sent raw.
    oct_crypto = crypto_client(service, oct_key)
    sealed = oct_crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"across a backup", additional_authenticated_data=b"aad")
    cek = os.urandom(32)
    wrapped = operate_ok(raw, oct_name, "wrapkey", {"alg": "A256KW", "value": b64u(cek)})["value"]

    names = [rsa_name, ec_name, oct_name]
    before = {n: snapshot(key_client, n) for n in names}
    assert len(before[rsa_name]) == 2
    assert before[rsa_name][rsa_v1.properties.version]["enabled"] is False
    assert before[rsa_name][rsa_v2.properties.version]["tags"] == {"team": "red", "v": "2"}

    blobs = {}
    for n in names:
        blob = key_client.backup_key(n)
        assert isinstance(blob, bytes) and len(blob) > 64, n
        blobs[n] = blob
    for n in names:
        destroy(key_client, n)

    restored = {n: key_client.restore_key_backup(blobs[n]) for n in names}
    assert restored[rsa_name].id == rsa_v2.id, "the restore returns the newest version"
    assert restored[ec_name].id == ec_key.id
    assert restored[oct_name].id == oct_key.id
    assert restored[rsa_name].properties.tags == {"team": "red", "v": "2"}

    for n in names:
        after = snapshot(key_client, n)
        assert after.keys() == before[n].keys(), f"{n}: versions differ"
        for version, old in before[n].items():
            new = after[version]
            for field in ("kid", "material", "ops", "tags", "enabled", "listed_enabled", "nbf", "exp", "created"):
                assert new[field] == old[field], f"{n}/{version}: {field} {old[field]!r} -> {new[field]!r}"
    assert key_client.get_key(rsa_name, rsa_v1.properties.version).properties.enabled is False
    assert key_client.get_key(rsa_name, rsa_v1.properties.version).properties.tags == {"team": "blue"}
    assert key_client.get_key(rsa_name).properties.version == rsa_v2.properties.version

    # The restored keys work, with their old private halves.
    rsa_signs(service, restored[rsa_name], rsa_v2)
    ec_signs(service, restored[ec_name], ec_key)
    oct_crypto = crypto_client(service, restored[oct_name])
    opened = oct_crypto.decrypt(
        EncryptionAlgorithm.a256_gcm,
        sealed.ciphertext,
        iv=sealed.iv,
        authentication_tag=sealed.tag,
        additional_authenticated_data=b"aad",
    )
    assert opened.plaintext == b"across a backup"
    unwrapped = operate_ok(raw, oct_name, "unwrapkey", {"alg": "A256KW", "value": wrapped})["value"]
    assert unb64u(unwrapped) == cek
    # RFC 3394 is deterministic: the same key wraps the same bytes the same way.
    again = operate_ok(raw, oct_name, "wrapkey", {"alg": "A256KW", "value": b64u(cek)})["value"]
    assert again == wrapped

    # The disabled version stayed disabled: the service refuses to sign with it.
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(HttpResponseError) as info:
        crypto_client(service, rsa_v1.id).sign(SignatureAlgorithm.ps256, digest)
    assert info.value.status_code == 403


def test_key_restore_refusals_change_nothing(service, key_client, other_service, unique_name):
    name = unique_name("bk-ref")
    first = key_client.create_ec_key(name, curve="P-256", tags={"gen": "1"})
    second = key_client.create_ec_key(name, curve="P-256", tags={"gen": "2"})
    blob = key_client.backup_key(name)
    versions = snapshot(key_client, name)

    # The name is taken by a live key.
    with pytest.raises(ResourceExistsError) as info:
        key_client.restore_key_backup(blob)
    assert info.value.status_code == 409
    assert snapshot(key_client, name) == versions

    # ... and by a soft-deleted one.
    key_client.begin_delete_key(name).wait()
    keys_before, deleted_before = key_names(key_client), deleted_names(key_client)
    assert name in deleted_before and name not in keys_before
    with pytest.raises(ResourceExistsError) as info:
        key_client.restore_key_backup(blob)
    assert info.value.status_code == 409
    assert error_body(info.value)["innererror"]["code"] == "ObjectIsDeletedButRecoverable"
    assert key_names(key_client) == keys_before
    assert deleted_names(key_client) == deleted_before
    assert key_client.get_deleted_key(name).id == second.id

    # With the name free, broken blobs are 400 and create nothing.
    key_client.purge_deleted_key(name)
    keys_before, deleted_before = key_names(key_client), deleted_names(key_client)
    assert name not in keys_before | deleted_before

    middle = len(blob) // 2
    flipped = blob[:middle] + bytes([blob[middle] ^ 0x01]) + blob[middle + 1 :]
    foreign_name = unique_name("bk-foreign")
    other = make_key_client(other_service)
    other.create_ec_key(foreign_name, curve="P-256")
    foreign = other.backup_key(foreign_name)
    bad = {
        "one byte flipped": flipped,
        "last byte flipped": blob[:-1] + bytes([blob[-1] ^ 0x80]),
        "truncated": blob[: len(blob) - 17],
        "half": blob[:middle],
        "random": os.urandom(len(blob)),
        "other security domain": foreign,
    }
    for what, data in bad.items():
        with pytest.raises(HttpResponseError) as info:
            key_client.restore_key_backup(data)
        assert info.value.status_code == 400, f"{what}: {info.value.status_code} {info.value.message}"
        assert error_body(info.value)["code"] == "BadParameter", (what, error_body(info.value))
        if what == "other security domain":
            assert "security domain" in error_body(info.value)["message"], error_body(info.value)
    assert key_names(key_client) == keys_before
    assert deleted_names(key_client) == deleted_before
    for n in (name, foreign_name):
        with pytest.raises(ResourceNotFoundError):
            key_client.get_key(n)
        with pytest.raises(ResourceNotFoundError):
            key_client.get_deleted_key(n)

    # The blob itself was good all along.
    restored = key_client.restore_key_backup(blob)
    assert restored.id == second.id
    assert snapshot(key_client, name) == versions
    assert key_client.get_key(name, first.properties.version).properties.tags == {"gen": "1"}


# --------------------------------------------------------------------------------------------
# Full backup, full restore, selective key restore
# --------------------------------------------------------------------------------------------


def test_full_restore_brings_back_the_backed_up_state(service, key_client, unique_name):
    client = backup_client(service)
    a_name, b_name, c_name = unique_name("full-a"), unique_name("full-b"), unique_name("full-c")
    a = key_client.create_ec_key(a_name, curve="P-256")
    b = key_client.create_rsa_key(b_name, size=2048, tags={"state": "old"})

    folder1 = full_backup(client)
    assert (folder_dir(service, folder1) / "backup.p11b").is_file()

    # A role assignment made after the backup goes with the restore.
    principal, token = service.new_principal(unique_name("full-p"), "Managed HSM Crypto User")
    assert make_key_client(service, token=token).get_key(b_name).id == b.id
    c = key_client.create_ec_key(c_name, curve="P-256")
    destroy(key_client, a_name)
    key_client.update_key_properties(b_name, tags={"state": "new"})

    # The state changed after the last full backup: a full restore would lose it.
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder1, sas_token="x")
    assert info.value.status_code == 409
    body = error_body(info.value)
    assert body["code"] == "Conflict", body
    assert body["innererror"]["code"] == "FullBackupRequired", body
    assert key_client.get_key(c_name).id == c.id, "the refusal changed nothing"
    assert key_client.get_key(b_name).properties.tags == {"state": "new"}
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(a_name)

    folder2 = full_backup(client)
    assert folder2 != folder1
    assert (folder_dir(service, folder2) / "backup.p11b").is_file()

    poller = client.begin_restore(folder1, sas_token="x")
    poller.wait()
    assert poller.status().lower() == "succeeded"
    assert poller.result() is None

    got_a = key_client.get_key(a_name)
    assert got_a.id == a.id
    assert material(got_a) == material(a)
    ec_signs(service, got_a, a)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(c_name)
    assert c_name not in key_names(key_client)
    got_b = key_client.get_key(b_name)
    assert got_b.id == b.id
    assert got_b.properties.tags == {"state": "old"}
    rsa_signs(service, got_b, b)
    assignments = access_client(service).list_role_assignments(KeyVaultRoleScope.GLOBAL)
    assert principal not in {a.properties.principal_id for a in assignments}
    with pytest.raises(HttpResponseError) as info:
        make_key_client(service, token=token).get_key(b_name)
    assert info.value.status_code in (401, 403), "the assignment made after the backup is gone"
    # Both backup folders are still there: the restore reads, it does not consume.
    assert folder_dir(service, folder1).is_dir() and folder_dir(service, folder2).is_dir()


def test_selective_restore_of_one_key(service, key_client, unique_name):
    client = backup_client(service)
    s_name, t_name = unique_name("sel-s"), unique_name("sel-t")
    s1 = key_client.create_ec_key(s_name, curve="P-256", tags={"v": "1"})
    s2 = key_client.rotate_key(s_name)
    t = key_client.create_ec_key(t_name, curve="P-256", tags={"t": "before"})
    versions = snapshot(key_client, s_name)
    assert len(versions) == 2

    folder = full_backup(client)

    destroy(key_client, s_name)
    key_client.update_key_properties(t_name, tags={"t": "after"})

    poller = client.begin_restore(folder, sas_token="x", key_name=s_name)
    poller.wait()
    assert poller.status().lower() == "succeeded"
    assert snapshot(key_client, s_name) == versions
    assert key_client.get_key(s_name).id == s2.id
    assert key_client.get_key(s_name, s1.properties.version).id == s1.id
    ec_signs(service, key_client.get_key(s_name), s2)
    # Only that key: the other key keeps its current state.
    assert key_client.get_key(t_name).properties.tags == {"t": "after"}
    assert key_client.get_key(t_name).id == t.id

    # The live key exactly as the backup holds it: restoring it again succeeds and changes
    # nothing (the SDK's own selective-restore tests do this).
    again = client.begin_restore(folder, sas_token="x", key_name=s_name)
    again.wait()
    assert again.status().lower() == "succeeded"
    assert snapshot(key_client, s_name) == versions

    # The name is taken by a key that differs (a tag changed), then by a soft-deleted key.
    key_client.update_key_properties(s_name, tags={"v": "changed"})
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder, sas_token="x", key_name=s_name)
    assert info.value.status_code == 409
    key_client.begin_delete_key(s_name).wait()
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder, sas_token="x", key_name=s_name)
    assert info.value.status_code == 409
    assert key_client.get_deleted_key(s_name).id == s2.id

    # A key the backup does not hold.
    missing = unique_name("sel-missing")
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder, sas_token="x", key_name=missing)
    assert info.value.status_code == 400
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(missing)


def test_a_crypto_user_cannot_back_up_or_restore(service, key_client, unique_name):
    _, token = service.new_principal(unique_name("bk-user"), "Managed HSM Crypto User")
    client = backup_client(service, token)
    container = service.data_dir / "backups" / CONTAINER
    existing = sorted(os.listdir(container)) if container.is_dir() else []

    with pytest.raises(HttpResponseError) as info:
        client.begin_backup(BLOB_URL, sas_token="anything")
    assert info.value.status_code == 403
    assert error_body(info.value)["code"] == "AccessDenied"

    folder = f"{BLOB_URL}/mhsm-p11vault-20000101000000"
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder, sas_token="x")
    assert info.value.status_code == 403
    name = unique_name("bk-user-key")
    with pytest.raises(HttpResponseError) as info:
        client.begin_restore(folder, sas_token="x", key_name=name)
    assert info.value.status_code == 403

    time.sleep(1.5)  # a backup that was started anyway would have written its folder by now
    now = sorted(os.listdir(container)) if container.is_dir() else []
    assert now == existing, "no backup folder was written"


def test_backup_operation_on_the_wire(service, raw):
    """What the SDK's poller relies on: 202, Azure-AsyncOperation, Retry-After: 1, a status
    body; the status URL answers 200 until Succeeded with the folder URL."""
    resp = raw.post("/backup", json={"storageResourceUri": BLOB_URL, "token": "t", "useManagedIdentity": False})
    assert resp.status_code == 202, resp.text
    assert resp.headers["Retry-After"] == "1"
    status_url = resp.headers["Azure-AsyncOperation"]
    body = resp.json()
    assert status_url.startswith(service.url + "/backup/" + body["jobId"] + "/pending"), status_url
    assert body["status"] in ("InProgress", "Succeeded")

    deadline = time.monotonic() + 60
    while True:
        polled = raw.get(status_url, api_version=None)
        assert polled.status_code == 200, polled.text
        body = polled.json()
        if body["status"] != "InProgress":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert body["status"] == "Succeeded", body
    assert FOLDER_RE.match(body["azureStorageBlobContainerUri"]), body
    assert body["endTime"] and body["endTime"] >= body["startTime"]

    unknown = raw.get("/backup/00000000000000000000000000000000/pending", api_version=None)
    assert unknown.status_code == 404
