"""Interop tests: the official Azure Python SDK (azure-keyvault-keys) against p11vault.

Covered (this release): create (RSA/EC/oct), import, get (latest/by version), list keys and
versions (paged), update properties, rotate, input validation, authentication challenge.
Elsewhere: delete/recover/purge (test_soft_delete.py), key operations and rng (test_crypto.py,
test_wycheproof.py), rotation policies (test_rotation.py). Not implemented yet: release.
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, List, Optional, Set

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import API_VERSION, TOKEN_CURVES, RawApi, Service

# --------------------------------------------------------------------------------------------
# Constants & helpers
# --------------------------------------------------------------------------------------------

VERSION_RE = re.compile(r"^[0-9a-f]{32}$")
PRIVATE_FIELDS = {"d", "p", "q", "dp", "dq", "qi", "k"}

RSA_DEFAULT_OPS = {"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}
EC_DEFAULT_OPS = {"sign", "verify"}
OCT_DEFAULT_OPS = {"encrypt", "decrypt", "wrapKey", "unwrapKey"}

CURVES = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
    "P-256K": (ec.SECP256K1(), 32),
}


def assert_the_token_lacks(crv: str, key_client: KeyClient, name: str, attempt: Any) -> None:
    """A curve the token lacks (kryoptic: secp256k1) is a clear 400 naming the curve and the
    token's limit, and leaves no key."""
    with pytest.raises(HttpResponseError) as ei:
        attempt()
    assert ei.value.status_code == 400, ei.value
    message = ei.value.error.message if ei.value.error else str(ei.value)
    assert crv in message and "token" in message, message
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)


def sval(x: Any) -> Any:
    """Plain string value of an SDK enum member or string."""
    return getattr(x, "value", x)


def ops(values: Optional[Iterable[Any]]) -> Set[str]:
    assert values is not None, "key_ops missing"
    return {str(sval(v)) for v in values}


def i2b(value: int, length: Optional[int] = None) -> bytes:
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def b2i(data: bytes) -> int:
    return int.from_bytes(data, "big")


def b64u_decode(text: str) -> bytes:
    text = text.replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def rsa_jwk(priv: rsa.RSAPrivateKey, **extra: Any) -> JsonWebKey:
    pn = priv.private_numbers()
    pub = pn.public_numbers
    return JsonWebKey(
        kty="RSA",
        n=i2b(pub.n),
        e=i2b(pub.e),
        d=i2b(pn.d),
        p=i2b(pn.p),
        q=i2b(pn.q),
        dp=i2b(pn.dmp1),
        dq=i2b(pn.dmq1),
        qi=i2b(pn.iqmp),
        **extra,
    )


def ec_jwk(priv: ec.EllipticCurvePrivateKey, crv: str, **extra: Any) -> JsonWebKey:
    size = CURVES[crv][1]
    pn = priv.private_numbers()
    return JsonWebKey(
        kty="EC",
        crv=crv,
        x=i2b(pn.public_numbers.x, size),
        y=i2b(pn.public_numbers.y, size),
        d=i2b(pn.private_value, size),
        **extra,
    )


class Captured:
    """raw_response_hook collecting the JSON bodies the SDK received."""

    def __init__(self) -> None:
        self.bodies: List[Dict[str, Any]] = []
        self.statuses: List[int] = []

    def __call__(self, pipeline_response: Any) -> None:
        resp = pipeline_response.http_response
        self.statuses.append(resp.status_code)
        try:
            self.bodies.append(json.loads(resp.text()))
        except ValueError:
            self.bodies.append({"<non-json>": resp.text()})

    @property
    def last(self) -> Dict[str, Any]:
        assert self.bodies, "no response captured"
        return self.bodies[-1]


def assert_no_private_fields(body: Dict[str, Any]) -> None:
    assert "key" in body, f"no 'key' in response: {body}"
    leaked = PRIVATE_FIELDS & set(body["key"])
    assert not leaked, f"private JWK fields returned: {sorted(leaked)} in {body['key']}"


def assert_key_basics(key: KeyVaultKey, name: str, service: Service) -> None:
    assert key.name == name
    assert key.properties.name == name
    assert key.properties.version is not None and VERSION_RE.match(key.properties.version), key.properties.version
    assert key.id == f"{service.url}/keys/{name}/{key.properties.version}"
    assert key.key.kid == key.id
    now = datetime.now(timezone.utc)
    created, updated = key.properties.created_on, key.properties.updated_on
    assert created is not None and updated is not None, "created/updated not set"
    assert abs((created - now).total_seconds()) < 600, f"created {created} far from now {now}"
    assert abs((updated - now).total_seconds()) < 600, f"updated {updated} far from now {now}"
    assert updated >= created


def assert_rsa_public(key: KeyVaultKey, size: int) -> rsa.RSAPublicKey:
    assert sval(key.key_type) == "RSA-HSM"
    n, e = key.key.n, key.key.e
    assert n is not None and e is not None, "RSA key without n/e"
    assert len(n) * 8 == size, f"len(n)={len(n)} bytes, expected {size // 8}"
    assert b2i(n).bit_length() == size
    assert b2i(e) == 65537
    pub = rsa.RSAPublicNumbers(b2i(e), b2i(n)).public_key()
    assert pub.key_size == size
    for f in ("d", "p", "q", "dp", "dq", "qi", "k", "x", "y", "crv"):
        assert getattr(key.key, f) is None, f"RSA key has field {f}"
    return pub


