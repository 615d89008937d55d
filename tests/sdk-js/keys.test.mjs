// Key lifecycle through the released @azure/keyvault-keys KeyClient: create (RSA, EC and oct,
// all -HSM), get, list with nextLink paging, update, new versions and their listing, rotate,
// soft-delete, get deleted, recover, purge, backup and restore, RNG, error mapping.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, verify as nodeVerify } from "node:crypto";

import { KeyClient } from "@azure/keyvault-keys";

import {
  POLL,
  SERVICE_URL,
  StaticTokenCredential,
  TOKEN,
  allPages,
  clientOptions,
  cryptoClient,
  errorCode,
  innerErrorCode,
  keyClient,
  publicKeyObject,
  restError,
  uniqueName,
} from "./helpers.mjs";

function versionOf(key) {
  const v = key.properties.version;
  assert.match(v, /^[0-9a-f]{32}$/, `version of ${key.id}`);
  return v;
}

test("the SDK takes the challenge and then sends the static token", async () => {
  // A client of its own: its first request goes without a token and meets the challenge.
  const fresh = new StaticTokenCredential(TOKEN);
  const client = new KeyClient(SERVICE_URL, fresh, clientOptions);
  const key = await client.createEcKey(uniqueName("js-challenge"), { curve: "P-256", hsm: true });
  assert.ok(key.id.startsWith(`${SERVICE_URL}/keys/`), key.id);
  assert.ok(fresh.scopes.length > 0, "getToken was never called");
  for (const scope of fresh.scopes) {
    assert.match(scope, /^https:\/\/[^/]+\/\.default$/, `scope ${scope} (from the challenge)`);
  }
});

test("create RSA-HSM, EC-HSM and oct-HSM keys and get them back", async () => {
  const rsaName = uniqueName("js-rsa");
  const rsa = await keyClient.createRsaKey(rsaName, { keySize: 2048, hsm: true });
  assert.equal(rsa.name, rsaName);
  assert.equal(rsa.keyType, "RSA-HSM");
  assert.equal(rsa.key.n.length, 256, "RSA-2048 modulus");
  assert.deepEqual([...rsa.key.e], [1, 0, 1]);
  assert.equal(rsa.key.d, undefined, "no private member leaves the service");
  assert.equal(rsa.properties.enabled, true);
  assert.ok(rsa.properties.recoveryLevel, "recoveryLevel");

  const ecName = uniqueName("js-ec");
  const ec = await keyClient.createEcKey(ecName, { curve: "P-384", hsm: true });
  assert.equal(ec.keyType, "EC-HSM");
  assert.equal(ec.key.crv, "P-384");
  assert.equal(ec.key.x.length, 48);
  assert.equal(ec.key.y.length, 48);
  assert.equal(ec.key.d, undefined);

  const octName = uniqueName("js-oct");
  const oct = await keyClient.createOctKey(octName, { hsm: true, keySize: 256 });
  assert.equal(oct.keyType, "oct-HSM");
  assert.equal(oct.key.k, undefined, "an oct key's material never leaves the service");

  for (const created of [rsa, ec, oct]) {
    const latest = await keyClient.getKey(created.name);
    assert.equal(latest.id, created.id);
    assert.equal(latest.keyType, created.keyType);
    const pinned = await keyClient.getKey(created.name, { version: versionOf(created) });
    assert.equal(pinned.id, created.id);
    assert.deepEqual(pinned.keyOperations.sort(), created.keyOperations.sort());
  }
  assert.deepEqual(ec.key.x, (await keyClient.getKey(ecName)).key.x);
});

test("a key that does not exist is a 404 KeyNotFound", async () => {
  const e = await restError(() => keyClient.getKey(uniqueName("js-missing")));
  assert.equal(e.statusCode, 404);
  assert.equal(errorCode(e), "KeyNotFound");
});

test("list keys follows nextLink over several pages", async () => {
  const prefix = uniqueName("js-page");
  const names = [];
  for (let i = 0; i < 30; i++) {
    const name = `${prefix}-${String(i).padStart(2, "0")}`;
    await keyClient.createEcKey(name, { curve: "P-256", hsm: true, tags: { n: String(i) } });
    names.push(name);
  }
  // A small page size: several pages for these 30 keys alone.
  const small = await allPages(keyClient.listPropertiesOfKeys(), { maxPageSize: 7 });
  const smallNames = small.items.map((p) => p.name);
  assert.ok(small.pages >= 5, `only ${small.pages} pages of at most 7`);
  assert.equal(new Set(smallNames).size, smallNames.length, "a key was listed twice");
  for (const name of names) assert.ok(smallNames.includes(name), `${name} not listed`);
  // The service's default page size (25): over 30 keys take at least two pages.
  const dflt = await allPages(keyClient.listPropertiesOfKeys());
  assert.ok(dflt.pages >= 2, `only ${dflt.pages} page(s) for ${dflt.items.length} keys`);
  const dfltNames = dflt.items.map((p) => p.name);
  for (const name of names) assert.ok(dfltNames.includes(name), `${name} not listed`);
  const one = dflt.items.find((p) => p.name === names[3]);
  assert.equal(one.tags.n, "3");
  assert.equal(one.enabled, true);
  // The item iterator (no byPage) reaches every key too.
  const seen = new Set();
  for await (const p of keyClient.listPropertiesOfKeys()) seen.add(p.name);
  for (const name of names) assert.ok(seen.has(name), `${name} not iterated`);
});

