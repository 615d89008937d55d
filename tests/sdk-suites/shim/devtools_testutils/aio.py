"""``devtools_testutils.aio``: the async recording decorator, live mode (see the package)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from . import _accepted_kwargs

__all__ = ["recorded_by_proxy_async"]


def recorded_by_proxy_async(*transports: Any) -> Callable[..., Any]:
    def decorate(test_fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run_live(*args: Any, **kwargs: Any) -> Any:
            return await test_fn(*args, **_accepted_kwargs(test_fn, kwargs))

        run_live.__name__ = test_fn.__name__
        run_live.__doc__ = test_fn.__doc__
        return run_live

    if len(transports) == 1 and inspect.iscoroutinefunction(transports[0]):
        return decorate(transports[0])
    return decorate