def assert_ec_public(key: KeyVaultKey, crv: str) -> ec.EllipticCurvePublicKey:
    assert sval(key.key_type) == "EC-HSM"
    curve, size = CURVES[crv]
    assert sval(key.key.crv) == crv
    x, y = key.key.x, key.key.y
    assert x is not None and y is not None, "EC key without x/y"
    assert len(x) == size and len(y) == size, f"len(x)={len(x)} len(y)={len(y)} expected {size}"
    # raises ValueError if the point is not on the curve
    pub = ec.EllipticCurvePublicNumbers(b2i(x), b2i(y), curve).public_key()
    assert pub.curve.name == curve.name
    for f in ("d", "n", "e", "k", "p", "q"):
        assert getattr(key.key, f) is None, f"EC key has field {f}"
    return pub


def assert_oct(key: KeyVaultKey) -> None:
    assert sval(key.key_type) == "oct-HSM"
    for f in ("k", "d", "n", "e", "x", "y"):
        assert getattr(key.key, f) is None, f"oct key has field {f}"


def assert_error(resp, status: int, code: Optional[str] = "BadParameter") -> Dict[str, Any]:
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {resp.text[:500]!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"].strip(), body
    if code is not None:
        assert err["code"] == code, body
    return err


def assert_sdk_400(exc_info) -> None:
    err = exc_info.value
    assert err.status_code == 400, f"status {err.status_code}: {err}"
    assert err.error is not None and err.error.code == "BadParameter", f"error={err.error!r} {err}"


def assert_absent(key_client: KeyClient, name: str) -> None:
    with pytest.raises(ResourceNotFoundError) as ei:
        key_client.get_key(name)
    assert ei.value.status_code == 404
    assert ei.value.error is not None and ei.value.error.code == "KeyNotFound", ei.value.error


def all_key_names(key_client: KeyClient) -> Set[str]:
    return {p.name for p in key_client.list_properties_of_keys(max_page_size=25)}


# --------------------------------------------------------------------------------------------
# Create
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,hsm",
    [(2048, False), (2048, True), (3072, False), (3072, True), (4096, True)],
    ids=["2048", "2048-hsm", "3072", "3072-hsm", "4096-hsm"],
)
def test_create_rsa(key_client, service, unique_name, size, hsm):
    name = unique_name("rsa")
    cap = Captured()
    key = key_client.create_rsa_key(name, size=size, hardware_protected=hsm, raw_response_hook=cap)
    assert_key_basics(key, name, service)
    assert_rsa_public(key, size)
    assert ops(key.key_operations) == RSA_DEFAULT_OPS
    assert key.properties.enabled is True
    assert key.properties.not_before is None and key.properties.expires_on is None
    assert_no_private_fields(cap.last)

    got = key_client.get_key(name)
    assert got.id == key.id
    assert got.key.n == key.key.n and got.key.e == key.key.e
    assert ops(got.key_operations) == RSA_DEFAULT_OPS


@pytest.mark.parametrize("hsm", [False, True], ids=["soft", "hsm"])
@pytest.mark.parametrize("crv", list(CURVES))
def test_create_ec(key_client, service, unique_name, crv, hsm):
    name = unique_name("ec")
    cap = Captured()
    if crv not in TOKEN_CURVES:
        assert_the_token_lacks(
            crv, key_client, name, lambda: key_client.create_ec_key(name, curve=crv, hardware_protected=hsm)
        )
        return
    key = key_client.create_ec_key(name, curve=crv, hardware_protected=hsm, raw_response_hook=cap)
    assert_key_basics(key, name, service)
    assert_ec_public(key, crv)
    assert ops(key.key_operations) == EC_DEFAULT_OPS
    assert key.properties.enabled is True
    assert_no_private_fields(cap.last)

    got = key_client.get_key(name, key.properties.version)
    assert (got.key.x, got.key.y, sval(got.key.crv)) == (key.key.x, key.key.y, crv)


@pytest.mark.parametrize("hsm", [False, True], ids=["soft", "hsm"])
@pytest.mark.parametrize("size", [128, 192, 256])
def test_create_oct(key_client, service, unique_name, size, hsm):
    name = unique_name("oct")
    cap = Captured()
    key = key_client.create_oct_key(name, size=size, hardware_protected=hsm, raw_response_hook=cap)
    assert_key_basics(key, name, service)
    assert_oct(key)
    assert ops(key.key_operations) == OCT_DEFAULT_OPS
    assert_no_private_fields(cap.last)

    cap2 = Captured()
    got = key_client.get_key(name, raw_response_hook=cap2)
    assert got.id == key.id
    assert_oct(got)
    assert_no_private_fields(cap2.last)


