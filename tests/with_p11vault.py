#!/usr/bin/env python3
"""Runs one command against a fresh p11vault: the launcher of the JavaScript and Rust SDK suites.

    tests/with_p11vault.py [--bin PATH] -- COMMAND [ARG...]

Starts ``p11vault serve`` on a new temporary data dir with a port-0 listener on 127.0.0.1,
waits for ``p11vault listening on https://127.0.0.1:PORT``, gives the initial administrator
the Crypto User and Crypto Officer roles (as an operator would after activating a Managed HSM;
tests/interop/conftest.py does the same), runs COMMAND with

    P11VAULT_URL          https://127.0.0.1:PORT
    P11VAULT_CA           DATA_DIR/ca.pem (the CA the service generated)
    NODE_EXTRA_CA_CERTS   the same file, for node (it is read once, at node's start)
    P11VAULT_TOKEN_FILE   DATA_DIR/admin.token (the bearer token, a static opaque string)
    P11VAULT_TEST_TOKEN   softhsm or kryoptic (which token is under test)

and then stops the service with SIGTERM. The exit status is COMMAND's; it is 1 if COMMAND
passed but the service died, did not exit 0 on SIGTERM, or printed more than its one line.

The token under test is chosen as in the Python interop suite (tests/interop/conftest.py,
``_prepare_token``, which this mirrors): ``P11VAULT_TEST_TOKEN=softhsm`` (default: the embedded
SoftHSM2 token) or ``kryoptic`` with ``P11VAULT_KRYOPTIC_MODULE=PATH``. ``P11VAULT_BIN`` (or
--bin) names the binary (default: target/debug/p11vault under CARGO_TARGET_DIR or the repo).
``P11VAULT_KEEP_DATA=1`` keeps the data dir. Python standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(r"^p11vault listening on (https://127\.0\.0\.1:(\d+))$")
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
TOKEN_LABEL = "p11vault"
KEY_ROLES = ("Managed HSM Crypto User", "Managed HSM Crypto Officer")


def log(msg: str) -> None:
    print(f"with_p11vault: {msg}", file=sys.stderr, flush=True)


def default_bin() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO_ROOT / "target"
    if not base.is_absolute():
        base = REPO_ROOT / base
    return base / "debug" / "p11vault"


def prepare_token(data_dir: Path, test_token: str) -> Dict[str, str]:
    """Makes a data dir ready for the token under test before its first start (also for the
    Python interop suite: tests/interop/conftest.py calls it): nothing for SoftHSM2 (the
    service makes its embedded token); for kryoptic a token database beside the data dir (never inside it), TEST-ONLY PIN
    files and a ``p11vault.toml`` naming the module. Returns what the service's environment
    needs."""
    if test_token == "softhsm":
        return {}
    module = os.environ.get("P11VAULT_KRYOPTIC_MODULE")
    if not module or not Path(module).is_file():
        raise SystemExit("P11VAULT_TEST_TOKEN=kryoptic needs P11VAULT_KRYOPTIC_MODULE=PATH")
    kdir = data_dir.with_suffix(".kryoptic")
    conf = kdir / "kryoptic.conf"
    if conf.exists():
        # Prepared before (a restart of the same data dir).
        return {"KRYOPTIC_CONF": str(conf)}
    kdir.mkdir(parents=True, exist_ok=True)
    db = kdir / "token.sql"
    conf.write_text(f'[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "{db}"\n')
    # TEST-ONLY PINs (kryoptic wants at least 8 characters). Never use these anywhere else.
    (kdir / "TEST-ONLY-user.pin").write_text("TEST-ONLY-user-pin-0000\n")
    (kdir / "TEST-ONLY-so.pin").write_text("TEST-ONLY-so-pin-00000\n")
    (data_dir / "p11vault.toml").write_text(
        "[pkcs11]\n"
        f'module = "{module}"\n'
        f'token_label = "{TOKEN_LABEL}"\n'
        f'pin_file = "{kdir / "TEST-ONLY-user.pin"}"\n'
        f'so_pin_file = "{kdir / "TEST-ONLY-so.pin"}"\n'
        "# A soft token: the service initialises an empty slot on the first start.\n"
        "init_token = true\n\n"
        "[keys]\n"
        "# The choice an external token's first start needs (ARCHITECTURE.md).\n"
        "backups = true\n\n"
        "[security_domain]\n"
        "# A software token: activated automatically, as the embedded default is.\n"
        "auto_activate = true\n"
    )
    return {"KRYOPTIC_CONF": str(conf)}


def tail(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def stop(proc: subprocess.Popen) -> Optional[int]:
    """SIGTERM, then the exit code; SIGKILL (and None) if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")

    bin_path = args.bin or Path(os.environ.get("P11VAULT_BIN") or default_bin())
    if not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        log(f"p11vault binary not found or not executable: {bin_path} (set P11VAULT_BIN)")
        return 2
    test_token = os.environ.get("P11VAULT_TEST_TOKEN", "softhsm")
    if test_token not in ("softhsm", "kryoptic"):
        log(f"P11VAULT_TEST_TOKEN={test_token!r}: softhsm or kryoptic")
        return 2

    base = Path(tempfile.mkdtemp(prefix="p11vault-sdk-"))
    data_dir = base / "data"
    data_dir.mkdir()
    stderr_path = base / "p11vault.stderr.log"
    # P11VAULT_* variables would change the service's behaviour behind the suite's back: the
    # service and the CLI get none of them (as in conftest.py).
    svc_env = {k: v for k, v in os.environ.items() if not k.startswith("P11VAULT_")}
    svc_env.update(prepare_token(data_dir, test_token))

    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            [str(bin_path), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
            env=svc_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            bufsize=1,
        )
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    stdout_lines: List[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\r\n")
            stdout_lines.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="p11vault-stdout", daemon=True).start()

    def fail(msg: str) -> int:
        rc = stop(proc)
        log(f"{msg} (service exit {rc})\nstdout: {stdout_lines!r}\nstderr:\n{tail(stderr_path)}")
        return 1

    # Ctrl-C or a CI timeout must not leave the service running.
    def on_signal(signum, _frame):
        stop(proc)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    deadline = started + STARTUP_TIMEOUT_S
    match = None
    while match is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return fail(f"p11vault did not print its listening line within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            return fail("p11vault exited before it was ready")
        match = LISTEN_RE.match(line)
    url = match.group(1)
    ca = data_dir / "ca.pem"
    token_file = data_dir / "admin.token"
    if not ca.is_file() or not token_file.is_file() or not token_file.read_text().strip():
        return fail(f"after start-up {ca} or {token_file} is missing or empty")

    def cli(*cli_args: str) -> str:
        done = subprocess.run(
            [str(bin_path), *cli_args, "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60, env=svc_env,
        )
        if done.returncode != 0:
            raise RuntimeError(f"p11vault {' '.join(cli_args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    try:
        admin_id = json.loads(cli("principal", "list", "--json").splitlines()[0])["id"]
        for role in KEY_ROLES:
            cli("role", "assign", "--principal", admin_id, "--role", role)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        return fail(f"assigning the key roles failed: {exc}")
    log(f"p11vault ({test_token}) ready at {url} after {time.monotonic() - started:.1f} s")

    env = dict(os.environ)
    env.update(
        P11VAULT_URL=url,
        P11VAULT_CA=str(ca),
        NODE_EXTRA_CA_CERTS=str(ca),
        P11VAULT_TOKEN_FILE=str(token_file),
        P11VAULT_TEST_TOKEN=test_token,
    )
    try:
        rc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        log(f"could not run {command!r}: {exc}")
        rc = 127

    died = proc.poll() is not None
    svc_rc = stop(proc)
    problems = []
    if died:
        problems.append(f"p11vault died while the suite ran (exit {svc_rc})")
    elif svc_rc != 0:
        problems.append(f"p11vault exited with {svc_rc} after SIGTERM (expected 0)")
    if len(stdout_lines) > 1:
        problems.append(f"p11vault printed more than one stdout line: {stdout_lines!r}")
    if rc != 0 or problems:
        for p in problems:
            log(p)
        log(f"p11vault stderr (tail):\n{tail(stderr_path)}")
    if os.environ.get("P11VAULT_KEEP_DATA"):
        log(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    if rc != 0:
        return rc
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
