"""`python -m gateway.mock`: serve the mock upstream on its own."""

from __future__ import annotations

import argparse
import asyncio
import ssl

from .server import MockSettings, start_mock_server


async def _serve(settings: MockSettings, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    runner, url = await start_mock_server(settings, host, port, tls)
    print(f"mock upstream listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m gateway.mock", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--model", action="append", help="a model it serves (repeatable)")
    parser.add_argument(
        "--static", action="store_true", help="replay each distinct answer from memory (benchmark)"
    )
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--keyfile", help="the private key of --certfile")
    args = parser.parse_args()
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    settings = MockSettings(
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        models=tuple(args.model or ["mock-gpt"]),
        static=args.static,
    )
    try:
        import uvloop  # a faster event loop where available

        uvloop.run(_serve(settings, args.host, args.port, tls))
    except ImportError:
        asyncio.run(_serve(settings, args.host, args.port, tls))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