@pytest.mark.parametrize("kind", ["rsa", "ec", "oct"])
def test_create_with_attributes_round_trip(key_client, service, unique_name, kind):
    name = unique_name(f"attr-{kind}")
    nbf = utc_now() - timedelta(hours=1)
    exp = utc_now() + timedelta(days=30)
    tags = {"env": "test", "owner": "interop", "empty": ""}
    common = dict(enabled=False, tags=tags, not_before=nbf, expires_on=exp)
    if kind == "rsa":
        wanted = {"sign", "verify"}
        key = key_client.create_rsa_key(name, size=2048, key_operations=sorted(wanted), **common)
        assert_rsa_public(key, 2048)
    elif kind == "ec":
        wanted = {"verify"}
        key = key_client.create_ec_key(name, curve="P-384", key_operations=sorted(wanted), **common)
        assert_ec_public(key, "P-384")
    else:
        wanted = {"wrapKey", "unwrapKey"}
        key = key_client.create_oct_key(name, size=256, key_operations=sorted(wanted), **common)
        assert_oct(key)
    assert_key_basics(key, name, service)

    for k in (key, key_client.get_key(name), key_client.get_key(name, key.properties.version)):
        assert ops(k.key_operations) == wanted
        assert k.properties.tags == tags
        assert k.properties.enabled is False
        assert k.properties.not_before == nbf
        assert k.properties.expires_on == exp


def test_create_generic_create_key(key_client, service, unique_name):
    """KeyClient.create_key with an explicit kty string, as other SDK users call it."""
    name = unique_name("gen")
    key = key_client.create_key(name, "RSA-HSM", size=2048, tags={"via": "create_key"})
    assert_rsa_public(key, 2048)
    assert key.properties.tags == {"via": "create_key"}
    name2 = unique_name("gen")
    key2 = key_client.create_key(name2, "EC", curve="P-256")
    assert_ec_public(key2, "P-256")


def test_create_on_existing_name_makes_new_version(key_client, unique_name):
    name = unique_name("again")
    k1 = key_client.create_ec_key(name, curve="P-256", tags={"n": "1"})
    k2 = key_client.create_ec_key(name, curve="P-256", tags={"n": "2"})
    assert k1.properties.version != k2.properties.version
    assert (k1.key.x, k1.key.y) != (k2.key.x, k2.key.y)
    latest = key_client.get_key(name)
    assert latest.properties.version == k2.properties.version
    assert latest.properties.tags == {"n": "2"}
    old = key_client.get_key(name, k1.properties.version)
    assert (old.key.x, old.key.y) == (k1.key.x, k1.key.y)
    assert old.properties.tags == {"n": "1"}


@pytest.mark.parametrize(
    "kind,key_ops",
    [("ec", ["encrypt"]), ("ec", ["sign", "wrapKey"]), ("ec", ["decrypt", "verify"])],
    ids=["ec-encrypt", "ec-wrapKey", "ec-decrypt"],
)
def test_create_with_unfitting_key_ops_rejected(key_client, unique_name, kind, key_ops):
    name = unique_name("badops")
    with pytest.raises(HttpResponseError) as ei:
        key_client.create_ec_key(name, curve="P-256", key_operations=key_ops)
    assert_sdk_400(ei)
    assert_absent(key_client, name)


def test_create_invalid_name_via_sdk_rejected(key_client):
    with pytest.raises(HttpResponseError) as ei:
        key_client.create_ec_key("bad_name!", curve="P-256")
    assert_sdk_400(ei)


# --------------------------------------------------------------------------------------------
# Raw JSON of GET responses: public material only
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "oct"])
def test_get_raw_json_has_only_public_material(key_client, raw, service, unique_name, kind):
    name = unique_name(f"raw-{kind}")
    if kind == "rsa":
        key = key_client.create_rsa_key(name, size=2048)
        expected_fields = {"n", "e"}
        kty = "RSA-HSM"
    elif kind == "ec":
        key = key_client.create_ec_key(name, curve="P-256")
        expected_fields = {"crv", "x", "y"}
        kty = "EC-HSM"
    else:
        key = key_client.create_oct_key(name, size=256)
        expected_fields = set()
        kty = "oct-HSM"
    version = key.properties.version

    for path in (f"/keys/{name}/", f"/keys/{name}", f"/keys/{name}/{version}"):
        resp = raw.get(path)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:300]}"
        body = resp.json()
        assert_no_private_fields(body)
        jwk = body["key"]
        assert jwk["kid"] == f"{service.url}/keys/{name}/{version}"
        assert jwk["kty"] == kty
        assert expected_fields <= set(jwk), f"missing public fields in {jwk}"
        if kind == "rsa":
            assert b2i(b64u_decode(jwk["n"])) == b2i(key.key.n)
        attrs = body["attributes"]
        assert attrs["enabled"] is True
        assert isinstance(attrs["created"], int) and isinstance(attrs["updated"], int), attrs


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default-ops", "explicit-ops-hsm"])
def test_import_rsa(key_client, raw, service, unique_name, variant):
    name = unique_name("imp-rsa")
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = priv.public_key().public_numbers()
    cap = Captured()
    if variant == "default-ops":
        key = key_client.import_key(name, rsa_jwk(priv), tags={"src": "import"}, raw_response_hook=cap)
        expected_ops = RSA_DEFAULT_OPS
    else:
        key = key_client.import_key(
            name, rsa_jwk(priv, key_ops=["sign", "verify"]), hardware_protected=True, raw_response_hook=cap
        )
        expected_ops = {"sign", "verify"}
    assert_key_basics(key, name, service)
    assert_rsa_public(key, 2048)
    assert b2i(key.key.n) == pub.n and b2i(key.key.e) == pub.e
    assert ops(key.key_operations) == expected_ops
    if variant == "default-ops":
        assert key.properties.tags == {"src": "import"}
    assert_no_private_fields(cap.last)

    got = key_client.get_key(name)
    assert b2i(got.key.n) == pub.n
    resp = raw.get(f"/keys/{name}/{key.properties.version}")
    assert resp.status_code == 200
    assert_no_private_fields(resp.json())


