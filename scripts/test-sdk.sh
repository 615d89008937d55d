#!/usr/bin/env bash
# Runs one of the SDK interop suites that drive p11vault with a released Azure client,
# unmodified, against a fresh service (tests/with_p11vault.py starts it on a new data dir):
#
#   scripts/test-sdk.sh js   [TOKEN...]   # @azure/keyvault-keys, tests/sdk-js (node --test)
#   scripts/test-sdk.sh rust [TOKEN...]   # azure_security_keyvault_keys, tests/sdk-rust (cargo test)
#
# TOKEN is softhsm or kryoptic (default: $P11VAULT_TEST_TOKEN, else softhsm); kryoptic needs
# P11VAULT_KRYOPTIC_MODULE=PATH (scripts/install-kryoptic.sh prints it). The client is
# installed once (npm ci from the committed package-lock.json; cargo build --locked of the test
# project, whose target dir is kept in ${XDG_CACHE_HOME:-~/.cache}/p11vault/sdk-rust-target, or
# $P11VAULT_SDK_RUST_TARGET_DIR, between runs), then the suite runs once per token. The service
# binary is $P11VAULT_BIN, else this checkout's debug build (built here if needed). Prints how
# long each step took. Needs node >= 20 and npm for js (scripts/install-deps.sh --tests).
set -euo pipefail
cd "$(dirname "$0")/.."

suite="${1:-}"
shift || true
tokens=("$@")
if ((${#tokens[@]} == 0)); then
    tokens=("${P11VAULT_TEST_TOKEN:-softhsm}")
fi
case "$suite" in
js | rust) ;;
*)
    echo "usage: $0 js|rust [softhsm|kryoptic]..." >&2
    exit 2
    ;;
esac

if [[ -z "${P11VAULT_BIN:-}" ]]; then
    target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" == /* ]] || target="$PWD/$target"
    cargo build --locked --quiet
    export P11VAULT_BIN="$target/debug/p11vault"
fi

# Every token is run even when one fails; the exit status is 1 if any failed.
failed=()
run_suite() { # TOKEN COMMAND...
    local token="$1"
    shift
    echo "== $suite SDK suite on $token"
    local start=$SECONDS rc=0
    P11VAULT_TEST_TOKEN="$token" python3 tests/with_p11vault.py -- "$@" || rc=$?
    echo "== $suite SDK suite on $token took $((SECONDS - start)) s (exit $rc)"
    ((rc == 0)) || failed+=("$token")
}

if [[ "$suite" == js ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "node and npm are needed: scripts/install-deps.sh --tests installs them" >&2
        exit 1
    fi
    node_major="$(node -p 'process.versions.node.split(".")[0]')"
    if ((node_major < 20)); then
        # @azure/keyvault-keys 4.10.2 needs node >= 20 (Debian 12's is 18): node 20 from the
        # npm registry (the `node` package fetches the platform's binary package), cached.
        node_dir="${XDG_CACHE_HOME:-$HOME/.cache}/p11vault/node-20.20.2"
        if [[ ! -x "$node_dir/node_modules/.bin/node" ]]; then
            echo "== node $(node --version) is too old for the SDK; installing node 20.20.2 from the npm registry" >&2
            npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error node@20.20.2
        fi
        export PATH="$node_dir/node_modules/.bin:$PATH"
        node_major="$(node -p 'process.versions.node.split(".")[0]')"
        if ((node_major < 20)); then
            echo "@azure/keyvault-keys 4.10.2 needs node >= 20; this is $(node --version)" >&2
            exit 1
        fi
    fi
    start=$SECONDS
    (cd tests/sdk-js && npm ci --no-audit --no-fund --loglevel=error)
    echo "== npm ci took $((SECONDS - start)) s (node $(node --version), npm $(npm --version))"
    for token in "${tokens[@]}"; do
        run_suite "$token" node --test tests/sdk-js/keys.test.mjs tests/sdk-js/crypto.test.mjs
    done
else
    export CARGO_TARGET_DIR="${P11VAULT_SDK_RUST_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/p11vault/sdk-rust-target}"
    manifest=tests/sdk-rust/Cargo.toml
    start=$SECONDS
    cargo build --locked --manifest-path "$manifest" --tests
    echo "== cargo build of tests/sdk-rust took $((SECONDS - start)) s (target dir $CARGO_TARGET_DIR)"
    for token in "${tokens[@]}"; do
        run_suite "$token" cargo test --locked --manifest-path "$manifest" --test sdk
    done
fi
if ((${#failed[@]})); then
    echo "== $suite SDK suite FAILED on: ${failed[*]}" >&2
    exit 1
fi
