"""Benchmark: the gateway against a direct call to the same upstream, in one run.

    make bench            # or: .venv/bin/python -m bench.run [--duration 10] [--rounds 3]

Starts the product's upstream (`gateway.mock`, no delays) and one gateway worker in front of it,
pinned to separate cores when `taskset` exists, then for non-streaming and streaming requests:
- throughput: `wrk` (16 connections) against the upstream directly and through the gateway,
  alternating, `--rounds` times; the medians and their ratio are printed;
- added latency: a fixed-rate client (200 requests/s) measures p50/p99 directly and through
  the gateway; the difference is what the gateway adds.
Figures vary with the machine's load: quote medians and ratios, and rerun before comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.support.procs import ServerProcess, free_port, python_module

PLAIN = '{"model":"mock-gpt","input":"Write one short sentence about benchmarks."}'
STREAM = '{"model":"mock-gpt","input":"Write one short sentence about benchmarks.","stream":true}'


def _pin(cores: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cores, *argv] if shutil.which("taskset") else argv


def _wrk(url: str, body: str, duration: int, connections: int) -> float:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{escaped}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    argv = _pin(
        "1",
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url],
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


async def _latencies(url: str, body: str, rate: float, seconds: float) -> list[float]:
    """Send `rate` requests/s for `seconds`; each request's latency in ms (body fully read)."""
    results: list[float] = []
    connector = aiohttp.TCPConnector(limit=64)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
            results.append((time.perf_counter() - start) * 1000)

        for _ in range(20):  # warm the pool
            await one()
        results.clear()
        tasks = []
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target and kind")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s for latency")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    up_port, gw_port = free_port(), free_port()
    upstream = ServerProcess(
        _pin("1", python_module("gateway.mock", "--port", str(up_port))), up_port
    )
    config = work / "gateway.yaml"
    config.write_text(
        "providers:\n"
        f"  mock: {{base_url: 'http://127.0.0.1:{up_port}/v1', api_key: bench-key}}\n"
        "models:\n  - {name: mock-gpt, provider: mock}\n"
    )
    gateway = ServerProcess(
        _pin(
            "0", python_module("gateway", "serve", "--config", str(config), "--port", str(gw_port))
        ),
        gw_port,
        ready_path="/readyz",
    )
    with upstream.start(work / "upstream.log"), gateway.start(work / "gateway.log"):
        direct = f"{upstream.url}/v1/responses"
        proxied = f"{gateway.url}/v1/responses"
        print(
            f"wrk: {args.connections} connections, {args.duration}s x {args.rounds} rounds; "
            f"latency at {args.rate:.0f} requests/s; logs in {work}\n"
        )
        rows = []
        for kind, body in (("non-streaming", PLAIN), ("streaming", STREAM)):
            d_rps, g_rps = [], []
            for _ in range(args.rounds):
                d_rps.append(_wrk(direct, body, args.duration, args.connections))
                g_rps.append(_wrk(proxied, body, args.duration, args.connections))
            d_lat = asyncio.run(_latencies(direct, body, args.rate, 10))
            g_lat = asyncio.run(_latencies(proxied, body, args.rate, 10))
            rows.append((kind, d_rps, g_rps, d_lat, g_lat))

    print(
        f"{'':15}{'direct req/s':>14}{'gateway req/s':>15}{'ratio':>8}"
        f"{'added p50 ms':>14}{'added p99 ms':>14}"
    )
    for kind, d_rps, g_rps, d_lat, g_lat in rows:
        d, g = statistics.median(d_rps), statistics.median(g_rps)
        p50 = _pct(g_lat, 0.5) - _pct(d_lat, 0.5)
        p99 = _pct(g_lat, 0.99) - _pct(d_lat, 0.99)
        print(f"{kind:15}{d:14.0f}{g:15.0f}{g / d:8.2f}{p50:14.3f}{p99:14.3f}")
        runs = f"direct {[round(x) for x in d_rps]}, gateway {[round(x) for x in g_rps]}"
        print(
            f"{'':15}  runs: {runs}; "
            f"p50/p99 direct {_pct(d_lat, 0.5):.3f}/{_pct(d_lat, 0.99):.3f} ms, "
            f"gateway {_pct(g_lat, 0.5):.3f}/{_pct(g_lat, 0.99):.3f} ms"
        )


if __name__ == "__main__":
    main()
