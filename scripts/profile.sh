#!/usr/bin/env bash
# Where a request's time goes: starts the release build on a fresh data dir, creates a P-256
# key (and FILL more oct keys, default 0), drives ES256 sign (OP=gcm: AES-256-GCM encrypt of
# 1 KiB; OP=get: get key) with wrk at CONNECTIONS (default 8) connections, and records the
# whole machine with perf (call graphs) meanwhile. Prints the CPU split by process and library
# and the top symbols. Needs perf and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
op="${OP:-sign}"
seconds="${SECONDS_TO_RECORD:-10}"
connections="${CONNECTIONS:-8}"
fill="${FILL:-0}"
cargo build --release --locked
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
./target/release/p11vault serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^p11vault listening on //p' "$work/out")"
token="$(cat "$work/data/admin.token")"
# The administrator uses no keys until it holds a key role (Managed HSM local RBAC).
admin_id="$(./target/release/p11vault principal list --json --data-dir "$work/data" | sed -n '1s/.*"id":"\([^"]*\)".*/\1/p')"
./target/release/p11vault role assign --data-dir "$work/data" --principal "$admin_id" \
    --role "Managed HSM Crypto User" >/dev/null
curl -sf --cacert "$work/data/ca.pem" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "$url/keys/prof-ec/create?api-version=7.4" -d '{"kty":"EC","crv":"P-256"}' >/dev/null
curl -sf --cacert "$work/data/ca.pem" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "$url/keys/prof-aes/create?api-version=7.4" -d '{"kty":"oct-HSM","key_size":256}' >/dev/null
if ((fill > 0)); then
    seq "$fill" | xargs -P 8 -I{} curl -sf -o /dev/null --cacert "$work/data/ca.pem" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -X POST "$url/keys/fill-{}/create?api-version=7.4" -d '{"kty":"oct-HSM","key_size":256}'
    echo "filled $fill keys"
fi
method=POST
if [[ "$op" == get ]]; then
    method=GET
    path="/keys/prof-ec"
    body=""
elif [[ "$op" == gcm ]]; then
    path="/keys/prof-aes//encrypt"
    body="{\"alg\":\"A256GCM\",\"value\":\"$(head -c 1024 /dev/zero | base64 -w0 | tr '+/' '-_' | tr -d '=')\"}"
else
    path="/keys/prof-ec//sign"
    body='{"alg":"ES256","value":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}'
fi
{
    echo "wrk.method = \"$method\""
    echo "wrk.headers[\"Authorization\"] = \"Bearer $token\""
    if [[ -n "$body" ]]; then
        echo "wrk.body = '$body'"
        echo "wrk.headers[\"Content-Type\"] = \"application/json\""
    fi
} >"$work/post.lua"
wrk -t1 -c"$connections" -d3s -s "$work/post.lua" "$url$path?api-version=7.4" >/dev/null
wrk -t1 -c"$connections" -d"$((seconds + 2))s" --latency -s "$work/post.lua" "$url$path?api-version=7.4" >"$work/wrk.txt" &
sleep 1
perf record -F 999 -a -g -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait %2 || true
grep -E "Requests/sec|Latency| 50%| 99%" "$work/wrk.txt"
echo "== CPU samples by process"
perf report -i "$work/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "== CPU samples by process and library"
perf report -i "$work/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -16
echo "== top symbols, all processes"
perf report -i "$work/perf.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -45
