"""The smallest stand-in for Azure's ``devtools_testutils`` that runs the recorded tests of the
Azure Key Vault SDK suites in live mode against a p11vault service.

Azure's own package (not on PyPI) records and plays back HTTP traffic through a test proxy.
Here there is no proxy and no playback: every test talks to the running service. What this
module provides is the API the suites import, with its live-mode meaning:

* ``is_live()`` reads ``AZURE_TEST_RUN_LIVE`` as Azure's does; the p11vault plugin refuses to
  run when it is not set (there are no recordings to play back).
* ``AzureRecordedTestCase``: ``is_live``, ``get_credential`` (a static bearer token from
  ``P11VAULT_SDK_TOKEN``), ``create_client_from_credential`` (the client built on that
  credential with HTTP logging on, as Azure's, trusting the service's CA ``P11VAULT_SDK_CA``,
  with ``verify_challenge_resource=False`` because the service is not under an Azure domain), and
  ``get_resource_name`` (deterministic per test, as Azure's).
* ``recorded_by_proxy`` / ``aio.recorded_by_proxy_async``: in live mode without recording,
  Azure's decorators call the test with the keyword arguments its signature accepts; so do
  these.
* Sanitizers and matchers only configure the proxy: no-ops.
"""

from __future__ import annotations

import inspect
import os
import time
import zlib
from typing import Any, Callable, Dict

from azure.core.credentials import AccessToken

__all__ = [
    "AzureRecordedTestCase",
    "add_general_regex_sanitizer",
    "add_general_string_sanitizer",
    "add_oauth_response_sanitizer",
    "add_uri_regex_sanitizer",
    "is_live",
    "recorded_by_proxy",
    "remove_batch_sanitizers",
    "set_bodiless_matcher",
    "set_custom_default_matcher",
]

TOKEN_ENV = "P11VAULT_SDK_TOKEN"
CA_ENV = "P11VAULT_SDK_CA"
TOKEN_LIFETIME_S = 3600


def is_live() -> bool:
    """True when ``AZURE_TEST_RUN_LIVE`` is ``true`` or ``yes`` (case-insensitive), as in Azure's."""
    return os.environ.get("AZURE_TEST_RUN_LIVE", "").strip().lower() in ("true", "yes")


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the suites with tests/sdk-suites/run.py")
    return value


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


class StaticTokenCredential:
    """A TokenCredential returning the service's bearer token. ``get_token`` takes ``**kwargs``:
    the Key Vault challenge policy passes ``claims``, ``tenant_id`` and ``enable_cae``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + TOKEN_LIFETIME_S)

    def close(self) -> None:
        pass

    def __enter__(self) -> "StaticTokenCredential":
        return self

    def __exit__(self, *args: Any) -> None:
        pass


class AsyncStaticTokenCredential:
    """The async counterpart (azure.core.credentials_async.AsyncTokenCredential)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + TOKEN_LIFETIME_S)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> "AsyncStaticTokenCredential":
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Test case base
# --------------------------------------------------------------------------------------------


class AzureRecordedTestCase:
    """Base of the suites' test classes and client preparers. The preparers subclass it and set
    their own attributes without calling ``__init__``, so it has none."""

    @property
    def is_live(self) -> bool:
        return is_live()

    @property
    def in_recording(self) -> bool:
        return False

    def is_playback(self) -> bool:
        return not self.is_live

    def get_credential(self, client_class: Any, **kwargs: Any) -> Any:
        token = _required_env(TOKEN_ENV)
        if kwargs.get("is_async", False):
            return AsyncStaticTokenCredential(token)
        return StaticTokenCredential(token)

    def create_client_from_credential(self, client_class: Callable[..., Any], credential: Any, **kwargs: Any) -> Any:
        # As Azure's: HTTP logging (NetworkTraceLoggingPolicy) on unless the test says otherwise;
        # test_logging_enabled relies on it.
        kwargs.setdefault("logging_enable", True)
        kwargs.setdefault("verify_challenge_resource", False)
        kwargs.setdefault("connection_verify", _required_env(CA_ENV))
        return client_class(credential=credential, **kwargs)

    def create_random_name(self, name: str) -> str:
        # As Azure's: the prefix plus a checksum of the running test's id, so a test gets the
        # same names on every run and different tests get different names.
        test_id = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        return f"{name}{zlib.adler32(test_id.encode()) & 0xFFFFFFFF:x}"

    def get_resource_name(self, name: str) -> str:
        return self.create_random_name(name)

    def sleep(self, seconds: float) -> None:
        if self.is_live:
            time.sleep(seconds)


# --------------------------------------------------------------------------------------------
# Recording decorators (live mode, not recording)
# --------------------------------------------------------------------------------------------


def _accepted_kwargs(fn: Callable[..., Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments ``fn`` can take: all of them if it has ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


def recorded_by_proxy(*transports: Any) -> Callable[..., Any]:
    """Usable bare (``@recorded_by_proxy``) or with transports (``@recorded_by_proxy(t)``); the
    transports only matter to a proxy, so they are ignored."""

    def decorate(test_fn: Callable[..., Any]) -> Callable[..., Any]:
        def run_live(*args: Any, **kwargs: Any) -> Any:
            return test_fn(*args, **_accepted_kwargs(test_fn, kwargs))

        run_live.__name__ = test_fn.__name__
        run_live.__doc__ = test_fn.__doc__
        return run_live

    if len(transports) == 1 and inspect.isfunction(transports[0]):
        return decorate(transports[0])
    return decorate


# --------------------------------------------------------------------------------------------
# Proxy configuration: nothing to configure without a proxy
# --------------------------------------------------------------------------------------------


def _no_proxy(*args: Any, **kwargs: Any) -> None:
    return None


add_general_regex_sanitizer = _no_proxy
add_general_string_sanitizer = _no_proxy
add_oauth_response_sanitizer = _no_proxy
add_uri_regex_sanitizer = _no_proxy
remove_batch_sanitizers = _no_proxy
set_bodiless_matcher = _no_proxy
set_custom_default_matcher = _no_proxy