@pytest.mark.parametrize("crv", list(CURVES))
def test_import_ec(key_client, raw, service, unique_name, crv):
    name = unique_name("imp-ec")
    priv = ec.generate_private_key(CURVES[crv][0])
    pub = priv.public_key().public_numbers()
    if crv not in TOKEN_CURVES:
        assert_the_token_lacks(crv, key_client, name, lambda: key_client.import_key(name, ec_jwk(priv, crv)))
        return
    cap = Captured()
    key = key_client.import_key(name, ec_jwk(priv, crv), raw_response_hook=cap)
    assert_key_basics(key, name, service)
    assert_ec_public(key, crv)
    assert (b2i(key.key.x), b2i(key.key.y)) == (pub.x, pub.y)
    assert ops(key.key_operations) == EC_DEFAULT_OPS
    assert_no_private_fields(cap.last)

    got = key_client.get_key(name, key.properties.version)
    assert (b2i(got.key.x), b2i(got.key.y)) == (pub.x, pub.y)
    resp = raw.get(f"/keys/{name}/")
    assert resp.status_code == 200
    body = resp.json()
    assert_no_private_fields(body)
    assert body["key"]["crv"] == crv


@pytest.mark.parametrize("nbytes", [16, 24, 32])
def test_import_oct(key_client, raw, service, unique_name, nbytes):
    name = unique_name("imp-oct")
    cap = Captured()
    key = key_client.import_key(
        name, JsonWebKey(kty="oct", k=os.urandom(nbytes)), hardware_protected=True, raw_response_hook=cap
    )
    assert_key_basics(key, name, service)
    assert_oct(key)
    assert ops(key.key_operations) == OCT_DEFAULT_OPS
    assert_no_private_fields(cap.last)
    resp = raw.get(f"/keys/{name}/")
    assert resp.status_code == 200
    assert_no_private_fields(resp.json())
    assert resp.json()["key"]["kty"] == "oct-HSM"


def test_import_onto_existing_name_makes_new_version(key_client, unique_name):
    name = unique_name("imp-again")
    created = key_client.create_ec_key(name, curve="P-256")
    priv = ec.generate_private_key(ec.SECP256R1())
    imported = key_client.import_key(name, ec_jwk(priv, "P-256"))
    assert imported.properties.version != created.properties.version
    latest = key_client.get_key(name)
    assert latest.properties.version == imported.properties.version
    assert b2i(latest.key.x) == priv.public_key().public_numbers().x
    old = key_client.get_key(name, created.properties.version)
    assert old.key.x == created.key.x


def test_import_inconsistent_rsa_rejected(key_client, unique_name):
    name = unique_name("imp-bad-rsa")
    a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = rsa_jwk(b)
    jwk.n = i2b(a.public_key().public_numbers().n)  # n from A, everything else from B
    with pytest.raises(HttpResponseError) as ei:
        key_client.import_key(name, jwk)
    assert_sdk_400(ei)
    assert_absent(key_client, name)


def test_import_inconsistent_ec_rejected(key_client, unique_name):
    name = unique_name("imp-bad-ec")
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    jwk = ec_jwk(a, "P-256")
    jwk.d = i2b(b.private_numbers().private_value, 32)  # d does not match x,y
    with pytest.raises(HttpResponseError) as ei:
        key_client.import_key(name, jwk)
    assert_sdk_400(ei)
    assert_absent(key_client, name)


def test_import_ec_point_not_on_curve_rejected(key_client, unique_name):
    name = unique_name("imp-bad-pt")
    a = ec.generate_private_key(ec.SECP256R1())
    jwk = ec_jwk(a, "P-256")
    jwk.y = i2b((b2i(jwk.y) + 1) % (2**256), 32)
    with pytest.raises(HttpResponseError) as ei:
        key_client.import_key(name, jwk)
    assert_sdk_400(ei)
    assert_absent(key_client, name)


