#!/usr/bin/env python3
"""Runs the Azure SDKs' own test suites live against p11vault.

The suites are the tests/ folders of the azure-keyvault-keys and azure-keyvault-administration
sdists on PyPI (versions and SHA-256 pinned below). Each run downloads them with pip (a cached
copy under ~/.cache/p11vault/sdk-suites is used when its checksum matches; the cache is never
needed), unpacks them into a temporary directory, collects each suite's Managed HSM tests (see
shim/p11vault_sdk_plugin.py), and runs them with pytest in shards side by side, each shard
against a p11vault of its own (a fresh data dir on a port-0 loopback listener), through the
devtools_testutils shim in tests/sdk-suites/shim. No test file is changed.

The tests listed in tests/sdk-suites/exclusions.toml are skipped with their reasons. The
counts are printed at the end; the exit status is 0 only when every selected, unlisted test
passed (or was skipped by the test itself), no exclusion is stale, and each p11vault exited
cleanly.

Usage (with the interpreter of a venv holding tests/sdk-suites/requirements.txt):
    python tests/sdk-suites/run.py [--suite keys|administration] [--bin PATH] [--jobs N]
                                   [--run-excluded] [-- PYTEST_ARGS...]
Environment: P11VAULT_BIN (default <repo>/target/debug/p11vault), P11VAULT_KEEP_DATA=1 keeps the
data dirs and logs, XDG_CACHE_HOME moves the cache.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.metadata
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SHIM_DIR = HERE / "shim"
EXCLUSIONS = HERE / "exclusions.toml"
PYTEST_INI = HERE / "pytest.ini"


@dataclass(frozen=True)
class Suite:
    name: str  # as in exclusions.toml
    package: str
    version: str
    sha256: str

    @property
    def sdist(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


SUITES = {
    "keys": Suite(
        "keys",
        "azure-keyvault-keys",
        "4.11.3",
        "abe258a46937ab69b148d1832150192f6a300578451d69304a0c3be24b9881aa",
    ),
    "administration": Suite(
        "administration",
        "azure-keyvault-administration",
        "4.7.2",
        "db40044448ed901c4b04755537cd2167d40837376bcd2277139fb6881d40747c",
    ),
}

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
SHARD_TIMEOUT_S = 20 * 60.0  # one shard's pytest
LISTEN_RE = re.compile(r"^p11vault listening on (https://127\.0\.0\.1:(\d+))$")
# Roles of the suites' principal: the initial administrator (Administrator: roles, backups,
# settings) with the key roles added, as an operator does after activating a Managed HSM.
KEY_ROLES = ("Managed HSM Crypto User", "Managed HSM Crypto Officer")


def log(msg: str) -> None:
    print(f"== {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# The sdists
# --------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p11vault" / "sdk-suites"


def fetch_sdist(suite: Suite, work: Path) -> Path:
    """The verified sdist: the cached copy if its checksum matches, else a fresh download
    (stored in the cache when the cache can be written)."""
    cached = cache_dir() / suite.sdist
    if cached.is_file():
        if sha256_of(cached) == suite.sha256:
            log(f"{suite.sdist}: cached copy, sha256 ok")
            return cached
        log(f"{suite.sdist}: cached copy has the wrong sha256, downloading again")
    dest = work / "download"
    dest.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-binary", ":all:", "--no-deps", "--dest", str(dest), f"{suite.package}=={suite.version}",
    ]  # fmt: skip
    log(f"downloading {suite.package}=={suite.version} (sdist)")
    subprocess.run(cmd, check=True)
    got = dest / suite.sdist
    if not got.is_file():
        raise SystemExit(f"pip download did not produce {got}: {sorted(p.name for p in dest.iterdir())}")
    digest = sha256_of(got)
    if digest != suite.sha256:
        raise SystemExit(f"{suite.sdist}: sha256 {digest}, expected {suite.sha256}: refusing to run it")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".part")
        shutil.copyfile(got, tmp)
        os.replace(tmp, cached)
    except OSError as exc:  # a cache that cannot be written is only slower next time
        log(f"could not cache {suite.sdist}: {exc}")
    return got


def unpack_tests(suite: Suite, sdist: Path, work: Path) -> Path:
    root = f"{suite.package.replace('-', '_')}-{suite.version}"
    out = work / suite.name
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{root}/tests/")]
        tar.extractall(out, members=members, filter="data")
    tests = out / root / "tests"
    if not tests.is_dir():
        raise SystemExit(f"{suite.sdist} has no tests/ folder")
    return tests


def check_installed(suite: Suite) -> None:
    """The suite must test the SDK release it ships with."""
    try:
        installed = importlib.metadata.version(suite.package)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{suite.package} is not installed: pip install -r {HERE / 'requirements.txt'}")
    if installed != suite.version:
        raise SystemExit(f"{suite.package} {installed} is installed; the suite is of {suite.version}")


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    ca: Path
    token: str
    data_dir: Path
    proc: subprocess.Popen
    stderr_path: Path
    bin_path: Path
    env: Dict[str, str]
    stdout_lines: List[str] = field(default_factory=list)

    def cli(self, *args: str) -> Dict[str, str]:
        done = subprocess.run(
            [str(self.bin_path), *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=60, env=self.env,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"p11vault {' '.join(args)} failed: {done.stderr}")
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def stderr_tail(self, limit: int = 6000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"<no stderr: {exc}>"

    def requests_tail(self, limit: int = 25) -> str:
        """The last requests the service answered, from its audit log (no secrets are in it)."""
        lines = []
        try:
            with open(self.data_dir / "audit.log") as f:
                records = f.readlines()[-limit:]
        except OSError as exc:
            return f"<no audit log: {exc}>"
        for line in records:
            try:
                r = json.loads(line)
                lines.append(f"{r['time']} {r['method']} {r['path']} -> {r['status']} {r['outcome']}")
            except (ValueError, KeyError):
                lines.append(line.rstrip())
        return "\n".join(lines)

    def stop(self) -> Optional[str]:
        """SIGTERM, then the problem if it did not exit 0 in time (None if it did)."""
        if self.proc.poll() is not None:
            return f"p11vault died during the run (exit {self.proc.returncode})"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"p11vault did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM"
        if rc != 0:
            return f"p11vault exited with {rc} after SIGTERM"
        if self.stdout_lines[1:]:
            return f"p11vault printed more than its listening line: {self.stdout_lines!r}"
        return None


def start_service(bin_path: Path, base: Path) -> Service:
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    stderr_path = base / "p11vault.stderr.log"
    # P11VAULT_* variables would change the service behind the suite's back.
    env = {k: v for k, v in os.environ.items() if not k.startswith("P11VAULT_")}
    env["NO_COLOR"] = "1"  # its log is read as text (printed for shards with failures)
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            [str(bin_path), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file,
            text=True, bufsize=1,
        )  # fmt: skip
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    stdout_lines: List[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stdout_lines.append(line.rstrip("\r\n"))
            lines.put(stdout_lines[-1])
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    match = None
    while match is None:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise SystemExit(
                f"p11vault did not start (exit {proc.returncode}); stdout {stdout_lines!r}\n"
                f"stderr:\n{stderr_path.read_text(errors='replace')[-6000:]}"
            )
        match = LISTEN_RE.match(line)
    service = Service(
        url=match.group(1), ca=data_dir / "ca.pem", token="", data_dir=data_dir, proc=proc,
        stderr_path=stderr_path, bin_path=bin_path, env=env, stdout_lines=stdout_lines,
    )  # fmt: skip
    try:
        service.token = (data_dir / "admin.token").read_text().strip()
        listed = subprocess.run(
            [str(bin_path), "principal", "list", "--json", "--data-dir", str(data_dir)],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        admin_id = json.loads(listed.stdout.splitlines()[0])["id"]
        for role in KEY_ROLES:
            service.cli("role", "assign", "--principal", admin_id, "--role", role)
    except BaseException as exc:
        service.stop()
        raise SystemExit(f"setting up p11vault's principal failed: {exc}") from exc
    return service


# --------------------------------------------------------------------------------------------
# Collecting, then running in shards
# --------------------------------------------------------------------------------------------

# The shards a suite runs in, each on its own service, side by side: the tests spend most of
# their time in the waits they make in live mode for Azure's sake (2 s before each key they
# create, 60 s after each role test, 75 s around each backup and restore), and a full restore
# replaces everything in the HSM. So each keys test file, and each administration test, runs
# alone on a fresh p11vault.
SHARD_BY = {"keys": "file", "administration": "test"}
PLACEHOLDER_URL = "https://127.0.0.1:9"  # for collection only: nothing is sent


@dataclass
class Shard:
    suite: Suite
    tests: Path
    label: str
    nodeids: List[str]


@dataclass
class ShardResult:
    shard: Shard
    report: Dict
    problems: List[str]
    output: str
    service_stderr: str
    seconds: float


def suite_env(suite: Suite, url: str, report: Path, run_excluded: bool) -> Dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("AZURE_", "KEYVAULT_", "BLOB_", "P11VAULT_")):
            del env[k]  # nothing from the caller's environment reaches a suite by accident
    env.update(
        {
            # devtools_testutils: live mode, no recording (there is no proxy).
            "AZURE_TEST_RUN_LIVE": "true",
            "AZURE_SKIP_LIVE_RECORDING": "true",
            # The suites' _test_case.py: the Managed HSM under test. KeysClientPreparer also
            # requires a Key Vault URL; only Managed HSM parametrisations run, so it is the
            # same service.
            "AZURE_MANAGEDHSM_URL": url,
            "AZURE_KEYVAULT_URL": url,
            "KEYVAULT_SKU": "premium",
            # Backups (administration): the service maps the container URI's last segment to a
            # folder under its data dir; neither the host nor the SAS token is contacted.
            "BLOB_STORAGE_URL": "https://p11vaultsdksuites.blob.core.windows.net",
            "BLOB_CONTAINER_NAME": "sdk-suite-backups",
            "BLOB_STORAGE_SAS_TOKEN": "sv=2024-11-04&ss=b&srt=co&sp=rwl&sig=not-a-real-signature",
            "P11VAULT_SDK_SUITE": suite.name,
            "P11VAULT_SDK_EXCLUSIONS": str(EXCLUSIONS),
            "P11VAULT_SDK_REPORT": str(report),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM_DIR), os.environ.get("PYTHONPATH")])),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if run_excluded:
        env["P11VAULT_SDK_RUN_EXCLUDED"] = "1"
    return env


def service_env(env: Dict[str, str], service: Service) -> Dict[str, str]:
    # A principal for test_role_assignment to assign a role to (on Azure: a managed identity).
    assignee = service.cli("principal", "create", "--name", "sdk-suite-assignee")["id"]
    env = dict(env)
    env.update(
        {
            "MANAGED_IDENTITY_CLIENT_ID": assignee,
            # The shim: the bearer token and the CA; clients a test builds itself find the CA
            # through these (requests; aiohttp's default SSL context).
            "P11VAULT_SDK_TOKEN": service.token,
            "P11VAULT_SDK_CA": str(service.ca),
            "REQUESTS_CA_BUNDLE": str(service.ca),
            "SSL_CERT_FILE": str(service.ca),
        }
    )
    return env


def pytest_cmd(tests: Path, args: List[str]) -> List[str]:
    return [
        sys.executable, "-m", "pytest", "-c", str(PYTEST_INI), "--rootdir", str(tests),
        "-p", "p11vault_sdk_plugin", *args,
    ]  # fmt: skip


def run_pytest(cmd: List[str], cwd: Path, env: Dict[str, str], stream: bool) -> "tuple[int, str, bool]":
    """(exit code, output, whether it was killed for taking too long)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    assert proc.stdout is not None
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(SHARD_TIMEOUT_S, kill)
    timer.start()
    out: List[str] = []
    for line in proc.stdout:
        out.append(line)
        if stream:
            sys.stdout.write(line)
            sys.stdout.flush()
    rc = proc.wait()
    timer.cancel()
    return rc, "".join(out), killed.is_set()


