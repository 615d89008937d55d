"""The managed-identity sign-in az uses (`az login --identity`): the endpoint never hands out a
token without a valid identity header, a token it issued cannot be forged or turned into a
lasting credential, a rotated p11vault token voids the header, and az-setup prints nothing of
the p11vault token. Also the Graph lookup that lets `az keyvault role assignment create |
list` exit 0.
"""

import base64
import json
import urllib.error
import urllib.request

import pytest

from conftest import Az


def get(svc, url, header=None):
    req = urllib.request.Request(url)
    if header is not None:
        req.add_header("X-IDENTITY-HEADER", header)
    try:
        with urllib.request.urlopen(req, context=svc.tls, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_identity_endpoint_refuses_without_a_valid_header(service, tmp_path):
    svc = service
    az = Az(svc, "id", tmp_path)
    assert az.env["IDENTITY_HEADER"].startswith("p11vid.")
    assert svc.token not in az.setup_output
    endpoint = az.env["IDENTITY_ENDPOINT"]
    query = "?api-version=2019-08-01&resource=https://managedhsm.azure.net"
    header = az.env["IDENTITY_HEADER"]
    principal = header.split(".")[1]
    for bad in (None, "", "p11vid.nobody.AAAA", header[:-4] + "AAAA",
                f"p11vid.{principal}.{'A' * 43}", header.replace("p11vid.", "p11vid.x", 1),
                svc.token):
        status, body = get(svc, f"{endpoint}{query}", bad)
        assert status == 401, (bad, body)
        assert body["error"]["code"] == "Unauthorized"
    status, body = get(svc, f"{endpoint}?api-version=2019-08-01", header)
    assert status == 400 and body["error"]["code"] == "BadParameter"
    status, body = get(svc, f"{endpoint}?api-version=2019-08-01&resource={'x' * 513}", header)
    assert status == 400 and body["error"]["code"] == "BadParameter"

    # The header gets a token; that token works, and a tampered one does not.
    status, issued = get(svc, f"{endpoint}{query}", header)
    assert status == 200 and issued["token_type"] == "Bearer" and int(issued["expires_on"]) > 0
    jwt = issued["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    assert claims["tid"] == "p11vault" and claims["oid"] == svc.admin_id
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert svc.rest("GET", "/keys", token=jwt)[0] == 200
    parts = jwt.split(".")
    for forged in (dict(claims, exp=claims["exp"] + 3600), dict(claims, oid="someone-else")):
        payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        status, _ = svc.rest("GET", "/keys", token=f"{parts[0]}.{payload}.{parts[2]}")
        assert status == 401
    status, _ = svc.rest("GET", "/keys", token=f"{parts[0]}.{parts[1]}.{'A' * 43}")
    assert status == 401
    # A JWT cannot be turned into an identity header (a lasting credential).
    status, _ = svc.rest("POST", "/p11vault/identity/header", token=jwt, api=None)
    assert status == 401


def test_a_rotated_token_voids_the_identity_header(tmp_path_factory):
    from conftest import Service

    svc = Service(tmp_path_factory.mktemp("rotate"))
    try:
        work = tmp_path_factory.mktemp("az-rotate")
        az = Az(svc, "id", work)
        endpoint = az.env["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01&resource=https://x"
        assert get(svc, endpoint, az.env["IDENTITY_HEADER"])[0] == 200
        out = svc.cli("principal", "rotate", svc.admin_id)
        new_token = next(l for l in out.splitlines() if l.startswith("token="))[6:]
        assert get(svc, endpoint, az.env["IDENTITY_HEADER"])[0] == 401
        # The new token gets a new header, which works.
        token_file = work / "new.token"
        token_file.write_text(new_token + "\n")
        fresh = Az(svc, "id", tmp_path_factory.mktemp("az-rotated"), token_file=str(token_file))
        assert fresh.env["IDENTITY_HEADER"] != az.env["IDENTITY_HEADER"]
        assert get(svc, endpoint, fresh.env["IDENTITY_HEADER"])[0] == 200
    finally:
        svc.stop()


def test_role_assignment_create_and_list_exit_zero(service, tmp_path):
    """`az keyvault role assignment create | list` look the principals up in Microsoft Graph
    (the endpoint az-setup registers); the service answers with its principals' names."""
    svc = service
    az = Az(svc, "id", tmp_path)
    token = svc.cli("principal", "create", "--name", "reader-app")
    app_id = next(l for l in token.splitlines() if l.startswith("id="))[3:]
    made = az.run("keyvault", "role", "assignment", "create", *az.hsm(), "--role",
                  "Managed HSM Crypto Auditor", "--assignee-object-id", app_id, "--scope", "/keys")
    assert made["principalId"] == app_id and made["principalName"] == "reader-app"
    assert made["roleName"] == "Managed HSM Crypto Auditor" and made["scope"] == "/keys"
    _, state = svc.rest("GET", "/keys/providers/Microsoft.Authorization/roleAssignments")
    assert made["name"] in {a["name"] for a in state["value"]}
    listed = az.run("keyvault", "role", "assignment", "list", *az.hsm(), "--scope", "/keys")
    assert {(a["principalName"], a["roleName"]) for a in listed} >= {("reader-app", "Managed HSM Crypto Auditor")}
    # Graph answers only a signed-in caller, and only with ids it knows.
    status, _ = svc.rest("POST", "/graph/v1.0/directoryObjects/getByIds", token="nope",
                         body={"ids": [app_id]}, api=None)
    assert status == 401
    status, body = svc.rest("POST", "/graph/v1.0/directoryObjects/getByIds",
                            body={"ids": [app_id, "unknown"]}, api=None)
    assert status == 200 and [o["id"] for o in body["value"]] == [app_id]


def test_az_signs_in_before_the_hsm_is_activated(tmp_path_factory):
    """The sign-in's key is its own, not the security domain's: on an HSM that has no domain
    yet (security_domain.auto_activate = false), az logs in, sees the HSM not activated, is
    refused key operations, and downloads the domain (`az keyvault security-domain
    download`), which activates the HSM."""
    from conftest import GROUP, HSM, SUBSCRIPTION, Service

    svc = Service(tmp_path_factory.mktemp("not-activated"), activate=False)
    try:
        az = Az(svc, "id", tmp_path_factory.mktemp("az-not-activated"))
        shown = az.run("keyvault", "show", "--subscription", SUBSCRIPTION, "-g", GROUP,
                       "--hsm-name", HSM)
        assert shown["properties"]["securityDomainProperties"]["activationStatus"] == "NotActivated"
        err = az.fails("keyvault", "key", "list", *az.hsm())
        assert "HSMNotActivated" in err, err
        status, body = svc.rest("GET", "/keys")
        assert status == 409 and body["error"]["innererror"]["code"] == "HSMNotActivated", body

        # Signed in before activation, az downloads the domain, which activates the HSM.
        work = tmp_path_factory.mktemp("sd")
        certs = [str(_wrapping_certificate(work, i)) for i in (1, 2, 3)]
        sd_file = work / "SD.json"
        done = az.run("keyvault", "security-domain", "download", *az.hsm(), "--sd-wrapping-keys",
                      *certs, "--sd-quorum", "2", "--security-domain-file", str(sd_file))
        assert done["status"] == "Success", done
        assert sd_file.stat().st_size > 0
        shown = az.run("keyvault", "show", "--subscription", SUBSCRIPTION, "-g", GROUP,
                       "--hsm-name", HSM)
        assert shown["properties"]["securityDomainProperties"]["activationStatus"] == "Active"
        assert svc.rest("GET", "/keys")[0] == 200
        assert az.run("keyvault", "key", "list", *az.hsm()) == []
    finally:
        svc.stop()


def _wrapping_certificate(work, n):
    """An RSA key and its self-signed certificate, as an administrator holds them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sd{n}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (work / f"cert_{n}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path = work / f"cert_{n}.cer"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