@pytest.mark.parametrize(
    "case",
    ["no-key", "rsa-public-only", "ec-p192", "ec-wrong-length", "oct-5-bytes", "unknown-kty"],
)
def test_import_bad_input_raw(raw, key_client, unique_name, case):
    name = unique_name("imp-raw")

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    priv = ec.generate_private_key(ec.SECP256R1())
    pn = priv.private_numbers()
    rpub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    bodies = {
        "no-key": {"tags": {"a": "b"}},
        "rsa-public-only": {"key": {"kty": "RSA", "n": enc(i2b(rpub.n)), "e": enc(i2b(rpub.e))}},
        "ec-p192": {
            "key": {
                "kty": "EC",
                "crv": "P-192",
                "x": enc(i2b(pn.public_numbers.x, 32)),
                "y": enc(i2b(pn.public_numbers.y, 32)),
                "d": enc(i2b(pn.private_value, 32)),
            }
        },
        "ec-wrong-length": {
            "key": {
                "kty": "EC",
                "crv": "P-384",
                "x": enc(i2b(pn.public_numbers.x, 32)),
                "y": enc(i2b(pn.public_numbers.y, 32)),
                "d": enc(i2b(pn.private_value, 32)),
            }
        },
        "oct-5-bytes": {"key": {"kty": "oct", "k": enc(b"12345")}},
        "unknown-kty": {"key": {"kty": "DSA", "k": enc(os.urandom(32))}},
    }
    resp = raw.put(f"/keys/{name}", json=bodies[case])
    assert_error(resp, 400)
    assert_absent(key_client, name)


# --------------------------------------------------------------------------------------------
# Get
# --------------------------------------------------------------------------------------------


def test_get_latest_and_by_version(key_client, unique_name):
    name = unique_name("get")
    v1 = key_client.create_rsa_key(name, size=2048)
    v2 = key_client.create_rsa_key(name, size=2048)
    assert v1.properties.version != v2.properties.version
    assert v1.key.n != v2.key.n

    latest = key_client.get_key(name)
    assert latest.properties.version == v2.properties.version
    assert latest.key.n == v2.key.n

    first = key_client.get_key(name, v1.properties.version)
    assert first.id == v1.id
    assert first.key.n == v1.key.n
    second = key_client.get_key(name, v2.properties.version)
    assert second.key.n == v2.key.n


def test_get_missing_name(key_client, unique_name):
    name = unique_name("missing")
    with pytest.raises(ResourceNotFoundError) as ei:
        key_client.get_key(name)
    assert ei.value.status_code == 404
    assert ei.value.error.code == "KeyNotFound"
    assert ei.value.error.message


def test_get_missing_version(key_client, unique_name):
    name = unique_name("missver")
    key = key_client.create_ec_key(name, curve="P-256")
    other = "0" * 32 if key.properties.version != "0" * 32 else "f" * 32
    with pytest.raises(ResourceNotFoundError) as ei:
        key_client.get_key(name, other)
    assert ei.value.status_code == 404
    # a version of another key must not be reachable under this name
    name2 = unique_name("missver")
    key2 = key_client.create_ec_key(name2, curve="P-256")
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name, key2.properties.version)


def test_get_missing_raw_error_body(raw, unique_name):
    resp = raw.get(f"/keys/{unique_name('missing')}/")
    assert_error(resp, 404, "KeyNotFound")


# --------------------------------------------------------------------------------------------
# List
# --------------------------------------------------------------------------------------------


def test_list_keys_paged(key_client, service, unique_name):
    names = [unique_name("list") for _ in range(5)]
    for i, n in enumerate(names):
        key_client.create_ec_key(n, curve="P-256", tags={"idx": str(i)}, enabled=(i % 2 == 0))

    pages = list(key_client.list_properties_of_keys(max_page_size=2).by_page())
    page_items = [list(p) for p in pages]
    assert len(page_items) > 1, "expected several pages with max_page_size=2"
    assert all(len(p) <= 2 for p in page_items), [len(p) for p in page_items]
    items = [item for p in page_items for item in p]
    seen = [i.name for i in items]
    assert len(seen) == len(set(seen)), f"duplicate names across pages: {seen}"
    by_name = {i.name: i for i in items}
    for i, n in enumerate(names):
        assert n in by_name, f"{n} not listed"
        props = by_name[n]
        assert props.id == f"{service.url}/keys/{n}", props.id
        assert props.version is None
        assert props.tags == {"idx": str(i)}
        assert props.enabled is (i % 2 == 0)
        assert props.created_on is not None


def test_list_key_versions_paged(key_client, service, unique_name):
    name = unique_name("vers")
    created = [key_client.create_ec_key(name, curve="P-256").properties.version for _ in range(3)]
    assert len(set(created)) == 3

    pages = [list(p) for p in key_client.list_properties_of_key_versions(name, max_page_size=1).by_page()]
    assert len(pages) >= 3, f"expected >=3 pages with max_page_size=1, got {len(pages)}"
    assert all(len(p) <= 1 for p in pages)
    versions = [i.version for p in pages for i in p]
    assert len(versions) == len(set(versions)), versions
    assert set(versions) == set(created)
    for p in pages:
        for i in p:
            assert i.name == name
            assert i.id == f"{service.url}/keys/{name}/{i.version}"


