"""Real processes for tests: free loopback ports and servers started as subprocesses."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a child process, ready once `ready_path` answers 200."""

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        ready_path: str = "/healthz",
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        ca_file: str | None = None,
    ) -> None:
        """`ca_file`: the server speaks HTTPS with a certificate signed by this CA."""
        self.argv = list(argv)
        self.port = port
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
        self.tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> ServerProcess:
        """Start the process, its stdout and stderr going to `log_path`, and wait until ready."""
        self.log_path = log_path
        log = log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603  (argv is built by the tests themselves)
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        log.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(  # noqa: S310  (our own loopback URL)
                    self.url + self.ready_path, timeout=1, context=self.tls
                ) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv} not ready after {self.timeout}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the process wrote so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def python_module(module: str, *args: str) -> list[str]:
    """argv running `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]
