"""Managed HSM semantics through the official SDKs, as their own test suites use them: key
attestation (``KeyClient.get_key_attestation``, a clear refusal), RSA keys with a public
exponent other than 65537 (``create_rsa_key(public_exponent=17)``), AES-CBC with ``aad`` and a
partial block, the 7.6 backup pre-checks (``begin_pre_backup`` / ``begin_pre_restore``),
``use_managed_identity=True``, the api-versions the SDKs send, and the JS SDK's
percent-encoded ``api%2Dversion`` on the wire.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultBackupClient
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyType
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, SignatureAlgorithm
from azure.keyvault.keys.crypto._providers import NoLocalCryptography
from cryptography.hazmat.primitives import hashes, padding as sympad
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from conftest import Service, StaticTokenCredential, make_key_client

BLOB_URL = "https://anyaccount.blob.core.windows.net/backups"


def crypto_client(service: Service, key) -> CryptographyClient:
    return CryptographyClient(
        key,
        StaticTokenCredential(service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


def backup_client(service: Service) -> KeyVaultBackupClient:
    return KeyVaultBackupClient(
        service.url,
        StaticTokenCredential(service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


# --------------------------------------------------------------------------------------------
# Key attestation
# --------------------------------------------------------------------------------------------


def test_get_key_attestation_is_a_clear_refusal(key_client: KeyClient, unique_name) -> None:
    name = unique_name("att")
    key = key_client.create_ec_key(name, curve="P-256", hardware_protected=True)
    for version in (None, key.properties.version):
        with pytest.raises(HttpResponseError) as err:
            key_client.get_key_attestation(name, version=version)
        e = err.value
        assert e.status_code == 400, e
        assert e.error is not None and e.error.code == "BadParameter", e
        assert "attest" in e.message and "token" in e.message, e.message
        # Not mapped to a "not found" or an auth error: the SDK raises the plain error.
        assert not isinstance(e, ResourceNotFoundError)
        assert (e.response.json()["error"].get("innererror") or {}).get("code") == "KeyAttestationNotSupported"
    # A key that does not exist is the SDK's ResourceNotFoundError, as get_key's is.
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key_attestation(unique_name("absent"))
    # Nothing changed.
    assert key_client.get_key(name).key.x == key.key.x


# --------------------------------------------------------------------------------------------
# RSA public exponents
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", [17, 3, 65537])
def test_rsa_public_exponent(service: Service, key_client: KeyClient, unique_name, exponent: int) -> None:
    """As the SDK's own Managed HSM test: the exponent asked for is the key's."""
    name = unique_name("rsa-e")
    key = key_client.create_rsa_key(name, size=2048, hardware_protected=True, public_exponent=exponent)
    assert int.from_bytes(key.key.e, "big") == exponent
    # The token's key pair has it: what the public key encrypts, the service decrypts.
    public = RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()
    secret = os.urandom(32)
    ciphertext = public.encrypt(
        secret, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )
    crypto = crypto_client(service, key)
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == secret
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"signed with e")
    d = digest.finalize()
    signed = crypto.sign(SignatureAlgorithm.rs256, d)
    assert crypto.verify(SignatureAlgorithm.rs256, d, signed.signature).is_valid
    # Rotation keeps the exponent.
    rotated = key_client.rotate_key(name)
    assert int.from_bytes(rotated.key.e, "big") == exponent


def test_an_invalid_public_exponent_is_a_400(key_client: KeyClient, unique_name) -> None:
    for exponent in (4, 1, 2**31 + 1):
        name = unique_name("rsa-bad")
        with pytest.raises(HttpResponseError) as err:
            key_client.create_rsa_key(name, size=2048, public_exponent=exponent)
        assert err.value.status_code == 400 and err.value.error.code == "BadParameter", err.value
        with pytest.raises(ResourceNotFoundError):
            key_client.get_key(name)


# --------------------------------------------------------------------------------------------
# AES-CBC as Managed HSM does it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_aes_cbc_ignores_aad_and_zero_pads(service: Service, key_client: KeyClient, unique_name, bits: int) -> None:
    """As the SDK's symmetric test on Managed HSM: ``aad`` passed with CBC, and the unpadded CBC
    returns a zero-padded plaintext."""
    secret = os.urandom(bits // 8)
    name = unique_name("cbc")
    imported = key_client.import_key(
        name, JsonWebKey(kty=KeyType.oct_hsm, k=secret, key_ops=["encrypt", "decrypt"])
    )
    crypto = crypto_client(service, imported)
    # azure-keyvault-keys 4.11.3 builds a local AES provider from a key bundle without `k` (no
    # service returns one) and draws a random key for it (SymmetricKey(key_bytes=None) calls
    # os.urandom), so A256CBCPAD would "encrypt" locally under a random key — against Azure
    # too. Every operation here must reach the service.
    crypto._initialize()
    crypto._local_provider = NoLocalCryptography()
    iv, aad = os.urandom(16), b"ignored by CBC"
    for plaintext in (b"", os.urandom(5), os.urandom(16), os.urandom(37)):
        # The unpadded form.
        alg = EncryptionAlgorithm(f"A{bits}CBC")
        result = crypto.encrypt(alg, plaintext, iv=iv, additional_authenticated_data=aad)
        padded = plaintext + bytes(-len(plaintext) % 16)
        enc = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
        assert result.ciphertext == enc.update(padded) + enc.finalize()
        back = crypto.decrypt(alg, result.ciphertext, iv=iv, additional_authenticated_data=aad)
        assert back.plaintext.startswith(plaintext)  # what the SDK's test asserts
        assert back.plaintext == padded
        # The PAD form: PKCS#7, the exact plaintext back.
        alg = EncryptionAlgorithm(f"A{bits}CBCPAD")
        result = crypto.encrypt(alg, plaintext, iv=iv, additional_authenticated_data=aad)
        padder = sympad.PKCS7(128).padder()
        enc = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
        assert result.ciphertext == enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()
        assert crypto.decrypt(alg, result.ciphertext, iv=iv, additional_authenticated_data=aad).plaintext == plaintext


# --------------------------------------------------------------------------------------------
# Backup pre-checks and the managed identity
# --------------------------------------------------------------------------------------------


def test_pre_backup_and_pre_restore_through_the_sdk(service: Service, key_client: KeyClient, unique_name) -> None:
    backups = backup_client(service)
    name = unique_name("pre")
    key_client.create_ec_key(name, curve="P-256")
    container = service.data_dir / "backups" / "backups"
    before = sorted(p.name for p in container.iterdir()) if container.is_dir() else []

    # Both credential forms; the poller ends without an error and writes nothing.
    backups.begin_pre_backup(BLOB_URL, sas_token="anything").wait()
    backups.begin_pre_backup(BLOB_URL, use_managed_identity=True).wait()
    after = sorted(p.name for p in container.iterdir()) if container.is_dir() else []
    assert after == before

    # A backup with the managed identity; its folder passes the pre-restore check.
    folder_url = backups.begin_backup(BLOB_URL, use_managed_identity=True).result().folder_url
    assert folder_url.startswith(BLOB_URL + "/mhsm-")
    backups.begin_pre_restore(folder_url, use_managed_identity=True).wait()
    backups.begin_pre_restore(folder_url, sas_token="anything").wait()
    assert key_client.get_key(name).name == name

    # A folder that is not there: the check fails, and the SDK raises.
    with pytest.raises(HttpResponseError):
        backups.begin_pre_restore(f"{BLOB_URL}/mhsm-p11vault-20000101000000", sas_token="x").wait()
    # A change after the last backup: a restore would be refused, so the check fails too.
    key_client.create_ec_key(unique_name("changed"), curve="P-256")
    with pytest.raises(HttpResponseError):
        backups.begin_pre_restore(folder_url, use_managed_identity=True).wait()
    # Bad input is refused at once.
    with pytest.raises(HttpResponseError) as err:
        backups.begin_pre_backup("ftp://nowhere/c", sas_token="x")
    assert err.value.status_code == 400


# --------------------------------------------------------------------------------------------
# api-versions and the JS SDK's wire
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "api_version",
    ["2016-10-01", "7.0", "7.2", "7.4", "7.5", "7.6", "7.6-preview.2", "2025-07-01", "2026-03-01-preview", "2027-01-01"],
)
def test_the_sdk_works_under_every_api_version_it_may_send(service: Service, unique_name, api_version: str) -> None:
    client = make_key_client(service, api_version=api_version)
    name = unique_name("ver")
    created = client.create_ec_key(name, curve="P-256")
    assert client.get_key(name).id == created.id
    assert any(p.name == name for p in client.list_properties_of_keys(max_page_size=25))


def test_a_malformed_api_version_is_a_400(service: Service) -> None:
    client = make_key_client(service, api_version="latest")
    with pytest.raises(HttpResponseError) as err:
        client.get_key("anything")
    assert err.value.status_code == 400 and err.value.error.code == "BadParameter"
    assert "latest" in err.value.message


def _exact_get(service: Service, path_and_query: str):
    """A GET whose request line is exactly ``path_and_query``: ``requests`` would decode the
    escapes of unreserved characters (``requote_uri``) before sending."""
    host, port = service.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(service.ca)), timeout=60)
    try:
        conn.request("GET", path_and_query, headers={"Authorization": f"Bearer {service.token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_the_js_sdks_percent_encoded_names(service: Service, key_client: KeyClient, unique_name) -> None:
    """@azure/keyvault-keys 4.10 sends ``?api%2Dversion=…`` and ``%24skiptoken``."""
    for _ in range(2):
        key_client.create_ec_key(unique_name("js"), curve="P-256")
    name = unique_name("js")
    key_client.create_ec_key(name, curve="P-256")
    status, body = _exact_get(service, f"/keys/{name}/?api%2Dversion=2025-07-01")
    assert status == 200, body
    assert body["key"]["kid"].startswith(f"{service.url}/keys/{name}/")
    status, first = _exact_get(service, "/keys?api%2Dversion=2025-07-01&maxresults=1")
    assert status == 200, first
    link = first["nextLink"].removeprefix(service.url)
    link = link.replace("$skiptoken=", "%24skiptoken=").replace("api-version=", "api%2Dversion=")
    assert "%24skiptoken=" in link and "api%2Dversion=" in link
    status, page = _exact_get(service, link)
    assert status == 200, page
    assert page["value"][0]["kid"] != first["value"][0]["kid"]
    # Without the decoding, the request has no api-version: what p11vault answered before.
    status, body = _exact_get(service, f"/keys/{name}/?api%252Dversion=2025-07-01")
    assert status == 400 and "api-version" in body["error"]["message"], body
