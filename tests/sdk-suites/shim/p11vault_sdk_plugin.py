"""pytest plugin that runs an Azure SDK test suite (from its sdist) live against p11vault.

Loaded by tests/sdk-suites/run.py with ``-p p11vault_sdk_plugin``; it is p11vault's part of
the harness, beside the ``devtools_testutils`` shim:

* refuses to run unless ``AZURE_TEST_RUN_LIVE`` is set (the shim plays nothing back);
* refuses connections to anything but loopback addresses (the service is on 127.0.0.1);
* provides the ``test_proxy`` session fixture the suites' conftests request (no proxy: a no-op);
* makes ``verify_challenge_resource=False`` the default of every Key Vault client, because
  some tests build clients themselves rather than through ``create_client_from_credential``
  (test_examples_crypto.py: ``CryptographyClient(key, credential)``) and p11vault is not under
  an Azure domain; an explicit argument still wins;
* selects the Managed HSM tests: in azure-keyvault-keys the ``is_hsm=True`` (``_mhsm``)
  parametrisations, in azure-keyvault-administration (a Managed HSM-only API) the tests that
  go through a live client preparer (those parametrised on ``api_version``), at the default
  API version (its preparers skip the others in live mode). Everything else is deselected as
  not applicable: Key Vault-only parametrisations, the administration suite's other API
  versions, and offline unit tests (mocked transports; they test the SDK, not a service);
* skips the tests listed in tests/sdk-suites/exclusions.toml with their reasons (with
  ``P11VAULT_SDK_CHECK_STALE=1`` it reports entries that match no selected test, which run.py
  treats as an error, so the list cannot go stale);
* writes every selected test's outcome to ``P11VAULT_SDK_REPORT`` (JSON) for run.py's counts.

Environment: P11VAULT_SDK_SUITE (``keys`` or ``administration``), P11VAULT_SDK_EXCLUSIONS
(path of exclusions.toml), P11VAULT_SDK_REPORT (path to write), P11VAULT_SDK_RUN_EXCLUDED
(``1``: run the listed tests too, to see whether they still fail).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import tomllib
from typing import Any, Dict, List, Optional

import pytest

SUITES = ("keys", "administration")
EXCLUDED_PREFIX = "p11vault exclusion: "


def _suite() -> str:
    suite = os.environ.get("P11VAULT_SDK_SUITE", "")
    if suite not in SUITES:
        raise pytest.UsageError(f"P11VAULT_SDK_SUITE={suite!r}: one of {', '.join(SUITES)}")
    return suite


def pattern_matches(pattern: str, nodeid: str) -> bool:
    """``*`` matches any text (``::`` and brackets included); every other character itself."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, nodeid) is not None


def load_exclusions(path: str, suite: str) -> List[Dict[str, str]]:
    """The exclusions of one suite: dicts with ``test`` (a pattern over node ids relative to
    the suite's tests/ directory, see ``pattern_matches``) and ``reason``."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = []
    for i, entry in enumerate(data.get("exclude", [])):
        missing = [k for k in ("suite", "test", "reason") if not str(entry.get(k, "")).strip()]
        if missing:
            raise pytest.UsageError(f"{path}: exclusion #{i + 1} lacks {', '.join(missing)}")
        if entry["suite"] not in SUITES:
            raise pytest.UsageError(f"{path}: exclusion #{i + 1}: unknown suite {entry['suite']!r}")
        if entry["suite"] == suite:
            entries.append({"test": entry["test"], "reason": " ".join(entry["reason"].split())})
    return entries


# --------------------------------------------------------------------------------------------
# Live mode only; clients for a service outside Azure's domains
# --------------------------------------------------------------------------------------------


def _default_no_challenge_verification(cls: Any) -> None:
    original = cls.__init__
    if getattr(original, "_p11vault_patched", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("verify_challenge_resource", False)
        original(self, *args, **kwargs)

    __init__._p11vault_patched = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _loopback_only() -> None:
    """Any connection the suites open goes to the service on 127.0.0.1: one to another address
    (an attestation service, storage, Entra ID) fails the test instead of leaving the machine."""
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConnectionRefusedError(f"p11vault SDK suites: no network but loopback ({host!r})")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return original_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return original_connect_ex(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    from devtools_testutils import is_live

    if not is_live():
        raise pytest.UsageError(
            "the devtools_testutils shim runs live only: set AZURE_TEST_RUN_LIVE=true "
            "(tests/sdk-suites/run.py does)"
        )
    suite = _suite()
    _loopback_only()
    from azure.keyvault.keys._shared import async_client_base as keys_async
    from azure.keyvault.keys._shared import client_base as keys_sync

    _default_no_challenge_verification(keys_sync.KeyVaultClientBase)
    _default_no_challenge_verification(keys_async.AsyncKeyVaultClientBase)
    if suite == "administration":
        from azure.keyvault.administration._internal import async_client_base as admin_async
        from azure.keyvault.administration._internal import client_base as admin_sync

        _default_no_challenge_verification(admin_sync.KeyVaultClientBase)
        _default_no_challenge_verification(admin_async.AsyncKeyVaultClientBase)

    for marker in ("live_test_only: run only in live mode", "playback_test_only: never run in live mode"):
        config.addinivalue_line("markers", marker)
    config._p11vault = _Recorder(suite)  # type: ignore[attr-defined]
    config.pluginmanager.register(config._p11vault, "p11vault-recorder")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def test_proxy() -> None:
    """Azure's fixture starts the test proxy; live without recording there is none."""
    return None


