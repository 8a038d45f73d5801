"""Benchmark: the gateway against a direct call to the same upstream, in one run.

    make bench            # or: .venv/bin/python -m bench.run [--duration 5] [--rounds 5]

Starts the product's upstream (`gateway.mock`, no delays) twice, static (each answer replayed
from memory in one write) and live (every event rendered and written on its own, as a real
provider streams), a redis-server, and four gateways (one worker each) in front of both:
`open` (authentication off), `keyed` (an issued API key checked on every request, every quota
enforced: requests, tokens per minute and per day, concurrency, with limits too high to
reject; and the usage ledger written), `no-ledger` (the same without the ledger) and `twin`
(a second, identical `no-ledger`: how far two identical gateways differ in the same run, the
floor below which nothing is measurable here). Gateways are pinned to core 0 and everything
else to core 1 when `taskset` exists. Then for each case:
- throughput: `wrk` (16 connections) against the upstream directly and through each gateway,
  `--rounds` times, each round in a new random order; the medians and their ratio to direct
  are printed;
- added latency: a fixed-rate client (200 requests/s, 5 s) measures p50/p99 directly and
  through each gateway, `--latency-rounds` times, likewise; the median of the per-round
  differences is what the gateway adds.
- the ledger at saturation: `keyed`, `no-ledger` and `twin` alone, `--ledger-rounds` more
  rounds, their orders counterbalanced (every order of the three as often, in a seeded
  shuffle): five rounds among all five targets cannot tell a 2-3% cost from the order the
  targets ran in; the ledger's lines compare all the rounds, these and the throughput's;
- latency at load: `keyed`, `no-ledger` and `twin` at about 70% of no-ledger's throughput
  (the CPU share the autoscaler keeps replicas at; the share reached is printed), 64 wrk
  connections each pausing at random between requests, `--load-rounds` times in a new order
  each; p50/p99 as wrk reports them.
The gateway's CPU time per request (from /proc, during each wrk run) is printed beside, then
what the ledger costs: keyed against no-ledger round by round, beside twin against
no-ledger (the same comparison between identical gateways), at saturation, at 200
requests/s and at 70% load.
Last, Redis's own command counters are read around 2,000 requests through the keyed gateway:
the Redis commands each request costs.
Figures vary with the machine's load: quote medians and ratios, and rerun before comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis

from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_server import RedisServer

QUESTION = "Write one short sentence about benchmarks."
LOAD = 0.7
"""The loaded-latency phase's load, as a share of no-ledger's throughput: the CPU share the
HorizontalPodAutoscaler keeps pods at (deploy/base/hpa.yaml), where replicas serve."""
PACED = 64
"""Connections of the loaded-latency phase (more than 16: a pause in whole ms is finer)."""
LEDGER_TARGETS = ("keyed", "no-ledger", "twin")
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


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, body: str, duration: int, connections: int, key: str | None) -> float:
    """Requests/s with `connections` connections, each sending its next request at once."""
    return _run_wrk(url, body, duration, connections, key, None)[0]


def _run_wrk(
    url: str, body: str, duration: int, connections: int, key: str | None, pause_ms: int | None
) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 (ms); with `pause_ms`, each connection pauses that long on
    average between its requests: a load below saturation, set by the pause."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{escaped}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        + (f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else "")
        # Pauses drawn at random (exponential, mean `pause_ms`): equal pauses would keep the
        # connections in step, sending bursts instead of a steady load.
        + (
            f"function delay() return math.floor(0.5 - {pause_ms} * math.log(1 - math.random()))"
            " end\n"  # wrk takes whole ms and truncates: rounded, the mean stays `pause_ms`
            if pause_ms is not None
            else ""
        )
    )
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script)]
    out = subprocess.run(_pin("1", [*argv, url]), capture_output=True, text=True, check=True)
    text = out.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses:\n{text}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    # wrk pads one-letter units with a space ("1.02s ") and goes on to m and h
    p50, p99 = (re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M) for q in (50, 99))
    if not (rate and p50 and p99):
        raise RuntimeError(text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
    return (
        float(rate.group(1)),
        float(p50.group(1)) * scale[p50.group(2)],
        float(p99.group(1)) * scale[p99.group(2)],
    )


async def _latencies(
    url: str, body: str, rate: float, seconds: float, key: str | None
) -> list[float]:
    """Send `rate` requests/s for `seconds`; each request's latency in ms (body fully read)."""
    results: list[float] = []
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
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