test("update a key's properties", async () => {
  const name = uniqueName("js-update");
  const key = await keyClient.createEcKey(name, { curve: "P-256", hsm: true, keyOps: ["sign", "verify"] });
  const digest = createHash("sha256").update("update").digest();
  const signed = await cryptoClient(key.id).sign("ES256", digest);

  const expires = new Date(Math.floor(Date.now() / 1000) * 1000 + 86400 * 1000);
  const updated = await keyClient.updateKeyProperties(name, versionOf(key), {
    enabled: false,
    expiresOn: expires,
    tags: { team: "payments" },
  });
  assert.equal(updated.properties.enabled, false);
  assert.equal(updated.properties.expiresOn.getTime(), expires.getTime());
  assert.deepEqual(updated.properties.tags, { team: "payments" });
  const got = await keyClient.getKey(name);
  assert.equal(got.properties.enabled, false);
  assert.deepEqual(got.properties.tags, { team: "payments" });

  // A disabled key signs nothing: the SDK sends the request, the service refuses it.
  const e = await restError(() => cryptoClient(got.id).sign("ES256", digest));
  assert.equal(e.statusCode, 403, e.message);
  assert.equal(errorCode(e), "Forbidden");
  assert.equal(innerErrorCode(e), "KeyDisabled");

  // Without a version: the latest one. key_ops can be narrowed.
  const back = await keyClient.updateKeyProperties(name, { enabled: true, keyOps: ["verify"] });
  assert.equal(back.properties.enabled, true);
  assert.deepEqual(back.keyOperations, ["verify"]);
  assert.deepEqual((await keyClient.getKey(name)).keyOperations, ["verify"]);
  // The service verifies with it (EC verify is not done locally by the SDK).
  assert.equal((await cryptoClient(back.id).verify("ES256", digest, signed.result)).result, true);
});

test("new versions, their listing with paging, and rotate", async () => {
  const name = uniqueName("js-versions");
  const created = [];
  for (let i = 0; i < 3; i++) {
    created.push(await keyClient.createEcKey(name, { curve: "P-256", hsm: true }));
  }
  const versions = created.map(versionOf);
  assert.equal(new Set(versions).size, 3, "each create makes a new version");
  assert.notDeepEqual(created[0].key.x, created[2].key.x);

  const latest = await keyClient.getKey(name);
  assert.equal(latest.properties.version, versions[2]);
  const first = await keyClient.getKey(name, { version: versions[0] });
  assert.deepEqual(first.key.x, created[0].key.x);

  const listed = await allPages(keyClient.listPropertiesOfKeyVersions(name), { maxPageSize: 2 });
  assert.ok(listed.pages >= 2, `versions came in ${listed.pages} page(s) of at most 2`);
  assert.deepEqual(listed.items.map((p) => p.version).sort(), [...versions].sort());
  for (const p of listed.items) assert.equal(p.name, name);

  const rotated = await keyClient.rotateKey(name);
  const rv = versionOf(rotated);
  assert.ok(!versions.includes(rv));
  assert.equal((await keyClient.getKey(name)).properties.version, rv);
  const after = await allPages(keyClient.listPropertiesOfKeyVersions(name));
  assert.equal(after.items.length, 4);
});

