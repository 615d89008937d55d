#!/usr/bin/env bash
# Installs the pinned Azure CLI (tests/az/requirements.txt: azure-cli 2.91.0 from PyPI) into
# a virtualenv of its own, .venv-az (or $P11VAULT_AZ_VENV), and prints the path of its `az`.
# Nothing of p11vault depends on it: the az interop suite (tests/az) and operators who want
# the CLI in a known version use it; `p11vault az-setup` needs no az at all.
#
# A second run with the venv already holding the pinned versions only checks them (a few
# seconds); pip's wheel cache (~/.cache/pip) makes a fresh venv faster than the first. Timings
# go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${P11VAULT_AZ_VENV:-.venv-az}"
req="tests/az/requirements.txt"
start=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# The requirements file's hash, kept in the venv, says whether it already holds these pins.
stamp="$venv/.p11vault-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$stamp"
fi
echo "== az installed in $venv in $((SECONDS - start)) s" >&2
echo "$PWD/$venv/bin/az"