Loaded = dict[str, list[tuple[float, float, float]]]
"""Per target, each round's (requests/s, p50 ms, p99 ms) at `LOAD`."""


def _loaded(
    urls: dict[str, str],
    body: str,
    key: str,
    rps: dict[str, list[float]],
    args: argparse.Namespace,
    order: random.Random,
) -> Loaded:
    """Latency with the ledger on and off and in the twin at `LOAD` of no-ledger's throughput
    (each of `PACED` connections pausing between its requests), `--load-rounds` rounds in a
    new order each: what a request waits for at the load replicas are kept at."""
    rate = LOAD * statistics.median(rps["no-ledger"])
    pause_ms = max(1, round(PACED * 1000 / rate) - 1)  # ~1 ms: the request itself
    loaded: Loaded = {name: [] for name in LEDGER_TARGETS}
    for _ in range(args.load_rounds):
        for name in order.sample(LEDGER_TARGETS, len(LEDGER_TARGETS)):
            loaded[name].append(_run_wrk(urls[name], body, 5, PACED, key, pause_ms))
    return loaded


def _loaded_versus(loaded: Loaded, saturated: float) -> str:
    """Added p50 and p99 at load: the ledger (keyed) and the twin against no-ledger, the
    median of the rounds' differences; `saturated`: no-ledger's median req/s under wrk."""
    base = loaded["no-ledger"]
    rate = statistics.median(r for r, _, _ in base)
    line = (
        f"{'':27}at {rate / saturated:.0%} load ({rate:.0f} req/s): no-ledger p50 "
        f"{statistics.median(p for _, p, _ in base):.3f} ms, p99 "
        f"{statistics.median(p for _, _, p in base):.3f} ms"
    )
    for name, label in (("keyed", "ledger on/off"), ("twin", "twin/no-ledger")):
        pairs = list(zip(loaded[name], base, strict=True))
        line += f"\n{'':27}  {label + ':':16}"
        for i, what in ((1, "p50"), (2, "p99")):
            added = [a[i] - b[i] for a, b in pairs]
            line += (
                f" {what} {statistics.median(added):+.3f} ms"
                f" (rounds {min(added):+.3f}..{max(added):+.3f})"
            )
    return line


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _mock(port: int, model: str, *extra: str) -> ServerProcess:
    argv = python_module("gateway.mock", "--port", str(port), "--model", model, *extra)
    return ServerProcess(_pin("1", argv), port)


ADMIN_KEY = "bench-admin-key-0123456789"
KEYED_LIMITS = (
    "limits:\n"
    "  tiers:\n"
    "    default: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000,\n"
    "              tokens_per_day: 1000000000000000, concurrent_requests: 100000}\n"
)


async def _issue_key(url: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/admin/keys",
            json={"user": "bench"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ) as response,
    ):
        body = await response.json()
        if response.status != 201:
            raise RuntimeError(f"cannot issue a key: {body}")
        return str(body["key"])