def test_list_next_link_is_absolute(raw, key_client, service, unique_name):
    for _ in range(2):
        key_client.create_ec_key(unique_name("nl"), curve="P-256")
    resp = raw.get("/keys", params={"maxresults": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["value"]) == 1
    link = body.get("nextLink")
    assert isinstance(link, str) and link.startswith(f"{service.url}/keys"), link
    nxt = raw.get(link, api_version=None)
    assert nxt.status_code == 200, nxt.text
    second = nxt.json()["value"]
    assert len(second) == 1 and second[0]["kid"] != body["value"][0]["kid"]


# --------------------------------------------------------------------------------------------
# Update
# --------------------------------------------------------------------------------------------


def test_update_enabled_toggle_keeps_other_fields(key_client, unique_name):
    name = unique_name("upd-en")
    key = key_client.create_rsa_key(name, size=2048, tags={"keep": "me"}, key_operations=["sign", "verify"])
    upd = key_client.update_key_properties(name, enabled=False)
    assert upd.properties.enabled is False
    assert upd.properties.version == key.properties.version
    assert upd.properties.tags == {"keep": "me"}
    assert ops(upd.key_operations) == {"sign", "verify"}
    assert upd.key.n == key.key.n
    assert upd.properties.updated_on >= key.properties.updated_on
    assert upd.properties.created_on == key.properties.created_on
    assert key_client.get_key(name).properties.enabled is False

    upd2 = key_client.update_key_properties(name, enabled=True)
    assert upd2.properties.enabled is True
    got = key_client.get_key(name)
    assert got.properties.enabled is True
    assert got.properties.tags == {"keep": "me"}


def test_update_tags_replace(key_client, unique_name):
    name = unique_name("upd-tags")
    key_client.create_ec_key(name, curve="P-256", tags={"a": "1", "b": "2"})
    upd = key_client.update_key_properties(name, tags={"c": "3"})
    assert upd.properties.tags == {"c": "3"}
    assert key_client.get_key(name).properties.tags == {"c": "3"}


def test_update_key_ops_narrowing(key_client, unique_name):
    name = unique_name("upd-ops")
    key = key_client.create_rsa_key(name, size=2048)
    assert ops(key.key_operations) == RSA_DEFAULT_OPS
    upd = key_client.update_key_properties(name, key_operations=["sign", "verify"])
    assert ops(upd.key_operations) == {"sign", "verify"}
    got = key_client.get_key(name)
    assert ops(got.key_operations) == {"sign", "verify"}
    assert got.key.n == key.key.n


def test_update_dates(key_client, unique_name):
    name = unique_name("upd-dates")
    key_client.create_oct_key(name, size=256)
    nbf = utc_now() - timedelta(days=1)
    exp = utc_now() + timedelta(days=365)
    upd = key_client.update_key_properties(name, not_before=nbf, expires_on=exp)
    assert upd.properties.not_before == nbf
    assert upd.properties.expires_on == exp
    got = key_client.get_key(name)
    assert got.properties.not_before == nbf
    assert got.properties.expires_on == exp

    exp2 = exp + timedelta(days=10)
    key_client.update_key_properties(name, expires_on=exp2)
    got2 = key_client.get_key(name)
    assert got2.properties.expires_on == exp2
    assert got2.properties.not_before == nbf


def test_update_specific_version_leaves_latest(key_client, unique_name):
    name = unique_name("upd-ver")
    v1 = key_client.create_ec_key(name, curve="P-256", tags={"v": "1"})
    v2 = key_client.create_ec_key(name, curve="P-256", tags={"v": "2"})
    upd = key_client.update_key_properties(name, v1.properties.version, enabled=False, tags={"v": "1x"})
    assert upd.properties.version == v1.properties.version
    assert upd.properties.enabled is False
    old = key_client.get_key(name, v1.properties.version)
    assert old.properties.enabled is False and old.properties.tags == {"v": "1x"}
    latest = key_client.get_key(name)
    assert latest.properties.version == v2.properties.version
    assert latest.properties.enabled is True and latest.properties.tags == {"v": "2"}


@pytest.mark.parametrize("key_ops", [["encrypt"], ["sign", "unwrapKey"]], ids=["encrypt", "unwrapKey"])
def test_update_unfitting_key_ops_rejected(key_client, unique_name, key_ops):
    name = unique_name("upd-bad")
    key_client.create_ec_key(name, curve="P-256")
    with pytest.raises(HttpResponseError) as ei:
        key_client.update_key_properties(name, key_operations=key_ops)
    assert_sdk_400(ei)
    got = key_client.get_key(name)
    assert ops(got.key_operations) == EC_DEFAULT_OPS


def test_update_missing_key(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError) as ei:
        key_client.update_key_properties(unique_name("upd-missing"), enabled=False)
    assert ei.value.status_code == 404


# --------------------------------------------------------------------------------------------
# Rotate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "oct"])
def test_rotate(key_client, service, unique_name, kind):
    name = unique_name(f"rot-{kind}")
    tags = {"rot": kind}
    if kind == "rsa":
        wanted = {"sign", "verify", "encrypt"}
        old = key_client.create_rsa_key(name, size=3072, key_operations=sorted(wanted), tags=tags)
    elif kind == "ec":
        wanted = {"sign", "verify"}
        old = key_client.create_ec_key(name, curve="P-384", key_operations=sorted(wanted), tags=tags)
    else:
        wanted = {"wrapKey", "unwrapKey"}
        old = key_client.create_oct_key(name, size=192, key_operations=sorted(wanted), tags=tags)

    new = key_client.rotate_key(name)
    assert_key_basics(new, name, service)
    assert new.properties.version != old.properties.version
    assert sval(new.key_type) == sval(old.key_type)
    assert ops(new.key_operations) == wanted
    assert new.properties.tags == tags
    if kind == "rsa":
        assert_rsa_public(new, 3072)
        assert new.key.n != old.key.n
    elif kind == "ec":
        assert_ec_public(new, "P-384")
        assert (new.key.x, new.key.y) != (old.key.x, old.key.y)
    else:
        assert_oct(new)

    latest = key_client.get_key(name)
    assert latest.properties.version == new.properties.version
    prev = key_client.get_key(name, old.properties.version)
    assert prev.id == old.id
    if kind == "rsa":
        assert prev.key.n == old.key.n
    elif kind == "ec":
        assert (prev.key.x, prev.key.y) == (old.key.x, old.key.y)

    versions = {p.version for p in key_client.list_properties_of_key_versions(name)}
    assert versions == {old.properties.version, new.properties.version}


def test_rotate_missing_key(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError) as ei:
        key_client.rotate_key(unique_name("rot-missing"))
    assert ei.value.status_code == 404


# --------------------------------------------------------------------------------------------
# Bad input (raw HTTP)
# --------------------------------------------------------------------------------------------

BAD_CREATE_CASES = {
    "invalid-name": dict(name="bad_name!", json={"kty": "RSA", "key_size": 2048}),
    "unknown-kty": dict(json={"kty": "DSA"}),
    "rsa-1024": dict(json={"kty": "RSA", "key_size": 1024}),
    "rsa-hsm-1024": dict(json={"kty": "RSA-HSM", "key_size": 1024}),
    "oct-100": dict(json={"kty": "oct-HSM", "key_size": 100}),
    "ec-p192": dict(json={"kty": "EC", "crv": "P-192"}),
    "malformed-json": dict(data=b'{"kty": "RSA",', headers={"Content-Type": "application/json"}),
    "json-not-object": dict(data=b"[]", headers={"Content-Type": "application/json"}),
    "empty-body": dict(data=b"", headers={"Content-Type": "application/json"}),
    "missing-kty": dict(json={"key_size": 2048}),
    "key-size-string": dict(json={"kty": "RSA", "key_size": "big"}),
    "ec-encrypt-op": dict(json={"kty": "EC", "crv": "P-256", "key_ops": ["encrypt"]}),
    "unknown-api-version": dict(json={"kty": "EC", "crv": "P-256"}, api_version="1999-01-01"),
}


@pytest.mark.parametrize("case", list(BAD_CREATE_CASES))
def test_bad_create_request(raw, key_client, unique_name, case):
    spec = dict(BAD_CREATE_CASES[case])
    name = spec.pop("name", None) or unique_name("bad")
    resp = raw.post(f"/keys/{name}/create", **spec)
    assert_error(resp, 400)
    if case == "invalid-name":
        after = raw.get(f"/keys/{name}/")
        assert after.status_code in (400, 404), after.text
        assert name not in all_key_names(key_client)
    else:
        assert_absent(key_client, name)


def test_unknown_api_version_on_get(raw, key_client, unique_name):
    name = unique_name("apiver")
    key_client.create_ec_key(name, curve="P-256")
    resp = raw.get(f"/keys/{name}/", api_version="1999-01-01")
    assert_error(resp, 400)
    assert raw.get(f"/keys/{name}/").status_code == 200


@pytest.mark.parametrize("maxresults", [0, 26])
@pytest.mark.parametrize("which", ["keys", "versions"])
def test_bad_maxresults(raw, key_client, unique_name, maxresults, which):
    name = unique_name("maxres")
    key_client.create_ec_key(name, curve="P-256")
    path = "/keys" if which == "keys" else f"/keys/{name}/versions"
    resp = raw.get(path, params={"maxresults": maxresults})
    assert_error(resp, 400)
    ok = raw.get(path, params={"maxresults": 25})
    assert ok.status_code == 200, ok.text


def test_oversize_body_rejected(raw, key_client, unique_name):
    """A 2 MiB body gets 413 with an error JSON body and creates nothing.

    The service answers once it has read about its limit and closes the connection with the rest
    of the body unread, so the client can see a reset instead of the 413 (a known, reported
    service issue). To check the 413 itself, up to three attempts are made, each on a fresh
    connection; at least one must return the 413.
    """
    name = unique_name("big")
    body = json.dumps({"kty": "EC", "crv": "P-256", "tags": {"big": "x" * (2 * 1024 * 1024)}}).encode()
    resets = []
    resp = None
    for _ in range(3):
        try:
            resp = raw.post(f"/keys/{name}/create", data=body, headers={"Content-Type": "application/json"})
            break
        except requests.ConnectionError as exc:
            resets.append(repr(exc)[:200])
    assert resp is not None, f"no response in 3 attempts, only connection errors: {resets}"
    assert_error(resp, 413, code=None)
    assert_absent(key_client, name)


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------


def _check_challenge(resp) -> str:
    assert resp.status_code == 401, f"{resp.status_code} {resp.text[:300]}"
    header = resp.headers.get("WWW-Authenticate")
    assert header, f"no WWW-Authenticate header: {dict(resp.headers)}"
    assert header.startswith("Bearer"), header
    assert 'authorization="' in header, header
    assert 'resource="' in header, header
    return header


def test_unauthenticated_get_is_challenged(raw, service):
    header = _check_challenge(raw.get("/keys", auth=False))
    # the header must be acceptable to the SDK's own challenge parser
    from azure.keyvault.keys._shared.http_challenge import HttpChallenge

    challenge = HttpChallenge(f"{service.url}/keys", header)
    assert challenge.get_authorization_server()
    assert challenge.get_resource()


def test_unauthenticated_post_with_body_creates_nothing(raw, key_client, unique_name):
    name = unique_name("noauth")
    _check_challenge(raw.post(f"/keys/{name}/create", auth=False, json={"kty": "EC", "crv": "P-256"}))
    # auth is checked before the body is parsed: malformed JSON still gets the challenge
    _check_challenge(
        raw.post(
            f"/keys/{name}/create",
            auth=False,
            data=b'{"kty": ',
            headers={"Content-Type": "application/json"},
        )
    )
    # the SDK's first, body-less probe (Content-Length: 0)
    _check_challenge(raw.post(f"/keys/{name}/create", auth=False, data=b""))
    _check_challenge(raw.put(f"/keys/{name}", auth=False, json={"key": {"kty": "oct", "k": "AAAA"}}))
    assert_absent(key_client, name)


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-token", "Bearer ", "Basic dXNlcjpwYXNz", "bearer-token-without-scheme"],
    ids=["wrong", "empty", "basic", "no-scheme"],
)
def test_bad_authorization_header_raw(raw, unique_name, header):
    resp = raw.get("/keys", auth=False, headers={"Authorization": header})
    assert resp.status_code == 401, f"{resp.status_code} {resp.text[:300]}"


