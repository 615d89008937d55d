#!/usr/bin/env bash
# Builds kryoptic (a second, independent PKCS#11 soft token, written in Rust) for the test
# suite's second token, and prints the path of its module, libkryoptic_pkcs11.so, on stdout.
# Everything else goes to stderr.
#
# - The source comes from crates.io through cargo itself (a throwaway project that depends on
#   kryoptic =1.5.4, `cargo fetch`), and the .crate file is checked against the pinned SHA-256
#   below before it is unpacked. Its dependencies are pinned by the Cargo.lock the crate ships
#   (`--locked`), and cargo checks their checksums.
# - Features: `minimal` (sqlite store, AES, ECDSA/ECDH P-256/384/521, hashes, HMAC, RSA) and
#   `kryoptic-lib/dynamic` (links the system libcrypto). The default features need
#   OpenSSL >= 3.2 (EdDSA); Debian 12 has 3.0.
# - The built module is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/p11vault/kryoptic-1.5.4/,
#   keyed by version, checksum and features; nothing depends on the cache being there.
# Idempotent. Installs its own Debian build needs (clang/libclang for bindgen, SQLite, OpenSSL).
set -euo pipefail

VERSION=1.5.4
CRATE_SHA256=21b64b7679ce821f19a7a48b7e40146f26fbb9daa64ee2acb6376788a26d7ae8
FEATURES="minimal,kryoptic-lib/dynamic"
STAMP="kryoptic $VERSION sha256:$CRATE_SHA256 features:$FEATURES"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/p11vault/kryoptic-$VERSION"
so="$cache/libkryoptic_pkcs11.so"
if [[ -f "$so" && -f "$cache/build.stamp" && "$(cat "$cache/build.stamp")" == "$STAMP" ]]; then
    echo "$so"
    exit 0
fi

want=(clang libclang-dev libsqlite3-dev libssl-dev pkg-config)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/fetch/src"
cat >"$work/fetch/Cargo.toml" <<EOF
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = { version = "=$VERSION", default-features = false }
EOF
: >"$work/fetch/src/lib.rs"
echo "fetching kryoptic $VERSION from crates.io" >&2
(cd "$work/fetch" && cargo fetch --quiet >&2)

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
crate_file=""
for f in "$cargo_home"/registry/cache/*/kryoptic-"$VERSION".crate; do
    if [[ -f "$f" ]]; then crate_file="$f"; fi
done
if [[ -z "$crate_file" ]]; then
    echo "cargo fetch did not leave kryoptic-$VERSION.crate under $cargo_home/registry/cache" >&2
    exit 1
fi
actual="$(sha256sum "$crate_file" | cut -d' ' -f1)"
if [[ "$actual" != "$CRATE_SHA256" ]]; then
    echo "checksum mismatch for $crate_file: $actual, expected $CRATE_SHA256" >&2
    exit 1
fi
tar -xzf "$crate_file" -C "$work"

echo "building kryoptic $VERSION ($FEATURES); about a minute" >&2
(cd "$work/kryoptic-$VERSION" &&
    CARGO_TARGET_DIR="$work/target" cargo build --quiet --release --locked \
        --no-default-features --features "$FEATURES" >&2)

mkdir -p "$cache"
cp "$work/target/release/libkryoptic_pkcs11.so" "$cache/.libkryoptic_pkcs11.so.tmp"
mv -f "$cache/.libkryoptic_pkcs11.so.tmp" "$so"
echo "$STAMP" >"$cache/build.stamp"
echo "$so"
