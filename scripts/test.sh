#!/usr/bin/env bash
# Sets up and runs every test: formatting and lints, the Rust unit and integration tests
# (real SoftHSM2 tokens, real SQLite files, real HTTPS), the integration tests once more on
# kryoptic (a second PKCS#11 token, built by scripts/install-kryoptic.sh), the interop suite
# that drives the service with the official Azure Python SDK, on both tokens, and the Azure
# SDKs' own test suites live against the service (tests/sdk-suites, on SoftHSM2).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test (SoftHSM2)"
cargo test --locked --all-targets

# The integration tests again on a second, independent token: kryoptic, as an external
# module (unit tests and benches do not depend on the token, so they run once, above). Two
# tests build their faults out of SoftHSM2's token directory and are skipped by name here, so
# the runner counts them as filtered out, not passed.
echo "== building kryoptic"
kryoptic_module="$(./scripts/install-kryoptic.sh)"
echo "== cargo test --tests (kryoptic: $kryoptic_module)"
start=$SECONDS
P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" \
    cargo test --locked --no-fail-fast --test '*' -- \
    --skip the_token_going_away_under_load_gives_503s_and_the_service_recovers_by_itself \
    --skip a_start_never_destroys_what_its_data_dir_did_not_make
echo "== kryoptic pass took $((SECONDS - start)) s"

echo "== interop tests (official Azure Python SDK)"
cargo build --locked
venv=".venv-interop"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
echo "== interop tests on SoftHSM2"
P11VAULT_BIN="$PWD/target/debug/p11vault" "$venv/bin/python" -m pytest -q tests/interop
echo "== interop tests on kryoptic"
P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" \
    P11VAULT_BIN="$PWD/target/debug/p11vault" "$venv/bin/python" -m pytest -q tests/interop

# The test suites that ship in the azure-keyvault-keys and azure-keyvault-administration
# sdists, their Managed HSM tests live against the service (tests/sdk-suites/run.py downloads
# and checks the pinned sdists; exclusions and their reasons: tests/sdk-suites/exclusions.toml).
echo "== SDK test suites (azure-keyvault-keys, azure-keyvault-administration) on SoftHSM2"
sdk_venv=".venv-sdk-suites"
if [[ ! -x "$sdk_venv/bin/python" ]]; then
    python3 -m venv "$sdk_venv"
fi
"$sdk_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/sdk-suites/requirements.txt
"$sdk_venv/bin/python" tests/sdk-suites/run.py --bin "$PWD/target/debug/p11vault"
