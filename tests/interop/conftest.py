"""Fixtures for the p11vault Python interop suite.

One p11vault process is started per test session (fresh temporary data directory) and driven
through the official Azure SDK (``azure-keyvault-keys``) plus a few raw ``requests`` calls for
wire-level checks.

Environment:
    P11VAULT_BIN              path to the p11vault binary (default: <repo>/target/debug/p11vault)
    P11VAULT_TEST_TOKEN       ``softhsm`` (default: the embedded SoftHSM2 token) or ``kryoptic``
    P11VAULT_KRYOPTIC_MODULE  the kryoptic module, with ``kryoptic`` (scripts/install-kryoptic.sh
                              prints it)
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import sys
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.keyvault.keys import KeyClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import with_p11vault  # noqa: E402  (tests/with_p11vault.py: the token preparation)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "p11vault"
API_VERSION = "2025-07-01"
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
LISTEN_RE = re.compile(r"^p11vault listening on (https://127\.0\.0\.1:(\d+))$")
STDERR_TAIL_CHARS = 8000


# --------------------------------------------------------------------------------------------
# The token under test
# --------------------------------------------------------------------------------------------

TEST_TOKEN = os.environ.get("P11VAULT_TEST_TOKEN", "softhsm")
if TEST_TOKEN not in ("softhsm", "kryoptic"):
    raise RuntimeError(f"P11VAULT_TEST_TOKEN={TEST_TOKEN!r}: softhsm or kryoptic")
# The curves each token generates keys on (the service probes them at its first start; a
# curve the token lacks is a 400 naming the token). kryoptic 1.5.4 has no secp256k1.
TOKEN_CURVES = {
    "softhsm": ("P-256", "P-384", "P-521", "P-256K"),
    "kryoptic": ("P-256", "P-384", "P-521"),
}[TEST_TOKEN]


def on_kryoptic() -> bool:
    return TEST_TOKEN == "kryoptic"


def _prepare_token(data_dir: Path) -> Dict[str, str]:
    """Makes a data dir ready for the token under test before its first start; returns what
    the service's environment needs (``tests/with_p11vault.py``'s ``prepare_token``, shared
    with the JavaScript and Rust SDK suites)."""
    return with_p11vault.prepare_token(data_dir, TEST_TOKEN)


# --------------------------------------------------------------------------------------------
# Credential
# --------------------------------------------------------------------------------------------


class StaticTokenCredential:
    """azure.core TokenCredential returning a fixed opaque bearer token.

    ``get_token`` must accept ``**kwargs``: the Key Vault challenge policy passes ``claims``,
    ``tenant_id`` and ``enable_cae``.
    """

    def __init__(self, token: str) -> None:
        self._token = token
        self.calls: List[Dict[str, Any]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append({"scopes": scopes, **kwargs})
        return AccessToken(self._token, int(time.time()) + 3600)


# --------------------------------------------------------------------------------------------
# Service process
# --------------------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    port: int
    ca: str
    token: str
    data_dir: Path
    proc: subprocess.Popen
    stderr_path: Path
    bin_path: Path
    admin_id: str = ""
    stdout_lines: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> Dict[str, str]:
        """Runs the admin CLI on this service's data dir; returns its ``k=v`` output lines."""
        done = subprocess.run(
            [str(self.bin_path), *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        assert done.returncode == 0, f"p11vault {' '.join(args)}: {done.stderr}"
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def new_principal(self, name: str, *roles: str, scope: str = "/") -> "tuple[str, str]":
        """Registers a principal with roles; returns (id, token)."""
        args = ["principal", "create", "--name", name, "--scope", scope]
        for role in roles:
            args += ["--role", role]
        out = self.cli(*args)
        return out["id"], out["token"]

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError as exc:  # pragma: no cover - diagnostics only
            return f"<could not read stderr: {exc}>"
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return text

    def alive(self) -> bool:
        return self.proc.poll() is None


_SERVICE: Optional[Service] = None


def _read_stderr(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no stderr>"
    return text[-STDERR_TAIL_CHARS:]


def _start_service(bin_path: Path, data_dir: Path) -> Service:
    stderr_path = data_dir.parent / "p11vault.stderr.log"
    stderr_file = open(stderr_path, "wb")
    # P11VAULT_* variables (e.g. P11VAULT_PUBLIC_URL, P11VAULT_CONFIG) would change the service's
    # behaviour behind the suite's back: the child gets none of them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("P11VAULT_")}
    env.update(_prepare_token(data_dir))
    proc = subprocess.Popen(
        [str(bin_path), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
        bufsize=1,
    )
    stderr_file.close()  # the child keeps its own descriptor

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

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    match = None
    while match is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pytest.fail(
                f"p11vault did not print its listening line within {STARTUP_TIMEOUT_S:.0f}s.\n"
                f"stdout so far: {stdout_lines!r}\nstderr:\n{_read_stderr(stderr_path)}",
                pytrace=False,
            )
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            rc = proc.wait()
            pytest.fail(
                f"p11vault exited (code {rc}) before it was ready.\n"
                f"stdout: {stdout_lines!r}\nstderr:\n{_read_stderr(stderr_path)}",
                pytrace=False,
            )
        match = LISTEN_RE.match(line)

    url, port = match.group(1), int(match.group(2))
    ca = data_dir / "ca.pem"
    token_file = data_dir / "admin.token"
    problems = []
    if not ca.is_file():
        problems.append(f"{ca} missing")
    if not token_file.is_file():
        problems.append(f"{token_file} missing")
    if problems:
        proc.send_signal(signal.SIGTERM)
        proc.wait(SHUTDOWN_TIMEOUT_S)
        pytest.fail("after startup: " + ", ".join(problems) + f"\nstderr:\n{_read_stderr(stderr_path)}")
    token = token_file.read_text().strip()
    if not token:
        proc.send_signal(signal.SIGTERM)
        proc.wait(SHUTDOWN_TIMEOUT_S)
        pytest.fail(f"{token_file} is empty")

    service = Service(
        url=url,
        port=port,
        ca=str(ca),
        token=token,
        data_dir=data_dir,
        proc=proc,
        stderr_path=stderr_path,
        bin_path=bin_path,
        stdout_lines=stdout_lines,
        env=env,
    )
    # The initial administrator holds only the Administrator role, which uses no keys. The
    # suite's default client is that principal with the key roles added, as an operator would
    # do after activating a Managed HSM.
    listed = subprocess.run(
        [str(bin_path), "principal", "list", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    service.admin_id = json.loads(listed.stdout.splitlines()[0])["id"]
    for role in ("Managed HSM Crypto User", "Managed HSM Crypto Officer"):
        service.cli("role", "assign", "--principal", service.admin_id, "--role", role)
    return service


@pytest.fixture(scope="session")
def service() -> Service:
    """The one p11vault process of this session."""
    global _SERVICE
    bin_path = Path(os.environ.get("P11VAULT_BIN") or DEFAULT_BIN)
    if not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        pytest.fail(f"p11vault binary not found or not executable: {bin_path} (set P11VAULT_BIN)")

    base = Path(tempfile.mkdtemp(prefix="p11vault-interop-"))
    data_dir = base / "data"
    data_dir.mkdir()
    svc = _start_service(bin_path, data_dir)
    _SERVICE = svc
    try:
        yield svc
    finally:
        _SERVICE = None
        died_early = svc.proc.poll() is not None
        if not died_early:
            svc.proc.send_signal(signal.SIGTERM)
        try:
            rc = svc.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
            pytest.fail(
                f"p11vault did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM\n"
                f"stderr:\n{svc.stderr_tail()}"
            )
        stderr = svc.stderr_tail()
        keep = os.environ.get("P11VAULT_KEEP_DATA")
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        assert not died_early, f"p11vault died during the session (exit {rc})\nstderr:\n{stderr}"
        assert rc == 0, f"p11vault exited with {rc} after SIGTERM (expected 0)\nstderr:\n{stderr}"
        extra = svc.stdout_lines[1:]
        assert not extra, f"p11vault printed more than one stdout line: {svc.stdout_lines!r}"


def _stop_service(svc: Service) -> Optional[str]:
    """SIGTERM, then waits; returns what went wrong (None if it exited 0 and printed one line)."""
    died_early = svc.proc.poll() is not None
    if not died_early:
        svc.proc.send_signal(signal.SIGTERM)
    try:
        rc = svc.proc.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        svc.proc.kill()
        svc.proc.wait()
        return f"p11vault did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM"
    if died_early:
        return f"p11vault died during the test (exit {rc})"
    if rc != 0:
        return f"p11vault exited with {rc} after SIGTERM (expected 0)"
    if svc.stdout_lines[1:]:
        return f"p11vault printed more than one stdout line: {svc.stdout_lines!r}"
    return None


def _not_activated_data_dir(base: Path) -> Path:
    """A data dir prepared for the token under test whose ``p11vault.toml`` says
    ``[security_domain] auto_activate = false``: its first start leaves the HSM not activated,
    waiting for a security-domain download or upload."""
    data_dir = base / "data"
    data_dir.mkdir()
    _prepare_token(data_dir)
    config = data_dir / "p11vault.toml"
    text = config.read_text() if config.exists() else ""
    if "auto_activate = true" in text:
        text = text.replace("auto_activate = true", "auto_activate = false")
    else:
        text += "\n[security_domain]\nauto_activate = false\n"
    config.write_text(text)
    return data_dir


@pytest.fixture
def start_not_activated() -> Callable[[], Service]:
    """Starts fresh p11vault processes that are not activated (``auto_activate = false``), each
    on its own data dir and token; all are stopped at the end of the test, which fails unless
    each exits 0 on SIGTERM."""
    bin_path = Path(os.environ.get("P11VAULT_BIN") or DEFAULT_BIN)
    started: List["tuple[Path, Service]"] = []

    def start() -> Service:
        base = Path(tempfile.mkdtemp(prefix="p11vault-sd-"))
        svc = _start_service(bin_path, _not_activated_data_dir(base))
        started.append((base, svc))
        return svc

    yield start
    problems = []
    for base, svc in started:
        problem = _stop_service(svc)
        if problem:
            problems.append(f"{svc.url}: {problem}\nstderr:\n{svc.stderr_tail(4000)}")
        if not os.environ.get("P11VAULT_KEEP_DATA"):
            shutil.rmtree(base, ignore_errors=True)
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def _service_still_alive(service: Service):
    """Fail the test (with the service's stderr) if p11vault died while it ran."""
    assert service.alive(), (
        f"p11vault is not running (exit {service.proc.returncode})\nstderr:\n{service.stderr_tail()}"
    )
    yield
    if not service.alive():
        pytest.fail(
            f"p11vault died during this test (exit {service.proc.returncode})\nstderr:\n"
            f"{service.stderr_tail()}",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVICE is not None:
        report.sections.append(("p11vault stderr (tail)", _SERVICE.stderr_tail(4000)))


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def make_key_client(service: Service, token: Optional[str] = None, **kwargs: Any) -> KeyClient:
    return KeyClient(
        service.url,
        StaticTokenCredential(service.token if token is None else token),
        verify_challenge_resource=False,
        connection_verify=service.ca,
        retry_total=0,
        **kwargs,
    )


@pytest.fixture
def key_client(service: Service) -> KeyClient:
    return make_key_client(service)


@pytest.fixture
def client_factory(service: Service) -> Callable[..., KeyClient]:
    """Build extra KeyClients, e.g. with a wrong token."""
    return lambda token=None, **kw: make_key_client(service, token, **kw)


class RawApi:
    """Thin ``requests`` wrapper for wire-level checks (bearer token, CA, api-version)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        # Note: Session.verify would be overridden by REQUESTS_CA_BUNDLE from the environment,
        # so verify= is passed on every request instead. This session keeps connections alive
        # (used with fresh=False).
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        token: Optional[str] = None,
        api_version: Optional[str] = API_VERSION,
        params: Optional[Dict[str, Any]] = None,
        headers: Optional[Dict[str, str]] = None,
        fresh: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request.

        ``fresh=True`` (default) uses a new TLS connection that is closed afterwards, so a test
        about, say, a 401 is not disturbed by how the service handles keep-alive after an early
        response (that has its own tests, which pass ``fresh=False``).
        """
        hdrs = {"Accept": "application/json"}
        if fresh:
            hdrs["Connection"] = "close"
        if auth:
            hdrs["Authorization"] = f"Bearer {token if token is not None else self.service.token}"
        hdrs.update(headers or {})
        query: Dict[str, Any] = {}
        if api_version is not None:
            query["api-version"] = api_version
        query.update(params or {})
        url = path if path.startswith("https://") else self.service.url + path
        kwargs.setdefault("verify", self.service.ca)
        kwargs.setdefault("timeout", 60)
        if fresh:
            with requests.Session() as one_off:
                return one_off.request(method, url, params=query, headers=hdrs, **kwargs)
        return self.session.request(method, url, params=query, headers=hdrs, **kwargs)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, **kw)


@pytest.fixture(scope="session")
def raw(service: Service) -> RawApi:
    return RawApi(service)


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


@pytest.fixture
def unique_name(request) -> Callable[[str], str]:
    """Return a factory of key names unique across the session: ``<prefix>-<16 hex>``."""

    def make(prefix: str = "k") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:16]}"

    return make


@pytest.fixture
def key_name(unique_name) -> str:
    return unique_name("key")


# --------------------------------------------------------------------------------------------
# Wycheproof counts
# --------------------------------------------------------------------------------------------

_WYCHEPROOF: Dict[str, Any] = {}


@pytest.fixture(scope="session")
def wycheproof_report() -> Dict[str, Any]:
    """Per vector file, a Counter of outcomes; printed at the end of the run."""
    return _WYCHEPROOF


def pytest_terminal_summary(terminalreporter) -> None:
    if not _WYCHEPROOF:
        return
    terminalreporter.section("Wycheproof vectors")
    total = 0
    for suite, counts in sorted(_WYCHEPROOF.items()):
        n = sum(v for k, v in counts.items() if "groups" not in k)
        total += n
        detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"{suite}: {n} vectors passed ({detail})")
    terminalreporter.write_line(f"total: {total} vectors passed")
