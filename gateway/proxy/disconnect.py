"""Noticing that a client left: its request's task is cancelled, the upstream request with it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from litestar.types import Receive

from ..exchange import Exchange


async def while_connected(ex: Exchange, receive: Receive, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` (forwarding the request), but stop it as soon as the client leaves: the
    upstream request is then closed and `ex.client_disconnected` says why it ended."""
    task = asyncio.current_task()
    if task is None:  # ASGI servers always run requests in tasks
        work.close()
        raise RuntimeError("the request is not running in an asyncio task")
    watch = DisconnectWatch(receive, task, ex)
    try:
        await work
    except asyncio.CancelledError:
        if not watch.saw_departure:
            raise
        ex.client_disconnected = True
        task.uncancel()
    finally:
        watch.stop()


class DisconnectWatch:
    """Cancels a request's task when its client leaves.

    Only requests still running after `WATCH_AFTER` seconds are watched: most non-streamed
    answers from a fast upstream finish sooner, and a watcher task for each of them would cost
    more than the rest of the request path. A departure is noticed within that delay.
    """

    WATCH_AFTER = 0.05

    __slots__ = ("_ex", "_receive", "_task", "_timer", "_watcher", "saw_departure")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], ex: Exchange) -> None:
        self._receive, self._task, self._ex = receive, task, ex
        self._watcher: asyncio.Task[None] | None = None
        self.saw_departure = False
        """The client left before its answer was complete: the request's task was cancelled
        for it. (Only the request's own task writes into its `Exchange`.)"""
        self._timer = task.get_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = self._task.get_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports a disconnect once the response is complete: no departure.
        if not self._ex.response_complete:
            self.saw_departure = True
            self._task.cancel()

    def stop(self) -> None:
        """The request is over: watch no more."""
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