def test_wrong_token_sdk(client_factory, key_client, unique_name):
    name = unique_name("wrongtok")
    key_client.create_ec_key(name, curve="P-256")
    bad = client_factory("definitely-not-the-token")
    with pytest.raises(ClientAuthenticationError) as ei:
        bad.get_key(name)
    assert ei.value.status_code == 401

    with pytest.raises(ClientAuthenticationError) as ei:
        list(bad.list_properties_of_keys())
    assert ei.value.status_code == 401
    with pytest.raises(ClientAuthenticationError):
        bad.list_properties_of_key_versions(name).next()
    # the right token still works afterwards
    assert key_client.get_key(name).name == name


def test_sdk_credential_receives_challenge_scope(service, unique_name):
    """A fresh KeyClient obtains a token for the scope derived from the challenge."""
    from conftest import StaticTokenCredential

    cred = StaticTokenCredential(service.token)
    client = KeyClient(service.url, cred, verify_challenge_resource=False, connection_verify=service.ca)
    name = unique_name("scope")
    client.create_ec_key(name, curve="P-256")
    assert cred.calls, "credential never asked for a token"
    scopes = cred.calls[0]["scopes"]
    assert len(scopes) == 1 and scopes[0].endswith("/.default"), scopes


# --------------------------------------------------------------------------------------------
# Connection handling after early responses
#
# The service answers 401 (and other early rejections) without validating the request body. That
# is what the SDK needs, but the body must still be consumed (drained, bounded): if the service
# closes the connection with the body unread, clients see a reset instead of the response, both
# while still sending and when reusing a kept-alive connection. `Connection: close` alone does not
# help with the former (checked against a stand-in server).
# --------------------------------------------------------------------------------------------

