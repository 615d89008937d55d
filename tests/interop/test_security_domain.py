"""The security domain through the official ``azure-keyvault-securitydomain`` SDK, against
p11vault services that start not activated (``[security_domain] auto_activate = false``).

An HSM is activated by ``begin_download`` with three wrapping certificates and a quorum of two;
its keys then work through ``azure-keyvault-keys``. A second new HSM is recovered with the
SDK's ``get_transfer_key`` and ``begin_upload``, the restore blob made offline in between by
``p11vault security-domain restore-blob`` (the CLI, with ``kN.pem`` beside ``kN.cer`` as az
expects) from two of the three private keys; a key backup and a signature of the first HSM are
then good on the second. Refusals come back through the SDK as the service's errors and change
nothing. The SDK's default api-version is used throughout, and 7.5 (what az 2.91 sends) for a
download and a recovery of their own. Also: ``skip_activation_polling`` (az's ``--no-wait``),
an upload the token fails (its status says nothing internal, and the upload can be made
again), and a download given up for another administrator's upload (not reported done).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.securitydomain import SecurityDomainClient
from azure.keyvault.securitydomain.models import (
    CertificateInfo,
    SecurityDomain,
    SecurityDomainJsonWebKey,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from conftest import Service, StaticTokenCredential, make_key_client, on_kryoptic
from cryptohelp import b64u, int_bytes

WrappingKey = Tuple[Path, x509.Certificate]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def sd_client(
    service: Service, api_version: Optional[str] = None, token: Optional[str] = None
) -> SecurityDomainClient:
    kwargs = {} if api_version is None else {"api_version": api_version}
    # The service sends no Retry-After: without a polling interval the SDK waits 30 s a poll.
    return SecurityDomainClient(
        service.url,
        StaticTokenCredential(token or service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
        polling_interval=1,
        **kwargs,
    )


def crypto_client(service: Service, key) -> CryptographyClient:
    return CryptographyClient(
        key,
        StaticTokenCredential(service.token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
    )


def make_wrapping_keys(directory: Path, prefix: str, count: int) -> List[WrappingKey]:
    """RSA-2048 keys with self-signed certificates, written as az users keep them:
    ``{prefix}N.pem`` (the private key) beside ``{prefix}N.cer`` (its certificate, PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    keys = []
    for i in range(1, count + 1):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sd administrator {prefix}{i}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        pem = directory / f"{prefix}{i}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pem.with_suffix(".cer").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keys.append((pem, cert))
    return keys


def x5t_256(cert: x509.Certificate) -> str:
    return b64u(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def certificate_info(keys: List[WrappingKey], required: int) -> CertificateInfo:
    """The download request as the SDK's own tests build it: one ``SecurityDomainJsonWebKey``
    per certificate (x5c standard base64, everything else base64url)."""
    jwks = []
    for _, cert in keys:
        der = cert.public_bytes(serialization.Encoding.DER)
        numbers = cert.public_key().public_numbers()
        jwks.append(
            SecurityDomainJsonWebKey(
                kid=cert.subject.rfc4514_string(),
                kty="RSA",
                key_ops=["verify", "encrypt", "wrapKey"],
                n=b64u(int_bytes(numbers.n)),
                e=b64u(int_bytes(numbers.e)),
                x5_c=[base64.b64encode(der).decode("ascii")],
                alg="RSA-OAEP-256",
                x5_t=b64u(hashlib.sha1(der).digest()),
                x5_t_s256=b64u(hashlib.sha256(der).digest()),
            )
        )
    return CertificateInfo(certificates=jwks, required=required)


def transfer_key_jwk(client: SecurityDomainClient) -> dict:
    """``get_transfer_key``'s JWK: a JSON string, as the SDK's tests read it."""
    transfer = client.get_transfer_key()
    assert transfer.key_format == "jwk"
    text = transfer.transfer_key
    assert isinstance(text, str), f"transfer_key is not a JSON string: {text!r}"
    jwk = json.loads(text)
    assert jwk["kty"] == "RSA" and jwk["x5c"], jwk
    return jwk


def write_exchange_key(jwk: dict, path: Path) -> x509.Certificate:
    """``x5c[0]`` as PEM in 65-character lines, as az's init-recovery writes it."""
    b64 = jwk["x5c"][0]
    lines = [b64[i : i + 65] for i in range(0, len(b64), 65)]
    path.write_text("\n".join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----"]))
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    assert jwk["x5t#S256"] == x5t_256(cert)
    assert cert.public_key().public_numbers().n == int.from_bytes(
        base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big"
    )
    return cert


def cli_restore_blob(
    service: Service, sd_file: Path, exchange: Path, keys: List[WrappingKey], out: Path
) -> str:
    """``p11vault security-domain restore-blob``, offline (no service, no data dir)."""
    done = subprocess.run(
        [
            str(service.bin_path),
            "security-domain",
            "restore-blob",
            "--sd-file",
            str(sd_file),
            "--sd-exchange-key",
            str(exchange),
            "--sd-wrapping-keys",
            *[str(pem) for pem, _ in keys],
            "--sd-file-restore-blob",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"restore-blob: {done.stderr}"
    return out.read_text()


def assert_not_activated(service: Service) -> None:
    """Key operations are refused with 409 HSMNotActivated; no download is pending."""
    with pytest.raises(HttpResponseError) as refused:
        make_key_client(service).create_rsa_key("probe", size=2048)
    assert refused.value.status_code == 409, refused.value
    assert refused.value.error.innererror.get("code") == "HSMNotActivated", refused.value


def assert_refused(
    call, status: int, needle: str, code: str = "BadParameter", inner: Optional[str] = None
) -> HttpResponseError:
    """The SDK raises HttpResponseError carrying the service's status, code and message."""
    with pytest.raises(HttpResponseError) as refused:
        call()
    error = refused.value
    assert error.status_code == status, error
    assert error.error.code == code, error
    if inner is not None:
        assert error.error.innererror.get("code") == inner, error
    assert needle in error.error.message, error.error.message
    assert needle in str(error), str(error)
    return error


def sign_and_back_up(service: Service, name: str) -> Tuple[bytes, bytes, bytes]:
    """Creates an RSA key on an activated HSM, signs a digest with it and backs it up; returns
    (digest, signature, backup blob)."""
    keys = make_key_client(service)
    key = keys.create_rsa_key(name, size=2048)
    digest = hashlib.sha256(f"signed on {service.url}".encode()).digest()
    signed = crypto_client(service, key).sign(SignatureAlgorithm.rs256, digest)
    assert signed.key_id == key.id
    # The signature is good under the key's public half (checked here without the service).
    public = rsa.RSAPublicNumbers(
        int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")
    ).public_key()
    public.verify(signed.signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return digest, signed.signature, keys.backup_key(name)


def download(
    client: SecurityDomainClient, keys: List[WrappingKey], required: int
) -> dict:
    """``begin_download`` followed to its end; returns the security-domain file as JSON."""
    poller = client.begin_download(certificate_info(keys, required))
    result = poller.result()
    assert isinstance(result, SecurityDomain), result
    assert poller.status().lower() == "success", poller.status()
    status = client.get_download_status()
    assert (status.status, status.status_details) == ("Success", "The resource is active.")
    sd = json.loads(result.value)
    assert sd["version"] == 2
    assert sd["EncData"]["kdf"] == "sp108_kdf" and sd["EncData"]["data"]
    shared = sd["SharedKeys"]
    assert (shared["key_algorithm"], shared["required"]) == ("shamir_share", required)
    assert [s["x5t_256"] for s in shared["enc_shares"]] == [x5t_256(c) for _, c in keys]
    return sd


def recover(
    client: SecurityDomainClient,
    service: Service,
    sd_text: str,
    keys: List[WrappingKey],
    workdir: Path,
    name: str,
) -> None:
    """Recovery through the SDK: the transfer key, the blob made offline, the upload."""
    exchange = workdir / f"{name}-exchange.pem"
    write_exchange_key(transfer_key_jwk(client), exchange)
    sd_file = workdir / f"{name}-sd.json"
    sd_file.write_text(sd_text)
    blob = cli_restore_blob(service, sd_file, exchange, keys, workdir / f"{name}-blob.json")
    poller = client.begin_upload(SecurityDomain(value=blob))
    assert poller.result() is None
    assert poller.status().lower() == "success", poller.status()
    status = client.get_upload_status()
    assert (status.status, status.status_details) == ("Success", "The resource is active.")


@contextlib.contextmanager
def token_frozen(service: Service):
    """The service's token files made immutable (``chattr +i``, which binds root too) while the
    block runs: the token then fails every call that writes an object."""
    if on_kryoptic():
        kdir = service.data_dir.with_suffix(".kryoptic")
        paths = [kdir, *sorted(kdir.glob("token.sql*"))]
    else:
        paths = sorted((service.data_dir / "softhsm" / "tokens").iterdir())
    assert paths, "the token's files are found"
    frozen = []
    try:
        for path in paths:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(
                    f"this test needs root and a file system with chattr: chattr +i {path}: "
                    f"{done.stderr}"
                )
            frozen.append(path)
        yield
    finally:
        for path in frozen:
            subprocess.run(["chattr", "-i", str(path)], check=True)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_download_activates_and_recovery_onto_a_new_hsm_carries_backups_and_signatures(
    start_not_activated, tmp_path: Path
) -> None:
    keys = make_wrapping_keys(tmp_path, "k", 3)
    a = start_not_activated()
    assert_not_activated(a)
    client_a = sd_client(a)
    with pytest.raises(ResourceNotFoundError):
        client_a.get_download_status()

    sd = download(client_a, keys, 2)
    sd_text = json.dumps(sd)

    # Activated: keys work through azure-keyvault-keys.
    digest, signature, backup = sign_and_back_up(a, "made-on-a")
    # A second download is refused (409) and leaves the domain as it was: the file above still
    # recovers an HSM that reads A's backups.
    again = assert_refused(
        lambda: client_a.begin_download(certificate_info(keys, 2)),
        409,
        "This HSM is already activated",
        code="Conflict",
        inner="HSMAlreadyActivated",
    )
    assert isinstance(again, ResourceExistsError)
    assert make_key_client(a).get_key("made-on-a").name == "made-on-a"

    # B, a new HSM, and C, another one: a blob made for C's transfer key is refused by B.
    b, c = start_not_activated(), start_not_activated()
    client_b, client_c = sd_client(b), sd_client(c)
    exchange_b = tmp_path / "b-exchange.pem"
    jwk_b = transfer_key_jwk(client_b)
    write_exchange_key(jwk_b, exchange_b)
    exchange_c = tmp_path / "c-exchange.pem"
    write_exchange_key(transfer_key_jwk(client_c), exchange_c)
    sd_file = tmp_path / "sd.json"
    sd_file.write_text(sd_text)
    for_c = cli_restore_blob(a, sd_file, exchange_c, [keys[0], keys[2]], tmp_path / "for-c.json")
    assert_refused(
        lambda: client_b.begin_upload(SecurityDomain(value=for_c)), 400, "another HSM's transfer key"
    )
    assert_not_activated(b)
    assert transfer_key_jwk(client_b) == jwk_b, "the refusal kept B's transfer key"

    # B recovers with keys 1 and 3 (the CLI offline, then the SDK's upload).
    for_b = cli_restore_blob(a, sd_file, exchange_b, [keys[0], keys[2]], tmp_path / "for-b.json")
    poller = client_b.begin_upload(SecurityDomain(value=for_b))
    assert poller.result() is None
    assert poller.status().lower() == "success"
    status = client_b.get_upload_status()
    assert (status.status, status.status_details) == ("Success", "The resource is active.")

    # A's key backup restores on B, and A's signature verifies there.
    keys_b = make_key_client(b)
    restored = keys_b.restore_key_backup(backup)
    made = make_key_client(a).get_key("made-on-a")
    assert restored.name == "made-on-a"
    assert restored.properties.version == made.properties.version
    assert restored.key.n == made.key.n
    verified = crypto_client(b, restored).verify(SignatureAlgorithm.rs256, digest, signature)
    assert verified.is_valid
    # B works on its own too, and a backup B makes restores on A (one domain).
    _, _, b_backup = sign_and_back_up(b, "made-on-b")
    assert make_key_client(a).restore_key_backup(b_backup).name == "made-on-b"
    # An upload onto an activated HSM is refused.
    assert_refused(
        lambda: client_b.begin_upload(SecurityDomain(value=for_b)),
        409,
        "This HSM is already activated",
        code="Conflict",
        inner="HSMAlreadyActivated",
    )


def test_refused_downloads_change_nothing_and_api_version_7_5_works(
    start_not_activated, tmp_path: Path
) -> None:
    keys = make_wrapping_keys(tmp_path, "k", 3)
    x = start_not_activated()
    for api_version in (None, "7.5"):
        client = sd_client(x, api_version)
        assert_refused(
            lambda: client.begin_download(certificate_info(keys[:2], 2)),
            400,
            "A security domain is encrypted to 3 to 10 certificates; 2 were given.",
        )
        assert_refused(
            lambda: client.begin_download(certificate_info(keys, 4)),
            400,
            "The quorum ('required') is 4, but only 3 certificates were given",
        )
        # Only a Managed HSM Administrator downloads the domain.
        _, officer = x.new_principal(f"officer-{api_version}", "Managed HSM Crypto Officer")
        assert_refused(
            lambda: sd_client(x, api_version, officer).begin_download(certificate_info(keys, 2)),
            403,
            "securitydomain/download/action",
            code="AccessDenied",
        )
        assert_not_activated(x)
        with pytest.raises(ResourceNotFoundError):
            client.get_download_status()

    # With api-version 7.5, what az 2.91 sends: a download activates X ...
    client_75 = sd_client(x, "7.5")
    sd = download(client_75, keys, 2)
    digest, signature, backup = sign_and_back_up(x, "made-on-x")
    assert_refused(
        lambda: client_75.begin_download(certificate_info(keys, 2)),
        409,
        "This HSM is already activated",
        code="Conflict",
        inner="HSMAlreadyActivated",
    )
    # ... and a recovery of Y with keys 2 and 3 reads X's backup.
    y = start_not_activated()
    client_y = sd_client(y, "7.5")
    recover(client_y, y, json.dumps(sd), keys[1:], tmp_path, "y")
    restored = make_key_client(y).restore_key_backup(backup)
    assert crypto_client(y, restored).verify(SignatureAlgorithm.rs256, digest, signature).is_valid


def test_without_activation_polling_the_first_status_read_confirms_the_download(
    start_not_activated, tmp_path: Path
) -> None:
    """``skip_activation_polling=True`` (az's ``--no-wait``): the file comes at once, the HSM
    waits for the confirmation that p11vault takes from the first status read (az's later
    ``security-domain wait``); an upload is complete when its 202 comes."""
    keys = make_wrapping_keys(tmp_path, "k", 3)
    a = start_not_activated()
    client_a = sd_client(a)
    poller = client_a.begin_download(certificate_info(keys, 3), skip_activation_polling=True)
    result = poller.result()
    sd = json.loads(result.value)
    assert sd["SharedKeys"]["required"] == 3
    assert_not_activated(a)
    status = client_a.get_download_status()
    assert (status.status, status.status_details) == ("Success", "The resource is active.")
    digest, signature, backup = sign_and_back_up(a, "made-on-a")

    b = start_not_activated()
    client_b = sd_client(b)
    exchange = tmp_path / "b-exchange.pem"
    write_exchange_key(transfer_key_jwk(client_b), exchange)
    sd_file = tmp_path / "sd.json"
    sd_file.write_text(result.value)
    blob = cli_restore_blob(a, sd_file, exchange, keys, tmp_path / "blob.json")
    assert client_b.begin_upload(SecurityDomain(value=blob), skip_activation_polling=True).result() is None
    restored = make_key_client(b).restore_key_backup(backup)
    assert crypto_client(b, restored).verify(SignatureAlgorithm.rs256, digest, signature).is_valid
    status = client_b.get_upload_status()
    assert (status.status, status.status_details) == ("Success", "The resource is active.")


def test_an_upload_the_token_fails_reports_nothing_internal_and_can_be_made_again(
    start_not_activated, tmp_path: Path
) -> None:
    """The token fails the upload's import: a 500 that says nothing internal, and the status
    the SDK reads afterwards says no more (the detail is in the service's log); the HSM is
    still waiting for its domain, and the same blob recovers it once the token works."""
    keys = make_wrapping_keys(tmp_path, "k", 3)
    a = start_not_activated()
    sd = download(sd_client(a), keys, 2)
    _, _, backup = sign_and_back_up(a, "made-on-a")
    b = start_not_activated()
    client_b = sd_client(b)
    exchange = tmp_path / "b-exchange.pem"
    write_exchange_key(transfer_key_jwk(client_b), exchange)
    sd_file = tmp_path / "sd.json"
    sd_file.write_text(json.dumps(sd))
    blob = cli_restore_blob(a, sd_file, exchange, keys[:2], tmp_path / "blob.json")
    # SoftHSM2 fails the object's creation (a fault: 500); kryoptic's SQLite store cannot be
    # written (the token unavailable: 503).
    if on_kryoptic():
        code, status_code, said, details = (
            "ServiceUnavailable",
            503,
            "The HSM is temporarily unavailable.",
            "The HSM was unavailable; start the operation again.",
        )
    else:
        code, status_code, said, details = (
            "InternalError",
            500,
            "The service met an internal error.",
            "The service met an internal error; see its log.",
        )
    with token_frozen(b):
        failed = assert_refused(
            lambda: client_b.begin_upload(SecurityDomain(value=blob)), status_code, said, code=code
        )
        assert "PKCS" not in str(failed) and "CKR_" not in str(failed)
        status = client_b.get_upload_status()
        assert (status.status, status.status_details) == ("Failed", details), status
    assert_not_activated(b)
    assert client_b.begin_upload(SecurityDomain(value=blob)).result() is None
    assert make_key_client(b).restore_key_backup(backup).name == "made-on-a"


def test_a_download_given_up_for_an_upload_is_not_reported_done(
    start_not_activated, tmp_path: Path
) -> None:
    """One administrator downloads a new HSM's domain without polling (az's ``--no-wait``);
    before anyone polls, another recovers the HSM with an upload of another domain. The
    download's file is then worthless, and its status must not say it succeeded."""
    keys = make_wrapping_keys(tmp_path, "k", 3)
    a = start_not_activated()
    sd = download(sd_client(a), keys, 2)
    _, _, backup = sign_and_back_up(a, "made-on-a")

    b = start_not_activated()
    client_b = sd_client(b)
    exchange = tmp_path / "b-exchange.pem"
    write_exchange_key(transfer_key_jwk(client_b), exchange)
    others = make_wrapping_keys(tmp_path, "o", 3)
    lost = client_b.begin_download(certificate_info(others, 2), skip_activation_polling=True)
    lost_file = lost.result().value
    sd_file = tmp_path / "sd.json"
    sd_file.write_text(json.dumps(sd))
    blob = cli_restore_blob(a, sd_file, exchange, keys[:2], tmp_path / "blob.json")
    assert client_b.begin_upload(SecurityDomain(value=blob)).result() is None
    assert make_key_client(b).restore_key_backup(backup).name == "made-on-a"

    status = client_b.get_download_status()
    assert status.status == "Failed", status
    assert "activated by an upload" in status.status_details, status
    # The lost file really holds no domain of B's: it recovers an HSM that reads none of B's
    # (A's) backups.
    c = start_not_activated()
    recover(sd_client(c), c, lost_file, others[:2], tmp_path, "c")
    with pytest.raises(HttpResponseError) as refused:
        make_key_client(c).restore_key_backup(backup)
    assert refused.value.status_code == 400, refused.value
