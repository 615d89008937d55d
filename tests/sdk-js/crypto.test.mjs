// Key operations through the released @azure/keyvault-keys CryptographyClient, each checked
// against node:crypto (OpenSSL) where the service signs or encrypts, and node:crypto's
// signatures and ciphertexts given to the service to verify and decrypt.
//
// The SDK itself does RSA encrypt (RSA1_5, RSA-OAEP), wrap and verify locally once it has the
// public key; RSA-OAEP-256, every EC and every oct operation, and all private-key operations
// go to the service. The Rust suite sends every operation to the service.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createHash,
  generateKeyPairSync,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  sign as nodeSign,
  verify as nodeVerify,
} from "node:crypto";

import { cryptoClient, keyClient, publicKeyObject, restError, uniqueName } from "./helpers.mjs";

const HASH = { 256: "sha256", 384: "sha384", 512: "sha512" };
const RFC3394_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");

function fromB64url(s) {
  return new Uint8Array(Buffer.from(s, "base64url"));
}

test("RSA-HSM: the service signs (RS*, PS*), node:crypto verifies", async () => {
  const key = await keyClient.createRsaKey(uniqueName("js-rsa-sign"), { keySize: 2048, hsm: true });
  const pub = publicKeyObject(key.key);
  const client = cryptoClient(key.id);
  const msg = Buffer.from("signed by p11vault, checked by OpenSSL");
  for (const bits of [256, 384, 512]) {
    const digest = createHash(HASH[bits]).update(msg).digest();
    for (const scheme of ["RS", "PS"]) {
      const alg = `${scheme}${bits}`;
      const signed = await client.sign(alg, digest);
      assert.equal(signed.algorithm, alg);
      assert.equal(signed.keyID, key.id);
      const sig = Buffer.from(signed.result);
      assert.equal(sig.length, 256, alg);
      const opts =
        scheme === "PS"
          ? { key: pub, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: bits / 8 }
          : { key: pub, padding: constants.RSA_PKCS1_PADDING };
      assert.equal(nodeVerify(HASH[bits], msg, opts, sig), true, `${alg} does not verify`);
      sig[10] ^= 0x01;
      assert.equal(nodeVerify(HASH[bits], msg, opts, sig), false, `${alg} tampered verifies`);
      // And the SDK's own verify (done locally from the public key, as the SDK does).
      const v = await client.verify(alg, digest, signed.result);
      assert.equal(v.result, true, `SDK verify ${alg}`);
    }
  }
  // signData: the SDK hashes, the service signs.
  const sd = await client.signData("PS256", msg);
  assert.equal(
    nodeVerify("sha256", msg, { key: pub, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, Buffer.from(sd.result)),
    true,
  );
});

test("RSA-HSM: node:crypto encrypts and wraps, the service decrypts and unwraps", async () => {
  const key = await keyClient.createRsaKey(uniqueName("js-rsa-enc"), { keySize: 3072, hsm: true });
  const pub = publicKeyObject(key.key);
  const client = cryptoClient(key.id);
  const plaintext = randomBytes(48);
  const cases = [
    ["RSA1_5", { key: pub, padding: constants.RSA_PKCS1_PADDING }],
    ["RSA-OAEP", { key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" }],
    ["RSA-OAEP-256", { key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }],
  ];
  for (const [alg, opts] of cases) {
    const ciphertext = publicEncrypt(opts, plaintext);
    const dec = await client.decrypt({ algorithm: alg, ciphertext });
    assert.deepEqual(Buffer.from(dec.result), plaintext, `decrypt ${alg}`);
    const unwrapped = await client.unwrapKey(alg, publicEncrypt(opts, plaintext));
    assert.deepEqual(Buffer.from(unwrapped.result), plaintext, `unwrap ${alg}`);
    // The SDK's encrypt and wrap (local for RSA1_5 and RSA-OAEP, the service for RSA-OAEP-256).
    const enc = await client.encrypt({ algorithm: alg, plaintext });
    assert.equal(enc.result.length, 384);
    assert.deepEqual(Buffer.from((await client.decrypt({ algorithm: alg, ciphertext: enc.result })).result), plaintext);
    const wrapped = await client.wrapKey(alg, plaintext);
    assert.deepEqual(Buffer.from((await client.unwrapKey(alg, wrapped.result)).result), plaintext);
  }
  // A ciphertext that does not decrypt is the client's 400.
  const junk = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" }, plaintext);
  const e = await restError(() => client.decrypt({ algorithm: "RSA-OAEP-256", ciphertext: junk }));
  assert.equal(e.statusCode, 400, e.message);
});

test("imported RSA key: the service encrypts (RSA-OAEP-256) and signs, node:crypto decrypts and verifies", async () => {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = privateKey.export({ format: "jwk" });
  const key = await keyClient.importKey(
    uniqueName("js-rsa-import"),
    {
      kty: "RSA-HSM",
      keyOps: ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
      ...Object.fromEntries(["n", "e", "d", "p", "q", "dp", "dq", "qi"].map((m) => [m, fromB64url(jwk[m])])),
    },
    { hardwareProtected: true },
  );
  assert.equal(key.keyType, "RSA-HSM");
  assert.equal(key.key.d, undefined);
  assert.deepEqual(Buffer.from(key.key.n), Buffer.from(jwk.n, "base64url"));
  const client = cryptoClient(key.id);
  const plaintext = randomBytes(32);
  const enc = await client.encrypt({ algorithm: "RSA-OAEP-256", plaintext });
  const dec = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, enc.result);
  assert.deepEqual(dec, plaintext);
  const msg = Buffer.from("imported");
  const sig = await client.sign("RS256", createHash("sha256").update(msg).digest());
  assert.equal(nodeVerify("sha256", msg, publicKey, Buffer.from(sig.result)), true);
});

test("EC-HSM: the service signs (ES256/384/512), node:crypto verifies; the service verifies", async () => {
  for (const [crv, bits] of [["P-256", 256], ["P-384", 384], ["P-521", 512]]) {
    const key = await keyClient.createEcKey(uniqueName("js-ec-sign"), { curve: crv, hsm: true });
    const pub = publicKeyObject(key.key);
    const client = cryptoClient(key.id);
    const alg = `ES${bits}`;
    const msg = randomBytes(100);
    const digest = createHash(HASH[bits]).update(msg).digest();
    const signed = await client.sign(alg, digest);
    const sig = Buffer.from(signed.result);
    assert.equal(sig.length, { 256: 64, 384: 96, 512: 132 }[bits], `${alg} r||s length`);
    const opts = { key: pub, dsaEncoding: "ieee-p1363" };
    assert.equal(nodeVerify(HASH[bits], msg, opts, sig), true, `${alg} does not verify`);
    // The service verifies its own signature and refuses a changed one.
    assert.equal((await client.verify(alg, digest, signed.result)).result, true, `service verify ${alg}`);
    const bad = Buffer.from(sig);
    bad[5] ^= 0x80;
    assert.equal(nodeVerify(HASH[bits], msg, opts, bad), false);
    assert.equal((await client.verify(alg, digest, bad)).result, false, `service verify tampered ${alg}`);
    // ...and a signature node:crypto made with another key.
    const other = generateKeyPairSync("ec", { namedCurve: crv });
    const foreign = nodeSign(HASH[bits], msg, { key: other.privateKey, dsaEncoding: "ieee-p1363" });
    assert.equal((await client.verify(alg, digest, foreign)).result, false);
    // verifyData: the SDK hashes, the service verifies.
    assert.equal((await client.verifyData(alg, msg, signed.result)).result, true);
  }
});

test("EC-HSM: a digest of the wrong length is a 400", async () => {
  const key = await keyClient.createEcKey(uniqueName("js-ec-bad"), { curve: "P-256", hsm: true });
  const e = await restError(() => cryptoClient(key.id).sign("ES256", randomBytes(20)));
  assert.equal(e.statusCode, 400, e.message);
});

test("oct-HSM (generated): AES-GCM encrypt/decrypt and AES-KW wrap/unwrap in the service", async () => {
  const key = await keyClient.createOctKey(uniqueName("js-oct"), { hsm: true, keySize: 256 });
  const client = cryptoClient(key.id);
  const plaintext = randomBytes(77);
  const aad = Buffer.from("header");
  const enc = await client.encrypt({ algorithm: "A256GCM", plaintext, additionalAuthenticatedData: aad });
  assert.equal(enc.iv.length, 12);
  assert.equal(enc.authenticationTag.length, 16);
  assert.equal(enc.result.length, plaintext.length);
  const dec = await client.decrypt({
    algorithm: "A256GCM",
    ciphertext: enc.result,
    iv: enc.iv,
    authenticationTag: enc.authenticationTag,
    additionalAuthenticatedData: aad,
  });
  assert.deepEqual(Buffer.from(dec.result), plaintext);
  const badTag = Buffer.from(enc.authenticationTag);
  badTag[0] ^= 1;
  const e = await restError(() =>
    client.decrypt({ algorithm: "A256GCM", ciphertext: enc.result, iv: enc.iv, authenticationTag: badTag, additionalAuthenticatedData: aad }),
  );
  assert.equal(e.statusCode, 400, e.message);

  const cek = randomBytes(32);
  const wrapped = await client.wrapKey("A256KW", cek);
  assert.equal(wrapped.result.length, 40);
  assert.deepEqual(Buffer.from((await client.unwrapKey("A256KW", wrapped.result)).result), cek);
});

test("imported oct-HSM key: AES-GCM, AES-CBC-PAD and AES-KW checked both ways against node:crypto", async () => {
  const k = randomBytes(32);
  const key = await keyClient.importKey(
    uniqueName("js-oct-import"),
    { kty: "oct-HSM", k: new Uint8Array(k), keyOps: ["encrypt", "decrypt", "wrapKey", "unwrapKey"] },
    { hardwareProtected: true },
  );
  assert.equal(key.keyType, "oct-HSM");
  assert.equal(key.key.k, undefined);
  const client = cryptoClient(key.id);
  const plaintext = randomBytes(50);
  const aad = randomBytes(9);

  // GCM: the service encrypts, node decrypts.
  const enc = await client.encrypt({ algorithm: "A256GCM", plaintext, additionalAuthenticatedData: aad });
  const d = createDecipheriv("aes-256-gcm", k, enc.iv);
  d.setAAD(aad);
  d.setAuthTag(enc.authenticationTag);
  assert.deepEqual(Buffer.concat([d.update(enc.result), d.final()]), plaintext);
  // GCM: node encrypts, the service decrypts.
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", k, iv);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  const dec = await client.decrypt({
    algorithm: "A256GCM", ciphertext: ct, iv, authenticationTag: c.getAuthTag(), additionalAuthenticatedData: aad,
  });
  assert.deepEqual(Buffer.from(dec.result), plaintext);

  // CBC with PKCS#7 padding, both ways.
  const cbcIv = randomBytes(16);
  const cbc = await client.encrypt({ algorithm: "A256CBCPAD", plaintext, iv: cbcIv });
  const dc = createDecipheriv("aes-256-cbc", k, cbcIv);
  assert.deepEqual(Buffer.concat([dc.update(cbc.result), dc.final()]), plaintext);
  const cc = createCipheriv("aes-256-cbc", k, cbcIv);
  const cbcCt = Buffer.concat([cc.update(plaintext), cc.final()]);
  const cbcDec = await client.decrypt({ algorithm: "A256CBCPAD", ciphertext: cbcCt, iv: cbcIv });
  assert.deepEqual(Buffer.from(cbcDec.result), plaintext);

  // AES key wrap (RFC 3394), both ways.
  const cek = randomBytes(32);
  const wrapped = await client.wrapKey("A256KW", cek);
  const uw = createDecipheriv("id-aes256-wrap", k, RFC3394_IV);
  assert.deepEqual(Buffer.concat([uw.update(wrapped.result), uw.final()]), cek);
  const w = createCipheriv("id-aes256-wrap", k, RFC3394_IV);
  const nodeWrapped = Buffer.concat([w.update(cek), w.final()]);
  assert.deepEqual(Buffer.from((await client.unwrapKey("A256KW", nodeWrapped)).result), cek);
});
