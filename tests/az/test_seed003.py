"""Seed 003 (key management with the Azure CLI), every command, through the pinned az in both
forms (``--hsm-name`` and ``--id``), each result checked against the service's state over its
REST API. Where the seed's own text cannot run (its typos: ``key restore`` with both
``--name`` and ``--file``, ``key recover … --pem-file``), the corrected form runs; the seed's
mangled quotes around ``--tags`` are read as the two tags they spell.
"""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import b64


def test_seed_003_key_management(form_service, tmp_path):
    svc, az = form_service
    by_name = az.form == "hsm-name"

    # az keyvault key create … --ops wrapKey unwrapKey --kty RSA-HSM --size 3072
    made = az.run("keyvault", "key", "create", *az.key("myrsakey"), "--ops", "wrapKey",
                  "unwrapKey", "--kty", "RSA-HSM", "--size", "3072")
    _, state = svc.rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"]
    assert sorted(state["key"]["key_ops"]) == ["unwrapKey", "wrapKey"]
    assert state["key"]["kty"] == "RSA-HSM" and len(b64(state["key"]["n"])) == 384

    # … --ops sign verify --tags usage=signing appname=myapp --kty EC-HSM --curve P-256
    az.run("keyvault", "key", "create", *az.key("myec256key"), "--ops", "sign", "verify",
           "--tags", "usage=signing", "appname=myapp", "--kty", "EC-HSM", "--curve", "P-256")
    _, state = svc.rest("GET", "/keys/myec256key")
    assert state["key"]["crv"] == "P-256" and state["key"]["kty"] == "EC-HSM"
    assert sorted(state["key"]["key_ops"]) == ["sign", "verify"]
    assert state["tags"] == {"usage": "signing", "appname": "myapp"}

    # The seed's --hsm-name form gives `--tags` no value; its --id form gives the two tags.
    tags = [] if by_name else ["usage=signing", "appname=myapp"]
    az.run("keyvault", "key", "create", *az.key("myaeskey"), "--ops", "encrypt", "decrypt",
           "--tags", *tags, "--kty", "oct-HSM", "--size", "256")
    _, state = svc.rest("GET", "/keys/myaeskey")
    assert state["key"]["kty"] == "oct-HSM"
    assert sorted(state["key"]["key_ops"]) == ["decrypt", "encrypt"]
    assert (state.get("tags") or {}) == ({} if by_name else {"usage": "signing", "appname": "myapp"})
    assert "k" not in state["key"], "no material of an oct key"

    shown = az.run("keyvault", "key", "show", *az.key("myrsakey"))
    assert shown["key"]["kid"] == made["key"]["kid"] and shown["key"]["n"] == made["key"]["n"]

    listed = az.run("keyvault", "key", "list", *az.hsm())
    _, state = svc.rest("GET", "/keys")
    assert sorted(k["kid"] for k in listed) == sorted(k["kid"] for k in state["value"])
    assert {k["kid"].rsplit("/", 1)[1] for k in listed} == {"myrsakey", "myec256key", "myaeskey"}

    # The seed's --id form of backup names the key by its deletedKeys URL; az reads the name.
    backup_file = tmp_path / "myrsakey.backup"
    az.run("keyvault", "key", "backup", *az.key("myrsakey", "deletedKeys"), "--file",
           str(backup_file))
    assert backup_file.stat().st_size > 0
    status, _ = svc.rest("POST", "/keys/restore", body={"value": "AAAA"})
    assert status == 400, "the service refuses garbage; the file az wrote is checked by restore"

    az.run("keyvault", "key", "delete", *az.key("myrsakey"))
    assert svc.rest("GET", "/keys/myrsakey")[0] == 404
    assert svc.rest("GET", "/deletedkeys/myrsakey")[0] == 200

    deleted = az.run("keyvault", "key", "list-deleted", *az.hsm())
    assert [d["recoveryId"] for d in deleted] == [f"{svc.url}/deletedkeys/myrsakey"]

    az.run("keyvault", "key", "recover", *az.key("myrsakey", "deletedKeys"))
    _, state = svc.rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"]
    assert svc.rest("GET", "/deletedkeys/myrsakey")[0] == 404

    # Purge needs a deleted key: delete it again first.
    az.run("keyvault", "key", "delete", *az.key("myrsakey"))
    az.run("keyvault", "key", "purge", *az.key("myrsakey", "deletedKeys"))
    assert svc.rest("GET", "/deletedkeys/myrsakey")[0] == 404
    assert svc.rest("GET", "/keys/myrsakey")[0] == 404

    # Corrected: `key restore --hsm-name H --file F` (the seed adds --name, which az refuses).
    target = ["--hsm-name", "p11vault"] if by_name else ["--id", f"{svc.url}/deletedKeys/myrsakey"]
    restored = az.run("keyvault", "key", "restore", *target, "--file", str(backup_file))
    _, state = svc.rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"] == restored["key"]["kid"]
    assert b64(state["key"]["n"]) == b64(made["key"]["n"])

    # Corrected: `key import … --pem-file … --pem-password …` (the seed's --id form says
    # `key recover` and `--password`). A new version of myrsakey, from the PEM's key.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "mycert.key"
    pem.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"mypassword")))
    imported = az.run("keyvault", "key", "import", *az.key("myrsakey"), "--pem-file", str(pem),
                      "--pem-password", "mypassword")
    _, state = svc.rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == imported["key"]["kid"] != made["key"]["kid"]
    n = private.public_key().public_numbers().n
    assert int.from_bytes(b64(state["key"]["n"]), "big") == n
    _, versions = svc.rest("GET", "/keys/myrsakey/versions")
    assert len(versions["value"]) == 2