def collect(suite: Suite, tests: Path, work: Path, pytest_args: List[str], run_excluded: bool) -> Dict:
    """The suite's Managed HSM tests, exclusions and not-applicable counts (no service needed)."""
    report = work / f"{suite.name}-collected.json"
    env = suite_env(suite, PLACEHOLDER_URL, report, run_excluded)
    env["P11VAULT_SDK_CHECK_STALE"] = "1"
    rc, output, _ = run_pytest(pytest_cmd(tests, ["--collect-only", "-q", *pytest_args, str(tests)]), tests, env, False)
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"collecting {suite.package}'s tests failed (exit {rc}):\n{output}")
    if rc not in (0, 5):
        raise SystemExit(f"collecting {suite.package}'s tests failed (exit {rc}):\n{output}")
    return data


def make_shards(suite: Suite, tests: Path, collected: Dict, run_excluded: bool) -> List[Shard]:
    groups: Dict[str, List[str]] = {}
    for nodeid, entry in collected["tests"].items():
        if entry["outcome"] == "excluded" and not run_excluded:
            continue  # skipped by the plugin: no service needed
        key = nodeid.split("::", 1)[0] if SHARD_BY[suite.name] == "file" else nodeid
        groups.setdefault(key, []).append(nodeid)
    return [Shard(suite, tests, label, sorted(ids)) for label, ids in sorted(groups.items())]


