#!/usr/bin/env bash
# Sets up and runs every test: formatting and lints, the Rust unit and integration tests
# (real SoftHSM2 tokens, real SQLite files, real HTTPS), and the interop suite that drives the
# service with the official Azure Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets

echo "== interop tests (official Azure Python SDK)"
cargo build --locked
venv=".venv-interop"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
P11VAULT_BIN="$PWD/target/debug/p11vault" "$venv/bin/python" -m pytest -q tests/interop
