#!/usr/bin/env bash
# Where a request's time goes: starts the release build on a fresh data dir, creates a P-256
# key, drives ES256 sign (or OP=gcm for AES-256-GCM encrypt of 1 KiB) with wrk at 8
# connections, and records the whole machine with perf (call graphs) meanwhile. Prints the
# CPU split by process and the top symbols of the service. Needs perf and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
op="${OP:-sign}"
seconds="${SECONDS_TO_RECORD:-10}"
cargo build --release --locked
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
./target/release/p11vault serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^p11vault listening on //p' "$work/out")"
token="$(cat "$work/data/admin.token")"
curl -sf --cacert "$work/data/ca.pem" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "$url/keys/prof-ec/create?api-version=7.4" -d '{"kty":"EC","crv":"P-256"}' >/dev/null
curl -sf --cacert "$work/data/ca.pem" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "$url/keys/prof-aes/create?api-version=7.4" -d '{"kty":"oct-HSM","key_size":256}' >/dev/null
if [[ "$op" == gcm ]]; then
    path="/keys/prof-aes//encrypt"
    body="{\"alg\":\"A256GCM\",\"value\":\"$(head -c 1024 /dev/zero | base64 -w0 | tr '+/' '-_' | tr -d '=')\"}"
else
    path="/keys/prof-ec//sign"
    body='{"alg":"ES256","value":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}'
fi
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
wrk -t1 -c8 -d3s -s "$work/post.lua" "$url$path?api-version=7.4" >/dev/null
wrk -t1 -c8 -d"$((seconds + 2))s" -s "$work/post.lua" "$url$path?api-version=7.4" >"$work/wrk.txt" &
sleep 1
perf record -F 999 -a -g -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait %2 || true
grep -E "Requests/sec|Latency" "$work/wrk.txt"
echo "== CPU samples by process"
perf report -i "$work/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "== CPU samples by process and library"
perf report -i "$work/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -16
echo "== top symbols, all processes"
perf report -i "$work/perf.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -45