PADDED_BODY = json.dumps({"kty": "EC", "crv": "P-256", "tags": {"pad": "z" * 20000}}).encode()


def test_connection_reusable_after_early_401(raw, service, unique_name):
    """A kept-alive connection must stay usable after a 401 on a request with a body."""
    name = unique_name("keepalive")
    for i in range(10):
        try:
            r1 = raw.post(
                f"/keys/{name}/create",
                auth=False,
                fresh=False,
                data=PADDED_BODY,
                headers={"Content-Type": "application/json"},
            )
            assert r1.status_code == 401, r1.text[:200]
            r2 = raw.get("/keys", fresh=False, params={"maxresults": 1})
        except requests.ConnectionError as exc:
            pytest.fail(
                f"round {i}: connection error around a 401 on a request with a body ({exc!r}). "
                f"The service answers without reading the body and then closes the connection, "
                f"so the client gets a reset (while sending, or when reusing the kept-alive "
                f"connection) instead of the 401. Drain the body (bounded) before answering."
            )
        assert r2.status_code == 200, r2.text[:200]


def test_wrong_token_sdk_request_with_body(client_factory, key_client, unique_name):
    """The official SDK with a wrong token on a request with a body gets ClientAuthenticationError
    (the challenge flow re-sends the body after the 401), not a connection error."""
    bad = client_factory("definitely-not-the-token")
    name = unique_name("wrongtok-body")
    outcomes = []
    for _ in range(5):
        try:
            bad.create_ec_key(name, curve="P-256", tags={"pad": "z" * 20000})
            outcomes.append("created")
        except ClientAuthenticationError as exc:
            outcomes.append(exc.status_code)
        except Exception as exc:  # noqa: BLE001 - the point is to report what it was
            outcomes.append(f"{type(exc).__name__}: {str(exc)[:120]}")
    assert outcomes == [401] * 5, outcomes
    assert_absent(key_client, name)
