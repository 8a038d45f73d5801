"""The `gateway` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from .app import create_app
from .logging import configure_logging
from .settings import EMBEDDED, ConfigError, Settings, load_settings, settings_from_dict

QUICKSTART_MODEL = "mock-gpt"


def quickstart_settings() -> Settings:
    """No configuration given: serve the built-in upstream so the gateway works out of the box."""
    return settings_from_dict(
        {
            "providers": {"embedded": {"base_url": EMBEDDED}},
            "models": [{"name": QUICKSTART_MODEL, "provider": "embedded"}],
            "source": "<quickstart>",
        },
        "<quickstart>",
    )


def _banner(settings: Settings, host: str, port: int) -> str:
    # an address, not a name: a bare machine may have no /etc/hosts to resolve "localhost"
    shown = "127.0.0.1" if host in ("127.0.0.1", "0.0.0.0", "::", "localhost") else host  # noqa: S104
    url = f"http://{shown}:{port}"
    model = settings.models[0].name
    return f"""
LLM gateway on {url}  (config: {settings.source})
Models: {", ".join(m.name for m in settings.models)}

Try it:
  curl -s {url}/v1/responses -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "input": "Say hello"}}'

  curl -sN {url}/v1/responses -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "input": "Say hello", "stream": true}}'

  python -c 'from openai import OpenAI
c = OpenAI(base_url="{url}/v1", api_key="unused", max_retries=0)
print(c.responses.create(model="{model}", input="Say hello").output_text)'
"""


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config) if args.config else quickstart_settings()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    configure_logging(settings.logging)
    print(_banner(settings, host, port), file=sys.stderr, flush=True)  # stdout: JSON lines only
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the canonical request line replaces it
        log_config=None,
        proxy_headers=False,  # client addresses are not used; spare the middleware
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` command."""
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help="YAML configuration file (default: built-in quickstart)")
    serve.add_argument("--host", help="interface to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default: server.port, 8080)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
