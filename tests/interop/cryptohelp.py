"""Helpers shared by the key-operation interop tests: JWK building from ``cryptography`` keys,
base64url, and raw key-operation calls."""

from __future__ import annotations

import base64
from typing import Any, Dict, Optional

import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import RawApi

CURVES = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
    "P-256K": (ec.SECP256K1(), 32),
}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_bytes(value: int, length: Optional[int] = None) -> bytes:
    length = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def rsa_jwk(key: rsa.RSAPrivateKey) -> Dict[str, str]:
    n = key.private_numbers()
    pub = n.public_numbers
    return {
        "kty": "RSA",
        "n": b64u(int_bytes(pub.n)),
        "e": b64u(int_bytes(pub.e)),
        "d": b64u(int_bytes(n.d)),
        "p": b64u(int_bytes(n.p)),
        "q": b64u(int_bytes(n.q)),
        "dp": b64u(int_bytes(n.dmp1)),
        "dq": b64u(int_bytes(n.dmq1)),
        "qi": b64u(int_bytes(n.iqmp)),
    }


def ec_jwk(key: ec.EllipticCurvePrivateKey, crv: str) -> Dict[str, str]:
    size = CURVES[crv][1]
    n = key.private_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64u(int_bytes(n.public_numbers.x, size)),
        "y": b64u(int_bytes(n.public_numbers.y, size)),
        "d": b64u(int_bytes(n.private_value, size)),
    }


def import_jwk(raw: RawApi, name: str, jwk: Dict[str, Any]) -> Dict[str, Any]:
    resp = raw.put(f"/keys/{name}", json={"key": jwk}, fresh=False)
    assert resp.status_code == 200, resp.text
    return resp.json()


def operate(
    raw: RawApi, name: str, operation: str, body: Dict[str, Any], version: str = ""
) -> requests.Response:
    """POST a key operation; an empty version is the ``/keys/{name}//{op}`` form."""
    return raw.post(f"/keys/{name}/{version}/{operation}", json=body, fresh=False)


def operate_ok(raw: RawApi, name: str, operation: str, body: Dict[str, Any]) -> Dict[str, Any]:
    resp = operate(raw, name, operation, body)
    assert resp.status_code == 200, f"{operation} {body.get('alg')}: {resp.status_code} {resp.text}"
    return resp.json()


def der_to_raw(der: bytes, size: int) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return int_bytes(r, size) + int_bytes(s, size)


def raw_to_der(sig: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    half = len(sig) // 2
    return encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
