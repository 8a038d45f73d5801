"""`gateway serve`: uvicorn with the front-door protocol, one process or several workers on
one socket; with no configuration, the quickstart (embedded upstream and Redis, a demo key)
and the banner that says how to call it."""

from __future__ import annotations

import argparse
import contextlib
import glob
import math
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from .app import create_app
from .logging import configure_logging
from .metrics import MULTIPROC_ENV
from .runtime import Runtime
from .server import ServerConfig
from .settings import EMBEDDED, ConfigError, Settings, load_settings, settings_from_dict

QUICKSTART_MODEL = "mock-gpt"
CONFIG_ENV = "GATEWAY_CONFIG"
"""How `gateway serve` tells its worker processes which configuration to load."""


def quickstart_settings(admin_key: str) -> Settings:
    """No configuration given: the built-in upstream and a private Redis, so that the gateway
    works out of the box, keys and quotas included."""
    return settings_from_dict(
        {
            "providers": {"embedded": {"base_url": EMBEDDED}},
            "models": [{"name": QUICKSTART_MODEL, "provider": "embedded"}],
            "redis": {"url": EMBEDDED},
            "auth": {"admin_key": admin_key},
            "limits": {
                "tiers": {
                    "default": {
                        "requests_per_minute": 60,
                        "tokens_per_minute": 200_000,
                        "tokens_per_day": 2_000_000,
                        "concurrent_requests": 8,
                    }
                }
            },
            "source": "<quickstart>",
        },
        "<quickstart>",
    )


def _url(host: str, port: int) -> str:
    # an address, not a name: a bare machine may have no /etc/hosts to resolve "localhost"
    shown = "127.0.0.1" if host in ("127.0.0.1", "0.0.0.0", "::", "localhost") else host  # noqa: S104
    return f"http://{shown}:{port}"


def banner(settings: Settings, url: str, key: str | None, admin_key: str | None) -> str:
    """What `gateway serve` prints once it is ready: where it is and how to call it."""
    model = settings.models[0].name
    shown_key = key or "YOUR_KEY"
    auth = f" -H 'Authorization: Bearer {shown_key}'" if settings.auth.enabled else ""
    text = f"""
LLM gateway on {url}  (config: {settings.source})
Models: {", ".join(m.name for m in settings.models)}
"""
    if key:
        text += f"Demo API key (user `demo`): {key}\n"
    if admin_key:
        text += (
            f"Admin key (this run only): {admin_key}\n"
            f"  GATEWAY_URL={url} GATEWAY_ADMIN_KEY={admin_key} "
            "gateway keys create --user alice\n"
        )
    text += f"""
Try it:
  curl -s {url}/v1/responses{auth} -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "input": "Say hello"}}'

  curl -sN {url}/v1/responses{auth} -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "input": "Say hello", "stream": true}}'

  python -c 'from openai import OpenAI
c = OpenAI(base_url="{url}/v1", api_key="{shown_key if settings.auth.enabled else "unused"}")
print(c.responses.create(model="{model}", input="Say hello").output_text)'
"""
    return text


def serve(args: argparse.Namespace) -> int:
    """`gateway serve`: one process, or `--workers` under a supervisor; the exit status."""
    quickstart = not args.config
    admin_key = "sk-admin-" + secrets.token_urlsafe(24) if quickstart else None
    try:
        settings = (
            load_settings(args.config) if args.config else quickstart_settings(admin_key or "")
        )
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    url = _url(host, port)
    workers = args.workers or settings.server.workers
    if workers > 1:
        if quickstart:
            print("gateway: --workers needs --config with a shared redis.url", file=sys.stderr)
            return 2
        return _serve_workers(args.config, settings, host, port, workers, url)
    configure_logging(settings.logging)

    async def ready(runtime: Runtime) -> None:
        key = None
        if quickstart and runtime.keystore is not None:
            _, key = await runtime.keystore.create("demo", team="quickstart")
        # stderr: stdout carries JSON log lines only
        print(banner(settings, url, key, admin_key), file=sys.stderr, flush=True)

    server = uvicorn.Server(
        ServerConfig(
            create_app(settings, on_ready=ready),
            settings.server,
            host=host,
            port=port,
            timeout_graceful_shutdown=_drain_seconds(settings),
            **_UVICORN,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # as `uvicorn.run`: SIGINT is a way to stop
        server.run()
    return 0 if server.started else STARTUP_FAILURE


_UVICORN: dict[str, Any] = {  # with ServerConfig's protocol: httptools, and the front door
    "loop": "uvloop",
    "access_log": False,  # the canonical request line replaces it
    "log_config": None,
    "proxy_headers": False,  # client addresses are not used; spare the middleware
    "server_header": False,
}


def _drain_seconds(settings: Settings) -> int:
    """uvicorn's grace for requests in flight after SIGTERM (it takes whole seconds)."""
    return math.ceil(settings.server.drain_seconds)


def _serve_workers(
    config: str, settings: Settings, host: str, port: int, workers: int, url: str
) -> int:
    """Several worker processes on one socket, under uvicorn's supervisor (which restarts a
    worker that dies). Each worker loads the configuration again (`worker_app`); their
    metrics meet in one directory, so that any worker's /metrics counts them all."""
    configured = settings.metrics.multiproc_dir
    metrics_dir = configured or tempfile.mkdtemp(prefix="gateway-metrics-")
    os.makedirs(metrics_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")):  # a previous run's values
        os.remove(stale)
    os.environ[CONFIG_ENV] = str(Path(config).resolve())
    os.environ[MULTIPROC_ENV] = metrics_dir
    print(f"LLM gateway on {url} with {workers} workers (config: {config})", file=sys.stderr)
    server = ServerConfig(
        "gateway.serve:worker_app", settings.server, factory=True, workers=workers, host=host,
        port=port, timeout_graceful_shutdown=_drain_seconds(settings), **_UVICORN,
    )  # fmt: skip
    try:
        _Supervisor(server, sockets=[server.bind_socket()]).run()
    finally:
        if configured is None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of the workers (as `uvicorn.run` starts it), which also closes its
    own copy of the listening socket on SIGTERM or SIGINT: once the draining workers have
    closed theirs, a new connection is refused at once instead of waiting in a backlog that
    no process accepts from any more."""

    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()


def worker_app() -> Litestar:
    """The app of one worker process (uvicorn's factory, with several workers)."""
    settings = load_settings(os.environ[CONFIG_ENV])
    configure_logging(settings.logging)
    return create_app(settings, metrics_dir=os.environ[MULTIPROC_ENV])
