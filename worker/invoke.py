"""Turns any prefab function into one iterator of yielded values.

Sync generators are iterated as they are; async generators and coroutines are driven on a
private event loop, one step per value, so the rest of the worker stays synchronous; a plain
function's return value becomes the ``data`` of a ``done`` event.
"""

import asyncio
import inspect
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from worker.loader import PrefabFunction


def _drive_async_generator(agen: AsyncIterator[Any]) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None and not loop.is_running():
            try:
                loop.run_until_complete(aclose())
            except RuntimeError:
                pass  # closed mid-step by a deadline or a cancel; nothing left to release
        loop.close()


def _run_coroutine(function: PrefabFunction, inputs: dict[str, Any]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(function(**inputs))
    finally:
        loop.close()


def iterate(function: PrefabFunction, inputs: dict[str, Any]) -> Generator[Any, None, None]:
    """Call the function and yield what it produces, whatever its kind."""
    if inspect.isasyncgenfunction(function):
        yield from _drive_async_generator(function(**inputs))
    elif inspect.isgeneratorfunction(function):
        yield from function(**inputs)
    elif inspect.iscoroutinefunction(function):
        yield {"type": "done", "data": _run_coroutine(function, inputs)}
    else:
        yield {"type": "done", "data": function(**inputs)}
