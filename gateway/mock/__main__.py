"""`python -m gateway.mock`: serve the mock upstream on its own until interrupted.

    python -m gateway.mock --host 127.0.0.1 --port 8081 [--ttft-ms X] [--tokens-per-second Y]

Once listening it prints one line, `mock upstream listening on http://HOST:PORT/v1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from collections.abc import Coroutine
from typing import Any

from .server import start_mock_server
from .settings import MockSettings


async def _serve(settings: MockSettings, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    runner, url = await start_mock_server(settings, host, port, tls)
    print(f"mock upstream listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()  # serve until cancelled (Ctrl-C)
    finally:
        await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.mock", description="Serve the mock /v1/responses upstream."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind (8081; 0: any)")
    parser.add_argument(
        "--ttft-ms", type=float, default=0.0, help="delay before the first delta, ms (0)"
    )
    parser.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="pace of the deltas (0: no pacing)"
    )
    parser.add_argument("--model", action="append", help="a model it serves, repeatable (mock-gpt)")
    parser.add_argument(
        "--static",
        action="store_true",
        help="replay each distinct answer from memory in one write (benchmark)",
    )
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--keyfile", help="the private key of --certfile")
    return parser


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # a faster event loop, where installed
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = _parser()
    args = parser.parse_args()
    try:
        settings = MockSettings(
            ttft_ms=args.ttft_ms,
            tokens_per_second=args.tokens_per_second,
            models=tuple(args.model or ["mock-gpt"]),
            static=args.static,
        )
    except ValueError as exc:
        parser.error(str(exc))
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve(settings, args.host, args.port, tls))


if __name__ == "__main__":
    main()
