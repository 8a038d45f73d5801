"""Graceful shutdown, as Kubernetes asks for it with SIGTERM.

uvicorn handles the signal: it stops accepting connections, closes idle keep-alive ones, lets
the requests in flight (streams included) finish for `server.drain_seconds`, cuts what is left,
then runs the app's shutdown, which writes out the usage ledger. `on_termination` runs first:
the replica reports itself not ready at once, on any connection still open.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_termination(callback: Callable[[int], None]) -> Callable[[], None]:
    """Call `callback(signal number)` on SIGTERM or SIGINT, then the handler in place (uvicorn's
    sets its graceful shutdown going: it always installs them with `signal.signal`). The
    callback runs inside the signal handler: it may set flags and schedule work on the event
    loop (`call_soon_threadsafe`), nothing that logs or locks. Returns
    what puts the previous handlers back. Only the main thread receives signals: elsewhere
    (an app run inside a test's thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(number: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the main thread was doing,
        # perhaps inside a log write holding its lock: `callback` must not log or take locks.
        try:
            callback(number)
        finally:  # whatever happened, the shutdown goes on
            chained = previous.get(number)
            if callable(chained):
                chained(number, frame)
            elif chained == signal.SIG_DFL:  # nobody else listens: end as the signal would
                signal.signal(number, signal.SIG_DFL)
                signal.raise_signal(number)

    for number in SIGNALS:
        previous[number] = signal.signal(number, handler)

    def restore() -> None:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)

    return restore


class Draining:
    """Whether a termination signal came; said in the log from the event loop (the signal
    handler itself may have interrupted a log write, whose lock it would wait for forever)."""

    def __init__(self, log: Any, drain_seconds: float) -> None:
        self._log, self._drain_seconds = log, drain_seconds
        self.on = False

    def install(self) -> Callable[[], None]:
        """Listen for SIGTERM/SIGINT from now on (in the running loop's thread); returns what
        stops listening."""
        loop = asyncio.get_running_loop()
        return on_termination(lambda number: self._signalled(loop, number))

    def _signalled(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        if not self.on:
            self.on = True
            loop.call_soon_threadsafe(self._say, signal.Signals(number).name)

    def _say(self, name: str) -> None:
        self._log.info("draining", signal=name, drain_seconds=self._drain_seconds)
