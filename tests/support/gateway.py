"""What tests of a running gateway share: its credentials, its log lines, waiting for them."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.procs import ServerProcess

PROVIDER_KEY = "sk-provider-Zx81secretvalue-never-logged"
"""The provider key every test gateway injects upstream; it must never reach a client or log."""
CLIENT_KEY = "sk-client-Q7secret-never-forwarded"
ADMIN_KEY = "sk-admin-test-Vq3secret-never-logged"
"""The admin credential of every test gateway that serves /admin."""

GatewayFactory = Callable[..., ServerProcess]
"""The `gateway_factory` fixture: starts a gateway process from a configuration mapping."""


def has_secret(path: Path, secrets: list[str]) -> bool:
    """A secret, or its last 20 characters (a key's secret part, a token's signature)."""
    text = path.read_text(errors="replace")
    return any(secret in text or secret[-20:] in text for secret in secrets)


def upstream_requests(upstream: ServerProcess) -> list[dict[str, Any]]:
    """What the scripted upstream received so far."""
    with urllib.request.urlopen(upstream.url + "/_requests") as resp:  # noqa: S310
        return list(json.load(resp))


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON lines a gateway process wrote to stdout."""
    complete = server.output().split("\n")[:-1]  # the last piece may still be being written
    return [json.loads(line) for line in complete if line.startswith("{")]


def request_line(server: ServerProcess, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """The first canonical request line with these `fields`; it is written just after the
    answer, so wait for it a little."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log_lines(server):
            if line.get("event") == "request" and all(line.get(k) == v for k, v in fields.items()):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no request line with {fields} in {server.log_path}")
        time.sleep(0.02)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for `check` to hold: settlements and log lines are written just after the answer,
    and recoveries take a breaker cooldown."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.02)