# --------------------------------------------------------------------------------------------
# Selection, exclusions, outcomes
# --------------------------------------------------------------------------------------------


def applicability(item: pytest.Item, suite: str) -> Optional[str]:
    """None for a Managed HSM test that runs live, else why it does not apply."""
    if item.get_closest_marker("playback_test_only"):
        return "playback_only"  # Azure's framework skips these in live mode
    params = getattr(getattr(item, "callspec", None), "params", {})
    if suite == "keys":
        # The keys conftest makes only the default API version in live mode (unless
        # --all-api-versions); tests that name versions themselves keep theirs.
        if "is_hsm" not in params:
            return "offline"
        return None if params["is_hsm"] is True else "key_vault_only"
    if "api_version" not in params:
        return "offline"
    # The administration preparers skip every API version but the default in live mode
    # ("This test only uses the default API version for live tests"): like the keys suite's
    # live parametrisation, those versions do not exist live.
    from azure.keyvault.administration._internal.client_base import DEFAULT_VERSION

    return None if params["api_version"] == DEFAULT_VERSION else "other_api_version"


class _Recorder:
    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.outcomes: Dict[str, Dict[str, Any]] = {}
        self.not_applicable: Dict[str, int] = {}
        self.exclusions: List[Dict[str, str]] = []
        self.unmatched: List[str] = []
        self.run_excluded = os.environ.get("P11VAULT_SDK_RUN_EXCLUDED") == "1"

    # -- collection ---------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: List[pytest.Item]) -> None:
        path = os.environ.get("P11VAULT_SDK_EXCLUSIONS")
        self.exclusions = load_exclusions(path, self.suite) if path else []
        keep, drop = [], []
        for item in items:
            why = applicability(item, self.suite)
            if why is None:
                keep.append(item)
                continue
            drop.append(item)
            self.not_applicable[why] = self.not_applicable.get(why, 0) + 1
        matched = set()
        for item in keep:
            reason = self._exclusion_for(item.nodeid, matched)
            if reason is None:
                # Until it reports: a selected test that never runs is counted as not run.
                self.outcomes[item.nodeid] = {"outcome": "not run"}
                continue
            self.outcomes[item.nodeid] = {"outcome": "excluded", "reason": reason}
            if not self.run_excluded:
                item.add_marker(pytest.mark.skip(reason=EXCLUDED_PREFIX + reason))
        # Checked where the whole suite is collected (run.py's collection pass), not in a shard,
        # and not with -k, -m or --deselect, which leave listed tests out.
        opt = config.option
        filtered = bool(getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "deselect", None))
        if os.environ.get("P11VAULT_SDK_CHECK_STALE") == "1" and not filtered:
            self.unmatched = [e["test"] for e in self.exclusions if e["test"] not in matched]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def _exclusion_for(self, nodeid: str, matched: set) -> Optional[str]:
        for entry in self.exclusions:
            if pattern_matches(entry["test"], nodeid):
                matched.add(entry["test"])
                return entry["reason"]
        return None

    # -- outcomes -----------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.outcomes.setdefault(report.nodeid, {"outcome": "not run"})
        listed = "reason" in entry
        if report.when == "call" and report.passed and not listed:
            entry["outcome"] = "passed"
        if report.failed:
            entry["outcome"] = "excluded-failed" if listed else "failed"
            entry.setdefault("message", _short(report))
        elif report.skipped and not listed:
            entry["outcome"] = "skipped"
            entry["message"] = _skip_reason(report)
        elif report.when == "call" and report.passed and listed:
            # A listed test that passed (only with P11VAULT_SDK_RUN_EXCLUDED=1): its entry is stale.
            entry["outcome"] = "excluded-passed"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = os.environ.get("P11VAULT_SDK_REPORT")
        if not path:
            return
        with open(path, "w") as f:
            json.dump(
                {
                    "suite": self.suite,
                    "tests": self.outcomes,
                    "not_applicable": self.not_applicable,
                    "unmatched_exclusions": self.unmatched,
                    "exitstatus": int(session.exitstatus),
                },
                f,
                indent=1,
                sort_keys=True,
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.unmatched:
            terminalreporter.section("stale exclusions", red=True)
            for pattern in self.unmatched:
                terminalreporter.write_line(f"{pattern}: matches no selected test")


def _short(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return f"{report.when}: {text.strip()[:600]}"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)
