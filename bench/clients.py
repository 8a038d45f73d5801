"""Which HTTP client carries the gateway's upstream calls: measured, not assumed.

    .venv/bin/python -m bench.clients [--seconds 5] [--rounds 3]

One process (core 0, uvloop) sends non-streamed /v1/responses requests with 16 concurrent
workers to the static mock upstream (core 1) with httpx's default transport, aiohttp and the
gateway's own lean client (`gateway/upstream/`), in turn; the median requests/s of each is
printed. The gateway uses the fastest on its hot path (`gateway/upstream/pools.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

from bench.run import _body, _mock
from gateway.upstream.http1 import Pool
from tests.support.procs import free_port

Sender = Callable[[], Awaitable[None]]


async def _drive(send: Sender, seconds: float, workers: int = 16) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await send()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - start)


async def _httpx(url: str, body: bytes, seconds: float) -> float:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send() -> None:
            response = await client.post(
                url, content=body, headers={"content-type": "application/json"}
            )
            response.raise_for_status()

        return await _drive(send, seconds)


async def _lean(url: str, body: bytes, seconds: float) -> float:
    base, _, path = url.partition("/v1/")
    pool = Pool(
        base + "/v1", max_connections=64, connect_timeout=5, read_timeout=30, idle_timeout=30
    )
    target = ("/v1/" + path).encode()

    async def send() -> None:
        response = await pool.request(target, b"content-type: application/json\r\n", body)
        await response.read()
        response.release()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")

    try:
        return await _drive(send, seconds)
    finally:
        pool.close()


async def _aiohttp(url: str, body: bytes, seconds: float) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def send() -> None:
            async with session.post(
                url, data=body, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                response.raise_for_status()

        return await _drive(send, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    port = free_port()
    upstream = _mock(port, "bench-static", "--static")
    body = _body("bench-static", False).encode()
    results: dict[str, list[float]] = {
        "httpx (default transport)": [],
        "aiohttp": [],
        "gateway.http1 (lean)": [],
    }
    with upstream.start(Path(tempfile.mkdtemp()) / "upstream.log"):
        url = f"{upstream.url}/v1/responses"
        for _ in range(args.rounds):
            results["httpx (default transport)"].append(uvloop.run(_httpx(url, body, args.seconds)))
            results["aiohttp"].append(uvloop.run(_aiohttp(url, body, args.seconds)))
            results["gateway.http1 (lean)"].append(uvloop.run(_lean(url, body, args.seconds)))
    for name, values in results.items():
        runs = [round(v) for v in values]
        print(f"{name:28}{statistics.median(values):10.0f} requests/s   runs {runs}")


if __name__ == "__main__":
    main()
