"""Does refusing a key tell whether its id exists? Timed, not assumed.

    .venv/bin/python -m bench.key_timing [--tries 5000] [--rounds 3]

A private redis-server on loopback (as for `redis.url: embedded`), one key issued into it (and
used once, as a key in use is), and the gateway's own `Authenticator` over it, on uvloop as in
`gateway serve`. Each try presents a fresh secret, so that none is answered from the key cache:

- unknown id: the same well-formed key id, never issued, with a random secret: what a caller
  probing whether one id exists sends;
- new unknown ids: a never-issued id of its own for each try (new key names for Redis and
  Python each time: a cost of the names, not of whether they exist);
- wrong secret: the issued key's id with a random secret.

The kinds are interleaved in a random order (drift of the machine affects all alike); each
round prints the median of each in microseconds and their differences from `wrong secret`.
Every try must be refused (401); a try that is not is an error of the benchmark. A difference
that keeps its sign across rounds and exceeds their spread is what a caller could measure.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import time
from typing import Any

import uvloop

from gateway.errors import AuthenticationFailed
from gateway.identity import Authenticator
from gateway.identity.keys import PREFIX, KeyHasher, KeyStore, new_key
from gateway.metrics import Metrics
from gateway.settings import AuthSettings, RedisSettings
from gateway.state import EmbeddedRedis, RedisKeys, RedisStore

PEPPER = "bench-pepper-not-a-secret"


class _NoLog:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def _scope(key: str) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]}


async def _refusal_ns(auth: Authenticator, key: str) -> int:
    scope: Any = _scope(key)
    start = time.perf_counter_ns()
    try:
        await auth.authenticate(scope)
    except AuthenticationFailed:
        return time.perf_counter_ns() - start
    raise AssertionError("a try was accepted: the benchmark's keys are wrong")


async def _rounds(tries: int, rounds: int) -> None:
    redis = EmbeddedRedis()
    url = await redis.start()
    store = RedisStore(RedisSettings(url=url, timeout=2.0), url, _NoLog(), Metrics())
    try:
        hasher = KeyHasher(PEPPER)
        keystore = KeyStore(store, RedisKeys(), hasher)
        record, _ = await keystore.create("bench-user", team="bench", models=("mock-gpt",))
        await keystore.touch(record.id, time.time())
        auth = Authenticator(AuthSettings(pepper=PEPPER), keystore, False, _NoLog(), Metrics())
        ids = {"unknown": new_key()[0], "wrong": record.id}

        def key(kind: str) -> str:
            key_id = new_key()[0] if kind == "new" else ids[kind]
            return f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"

        print(f"{tries} tries of each kind per round; medians in microseconds")
        print(
            f"{'round':>5}  {'unknown id':>10}  {'new unknown ids':>15}  {'wrong secret':>12}"
            f"  {'differences':>15}"
        )
        for number in range(1, rounds + 1):
            kinds = ["unknown", "new", "wrong"] * tries
            random.shuffle(kinds)
            for kind in kinds[: tries // 10]:  # warm-up: connections, caches, branch history
                await _refusal_ns(auth, key(kind))
            times: dict[str, list[int]] = {"unknown": [], "new": [], "wrong": []}
            for kind in kinds:
                times[kind].append(await _refusal_ns(auth, key(kind)))
            unknown, new, wrong = (
                statistics.median(times[k]) / 1000 for k in ("unknown", "new", "wrong")
            )
            print(
                f"{number:>5}  {unknown:>10.1f}  {new:>15.1f}  {wrong:>12.1f}"
                f"  {unknown - wrong:>+7.1f} {new - wrong:>+7.1f}"
            )
    finally:
        await store.close()
        await redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5000, help="tries of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(_rounds(args.tries, args.rounds))


if __name__ == "__main__":
    main()
