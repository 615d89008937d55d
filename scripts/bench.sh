#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: raw PKCS#11 throughput on the service's own SoftHSM2 token,
# then the release build of the service over HTTPS driven by wrk at concurrency 1, 2, 8 and 32,
# then the same token filled to 10,000 keys. Prints Markdown; BENCH_REPORT=FILE also writes it
# to FILE. BENCH_SECONDS (default 5) and BENCH_KEYS (default 10000) shorten a trial run.
#
# The token is the tests' switch: `--token softhsm` (default) or `--token kryoptic` (built by
# scripts/install-kryoptic.sh), or P11VAULT_TEST_TOKEN. Raw and service run on the same token.
set -euo pipefail
cd "$(dirname "$0")/.."
token="${P11VAULT_TEST_TOKEN:-softhsm}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --token) token="${2:?--token softhsm|kryoptic}"; shift 2 ;;
        *) echo "usage: $0 [--token softhsm|kryoptic]" >&2; exit 2 ;;
    esac
done
./scripts/install-deps.sh --bench
case "$token" in
    softhsm) unset P11VAULT_TEST_TOKEN ;;
    kryoptic)
        ./scripts/install-deps.sh --tests
        P11VAULT_KRYOPTIC_MODULE="$(./scripts/install-kryoptic.sh)"
        export P11VAULT_TEST_TOKEN=kryoptic P11VAULT_KRYOPTIC_MODULE
        ;;
    *) echo "unknown token '$token': softhsm or kryoptic" >&2; exit 2 ;;
esac
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); token: $token" >&2
cargo bench --locked --bench service
cargo bench --locked --bench backup
cargo bench --locked --bench security_domain