test("soft-delete, get deleted, list deleted, recover, purge", async () => {
  const name = uniqueName("js-delete");
  const key = await keyClient.createEcKey(name, { curve: "P-256", hsm: true, tags: { kept: "yes" } });
  const digest = createHash("sha256").update("before deletion").digest();
  const before = await cryptoClient(key).sign("ES256", digest);

  const poller = await keyClient.beginDeleteKey(name, POLL);
  const deleted = await poller.pollUntilDone();
  assert.equal(deleted.name, name);
  assert.ok(deleted.properties.recoveryId.endsWith(`/deletedkeys/${name}`), deleted.properties.recoveryId);
  assert.ok(deleted.properties.deletedOn instanceof Date);
  assert.ok(deleted.properties.scheduledPurgeDate > deleted.properties.deletedOn);

  const gone = await restError(() => keyClient.getKey(name));
  assert.equal(gone.statusCode, 404);
  const got = await keyClient.getDeletedKey(name);
  assert.equal(got.id, key.id);
  assert.deepEqual(got.key.x, key.key.x);
  assert.deepEqual(got.properties.tags, { kept: "yes" });
  const listed = await allPages(keyClient.listDeletedKeys(), { maxPageSize: 5 });
  assert.ok(listed.items.some((d) => d.name === name), "deleted key not listed");

  // The name stays taken while the key is soft-deleted.
  const conflict = await restError(() => keyClient.createEcKey(name, { curve: "P-256", hsm: true }));
  assert.equal(conflict.statusCode, 409);

  const recovered = await (await keyClient.beginRecoverDeletedKey(name, POLL)).pollUntilDone();
  assert.equal(recovered.id, key.id);
  const back = await keyClient.getKey(name);
  assert.deepEqual(back.key.x, key.key.x);
  // The same key material: a signature from before the deletion verifies with it.
  const ok = nodeVerify(
    "sha256",
    Buffer.from("before deletion"),
    { key: publicKeyObject(back.key), dsaEncoding: "ieee-p1363" },
    Buffer.from(before.result),
  );
  assert.equal(ok, true, "a signature from before the deletion verifies after the recovery");
  const after = await cryptoClient(back).sign("ES256", digest);
  assert.equal(after.result.length, 64);

  await (await keyClient.beginDeleteKey(name, POLL)).pollUntilDone();
  await keyClient.purgeDeletedKey(name);
  const purged = await restError(() => keyClient.getDeletedKey(name));
  assert.equal(purged.statusCode, 404);
  const notListed = await allPages(keyClient.listDeletedKeys());
  assert.ok(!notListed.items.some((d) => d.name === name), "purged key still listed");
  // The name is free again.
  const reborn = await keyClient.createEcKey(name, { curve: "P-256", hsm: true });
  assert.notEqual(reborn.properties.version, key.properties.version);
});

test("backup and restore bring back every version", async () => {
  const name = uniqueName("js-backup");
  const v1 = await keyClient.createRsaKey(name, { keySize: 2048, hsm: true, tags: { v: "1" } });
  const v2 = await keyClient.createRsaKey(name, { keySize: 2048, hsm: true, tags: { v: "2" } });
  const blob = await keyClient.backupKey(name);
  assert.ok(blob instanceof Uint8Array && blob.length > 100, `backup of ${blob?.length} bytes`);

  // A live key of that name: the restore is refused.
  const taken = await restError(() => keyClient.restoreKeyBackup(blob));
  assert.equal(taken.statusCode, 409);

  await (await keyClient.beginDeleteKey(name, POLL)).pollUntilDone();
  await keyClient.purgeDeletedKey(name);
  assert.equal((await restError(() => keyClient.getKey(name))).statusCode, 404);

  const restored = await keyClient.restoreKeyBackup(blob);
  assert.equal(restored.id, v2.id);
  assert.deepEqual(restored.key.n, v2.key.n);
  assert.deepEqual(restored.properties.tags, { v: "2" });
  const old = await keyClient.getKey(name, { version: versionOf(v1) });
  assert.deepEqual(old.key.n, v1.key.n);
  assert.deepEqual(old.properties.tags, { v: "1" });
  const versions = await allPages(keyClient.listPropertiesOfKeyVersions(name));
  assert.deepEqual(versions.items.map((p) => p.version).sort(), [versionOf(v1), versionOf(v2)].sort());

  // The restored key signs with the original material: checked by node:crypto against the
  // public key from before the backup.
  const msg = Buffer.from("after restore");
  const digest = createHash("sha256").update(msg).digest();
  const sig = await cryptoClient(restored.id).sign("RS256", digest);
  assert.equal(nodeVerify("sha256", msg, publicKeyObject(v2.key), Buffer.from(sig.result)), true);

  // A changed blob is refused and changes nothing.
  await (await keyClient.beginDeleteKey(name, POLL)).pollUntilDone();
  await keyClient.purgeDeletedKey(name);
  const bad = Buffer.from(blob);
  bad[bad.length - 10] ^= 0x01;
  const e = await restError(() => keyClient.restoreKeyBackup(bad));
  assert.equal(e.statusCode, 400, e.message);
  assert.equal((await restError(() => keyClient.getKey(name))).statusCode, 404);
});

test("random bytes from the HSM", async () => {
  const a = await keyClient.getRandomBytes(32);
  const b = await keyClient.getRandomBytes(32);
  assert.equal(a.length, 32);
  assert.notDeepEqual(a, b);
});
