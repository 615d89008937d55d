#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: raw PKCS#11 throughput on the service's own SoftHSM2 token,
# then the release build of the service over HTTPS driven by wrk at concurrency 1, 2, 8 and 32,
# then the same token filled to 10,000 keys. Prints Markdown; BENCH_REPORT=FILE also writes it
# to FILE. BENCH_SECONDS (default 5) and BENCH_KEYS (default 10000) shorten a trial run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --bench
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)" >&2
cargo bench --locked --bench service
cargo bench --locked --bench backup
