"""The four limits are named once, and the Lua scripts' replies are decoded at the offsets the
scripts give them."""

from __future__ import annotations

import re

import msgspec
import redis

from gateway.quotas import LIMITS
from gateway.quotas.replies import (
    SLOT,
    TOKENS_PER_MINUTE,
    Admitted,
    Rejected,
    admit_reply,
    peek_reply,
    rejection,
)
from gateway.settings import QuotaLimits
from gateway.state import RedisKeys
from tests.support.procs import ROOT
from tests.support.redis_server import RedisServer

LUA = ROOT / "gateway" / "state" / "lua"
T0 = 1_800_000_000_000


def test_the_table_names_the_settings_fields_in_their_order() -> None:
    """QuotaLimits declares the four limits in the order the scripts take them."""
    fields = [f.name for f in msgspec.structs.fields(QuotaLimits)]
    assert fields == [limit.setting for limit in LIMITS]


def test_the_scripts_read_and_report_the_names_of_the_table() -> None:
    """admit.lua and peek.lua read a user's overrides under the table's field names, in its
    order, and admit.lua names a rejected limit by the table's script names."""
    overrides = [limit.override for limit in LIMITS]
    for script in ("admit.lua", "peek.lua"):
        source = (LUA / script).read_text()
        [read] = re.findall(r'redis\.call\("HMGET", KEYS\[1\], ([^)]*)\)', source)
        assert re.findall(r'"(\w+)"', read) == overrides, script
    named = re.findall(r'return \{0, i, "(\w+)"', (LUA / "admit.lua").read_text())
    assert named == [limit.script for limit in LIMITS]


def test_an_admission_reply_is_read_at_the_documented_offsets() -> None:
    """{1, day, need_i, mask_i..., six window figures}: each value lands where it belongs."""
    reply = [1, 20_000, 11, 1, 12, 4, 13, 5, 60, 59, 1000, 900, 800, 700]
    assert admit_reply(reply, 3) == Admitted([1, 4, 5], (60, 59, 1000, 900, 800, 700))
    rejected = admit_reply([0, 2, b"tokens_per_day", 0, 5000], 3)
    assert rejected == Rejected(1, LIMITS[2], 1, 5000), "scope from 0; a wait of at least 1 ms"


def test_admit_and_peek_decode_what_the_scripts_answer(redis_server: RedisServer) -> None:
    """The real scripts, two scopes: what is held where, the window's figures, a rejection
    naming its scope and limit, and the usage peek.lua reports."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    admit = client.register_script((LUA / "admit.lua").read_text())
    peek = client.register_script((LUA / "peek.lua").read_text())
    keys = RedisKeys("replies")
    user = "replies-user"
    scope_keys = [*keys.scope(user, "user"), *keys.scope(user, "model:m")]
    user_limits = [2, 1000, -1, -1, 1]  # rpm, tpm, tpd, concurrency, is_user
    model_limits = [-1, -1, -1, 1, 0]
    argv_tail = [2, *user_limits, *model_limits]
    first = admit(
        keys=[*keys.limiter(user), *scope_keys], args=["a", 100, str(T0), 60_000, *argv_tail]
    )
    decoded = admit_reply(first, 2)
    assert isinstance(decoded, Admitted)
    assert decoded.masks == [TOKENS_PER_MINUTE, SLOT]
    assert decoded.window == (2, 1, 60_001, 1000, 900, 60_001)
    second = admit(
        keys=[*keys.limiter(user), *scope_keys], args=["b", 100, str(T0 + 1), 60_000, *argv_tail]
    )
    assert admit_reply(second, 2) == Rejected(1, LIMITS[3], 1000, 1), "the model's one slot"
    figures = peek(keys=[*keys.limiter(user), *scope_keys], args=[str(T0 + 2), *argv_tail])
    assert peek_reply(figures, 2) == [
        {
            "requests_per_minute": {"limit": 2, "used": 1, "remaining": 1},
            "tokens_per_minute": {"limit": 1000, "used": 100, "remaining": 900},
        },
        {"concurrent_requests": {"limit": 1, "used": 1, "remaining": 0}},
    ]


def test_a_rejection_is_told_as_openai_tells_it() -> None:
    """The 429 names the limit as the configuration does and the scope's kind, never which
    one; its headers and type follow OpenAI's for the per-minute limits."""
    error = rejection(Rejected(0, LIMITS[1], 1500, 1000), "API key k1", "key")
    assert (error.limit, error.scope, error.type, error.code) == (
        "tokens_per_minute",
        "key",
        "tokens",
        "rate_limit_exceeded",
    )
    assert error.headers == {
        "retry-after": "2",
        "retry-after-ms": "1500",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1.5s",
    }
    assert error.message.startswith("Rate limit reached for API key k1 on tokens per minute (TPM)")
    daily = rejection(Rejected(0, LIMITS[2], 5000, 10), "user u", "user")
    assert (daily.type, daily.code, daily.scope) == (
        "insufficient_quota",
        "insufficient_quota",
        "user",
    )
