"""A private `redis-server` for `redis.url: embedded` (the quickstart and development).

Started as a child process on a free loopback port with no persistence, stopped with the
gateway. Production points `redis.url` at a real, shared, persistent Redis.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path


class EmbeddedRedisError(RuntimeError):
    """redis-server is missing or did not start."""


class EmbeddedRedis:
    """One redis-server child process."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> str:
        """Start it; returns its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "redis.url is `embedded` but redis-server is not installed: install it "
                "(apt-get install redis-server; `make run` does) or set redis.url"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-redis-")
        port = _free_port()
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", str(Path(self._dir.name) / "redis.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            if self._proc.returncode is not None:
                break
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            return f"redis://127.0.0.1:{port}/0"
        await self.stop()
        raise EmbeddedRedisError(f"redis-server did not start on 127.0.0.1:{port}")

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
