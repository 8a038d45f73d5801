"""Regressions of the limiter's Lua scripts at volumes the property tests do not reach."""

from __future__ import annotations

import redis

from gateway.state import RedisKeys
from tests.support.procs import ROOT
from tests.support.redis_server import RedisServer

LUA = ROOT / "gateway" / "state" / "lua"
T0 = 1_800_000_000_000


def test_a_busy_minute_leaves_the_window_in_one_admission(redis_server: RedisServer) -> None:
    """20,000 reservations expire at once: Lua's unpack() limit once made this an error."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    admit = client.register_script((LUA / "admit.lua").read_text())
    keys = [*RedisKeys().limiter("busy"), *RedisKeys().scope("busy", "user")]
    limits = [-1, 10**9, -1, -1, 1]  # tokens per minute only
    pipe = client.pipeline(transaction=False)
    for i in range(20_000):
        admit(keys=keys, args=[f"m{i}", 10, str(T0), 60_000, 1, *limits], client=pipe)
    pipe.execute()
    _, tok, amt, _, _ = keys[2:]
    assert int(client.hget(amt, "_sum") or 0) == 200_000
    result = admit(keys=keys, args=["late", 10, str(T0 + 60_001), 60_000, 1, *limits])
    assert result[0] == 1
    assert int(client.hget(amt, "_sum") or 0) == 10
    assert client.zcard(tok) == 1
    assert client.pttl(tok) > 0
    assert client.pttl(amt) > 0


def test_settlement_applies_once_and_only_to_real_admissions(redis_server: RedisServer) -> None:
    """A retried settlement, or the compensation sent for an admission whose answer was lost,
    changes nothing the second time, nor for an admission that never happened."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    admit = client.register_script((LUA / "admit.lua").read_text())
    settle = client.register_script((LUA / "settle.lua").read_text())
    keys = [*RedisKeys().limiter("once"), *RedisKeys().scope("once", "user")]
    _, _, req, tok, amt, day, conc = keys
    limits = [10, 1000, 5000, 2, 1]
    assert admit(keys=keys, args=["a", 100, str(T0), 60_000, 1, *limits])[0] == 1
    assert settle(keys=keys, args=["ghost", 0, str(T0 + 5), 1]) == 0
    assert settle(keys=keys, args=["a", 40, str(T0 + 10), 1]) == 1
    state = (client.hgetall(amt), client.hgetall(day), client.zcard(conc), client.zcard(req))
    assert state == ({"a": "40", "_sum": "40"}, {"day": str(T0 // 86_400_000), "used": "40"}, 0, 1)
    assert settle(keys=keys, args=["a", 0, str(T0 + 20), 1]) == 0
    assert (
        client.hgetall(amt),
        client.hgetall(day),
        client.zcard(conc),
        client.zcard(req),
    ) == state
    assert client.zcard(tok) == 1
