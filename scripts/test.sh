#!/usr/bin/env bash
# Sets up and runs every test: formatting and lints, the Rust unit and integration tests
# (real SoftHSM2 tokens, real SQLite files, real HTTPS), the integration tests once more on
# kryoptic (a second PKCS#11 token, built by scripts/install-kryoptic.sh), the interop suite
# that drives the service with the official Azure Python SDK, and the suites that drive it with
# the released JavaScript and Rust clients (scripts/test-sdk.sh), each on both tokens, and the
# Azure SDKs' own test suites live against the service (tests/sdk-suites, on SoftHSM2).
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
# module (unit tests and benches do not depend on the token, so they run once, above). Every
# integration test runs on it; where the tokens differ, the tests make the same fault each
# token's own way (tests/faults.rs locks kryoptic's SQLite file where it moves SoftHSM2's
# token directory away).
echo "== building kryoptic"
kryoptic_module="$(./scripts/install-kryoptic.sh)"
echo "== cargo test --tests (kryoptic: $kryoptic_module)"
start=$SECONDS
P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" \
    cargo test --locked --no-fail-fast --test '*'
echo "== kryoptic pass took $((SECONDS - start)) s"

echo "== interop tests (official Azure Python SDK)"
cargo build --locked
# The binary the interop suites start: the debug build, wherever CARGO_TARGET_DIR puts it.
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
p11vault_bin="$target_dir/debug/p11vault"
venv=".venv-interop"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
echo "== interop tests on SoftHSM2"
P11VAULT_BIN="$p11vault_bin" "$venv/bin/python" -m pytest -q tests/interop
echo "== interop tests on kryoptic"
P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" \
    P11VAULT_BIN="$p11vault_bin" "$venv/bin/python" -m pytest -q tests/interop

# The Azure CLI, pinned (scripts/install-az.sh: azure-cli 2.91.0 from PyPI in .venv-az), runs
# every az keyvault command of seeds 000, 003 and 004, in both forms (--hsm-name and --id)
# wherever a command has two, after `p11vault az-setup` and `az login --identity`;
# tests/az/conftest.py starts a service per module (and per form), on each token; seed 004's
# az storage account keys list and az storage container create run too. The --hsm-name form
# and az storage container need `unshare -rm` (user and mount namespaces) for az's hosts file.
echo "== az CLI suite (tests/az) on SoftHSM2 and kryoptic"
start=$SECONDS
./scripts/install-az.sh >/dev/null
P11VAULT_BIN="$p11vault_bin" .venv-az/bin/python -m pytest -q tests/az
P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" \
    P11VAULT_BIN="$p11vault_bin" .venv-az/bin/python -m pytest -q tests/az
echo "== az CLI suite (install and run) took $((SECONDS - start)) s"

# The released JavaScript and Rust clients, unmodified (versions pinned in
# tests/sdk-js/package-lock.json and tests/sdk-rust/Cargo.lock), on both tokens. Both suites
# run even if the first fails.
sdk_failed=()
for suite in js rust; do
    start=$SECONDS
    P11VAULT_KRYOPTIC_MODULE="$kryoptic_module" P11VAULT_BIN="$p11vault_bin" \
        ./scripts/test-sdk.sh "$suite" softhsm kryoptic || sdk_failed+=("$suite")
    echo "== $suite SDK suites (install and both tokens) took $((SECONDS - start)) s"
done

# The test suites that ship in the azure-keyvault-keys and azure-keyvault-administration
# sdists, their Managed HSM tests live against the service (tests/sdk-suites/run.py downloads
# and checks the pinned sdists; exclusions and their reasons: tests/sdk-suites/exclusions.toml).
echo "== SDK test suites (azure-keyvault-keys, azure-keyvault-administration) on SoftHSM2"
start=$SECONDS
sdk_venv=".venv-sdk-suites"
if [[ ! -x "$sdk_venv/bin/python" ]]; then
    python3 -m venv "$sdk_venv"
fi
"$sdk_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/sdk-suites/requirements.txt
"$sdk_venv/bin/python" tests/sdk-suites/run.py --bin "$p11vault_bin" || sdk_failed+=(sdk-suites)
echo "== SDK test suites took $((SECONDS - start)) s"
if ((${#sdk_failed[@]})); then
    echo "== SDK suites failed: ${sdk_failed[*]}" >&2
    exit 1
fi
echo "== scripts/test.sh took $SECONDS s"
