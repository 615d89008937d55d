#!/usr/bin/env bash
# Sets up and runs p11vault on its embedded default: a SoftHSM2 token, a SQLite file and a
# self-signed TLS certificate under ./p11vault-data (override with --data-dir; other flags of
# `p11vault serve` pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked
exec ./target/release/p11vault serve "$@"