def run_shard(shard: Shard, bin_path: Path, work: Path, pytest_args: List[str], run_excluded: bool, stream: bool) -> ShardResult:
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix=f"{shard.suite.name}-", dir=work))
    report = base / "report.json"
    problems: List[str] = []
    try:
        service = start_service(bin_path, base)
    except SystemExit as exc:  # reported with the shard's tests, which count as not run
        return ShardResult(shard, {"tests": {}}, [str(exc)], "", "", time.monotonic() - started)
    rc, output = -1, ""
    try:
        env = service_env(suite_env(shard.suite, service.url, report, run_excluded), service)
        cmd = pytest_cmd(shard.tests, ["-q", *pytest_args, *shard.nodeids])
        rc, output, killed = run_pytest(cmd, shard.tests, env, stream)
        if killed:
            problems.append(f"pytest was killed after {SHARD_TIMEOUT_S / 60:.0f} minutes")
    except (Exception, SystemExit) as exc:  # the shard's tests then count as not run
        problems.append(f"running the shard failed: {exc}")
    finally:
        stopped = service.stop()
    if stopped:
        problems.append(stopped)
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        data = {"tests": {}}
        problems.append(f"pytest wrote no report ({exc}); exit {rc}")
    if rc not in (0, 1):  # 1: tests failed (counted); anything else: pytest itself failed
        problems.append(f"pytest exited with {rc}")
    stderr = f"{service.stderr_tail()}\n-- its last requests (audit log):\n{service.requests_tail()}"
    if os.environ.get("P11VAULT_KEEP_DATA") != "1":
        shutil.rmtree(base, ignore_errors=True)
    return ShardResult(shard, data, problems, output, stderr, time.monotonic() - started)


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------

