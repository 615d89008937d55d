"""Seed 003 (key management with the Azure CLI) through the pinned az (scripts/install-az.sh),
in the ``--id https://127.0.0.1:PORT/...`` form, against a fresh p11vault that
tests/with_p11vault.py started. az signs in with ``p11vault az-setup`` and ``az login
--identity``; every result is checked against the service's state, read over its REST API
with the administrator's p11vault token. Network: loopback only.

    python3 tests/with_p11vault.py -- .venv-az/bin/python -m pytest -q tests/az
"""

import base64
import json
import os
import shlex
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

URL = os.environ["P11VAULT_URL"].rstrip("/")
CA = os.environ["P11VAULT_CA"]
TOKEN_FILE = os.environ["P11VAULT_TOKEN_FILE"]
DATA_DIR = str(Path(CA).parent)
ROOT = Path(__file__).resolve().parents[2]
AZ = os.environ.get("P11VAULT_AZ") or str(ROOT / ".venv-az" / "bin" / "az")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BIN = os.environ.get("P11VAULT_BIN") or str(TARGET / "debug" / "p11vault")
API = "7.5"
TLS = ssl.create_default_context(cafile=CA)


def rest(method, path, token=None, headers=None, allow_error=False):
    """The service's answer, straight from its REST API (status, JSON body)."""
    token = token or Path(TOKEN_FILE).read_text().strip()
    sep = "&" if "?" in path else "?"
    req = urllib.request.Request(f"{URL}{path}{sep}api-version={API}", method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, context=TLS, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        if not allow_error:
            raise
        body = e.read()
        return e.code, json.loads(body) if body else None


@pytest.fixture(scope="module")
def az_env(tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("azconfig")
    setup = subprocess.run(
        [BIN, "az-setup", "--data-dir", DATA_DIR, "--token-file", TOKEN_FILE,
         "--config-dir", str(config_dir), "--url", URL],
        capture_output=True, text=True, timeout=60, check=True,
    )
    # What an operator runs: eval of the printed export lines.
    script = f'eval {shlex.quote(setup.stdout)} && env -0'
    dump = subprocess.run(["sh", "-c", script], capture_output=True, check=True, timeout=30)
    env = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    assert env["AZURE_CONFIG_DIR"] == str(config_dir)
    assert env["IDENTITY_HEADER"].startswith("p11vid.")
    assert Path(TOKEN_FILE).read_text().strip() not in setup.stdout
    login = subprocess.run([AZ, "login", "--identity", "--allow-no-subscriptions", "-o", "json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert login.returncode == 0, login.stderr
    assert json.loads(login.stdout)[0]["tenantId"] == "p11vault"
    return env


def b64(value):
    """Bytes of a base64 value, whichever alphabet (az prints standard base64, the API
    base64url)."""
    value = value.replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def az(env, *args, expect_ok=True):
    done = subprocess.run([AZ, *args, "-o", "json"], env=env, capture_output=True, text=True,
                          timeout=120)
    if expect_ok:
        assert done.returncode == 0, f"az {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None
    return done


def test_identity_endpoint_refuses_without_a_valid_header(az_env):
    endpoint = az_env["IDENTITY_ENDPOINT"]
    for header in (None, "p11vid.nobody.AAAA", az_env["IDENTITY_HEADER"][:-4] + "AAAA"):
        req = urllib.request.Request(f"{endpoint}?api-version=2019-08-01&resource=https://x")
        if header:
            req.add_header("X-IDENTITY-HEADER", header)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=TLS, timeout=30)
        assert e.value.code == 401
    # The header gets a token; that token works, and a tampered one does not.
    req = urllib.request.Request(f"{endpoint}?api-version=2019-08-01&resource=https://managedhsm.azure.net")
    req.add_header("X-IDENTITY-HEADER", az_env["IDENTITY_HEADER"])
    with urllib.request.urlopen(req, context=TLS, timeout=30) as r:
        issued = json.loads(r.read())
    assert issued["token_type"] == "Bearer" and int(issued["expires_on"]) > 0
    jwt = issued["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    assert claims["tid"] == "p11vault"
    assert rest("GET", "/keys", token=jwt)[0] == 200
    forged = dict(claims, exp=claims["exp"] + 3600)
    payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    parts = jwt.split(".")
    status, _ = rest("GET", "/keys", token=f"{parts[0]}.{payload}.{parts[2]}", allow_error=True)
    assert status == 401
    # A JWT cannot be turned into an identity header (a lasting credential).
    status, _ = rest("POST", "/p11vault/identity/header", token=jwt, allow_error=True)
    assert status == 401


def test_seed_003_key_management_with_id(az_env, tmp_path):
    env = az_env
    rsa_id, ec_id, aes_id = (f"{URL}/keys/{n}" for n in ("myrsakey", "myec256key", "myaeskey"))

    made = az(env, "keyvault", "key", "create", "--id", rsa_id, "--ops", "wrapKey", "unwrapKey",
              "--kty", "RSA-HSM", "--size", "3072")
    _, state = rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"]
    assert sorted(state["key"]["key_ops"]) == ["unwrapKey", "wrapKey"]
    assert len(b64(state["key"]["n"])) == 384

    az(env, "keyvault", "key", "create", "--id", ec_id, "--ops", "sign", "verify",
       "--tags", "usage=signing", "appname=myapp", "--kty", "EC-HSM", "--curve", "P-256")
    _, state = rest("GET", "/keys/myec256key")
    assert state["key"]["crv"] == "P-256" and state["key"]["kty"] == "EC-HSM"
    assert state["tags"] == {"usage": "signing", "appname": "myapp"}

    az(env, "keyvault", "key", "create", "--id", aes_id, "--ops", "encrypt", "decrypt",
       "--tags", "usage=signing", "appname=myapp", "--kty", "oct-HSM", "--size", "256")
    _, state = rest("GET", "/keys/myaeskey")
    assert state["key"]["kty"] == "oct-HSM" and sorted(state["key"]["key_ops"]) == ["decrypt", "encrypt"]

    shown = az(env, "keyvault", "key", "show", "--id", rsa_id)
    assert shown["key"]["kid"] == made["key"]["kid"] and shown["key"]["n"] == made["key"]["n"]

    listed = az(env, "keyvault", "key", "list", "--id", f"{URL}/")
    _, state = rest("GET", "/keys")
    assert sorted(k["kid"] for k in listed) == sorted(k["kid"] for k in state["value"])
    assert {k["kid"].rsplit("/", 1)[1] for k in listed} == {"myrsakey", "myec256key", "myaeskey"}

    backup_file = tmp_path / "myrsakey.backup"
    az(env, "keyvault", "key", "backup", "--id", rsa_id, "--file", str(backup_file))
    assert backup_file.stat().st_size > 0

    az(env, "keyvault", "key", "delete", "--id", rsa_id)
    assert rest("GET", "/keys/myrsakey", allow_error=True)[0] == 404
    assert rest("GET", "/deletedkeys/myrsakey")[0] == 200

    deleted = az(env, "keyvault", "key", "list-deleted", "--id", f"{URL}/")
    assert [d["recoveryId"] for d in deleted] == [f"{URL}/deletedkeys/myrsakey"]

    az(env, "keyvault", "key", "recover", "--id", f"{URL}/deletedKeys/myrsakey")
    _, state = rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"]

    az(env, "keyvault", "key", "delete", "--id", rsa_id)
    az(env, "keyvault", "key", "purge", "--id", f"{URL}/deletedKeys/myrsakey")
    assert rest("GET", "/deletedkeys/myrsakey", allow_error=True)[0] == 404

    restored = az(env, "keyvault", "key", "restore", "--id", f"{URL}/", "--file", str(backup_file))
    _, state = rest("GET", "/keys/myrsakey")
    assert state["key"]["kid"] == made["key"]["kid"] == restored["key"]["kid"]
    assert b64(state["key"]["n"]) == b64(made["key"]["n"])

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "mycert.key"
    pem.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"mypassword")))
    az(env, "keyvault", "key", "import", "--id", f"{URL}/keys/myimportedkey", "--pem-file",
       str(pem), "--pem-password", "mypassword")
    _, state = rest("GET", "/keys/myimportedkey")
    n = private.public_key().public_numbers().n
    assert int.from_bytes(b64(state["key"]["n"]), "big") == n
