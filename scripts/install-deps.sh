#!/usr/bin/env bash
# Installs what p11vault needs on a Debian machine: SoftHSM2, OpenSSL headers and pkg-config
# for the build, (with --tests) Python's venv for the interop suite and Node.js with npm for the
# JavaScript SDK suite, and (with --bench) wrk. Idempotent.
set -euo pipefail

want=(softhsm2 libssl-dev pkg-config ca-certificates)
if [[ "${1:-}" == "--tests" ]]; then
    want+=(python3 python3-venv)
fi
if [[ "${1:-}" == "--bench" ]]; then
    want+=(wrk)
fi

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# A Python that is not Debian's (pyenv, for example) brings its own venv module.
if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -m venv --help >/dev/null 2>&1; then
    missing=("${missing[@]/python3-venv}")
    missing=("${missing[@]/python3}")
fi
# Node.js and npm (the JavaScript SDK suite): Debian's packages only where there are none, so a
# Node.js from elsewhere (NodeSource's, which carries its own npm) is left alone. The suite
# needs node >= 20 (Debian 13's; Debian 12's is 18) and says so when it is older.
if [[ "${1:-}" == "--tests" ]]; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))

if ((${#missing[@]})); then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust 1.89 or newer (https://rustup.rs) and run this again" >&2
    exit 1
fi
