"""A real `redis-server` on a free loopback port, which tests may kill and restart."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.procs import free_port

GATEWAY_ACL = ("resetkeys", "~gw:*", "resetchannels", "+@all", "-@dangerous", "+info")
"""The ACL rules the README recommends for the gateway's Redis user (its "Deploying on
Kubernetes"): the tests' ACL users have exactly these, so the recommendation is tried."""


class RedisServer:
    """One redis-server process; `stop` and `start` keep its port, as a restarted Redis would."""

    def __init__(self, folder: Path, port: int | None = None, persistent: bool = False) -> None:
        """`persistent`: an append-only file synced on every write, so data survives a kill."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.persistent = persistent

    def start(self) -> RedisServer:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--enable-debug-command", "local",  # DEBUG SLEEP freezes it in tests
            "--dir", str(self.folder),
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    if self.client().ping():
                        return self
            except (OSError, redis.ConnectionError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def client(self) -> redis.Redis:
        """A synchronous client (decoded strings) for checks."""
        # an address, not "localhost": a bare machine may have no /etc/hosts
        return redis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5
        )

    @contextlib.contextmanager
    def frozen(self, seconds: float) -> Iterator[None]:
        """Redis answers nothing for `seconds` (DEBUG SLEEP) while the block runs; the block
        starts once the freeze is under way, and the exit waits for the thaw."""
        freeze: Any = self.client().execute_command  # untyped in redis-py
        sleeper = threading.Thread(target=lambda: freeze("DEBUG", "SLEEP", seconds))
        sleeper.start()
        time.sleep(0.1)
        try:
            yield
        finally:
            sleeper.join()

    def stop(self) -> None:
        """Kill it (SIGKILL: like a crash, nothing is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