OUTCOMES = ("passed", "failed", "skipped", "excluded", "not run")
NOT_APPLICABLE = {
    "key_vault_only": "Key Vault-only parametrisations",
    "offline": "offline unit tests",
    "other_api_version": "non-default API versions (skipped by the suite in live mode)",
    "playback_only": "playback-only tests",
}


def print_summary(suites: List[Suite], collected: Dict[str, Dict], results: List[ShardResult]) -> bool:
    ok = True
    print()
    log("SDK suites: Managed HSM tests live against p11vault")
    total = dict.fromkeys(OUTCOMES, 0)
    for suite in suites:
        tests = {k: dict(v) for k, v in collected[suite.name]["tests"].items()}
        shard_results = [r for r in results if r.shard.suite is suite]
        for r in shard_results:
            for nodeid, entry in r.report.get("tests", {}).items():
                tests[nodeid] = entry
        c = dict.fromkeys(OUTCOMES, 0)
        for entry in tests.values():
            c["excluded" if entry["outcome"].startswith("excluded") else entry["outcome"]] += 1
        for k in total:
            total[k] += c[k]
        na = collected[suite.name].get("not_applicable", {})
        busiest = max((r.seconds for r in shard_results), default=0)
        print(
            f"{suite.package} {suite.version}: {c['passed']} passed, {c['failed']} failed, "
            f"{c['skipped']} skipped by the test, {c['excluded']} excluded (exclusions.toml), "
            f"of {len(tests)} Managed HSM tests; not applicable (deselected): "
            + (", ".join(f"{n} {NOT_APPLICABLE.get(k, k)}" for k, n in sorted(na.items())) or "none")
            + f"; {len(shard_results)} shards, the longest {busiest:.0f} s"
        )
        for nodeid, entry in sorted(tests.items()):
            if entry["outcome"] == "failed":
                print(f"  FAILED {nodeid}: {entry.get('message', '')}")
            elif entry["outcome"] == "skipped":
                print(f"  skipped {nodeid}: {entry.get('message', '')}")
            elif entry["outcome"] == "excluded-failed":
                print(f"  excluded, and failed (--run-excluded) {nodeid}: {entry.get('message', '')}")
            elif entry["outcome"] == "excluded-passed":
                print(f"  excluded but PASSED (remove it from exclusions.toml?) {nodeid}")
            elif entry["outcome"] == "not run":
                print(f"  NOT RUN {nodeid}")
        stale = collected[suite.name].get("unmatched_exclusions", [])
        if stale:
            print("  PROBLEM: stale exclusions (match no Managed HSM test): " + ", ".join(stale))
        problems = [f"{r.shard.label}: {p}" for r in shard_results for p in r.problems]
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        if c["failed"] or c["not run"] or stale or problems or not tests:
            ok = False
    skipped = total["skipped"] + total["excluded"]
    failed = total["failed"] + total["not run"]  # a test that never ran did not pass
    print("SDK suites " + ("passed" if ok else "FAILED"))
    print(f"sdk-suites: {total['passed']} passed, {failed} failed, {skipped} skipped")
    return ok


