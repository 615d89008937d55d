"""The harness of the az suite: a fresh p11vault per module (and per form, where a module runs
in both forms), signed in to with ``p11vault az-setup`` and ``az login --identity`` as an
operator would, and the service's state read back over its REST API.

Both forms of every data-plane command are run: ``--id https://127.0.0.1:PORT/...`` and
``--hsm-name p11vault``, for which az calls ``https://p11vault.localhost:PORT`` (the mhsmDns
suffix az-setup registers). Making ``p11vault.localhost`` resolve is the operator's part (the
README: an /etc/hosts line); here each az process of the ``--hsm-name`` form runs in a mount
namespace of its own (``unshare -rm``) in which a copy of /etc/hosts with that line is
mounted over /etc/hosts, so the machine's own file is never touched. The copy also names the
Blob service of the backup location's storage account (``{account}.blob.localhost``), which
the ``az storage container`` commands call in either form (``resolve=True``).

Environment:
    P11VAULT_BIN              the binary (default: target/debug/p11vault under CARGO_TARGET_DIR)
    P11VAULT_AZ               the az to run (default: .venv-az/bin/az, scripts/install-az.sh)
    P11VAULT_TEST_TOKEN       softhsm (default) or kryoptic (with P11VAULT_KRYOPTIC_MODULE)

Network: loopback only.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import with_p11vault  # noqa: E402  (the token preparation shared by every suite)

AZ = os.environ.get("P11VAULT_AZ") or str(ROOT / ".venv-az" / "bin" / "az")
BIN = os.environ.get("P11VAULT_BIN") or str(with_p11vault.default_bin())
TEST_TOKEN = os.environ.get("P11VAULT_TEST_TOKEN", "softhsm")
LISTEN_RE = re.compile(r"^p11vault listening on (https://127\.0\.0\.1:(\d+))$")
API = "7.5"
# The seeds' placeholders, as this service fills them: its one subscription (az's tenant-level
# sign-in names the tenant), resource group, location and HSM name (README).
SUBSCRIPTION = "p11vault"
GROUP = "p11vault"
LOCATION = "local"
HSM = "p11vault"
KEY_ROLES = ("Managed HSM Crypto User", "Managed HSM Crypto Officer", "Managed HSM Backup")


def b64(value):
    """Bytes of a base64 value, whichever alphabet (az prints standard base64, the API
    base64url)."""
    value = value.replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class Service:
    """One p11vault on a port-0 loopback listener, with a fresh data dir."""

    def __init__(self, base: Path, clock_file: Path | None = None, activate: bool = True,
                 storage_account: str | None = None):
        self.base = base
        self.data = base / "data"
        self.data.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("P11VAULT_")}
        self.env.update(with_p11vault.prepare_token(self.data, TEST_TOKEN))
        if not activate:
            # A data dir that waits for its security domain (as tests/common's
            # not_activated_data_dir makes one).
            toml = self.data / "p11vault.toml"
            text = toml.read_text() if toml.exists() else ""
            if "auto_activate = true" in text:
                text = text.replace("auto_activate = true", "auto_activate = false")
            else:
                text += "\n[security_domain]\nauto_activate = false\n"
            toml.write_text(text)
        if storage_account is not None:
            # The backup location's storage account, under the name the seed gives it.
            toml = self.data / "p11vault.toml"
            text = toml.read_text() if toml.exists() else ""
            toml.write_text(text + f'\n[backup]\nstorage_account = "{storage_account}"\n')
        self.storage_account = storage_account or "p11vaultbackup"
        if clock_file is not None:
            clock_file.write_text("0\n")
            self.env["P11VAULT_TEST_CLOCK_FILE"] = str(clock_file)
        self.clock_file = clock_file
        self.stderr = open(base / "p11vault.stderr.log", "wb")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", str(self.data), "--listen", "127.0.0.1:0"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, bufsize=1,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        deadline = time.monotonic() + 60
        match = None
        while match is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"p11vault did not start:\n{self.stderr_tail()}")
            match = LISTEN_RE.match(line.strip())
        self.url = match.group(1)
        self.ca = str(self.data / "ca.pem")
        self.token_file = str(self.data / "admin.token")
        self.token = Path(self.token_file).read_text().strip()
        self.tls = ssl.create_default_context(cafile=self.ca)
        self.admin_id = json.loads(self.cli("principal", "list", "--json").splitlines()[0])["id"]
        for role in KEY_ROLES:
            self.cli("role", "assign", "--principal", self.admin_id, "--role", role)

    def cli(self, *args):
        done = subprocess.run([BIN, *args, "--data-dir", str(self.data)], capture_output=True,
                              text=True, timeout=60, env=self.env)
        assert done.returncode == 0, f"p11vault {' '.join(args)}: {done.stderr}"
        return done.stdout

    def advance_days(self, days):
        """Moves the service's test clock (P11VAULT_TEST_CLOCK_FILE) forward."""
        offset = int(self.clock_file.read_text().strip() or 0) + days * 86400
        self.clock_file.write_text(f"{offset}\n")

    def rest(self, method, path, token=None, body=None, api=API, allow_error=True):
        """(status, JSON body) of a request straight to the REST API, as the administrator."""
        sep = "&" if "?" in path else "?"
        url = f"{self.url}{path}{sep}api-version={api}" if api else f"{self.url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, method=method, data=data)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=60) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if not allow_error:
                raise
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def stderr_tail(self):
        self.stderr.flush()
        text = (self.base / "p11vault.stderr.log").read_text(errors="replace")
        return text[-6000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


class Az:
    """az signed in to a service, in one form: ``id`` or ``hsm-name``."""

    def __init__(self, svc: Service, form: str, workdir: Path, token_file: str | None = None):
        self.svc = svc
        self.form = form
        config_dir = workdir / "azconfig"
        setup = subprocess.run(
            [BIN, "az-setup", "--data-dir", str(svc.data), "--token-file",
             token_file or svc.token_file, "--config-dir", str(config_dir), "--url", svc.url,
             "--hsm-name", HSM],
            capture_output=True, text=True, timeout=60, check=True,
        )
        # What an operator runs: eval of the printed export lines.
        dump = subprocess.run(["sh", "-c", f"eval {shlex.quote(setup.stdout)} && env -0"],
                              capture_output=True, check=True, timeout=30)
        self.env = dict(i.split("=", 1) for i in dump.stdout.decode().split("\0") if "=" in i)
        self.setup_output = setup.stdout
        self.port = svc.url.rsplit(":", 1)[1]
        self.hsm_url = self.env["P11VAULT_HSM_URL"]
        assert self.hsm_url == f"https://{HSM}.localhost:{self.port}"
        hosts = workdir / "hosts"
        # The HSM's name, and the Blob service's name of its storage account
        # (`https://{account}.blob.localhost:PORT`, the storage suffix az-setup registers).
        hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {HSM}.localhost\n"
                         f"127.0.0.1 {svc.storage_account}.blob.localhost\n")
        self.hosts = hosts
        login = self.run("login", "--identity", "--allow-no-subscriptions")
        assert login[0]["tenantId"] == "p11vault"

    def command(self, args, resolve=False):
        """az with `args`; in the hosts file's namespace for the --hsm-name form, and for
        `resolve` (the Blob service's `{account}.blob.localhost`, in either form)."""
        if self.form != "hsm-name" and not resolve:
            return [AZ, *args]
        # NAME.localhost resolves as an /etc/hosts line makes it, in this process only.
        return ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(self.hosts), AZ, *args]

    def run(self, *args, expect_ok=True, resolve=False):
        done = subprocess.run(self.command([*args, "-o", "json"], resolve), env=self.env,
                              capture_output=True, text=True, timeout=180)
        if expect_ok:
            assert done.returncode == 0, f"az {' '.join(args)}: {done.stderr}"
            return json.loads(done.stdout) if done.stdout.strip() else None
        return done

    def text(self, *args, resolve=False):
        """A command's stdout as it prints it (for `-o tsv`)."""
        done = subprocess.run(self.command(list(args), resolve), env=self.env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, f"az {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def fails(self, *args, resolve=False):
        done = self.run(*args, expect_ok=False, resolve=resolve)
        assert done.returncode != 0, f"az {' '.join(args)} succeeded: {done.stdout}"
        return done.stderr

    # The two forms of a data-plane target.
    def hsm(self):
        """The HSM: `--hsm-name p11vault`, or `--id https://HOST:PORT/`."""
        return ["--hsm-name", HSM] if self.form == "hsm-name" else ["--id", f"{self.svc.url}/"]

    def key(self, name, collection="keys"):
        """A key: `--hsm-name p11vault --name NAME`, or `--id https://HOST:PORT/{collection}/NAME`."""
        if self.form == "hsm-name":
            return ["--hsm-name", HSM, "--name", name]
        return ["--id", f"{self.svc.url}/{collection}/{name}"]


def _unshare_works():
    done = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    return done.returncode == 0, done.stderr


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    assert Path(AZ).is_file(), f"{AZ} missing: run scripts/install-az.sh"
    assert Path(BIN).is_file(), f"{BIN} missing: cargo build"
    ok, why = _unshare_works()
    assert ok, ("the --hsm-name form needs `unshare -rm` (user and mount namespaces) to give "
                f"az a hosts file naming {HSM}.localhost: {why}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("p11vault"))
    yield svc
    rc = svc.stop()
    assert rc == 0, f"p11vault exited {rc}:\n{svc.stderr_tail()}"


@pytest.fixture(scope="module", params=["id", "hsm-name"])
def form_service(request, tmp_path_factory):
    """A service of its own for each form, so that each form runs the seed from the start; a
    module may name its storage account with `STORAGE_ACCOUNT`."""
    svc = Service(tmp_path_factory.mktemp(f"p11vault-{request.param}"),
                  storage_account=getattr(request.module, "STORAGE_ACCOUNT", None))
    az = Az(svc, request.param, tmp_path_factory.mktemp(f"az-{request.param}"))
    yield svc, az
    rc = svc.stop()
    assert rc == 0, f"p11vault exited {rc}:\n{svc.stderr_tail()}"