async def _count(url: str, body: str, key: str, requests: int) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()

        await asyncio.gather(*(worker(requests // 16) for _ in range(16)))


def _redis_commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _round_trips(gateway: ServerProcess, body: str, key: str, client: redis.Redis) -> str:
    """Redis commands per request through the keyed gateway, by command."""
    requests = 2000
    before = _redis_commands(client)
    asyncio.run(_count(f"{gateway.url}/v1/responses", body, key, requests))
    time.sleep(1)  # settlements are written just after each answer
    after = _redis_commands(client)
    per = {
        name: (after[name] - before.get(name, 0)) / requests
        for name in after
        if after[name] - before.get(name, 0) > 0 and name != "info"
    }
    return ", ".join(f"{name} {value:.3f}" for name, value in sorted(per.items()))


def gateway_configs(static_port: int, live_port: int, redis_url: str) -> dict[str, str]:
    """The YAML of the gateways under test, by name: `open` (no auth), `keyed` (keys, quotas
    and the ledger), `no-ledger` (keyed without the ledger) and `twin` (a second `no-ledger`,
    to measure the spread between two identical gateways)."""
    common = (
        "providers:\n"
        f"  static: {{base_url: 'http://127.0.0.1:{static_port}/v1', api_key: bench-key}}\n"
        f"  live: {{base_url: 'http://127.0.0.1:{live_port}/v1', api_key: bench-key}}\n"
        "models:\n"
        "  - {name: bench-static, provider: static}\n"
        "  - {name: bench-live, provider: live}\n"
    )
    keyed = common + f"redis: {{url: '{redis_url}'}}\nauth: {{admin_key: {ADMIN_KEY}}}\n"
    return {
        "open": common + "auth: {enabled: false}\n",
        "keyed": keyed + KEYED_LIMITS,
        "no-ledger": keyed + KEYED_LIMITS + "ledger: {enabled: false}\n",
        "twin": keyed + KEYED_LIMITS + "ledger: {enabled: false}\n",
    }


def _saturate(
    url: str,
    body: str,
    key: str | None,
    server: ServerProcess | None,
    args: argparse.Namespace,
    rps: list[float],
    cpu: list[float],
) -> None:
    """One wrk run against `url`: its requests/s into `rps` and, for a gateway (`server`), its
    own CPU time per request into `cpu` (what the ledger costs it)."""
    proc = server.proc if server is not None else None
    before = _cpu_seconds(proc.pid) if proc else 0.0
    rate = _wrk(url, body, args.duration, args.connections, key)
    rps.append(rate)
    if proc:
        cpu.append((_cpu_seconds(proc.pid) - before) / (rate * args.duration) * 1e6)


def _counterbalanced(
    names: tuple[str, ...], rounds: int, rng: random.Random
) -> list[tuple[str, ...]]:
    """`rounds` orders of `names`: each of their orders in turn (in a shuffle of them), so that
    no target runs first, or after another, more often than the others."""
    orders = list(itertools.permutations(names))
    rng.shuffle(orders)
    return [orders[i % len(orders)] for i in range(rounds)]


def _versus(
    name: str,
    base: str,
    rps: dict[str, list[float]],
    cpu: dict[str, list[float]],
    lat: dict[str, list[list[float]]],
) -> str:
    """`name` against `base`, round by round (the two ran in the same rounds): the median of
    the rounds' ratios and differences, and the spread of the ratios."""
    ratios = [k / n for k, n in zip(rps[name], rps[base], strict=True)]
    cpu_added = [k - n for k, n in zip(cpu[name], cpu[base], strict=True)]
    pairs = list(zip(lat[name], lat[base], strict=True))
    p50 = statistics.median(_pct(k, 0.5) - _pct(n, 0.5) for k, n in pairs)
    p99 = statistics.median(_pct(k, 0.99) - _pct(n, 0.99) for k, n in pairs)
    return (
        f"req/s x{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}..{max(ratios):.3f}), "
        f"CPU {statistics.median(cpu_added):+.1f} us/req, p50 {p50:+.3f} ms, p99 {p99:+.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per target and case")
    parser.add_argument(
        "--latency-rounds", type=int, default=3, help="latency runs per target and case"
    )
    parser.add_argument(
        "--load-rounds", type=int, default=5, help="latency runs at 70%% load per ledger target"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s for latency")
    parser.add_argument(
        "--seed", type=int, default=1, help="of the rounds' orders (the same from run to run)"
    )
    parser.add_argument(
        "--ledger-rounds",
        type=int,
        default=12,
        help="more wrk runs of the ledger's targets alone, their orders counterbalanced",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})  # the latency client too stays off the gateway's core

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    static_port, live_port = free_port(), free_port()
    static = _mock(static_port, "bench-static", "--static")
    live = _mock(live_port, "bench-live")
    store = RedisServer(work).start()
    if store.proc is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(store.proc.pid, {1})
    configs = gateway_configs(static_port, live_port, store.url)
    gateways: dict[str, ServerProcess] = {}
    for name, text in configs.items():
        path = work / f"{name}.yaml"
        path.write_text(text)
        port = free_port()
        argv = python_module("gateway", "serve", "--config", str(path), "--port", str(port))
        gateways[name] = ServerProcess(_pin("0", argv), port, ready_path="/readyz")
    rows = []
    with (
        static.start(work / "static.log"),
        live.start(work / "live.log"),
        gateways["open"].start(work / "open.log"),
        gateways["keyed"].start(work / "keyed.log"),
        gateways["no-ledger"].start(work / "no-ledger.log"),
        gateways["twin"].start(work / "twin.log"),
    ):
        key = asyncio.run(_issue_key(gateways["keyed"].url))
        targets = {"direct": None, "open": None, "keyed": key, "no-ledger": key, "twin": key}
        order = random.Random(args.seed)  # a new order each round, the same from run to run
        print(
            f"wrk: {args.connections} connections, {args.duration}s x {args.rounds} rounds; "
            f"latency at {args.rate:.0f} requests/s, 5 s x {args.latency_rounds}; "
            f"at {LOAD:.0%} load, 5 s x {args.load_rounds}; "
            f"logs in {work}\n",
            flush=True,  # piped output is block-buffered: show progress as it comes
        )
        for label, model, stream in CASES:
            upstream = static if model == "bench-static" else live
            urls = {"direct": f"{upstream.url}/v1/responses"} | {
                name: f"{gateway.url}/v1/responses" for name, gateway in gateways.items()
            }
            body = _body(model, stream)
            rps: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name in order.sample(list(targets), len(targets)):
                    server = gateways.get(name)
                    _saturate(urls[name], body, targets[name], server, args, rps[name], cpu[name])
            ledger_rps = {name: list(rps[name]) for name in LEDGER_TARGETS}
            ledger_cpu = {name: list(cpu[name]) for name in LEDGER_TARGETS}
            for names in _counterbalanced(LEDGER_TARGETS, args.ledger_rounds, order):
                for name in names:
                    server = gateways[name]
                    _saturate(
                        urls[name], body, key, server, args, ledger_rps[name], ledger_cpu[name]
                    )
            time.sleep(2)  # let the last wrk run's abandoned connections drain first
            lat: dict[str, list[list[float]]] = {name: [] for name in targets}
            for _ in range(args.latency_rounds):  # in a new order each round, likewise
                for name in order.sample(list(targets), len(targets)):
                    lat[name].append(
                        asyncio.run(_latencies(urls[name], body, args.rate, 5, targets[name]))
                    )
            loaded = _loaded(urls, body, key, rps, args, order)
            rows.append((label, rps, cpu, lat, loaded, ledger_rps, ledger_cpu))
            print(f"  {label}: done", flush=True)
        trips = _round_trips(gateways["keyed"], _body("bench-static", False), key, store.client())
    store.stop()

    print(
        f"{'':27}{'target':>10}{'req/s':>10}{'vs direct':>11}"
        f"{'added p50 ms':>14}{'added p99 ms':>14}{'CPU us/req':>12}"
    )
    for label, rps, cpu, lat, loaded, ledger_rps, ledger_cpu in rows:
        direct_rps = statistics.median(rps["direct"])
        for name in targets:
            med = statistics.median(rps[name])
            pairs = list(zip(lat["direct"], lat[name], strict=True))
            # per round: this target's percentile minus direct's; the median of the rounds
            p50 = statistics.median(_pct(gl, 0.5) - _pct(dl, 0.5) for dl, gl in pairs)
            p99 = statistics.median(_pct(gl, 0.99) - _pct(dl, 0.99) for dl, gl in pairs)
            added = "" if name == "direct" else f"{p50:14.3f}{p99:14.3f}"
            if cpu[name]:
                added += f"{statistics.median(cpu[name]):12.1f}"
            print(
                f"{label if name == 'direct' else '':27}{name:>10}{med:10.0f}"
                f"{med / direct_rps:11.2f}{added}"
            )
            print(f"{'':37}  runs: {[round(x) for x in rps[name]]}")
        rounds = len(ledger_rps["keyed"])
        print(
            f"{'':27}ledger at saturation, {rounds} rounds ({args.rounds} above + "
            f"{rounds - args.rounds} counterbalanced); latency at 200 requests/s:"
        )
        for name, what in (("keyed", "ledger on/off: "), ("twin", "twin/no-ledger:")):
            print(f"{'':27}{what} {_versus(name, 'no-ledger', ledger_rps, ledger_cpu, lat)}")
        print(_loaded_versus(loaded, statistics.median(rps["no-ledger"])))
    print(f"\nRedis commands per request (keyed, non-streaming): {trips}")


if __name__ == "__main__":
    main()
