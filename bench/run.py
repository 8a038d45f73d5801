"""Benchmark: the gateway against a direct call to the same upstream, in one run.

    make bench            # or: .venv/bin/python -m bench.run [--duration 8] [--rounds 3]

Starts the product's upstream (`gateway.mock`, no delays) twice, static (each answer replayed
from memory in one write) and live (every event rendered and written on its own, as a real
provider streams), and one gateway worker in front of both; the gateway is pinned to core 0 and
everything else to core 1 when `taskset` exists. Then for each case:
- throughput: `wrk` (16 connections) against the upstream directly and through the gateway,
  alternating, `--rounds` times; the medians and their ratio are printed;
- added latency: a fixed-rate client (200 requests/s, 5 s) measures p50/p99 directly and
  through the gateway, alternating, `--rounds` times; the median of the per-round differences
  is what the gateway adds.
Figures vary with the machine's load: quote medians and ratios, and rerun before comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

QUESTION = "Write one short sentence about benchmarks."
CASES = (
    # (label, model, stream): bench-static is served by the static upstream, bench-live by the
    # live one; both names are the upstream's own, so the gateway forwards bodies unchanged.
    ("non-streaming", "bench-static", False),
    ("streaming", "bench-static", True),
    ("streaming, event by event", "bench-live", True),
)


def _body(model: str, stream: bool) -> str:
    return f'{{"model":"{model}","input":"{QUESTION}","stream":{"true" if stream else "false"}}}'


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
    argv = _pin("1", ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url])
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
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

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


def _mock(port: int, model: str, *extra: str) -> ServerProcess:
    argv = python_module("gateway.mock", "--port", str(port), "--model", model, *extra)
    return ServerProcess(_pin("1", argv), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target and case")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s for latency")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})  # the latency client too stays off the gateway's core

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    static_port, live_port, gw_port = free_port(), free_port(), free_port()
    static = _mock(static_port, "bench-static", "--static")
    live = _mock(live_port, "bench-live")
    config = work / "gateway.yaml"
    config.write_text(
        "providers:\n"
        f"  static: {{base_url: 'http://127.0.0.1:{static_port}/v1', api_key: bench-key}}\n"
        f"  live: {{base_url: 'http://127.0.0.1:{live_port}/v1', api_key: bench-key}}\n"
        "models:\n"
        "  - {name: bench-static, provider: static}\n"
        "  - {name: bench-live, provider: live}\n"
    )
    argv = python_module("gateway", "serve", "--config", str(config), "--port", str(gw_port))
    gateway = ServerProcess(_pin("0", argv), gw_port, ready_path="/readyz")
    rows = []
    with (
        static.start(work / "static.log"),
        live.start(work / "live.log"),
        gateway.start(work / "gateway.log"),
    ):
        print(
            f"wrk: {args.connections} connections, {args.duration}s x {args.rounds} rounds; "
            f"latency at {args.rate:.0f} requests/s, 5 s x {args.rounds}; logs in {work}\n",
            flush=True,  # piped output is block-buffered: show progress as it comes
        )
        for label, model, stream in CASES:
            upstream = static if model == "bench-static" else live
            direct = f"{upstream.url}/v1/responses"
            proxied = f"{gateway.url}/v1/responses"
            body = _body(model, stream)
            d_rps, g_rps = [], []
            for _ in range(args.rounds):
                d_rps.append(_wrk(direct, body, args.duration, args.connections))
                g_rps.append(_wrk(proxied, body, args.duration, args.connections))
            time.sleep(2)  # let the last wrk run's abandoned connections drain first
            d_lat, g_lat = [], []
            for _ in range(args.rounds):  # alternating, like the throughput runs
                d_lat.append(asyncio.run(_latencies(direct, body, args.rate, 5)))
                g_lat.append(asyncio.run(_latencies(proxied, body, args.rate, 5)))
            rows.append((label, d_rps, g_rps, d_lat, g_lat))
            print(f"  {label}: done", flush=True)

    print(
        f"{'':27}{'direct req/s':>14}{'gateway req/s':>15}{'ratio':>8}"
        f"{'added p50 ms':>14}{'added p99 ms':>14}"
    )
    for label, d_rps, g_rps, d_lat, g_lat in rows:
        d, g = statistics.median(d_rps), statistics.median(g_rps)
        pairs = list(zip(d_lat, g_lat, strict=True))
        # per round: gateway percentile minus direct percentile; the median of the rounds
        p50 = statistics.median(_pct(gl, 0.5) - _pct(dl, 0.5) for dl, gl in pairs)
        p99 = statistics.median(_pct(gl, 0.99) - _pct(dl, 0.99) for dl, gl in pairs)
        print(f"{label:27}{d:14.0f}{g:15.0f}{g / d:8.2f}{p50:14.3f}{p99:14.3f}")
        runs = f"direct {[round(x) for x in d_rps]}, gateway {[round(x) for x in g_rps]}"
        p50s = [f"{_pct(dl, 0.5):.2f}/{_pct(gl, 0.5):.2f}" for dl, gl in pairs]
        print(f"{'':27}  req/s runs: {runs}")
        print(f"{'':27}  p50 ms per round (direct/gateway): {', '.join(p50s)}")


if __name__ == "__main__":
    main()
