"""A termination signal that lands in the middle of a log write must not hang the process.

Python runs signal handlers in the main thread between two bytecodes of whatever it was doing,
possibly inside structlog's write of a log line, holding that file's lock: a handler that logs
then waits for the lock forever, and the replica never drains. `Draining` only sets a flag in
the handler and logs from the event loop. A child process logs as fast as it can in its event
loop and sends itself SIGTERM 30 times; every one must reach the chained handler and the
"draining" line must follow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.processes  # a child interpreter signals itself

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading
    import structlog
    from gateway.logging import configure_logging
    from gateway.settings import LoggingSettings
    from gateway.server import Draining

    configure_logging(LoggingSettings())
    log = structlog.get_logger("gateway")

    async def round(n: int) -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        # stands for uvicorn's handler, which the gateway's chains to
        signal.signal(signal.SIGTERM, lambda s, f: loop.call_soon_threadsafe(stopped.set))
        draining = Draining(log, 1.0)
        restore = draining.install()
        threading.Timer(0.02 + n * 0.001, os.kill, (os.getpid(), signal.SIGTERM)).start()
        i = 0
        while not stopped.is_set():
            log.info("request", round=n, i=i, pad="x" * 300)
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)  # the "draining" line, scheduled by the handler
        restore()
        assert draining.on

    async def main() -> None:
        for n in range(30):
            await round(n)
        print("done", file=sys.stderr, flush=True)

    asyncio.run(main())
    """
)


def test_sigterm_during_log_writes_never_hangs() -> None:
    """30 SIGTERMs landing mid log write each reach the chained handler and log `draining`."""
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", CHILD], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"done" in result.stderr
    events = [json.loads(line)["event"] for line in result.stdout.splitlines() if line]
    assert events.count("draining") == 30
