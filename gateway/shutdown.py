"""Graceful shutdown, as Kubernetes asks for it with SIGTERM.

uvicorn handles the signal: it stops accepting connections, closes idle keep-alive ones, lets
the requests in flight (streams included) finish for `server.drain_seconds`, cuts what is left,
then runs the app's shutdown, which writes out the usage ledger. `on_termination` runs first:
the replica reports itself not ready at once, on any connection still open.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_termination(callback: Callable[[int], None]) -> Callable[[], None]:
    """Call `callback(signal number)` on SIGTERM or SIGINT, then the handler in place (uvicorn's
    sets its graceful shutdown going: it always installs them with `signal.signal`). Returns
    what puts the previous handlers back. Only the main thread receives signals: elsewhere
    (an app run inside a test's thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(number: int, frame: FrameType | None) -> None:
        callback(number)
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
