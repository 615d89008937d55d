"""Disaster recovery with az as the client (issue 15): instance A, activated by `az keyvault
security-domain download` (3 certificates, quorum 2), holds keys of every kind and takes a full
backup and a key backup; A's data dir and token are then deleted. Instance B, on a brand-new
token, is recovered with `init-recovery`, an offline `restore-blob` with 2 of the 3 keys and
`upload --restore-blob`, all by the pinned az; A's key backup and full backup then restore on B
through az, and every key works there. Also through az: a download by a principal without the
Administrator role, and an upload on an HSM that is active, each refused and changing nothing.
Results are checked over the REST API."""

import base64
import hashlib
import json
import shutil
import subprocess

from conftest import AZ, HSM, Az, Service, b64
from test_identity import _wrapping_certificate

CONTAINER = "drcontainer"
STORAGE = ["--storage-account-name", "drbackups", "--blob-container-name", CONTAINER,
           "--use-managed-identity", "true"]


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_op(svc, name, version, op, body):
    status, out = svc.rest("POST", f"/keys/{name}/{version}/{op}", body=body)
    assert status == 200, out
    return out


def version_of(bundle):
    return bundle["key"]["kid"].rsplit("/", 1)[1]


def test_disaster_recovery_onto_a_new_token_through_az(tmp_path_factory):
    work = tmp_path_factory.mktemp("admins")
    certs = [str(_wrapping_certificate(work, i)) for i in (1, 2, 3)]
    sd_file = work / "SD.json"

    a = Service(tmp_path_factory.mktemp("hsm-a"), activate=False)
    try:
        az_a = Az(a, "hsm-name", tmp_path_factory.mktemp("az-a"))
        done = az_a.run("keyvault", "security-domain", "download", *az_a.hsm(),
                        "--sd-wrapping-keys", *certs, "--sd-quorum", "2",
                        "--security-domain-file", str(sd_file))
        assert done["status"] == "Success", done
        file = json.loads(sd_file.read_text())
        assert file["SharedKeys"]["required"] == 2 and len(file["SharedKeys"]["enc_shares"]) == 3

        # Keys of every kind, several versions, a soft-deleted one, tags; purge protection.
        rsa1 = az_a.run("keyvault", "key", "create", *az_a.key("rsa"), "--kty", "RSA-HSM",
                        "--tags", "team=pay")
        rsa2 = az_a.run("keyvault", "key", "rotate", *az_a.key("rsa"))
        ec = az_a.run("keyvault", "key", "create", *az_a.key("ec"), "--kty", "EC-HSM",
                      "--curve", "P-256")
        aes = az_a.run("keyvault", "key", "create", *az_a.key("aes"), "--kty", "oct-HSM")
        az_a.run("keyvault", "key", "create", *az_a.key("gone"), "--kty", "EC-HSM")
        az_a.run("keyvault", "key", "delete", *az_a.key("gone"))
        az_a.run("keyvault", "update-hsm", "--hsm-name", HSM, "--enable-purge-protection", "true")
        digest = b64u(hashlib.sha256(b"made on A").digest())
        rsa_sig = key_op(a, "rsa", version_of(rsa1), "sign", {"alg": "RS256", "value": digest})
        ec_sig = key_op(a, "ec", version_of(ec), "sign", {"alg": "ES256", "value": digest})
        rsa_ct = key_op(a, "rsa", version_of(rsa2), "encrypt",
                        {"alg": "RSA-OAEP-256", "value": b64u(b"rsa secret")})
        aes_ct = key_op(a, "aes", version_of(aes), "encrypt",
                        {"alg": "A256GCM", "value": b64u(b"aes secret")})
        ec_blob = work / "ec.blob"
        az_a.run("keyvault", "key", "backup", *az_a.key("ec"), "--file", str(ec_blob))
        _, a_deleted = a.rest("GET", "/deletedkeys/gone")
        backup = az_a.run("keyvault", "backup", "start", *az_a.hsm(), *STORAGE)
        folder = backup["folderUrl"].rsplit("/", 1)[1]
    finally:
        assert a.stop() == 0, a.stderr_tail()

    # The site is lost: the backups were kept elsewhere; A's data dir and token are gone.
    kept = tmp_path_factory.mktemp("kept")
    shutil.copytree(a.data / "backups" / CONTAINER / folder, kept / folder)
    shutil.rmtree(a.base)

    b = Service(tmp_path_factory.mktemp("hsm-b"), activate=False)
    try:
        az_b = Az(b, "id", tmp_path_factory.mktemp("az-b"))
        assert "HSMNotActivated" in az_b.fails("keyvault", "key", "list", *az_b.hsm())
        exchange = work / "EXCH.pem"
        az_b.run("keyvault", "security-domain", "init-recovery", *az_b.hsm(),
                 "--sd-exchange-key", str(exchange))
        # Offline: no sign-in, no service (an empty az config dir), two of the three keys.
        blob = work / "BLOB.json"
        offline_env = {k: v for k, v in az_b.env.items() if k != "AZURE_CONFIG_DIR"}
        offline_env["AZURE_CONFIG_DIR"] = str(tmp_path_factory.mktemp("offline-az"))
        done = subprocess.run(
            [AZ, "keyvault", "security-domain", "restore-blob", "--sd-file", str(sd_file),
             "--sd-exchange-key", str(exchange), "--sd-wrapping-keys",
             str(work / "cert_1.key"), str(work / "cert_3.key"),
             "--sd-file-restore-blob", str(blob)],
            env=offline_env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        uploaded = az_b.run("keyvault", "security-domain", "upload", *az_b.hsm(),
                            "--sd-file", str(blob), "--restore-blob")
        assert uploaded["status"] == "Success", uploaded
        # An upload on an HSM that is active is refused, and changes nothing.
        err = az_b.fails("keyvault", "security-domain", "upload", *az_b.hsm(),
                         "--sd-file", str(blob), "--restore-blob")
        assert "HSMAlreadyActivated" in err or "already activated" in err, err

        # A's key backup restores through az at once.
        restored = az_b.run("keyvault", "key", "restore", *az_b.hsm(), "--file", str(ec_blob))
        assert restored["key"]["kid"].rsplit("/", 1)[1] == version_of(ec)

        # A's full backup restores through az, after B's own full backup.
        az_b.run("keyvault", "backup", "start", *az_b.hsm(), *STORAGE)
        shutil.copytree(kept / folder, b.data / "backups" / CONTAINER / folder)
        done = az_b.run("keyvault", "restore", "start", *az_b.hsm(), *STORAGE,
                        "--backup-folder", folder)
        assert done is None or done["status"] == "Succeeded", done
        # The assignments are A's now (for A's principals); B's first administrator kept the
        # Administrator role and gives B's principal the key roles again.
        for role in ("Managed HSM Crypto User", "Managed HSM Crypto Officer"):
            b.cli("role", "assign", "--principal", b.admin_id, "--role", role)

        # Every key works on B: A's signatures verify, A's ciphertexts decrypt.
        for name, version, alg, sig in [("rsa", version_of(rsa1), "RS256", rsa_sig),
                                        ("ec", version_of(ec), "ES256", ec_sig)]:
            out = key_op(b, name, version, "verify",
                         {"alg": alg, "digest": digest, "value": sig["value"]})
            assert out["value"] is True, (name, out)
        out = key_op(b, "rsa", version_of(rsa2), "decrypt",
                     {"alg": "RSA-OAEP-256", "value": rsa_ct["value"]})
        assert b64(out["value"]) == b"rsa secret"
        out = key_op(b, "aes", version_of(aes), "decrypt",
                     {"alg": "A256GCM", "value": aes_ct["value"], "iv": aes_ct["iv"],
                      "tag": aes_ct["tag"]})
        assert b64(out["value"]) == b"aes secret"
        listed = az_b.run("keyvault", "key", "list-versions", *az_b.key("rsa"))
        assert len(listed) == 2
        _, first = b.rest("GET", f"/keys/rsa/{version_of(rsa1)}")
        assert first["tags"] == {"team": "pay"}
        deleted = az_b.run("keyvault", "key", "list-deleted", *az_b.hsm())
        assert [d["name"] if "name" in d else d["kid"].split("/")[-2] for d in deleted] == ["gone"]
        _, b_deleted = b.rest("GET", "/deletedkeys/gone")
        assert b_deleted["deletedDate"] == a_deleted["deletedDate"]
        assert b_deleted["scheduledPurgeDate"] == a_deleted["scheduledPurgeDate"]
        _, setting = b.rest("GET", "/settings/EnablePurgeProtection")
        assert setting["value"] == "true", setting
    finally:
        assert b.stop() == 0, b.stderr_tail()


def test_a_download_needs_the_administrator_role(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("hsm"), activate=False)
    try:
        out = svc.cli("principal", "create", "--name", "officer", "--scope", "/",
                      "--role", "Managed HSM Crypto Officer")
        token = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("token="))
        token_file = tmp_path_factory.mktemp("officer") / "officer.token"
        token_file.write_text(token + "\n")
        az = Az(svc, "id", tmp_path_factory.mktemp("az"), token_file=str(token_file))
        work = tmp_path_factory.mktemp("admins")
        certs = [str(_wrapping_certificate(work, i)) for i in (1, 2, 3)]
        err = az.fails("keyvault", "security-domain", "download", *az.hsm(),
                       "--sd-wrapping-keys", *certs, "--sd-quorum", "2",
                       "--security-domain-file", str(work / "SD.json"))
        assert "AccessDenied" in err or "Not authorized" in err, err
        status, body = svc.rest("GET", "/keys")
        assert status == 409 and body["error"]["innererror"]["code"] == "HSMNotActivated"
        assert svc.rest("GET", "/securitydomain/download/pending")[0] == 404
    finally:
        assert svc.stop() == 0, svc.stderr_tail()
