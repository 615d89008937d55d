// Shared setup of the JavaScript SDK suite: the service the launcher started
// (tests/with_p11vault.py), a static-token credential, client factories.

import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createPublicKey } from "node:crypto";
import { KeyClient, CryptographyClient } from "@azure/keyvault-keys";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run this suite through tests/with_p11vault.py`);
  }
  return value;
}

export const SERVICE_URL = required("P11VAULT_URL");
// The CA is trusted through NODE_EXTRA_CA_CERTS, which node reads only when it starts.
if (process.env.NODE_EXTRA_CA_CERTS !== required("P11VAULT_CA")) {
  throw new Error("NODE_EXTRA_CA_CERTS must name P11VAULT_CA before node starts");
}
export const TOKEN = readFileSync(required("P11VAULT_TOKEN_FILE"), "utf8").trim();
export const TEST_TOKEN = process.env.P11VAULT_TEST_TOKEN ?? "softhsm";

/** A TokenCredential (@azure/core-auth) that returns one opaque bearer token. */
export class StaticTokenCredential {
  constructor(token) {
    this.token = token;
    this.scopes = [];
  }
  async getToken(scopes, _options) {
    this.scopes.push(...(Array.isArray(scopes) ? scopes : [scopes]));
    return { token: this.token, expiresOnTimestamp: Date.now() + 3600 * 1000 };
  }
}

export const credential = new StaticTokenCredential(TOKEN);

export const clientOptions = {
  // 127.0.0.1 is not under the challenge's resource (managedhsm.azure.net).
  disableChallengeResourceVerification: true,
  // A failure must show as the service answered it, not after retries.
  retryOptions: { maxRetries: 0 },
};

export const keyClient = new KeyClient(SERVICE_URL, credential, clientOptions);

export function cryptoClient(keyOrId) {
  return new CryptographyClient(keyOrId, credential, clientOptions);
}

/** Pollers poll every 2 s by default; the service answers at once. */
export const POLL = { intervalInMs: 50 };

export function uniqueName(prefix) {
  return `${prefix}-${randomBytes(8).toString("hex")}`;
}

/** RFC 4648 base64url without padding (JWK members). */
export function b64url(bytes) {
  return Buffer.from(bytes).toString("base64url");
}

/** The SDK's JsonWebKey (Uint8Array members) as a node:crypto public KeyObject. */
export function publicKeyObject(jwk) {
  if (jwk.kty.startsWith("RSA")) {
    return createPublicKey({ key: { kty: "RSA", n: b64url(jwk.n), e: b64url(jwk.e) }, format: "jwk" });
  }
  if (jwk.kty.startsWith("EC")) {
    return createPublicKey({
      key: { kty: "EC", crv: jwk.crv, x: b64url(jwk.x), y: b64url(jwk.y) },
      format: "jwk",
    });
  }
  throw new Error(`no public key for kty ${jwk.kty}`);
}

/** Runs fn and returns the RestError it throws; fails if it does not throw one. */
export async function restError(fn) {
  try {
    await fn();
  } catch (e) {
    if (e?.name === "RestError" || typeof e?.statusCode === "number") return e;
    throw e;
  }
  throw new Error("expected the service to refuse the request, but it succeeded");
}

/** The error code of a RestError's Azure error body ({"error":{"code","message"}}). */
export function errorCode(e) {
  return e?.code;
}

/** The inner error code ({"error":{"innererror":{"code"}}}), as the SDK deserialized it. */
export function innerErrorCode(e) {
  return e?.details?.error?.innerError?.code;
}

/** Every item of every page, and the number of pages the service sent. */
export async function allPages(pagedIterator, settings) {
  const items = [];
  let pages = 0;
  for await (const page of pagedIterator.byPage(settings)) {
    pages += 1;
    items.push(...page);
  }
  return { items, pages };
}