def print_shard(r: ShardResult) -> None:
    log(f"{r.shard.suite.package}: {r.shard.label} ({r.seconds:.0f} s)")
    sys.stdout.write(r.output)
    failed = any(e["outcome"] in ("failed", "excluded-failed") for e in r.report.get("tests", {}).values())
    if failed or r.problems:
        print(f"-- p11vault stderr (tail):\n{r.service_stderr}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), action="append", help="default: both")
    parser.add_argument("--bin", default=os.environ.get("P11VAULT_BIN") or str(REPO_ROOT / "target/debug/p11vault"))
    parser.add_argument("--jobs", type=int, default=24, help="shards run at once (default 24: they mostly wait; 1 streams the output)")
    parser.add_argument("--run-excluded", action="store_true", help="run the listed tests too (to check the list)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. -k rotation)")
    args = parser.parse_args()
    bin_path = Path(args.bin)
    if not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        raise SystemExit(f"p11vault binary not found: {bin_path} (--bin or P11VAULT_BIN)")
    suites = [SUITES[name] for name in (args.suite or ["keys", "administration"])]
    for suite in suites:
        check_installed(suite)

    work = Path(tempfile.mkdtemp(prefix="p11vault-sdk-suites-"))
    started = time.monotonic()
    try:
        unpacked = {s.name: unpack_tests(s, fetch_sdist(s, work), work) for s in suites}
        collected = {s.name: collect(s, unpacked[s.name], work, args.pytest_args, args.run_excluded) for s in suites}
        shards = [sh for s in suites for sh in make_shards(s, unpacked[s.name], collected[s.name], args.run_excluded)]
        jobs = max(1, args.jobs)
        log(f"{len(shards)} shards, {jobs} at a time, each on a fresh p11vault")
        results: List[ShardResult] = []
        if jobs == 1:
            for sh in shards:
                log(f"{sh.suite.package}: {sh.label}")
                results.append(run_shard(sh, bin_path, work, args.pytest_args, args.run_excluded, True))
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [
                    pool.submit(run_shard, sh, bin_path, work, args.pytest_args, args.run_excluded, False)
                    for sh in shards
                ]
                for future in concurrent.futures.as_completed(futures):
                    results.append(future.result())
                    print_shard(results[-1])
        ok = print_summary(suites, collected, results)
        log(f"SDK suites took {time.monotonic() - started:.0f} s")
        return 0 if ok else 1
    finally:
        if os.environ.get("P11VAULT_KEEP_DATA") == "1":
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
