"""The rate limiter's Lua scripts against a reference model of their stated semantics.

`ReferenceLimiter` is a plain-Python model written from the limiter's specification, not from
the Lua: per scope, a sliding-window log of requests and of token reservations over the last
60 000 ms (an entry admitted at t counts while t >= now - 60 000), a token counter for the UTC
day, and concurrency leases; -1 is unlimited, 0 allows nothing; an admission passes every scope
and is recorded in all of them, or is refused by the first scope that fails, changing nothing;
the user's override hash replaces the limits of the scope marked as the user's.

A hypothesis state machine drives the real scripts (on a real redis-server, clock pinned with
ARGV now_ms) and the model with the same random operations and compares, after every step, the
decision, the figures returned and the live Redis state. Example tests pin the edge cases,
among them four former bugs of the scripts: retry and reset figures one ms short of when an
entry stops counting (t + 60 001), the excess of a long request lost when its stale reservation
was still stored, renewal reviving an expired lease, and the eviction of 0-token entries failing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.commands.core import Script

import gateway
from gateway.state import RedisKeys
from tests.support.redis_server import RedisServer

WINDOW_MS = 60_000
DAY_MS = 86_400_000
CONCURRENCY_RETRY_MS = 1_000
"""The wait suggested when every slot is taken: slots are freed by settlements, not by time."""
ZERO_LIMIT_RETRY_MS = WINDOW_MS
"""The wait suggested by a per-minute limit of 0, which nothing ever fits: a whole window."""
HOLDS_TPM, HOLDS_TPD, HOLDS_SLOT = 1, 2, 4
"""What an admission holds in a scope (the masks `admit.lua` returns and `settle.lua` takes)."""
OVERRIDE_FIELDS = ("rpm", "tpm", "tpd", "conc")
NO_HEADER = (-1, -1, -1)
LUA_DIR = Path(gateway.__file__).resolve().parent / "state" / "lua"


# --------------------------------------------------------------------------------------------
# The reference model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """One scope's limits: requests and tokens per minute, tokens per day, concurrent slots."""

    rpm: int = -1
    tpm: int = -1
    tpd: int = -1
    conc: int = -1

    def with_override(self, override: Mapping[str, int]) -> Limits:
        """These limits with the override hash's fields in place of their own."""
        return Limits(
            override.get("rpm", self.rpm),
            override.get("tpm", self.tpm),
            override.get("tpd", self.tpd),
            override.get("conc", self.conc),
        )

    def reservation(self, tokens: int) -> int:
        """What an estimate of `tokens` reserves here: never more than a token limit."""
        return min([tokens, *(cap for cap in (self.tpm, self.tpd) if cap >= 0)])


@dataclass(frozen=True)
class ScopeSpec:
    """A scope as the gateway passes it: its limits, and whether the override applies to it."""

    limits: Limits
    is_user: bool = False


@dataclass(frozen=True)
class Admitted:
    """An admission: its UTC day, per scope what it reserved and holds, and header figures.

    `requests` and `tokens` are (limit, remaining, reset ms) of the scope with the least
    remaining (the first on ties), or `NO_HEADER` when no scope has that limit.
    """

    day: int
    needs: tuple[int, ...]
    masks: tuple[int, ...]
    requests: tuple[int, int, int]
    tokens: tuple[int, int, int]


@dataclass(frozen=True)
class Rejected:
    """A refusal by scope `scope` (1-based) on `limit`, whose value is `value`."""

    scope: int
    limit: str
    retry_after_ms: int
    value: int


Decision: TypeAlias = Admitted | Rejected


@dataclass(frozen=True)
class ScopeView:
    """What counts in one scope at a given time: the state the next admission would see."""

    requests: dict[str, int]
    """member -> time admitted, for the requests still in the window"""
    tokens: dict[str, tuple[int, int]]
    """member -> (time, amount), for the token entries still in the window"""
    day_used: int
    """tokens charged to the current UTC day"""
    leases: dict[str, int]
    """member -> lease expiry, for the leases not expired"""


def _in_window(at: int, now: int) -> bool:
    return at >= now - WINDOW_MS


@dataclass
class _Counters:
    """Everything one scope recorded; what counts is filtered by time when asked."""

    requests: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    day: int = -1
    used: int = 0
    leases: dict[str, int] = field(default_factory=dict)

    def live_requests(self, now: int) -> dict[str, int]:
        return {m: at for m, at in self.requests.items() if _in_window(at, now)}

    def live_tokens(self, now: int) -> dict[str, tuple[int, int]]:
        return {m: entry for m, entry in self.tokens.items() if _in_window(entry[0], now)}

    def used_on(self, day: int) -> int:
        return self.used if self.day == day else 0

    def charge_day(self, day: int, amount: int) -> None:
        if self.day != day:
            self.day, self.used = day, 0
        self.used += amount

    def live_leases(self, now: int) -> dict[str, int]:
        return {m: expiry for m, expiry in self.leases.items() if expiry > now}

    def view(self, now: int) -> ScopeView:
        return ScopeView(
            self.live_requests(now),
            self.live_tokens(now),
            self.used_on(now // DAY_MS),
            self.live_leases(now),
        )


@dataclass
class _Holding:
    at: int
    day: int
    needs: tuple[int, ...]
    masks: tuple[int, ...]
    settled: bool = False


class ReferenceLimiter:
    """The limiter's specification, executable: admit, settle and renew at a given time."""

    def __init__(self, scopes: Sequence[ScopeSpec], lease_ms: int) -> None:
        self.scopes = list(scopes)
        self.lease_ms = lease_ms
        self.override: dict[str, int] = {}
        self._counters = [_Counters() for _ in self.scopes]
        self._holdings: dict[str, _Holding] = {}

    def set_override(self, name: str, value: int | None) -> None:
        """Set (or, with None, remove) one field of the user's override."""
        if value is None:
            self.override.pop(name, None)
        else:
            self.override[name] = value

    def limits(self) -> list[Limits]:
        """Each scope's limits now, the override applied to the user's scope."""
        return [
            s.limits.with_override(self.override) if s.is_user else s.limits for s in self.scopes
        ]

    def admit(self, member: str, tokens: int, now: int) -> Decision:
        """Admit `member` with an estimate of `tokens` in every scope, or refuse it."""
        assert member not in self._holdings
        limits = self.limits()
        needs = tuple(lim.reservation(tokens) for lim in limits)
        for index, (lim, counters, need) in enumerate(
            zip(limits, self._counters, needs, strict=True), 1
        ):
            refusal = self._refusal(index, lim, counters, need, now)
            if refusal is not None:
                return refusal
        day = now // DAY_MS
        masks: list[int] = []
        requests_header: tuple[int, int, int] | None = None
        tokens_header: tuple[int, int, int] | None = None
        for lim, counters, need in zip(limits, self._counters, needs, strict=True):
            mask = 0
            if lim.rpm >= 0:
                counters.requests[member] = now
                times = counters.live_requests(now).values()
                figures = (lim.rpm, lim.rpm - len(times), self._until_leaves(min(times), now))
                if requests_header is None or figures[1] < requests_header[1]:
                    requests_header = figures
            if lim.tpm >= 0:
                counters.tokens[member] = (now, need)
                mask |= HOLDS_TPM
                entries = counters.live_tokens(now).values()
                left = lim.tpm - sum(amount for _, amount in entries)
                oldest = min(at for at, _ in entries)
                figures = (lim.tpm, left, self._until_leaves(oldest, now))
                if tokens_header is None or figures[1] < tokens_header[1]:
                    tokens_header = figures
            if lim.tpd >= 0:
                counters.charge_day(day, need)
                mask |= HOLDS_TPD
            if lim.conc >= 0:
                counters.leases[member] = now + self.lease_ms
                mask |= HOLDS_SLOT
            masks.append(mask)
        self._holdings[member] = _Holding(now, day, needs, tuple(masks))
        return Admitted(
            day, needs, tuple(masks), requests_header or NO_HEADER, tokens_header or NO_HEADER
        )

    def settle(self, member: str, tokens: int, now: int) -> None:
        """Charge `member`'s real usage and free its slots."""
        holding = self._holdings[member]
        assert not holding.settled
        holding.settled = True
        today = now // DAY_MS
        for counters, need, mask in zip(self._counters, holding.needs, holding.masks, strict=True):
            excess = tokens - need
            if mask & HOLDS_TPM:
                if _in_window(holding.at, now):
                    counters.tokens[member] = (holding.at, tokens)
                elif excess > 0:
                    counters.tokens[member] = (now, excess)
            if mask & HOLDS_TPD and (today == holding.day or excess > 0):
                counters.charge_day(today, excess)
            if mask & HOLDS_SLOT:
                counters.leases.pop(member, None)

    def renew(self, member: str, now: int) -> None:
        """Extend `member`'s live leases; an expired (or freed) lease stays gone."""
        holding = self._holdings[member]
        for counters, mask in zip(self._counters, holding.masks, strict=True):
            expiry = counters.leases.get(member)
            if mask & HOLDS_SLOT and expiry is not None and expiry > now:
                counters.leases[member] = now + self.lease_ms

    def view(self, now: int) -> list[ScopeView]:
        """What counts in each scope at `now`."""
        return [counters.view(now) for counters in self._counters]

    def _refusal(
        self, index: int, lim: Limits, counters: _Counters, need: int, now: int
    ) -> Rejected | None:
        if lim.rpm >= 0:
            times = list(counters.live_requests(now).values())
            if len(times) + 1 > lim.rpm:
                wait = self._wait([(at, 1) for at in times], 1, lim.rpm, now)
                return Rejected(index, "requests", wait, lim.rpm)
        if lim.tpm >= 0:
            entries = list(counters.live_tokens(now).values())
            if lim.tpm == 0 or sum(amount for _, amount in entries) + need > lim.tpm:
                return Rejected(index, "tokens", self._wait(entries, need, lim.tpm, now), lim.tpm)
        if lim.tpd >= 0:
            day = now // DAY_MS
            if lim.tpd == 0 or counters.used_on(day) + need > lim.tpd:
                return Rejected(index, "tokens_per_day", (day + 1) * DAY_MS - now, lim.tpd)
        if lim.conc >= 0 and len(counters.live_leases(now)) + 1 > lim.conc:
            return Rejected(index, "concurrency", CONCURRENCY_RETRY_MS, lim.conc)
        return None

    def _wait(self, entries: Sequence[tuple[int, int]], need: int, limit: int, now: int) -> int:
        """Milliseconds until enough (time, weight) `entries` leave for `need` more to fit."""
        if limit == 0:
            return ZERO_LIMIT_RETRY_MS
        for leaving, _ in sorted(entries):
            staying = sum(weight for at, weight in entries if at > leaving)
            if staying + need <= limit:
                return self._until_leaves(leaving, now)
        raise AssertionError("a reservation never exceeds its limit: emptying the window fits")

    def _until_leaves(self, at: int, now: int) -> int:
        """Milliseconds until an entry made at `at` stops counting: it leaves at at + 60 001."""
        return at + WINDOW_MS + 1 - now


# --------------------------------------------------------------------------------------------
# The real scripts, on one user's keys
# --------------------------------------------------------------------------------------------


class Scripts:
    """admit.lua, settle.lua and renew.lua registered on a client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.admit: Script = client.register_script((LUA_DIR / "admit.lua").read_text())
        self.settle: Script = client.register_script((LUA_DIR / "settle.lua").read_text())
        self.renew: Script = client.register_script((LUA_DIR / "renew.lua").read_text())


def parse_admit(raw: Sequence[Any], scopes: int) -> Decision:
    """admit.lua's reply as a decision."""
    if int(raw[0]) == 0:
        return Rejected(int(raw[1]), str(raw[2]), int(raw[3]), int(raw[4]))
    assert len(raw) == 2 + 2 * scopes + 6, raw
    values = [int(v) for v in raw]
    tail = values[2 + 2 * scopes :]
    return Admitted(
        values[1],
        tuple(values[2 : 2 + 2 * scopes : 2]),
        tuple(values[3 : 3 + 2 * scopes : 2]),
        (tail[0], tail[1], tail[2]),
        (tail[3], tail[4], tail[5]),
    )


class LuaLimiter:
    """The scripts on a fresh user's keys, called as `gateway.quotas` calls them, clock pinned."""

    def __init__(self, scripts: Scripts, scopes: Sequence[ScopeSpec], lease_ms: int) -> None:
        self.scripts, self.client = scripts, scripts.client
        self.scopes = list(scopes)
        self.lease_ms = lease_ms
        names = RedisKeys()
        user = f"limiter-model-{uuid.uuid4().hex}"
        self.override_key = names.user_override(user)
        self.scope_keys = [names.scope(user, f"s{i}") for i in range(len(self.scopes))]
        self.pending_key = names.pending(user)
        self.keys = [
            self.override_key,
            self.pending_key,
            *(k for keys in self.scope_keys for k in keys),
        ]
        self.admitted: dict[str, Admitted] = {}

    def admit(self, member: str, tokens: int, now: int) -> Decision:
        args: list[int | str] = [member, tokens, now, self.lease_ms, len(self.scopes)]
        for spec in self.scopes:
            lim = spec.limits
            args += [lim.rpm, lim.tpm, lim.tpd, lim.conc, 1 if spec.is_user else 0]
        decision = parse_admit(self.scripts.admit(keys=self.keys, args=args), len(self.scopes))
        if isinstance(decision, Admitted):
            self.admitted[member] = decision
        return decision

    def settle(self, member: str, tokens: int, now: int) -> None:
        assert member in self.admitted
        args: list[int | str] = [member, tokens, now, len(self.scopes)]
        assert self.scripts.settle(keys=self.keys, args=args) == 1
        # a settlement is applied once: sent again (a retry), it changes nothing
        assert self.scripts.settle(keys=self.keys, args=args) == 0

    def renew(self, member: str, now: int) -> None:
        masks = self.admitted[member].masks
        conc = [
            keys[4] for keys, mask in zip(self.scope_keys, masks, strict=True) if mask & HOLDS_SLOT
        ]
        assert self.scripts.renew(keys=conc, args=[member, self.lease_ms, now]) == 1

    def set_override(self, name: str, value: int | None) -> None:
        if value is None:
            self.client.hdel(self.override_key, name)
        else:
            self.client.hset(self.override_key, name, value)

    def view(self, now: int) -> list[ScopeView]:
        """What counts in each scope at `now`, read from Redis without changing it."""
        pipe = self.client.pipeline(transaction=False)
        for req, tok, amt, day, conc in self.scope_keys:
            pipe.zrangebyscore(req, now - WINDOW_MS, "+inf", withscores=True)
            pipe.zrangebyscore(tok, now - WINDOW_MS, "+inf", withscores=True)
            pipe.hgetall(amt)
            pipe.hmget(day, "day", "used")
            pipe.zrangebyscore(conc, f"({now}", "+inf", withscores=True)
        results = pipe.execute()
        views = []
        for i in range(len(self.scope_keys)):
            requests, tokens, amounts, (day, used), leases = results[5 * i : 5 * i + 5]
            today = day is not None and int(day) == now // DAY_MS
            views.append(
                ScopeView(
                    {m: int(at) for m, at in requests},
                    {m: (int(at), int(amounts[m])) for m, at in tokens},
                    int(used) if today else 0,
                    {m: int(expiry) for m, expiry in leases},
                )
            )
        return views

    def problems(self) -> list[str]:
        """Broken invariants of the stored state: a key without a TTL, `_sum` not the sum."""
        pipe = self.client.pipeline(transaction=False)
        for keys in self.scope_keys:
            for key in keys:
                pipe.pttl(key)
            pipe.zrange(keys[1], 0, -1)
            pipe.hgetall(keys[2])
        results = pipe.execute()
        found = []
        for i, keys in enumerate(self.scope_keys):
            *ttls, entries, amounts = results[7 * i : 7 * i + 7]
            found += [f"{key} has no TTL" for key, ttl in zip(keys, ttls, strict=True) if ttl == -1]
            total = int(amounts.pop("_sum", 0))
            if set(entries) != set(amounts):
                found.append(f"scope {i + 1}: tok {sorted(entries)} vs amt {sorted(amounts)}")
            if total != sum(int(v) for v in amounts.values()):
                found.append(f"scope {i + 1}: _sum {total} vs amounts {amounts}")
        return found

    def snapshot(self) -> dict[str, Any]:
        """The raw content of every scope key (and its existence), to compare before/after."""
        pipe = self.client.pipeline(transaction=False)
        for req, tok, amt, day, conc in self.scope_keys:
            pipe.zrange(req, 0, -1, withscores=True)
            pipe.zrange(tok, 0, -1, withscores=True)
            pipe.hgetall(amt)
            pipe.hgetall(day)
            pipe.zrange(conc, 0, -1, withscores=True)
        flat = [key for keys in self.scope_keys for key in keys]
        return dict(zip(flat, pipe.execute(), strict=True))

    def delete(self) -> None:
        self.client.delete(*self.keys)


# --------------------------------------------------------------------------------------------
# Random operations: the state machine
# --------------------------------------------------------------------------------------------

TOKENS = st.integers(0, 160)
ADVANCES = st.one_of(
    st.sampled_from([0, 1, 999, 1_000, 15_000, 45_000, 59_999, 60_000, 60_001]),
    st.integers(0, 90_000),
)


def _limit(*values: int) -> st.SearchStrategy[int]:
    """One of `values` or unlimited; rarely 0, which refuses everything."""
    return st.integers(0, 29).flatmap(
        lambda pick: st.just(0) if pick == 0 else st.sampled_from([-1, -1, *values])
    )


LIMIT_SETS = st.builds(
    Limits,
    rpm=_limit(1, 2, 3, 4, 6, 10, 20),
    tpm=_limit(20, 60, 150, 400, 1000, 5000),
    tpd=_limit(100, 300, 1000, 3000, 10_000),
    conc=_limit(1, 2, 3, 5, 10),
)
OVERRIDE_VALUES = st.none() | st.sampled_from([-1, 0, 1, 2, 3, 10, 60, 150, 300, 1000])


@st.composite
def scope_specs(draw: st.DrawFn) -> list[ScopeSpec]:
    """1 to 3 scopes; usually the first is the user's, sometimes another or none."""
    limits = draw(st.lists(LIMIT_SETS, min_size=1, max_size=3))
    user = draw(st.sampled_from([0, 0, *range(-1, len(limits))]))
    return [ScopeSpec(lim, i == user) for i, lim in enumerate(limits)]


@st.composite
def start_times(draw: st.DrawFn) -> int:
    """A time shortly before a UTC midnight, so that most runs cross a day boundary."""
    day = draw(st.integers(19_000, 21_000))
    return (day + 1) * DAY_MS - draw(st.integers(0, 300_000))


class LimiterMachine(RuleBasedStateMachine):
    """Random admit/settle/renew/clock/override operations on the scripts and on the model."""

    scripts: ClassVar[Scripts]
    now: int
    model: ReferenceLimiter
    lua: LuaLimiter

    @initialize(
        scopes=scope_specs(),
        start=start_times(),
        lease_ms=st.sampled_from([1_000, 15_000, 45_000]),
    )
    def start(self, scopes: list[ScopeSpec], start: int, lease_ms: int) -> None:
        self.now = start
        self.model = ReferenceLimiter(scopes, lease_ms)
        self.lua = LuaLimiter(self.scripts, scopes, lease_ms)
        self.estimates: dict[str, int] = {}
        self.admitted_at: dict[str, int] = {}
        self.unsettled: list[str] = []
        self.admissions = 0

    def teardown(self) -> None:
        if hasattr(self, "lua"):
            self.lua.delete()

    def _admit(self, tokens: int) -> None:
        member = f"m{self.admissions}"
        self.admissions += 1
        expected = self.model.admit(member, tokens, self.now)
        actual = self.lua.admit(member, tokens, self.now)
        assert actual == expected
        if isinstance(expected, Admitted):
            event("admitted")
            self.estimates[member] = tokens
            self.admitted_at[member] = self.now
            self.unsettled.append(member)
        else:
            event(f"rejected: {expected.limit}")

    @rule(tokens=TOKENS)
    def admit(self, tokens: int) -> None:
        self._admit(tokens)

    @rule(tokens=st.lists(TOKENS, min_size=2, max_size=6))
    def burst(self, tokens: list[int]) -> None:
        for estimate in tokens:
            self._admit(estimate)

    @precondition(lambda self: bool(self.unsettled))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        self._settle(data.draw(st.sampled_from(self.unsettled), label="member"), data)

    @precondition(lambda self: bool(self.unsettled))
    @rule(data=st.data(), offset=st.sampled_from([0, 1, 2]) | st.integers(0, 30_000))
    def settle_late(self, data: st.DataObject, offset: int) -> None:
        """Settle a long request: move the clock to `offset` ms after its window ended."""
        member = data.draw(st.sampled_from(self.unsettled), label="member")
        self.now = max(self.now, self.admitted_at[member] + WINDOW_MS + offset)
        self._settle(member, data)

    def _settle(self, member: str, data: st.DataObject) -> None:
        estimate = self.estimates[member]
        # 0 (an upstream error) to well above the estimate, also when the estimate is 0.
        usage = data.draw(st.integers(0, max(3 * estimate, 20)), label="usage")
        at = self.admitted_at[member]
        event("settle: " + ("in the window" if _in_window(at, self.now) else "after the window"))
        if usage == 0 or estimate == 0:
            event("settle: 0-token entry")
        if at // DAY_MS != self.now // DAY_MS:
            event("settle: on a later day")
        self.model.settle(member, usage, self.now)
        self.lua.settle(member, usage, self.now)
        self.unsettled.remove(member)

    @precondition(lambda self: bool(self.estimates))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from(sorted(self.estimates)), label="member")
        event("renew: " + ("unsettled" if member in self.unsettled else "settled"))
        self.model.renew(member, self.now)
        self.lua.renew(member, self.now)

    @rule(ms=ADVANCES)
    def advance(self, ms: int) -> None:
        before = self.now // DAY_MS
        self.now += ms
        if self.now // DAY_MS != before:
            event("crossed a UTC day boundary")

    @rule(name=st.sampled_from(OVERRIDE_FIELDS), value=OVERRIDE_VALUES)
    def override(self, name: str, value: int | None) -> None:
        self.model.set_override(name, value)
        self.lua.set_override(name, value)

    @invariant()
    def state_agrees(self) -> None:
        assert self.lua.view(self.now) == self.model.view(self.now)
        assert self.lua.problems() == []


@pytest.fixture(scope="module")
def scripts(redis_server: RedisServer) -> Scripts:
    """The three scripts registered on a synchronous client of the session's redis-server."""
    return Scripts(redis_server.client())


LimiterFactory: TypeAlias = Callable[..., LuaLimiter]


@pytest.fixture
def limiter(scripts: Scripts) -> Iterator[LimiterFactory]:
    """Build `LuaLimiter`s on fresh users; their keys are deleted after the test."""
    made: list[LuaLimiter] = []

    def build(*scopes: ScopeSpec, lease_ms: int = 30_000) -> LuaLimiter:
        made.append(LuaLimiter(scripts, scopes, lease_ms))
        return made[-1]

    yield build
    for lua in made:
        lua.delete()


def test_scripts_agree_with_the_model(scripts: Scripts) -> None:
    """Guards the whole contract: random operation sequences give the same decisions, figures
    and live state (requests, token entries, day counter, leases) in Redis as in the model, and
    every key stays with a TTL and a `_sum` equal to its amounts."""

    class Machine(LimiterMachine):
        pass

    Machine.scripts = scripts
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=250,
            stateful_step_count=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@given(
    steps=st.lists(st.tuples(ADVANCES | st.just(0), TOKENS), max_size=60),
    rpm=st.integers(1, 4),
)
@settings(max_examples=150, deadline=None, database=None)
def test_model_never_admits_more_than_rpm_in_any_window(
    steps: list[tuple[int, int]], rpm: int
) -> None:
    """Guards the model itself (so that agreeing with it means something): whatever the timing,
    no 60 000 ms window [t - 60 000, t] holds more than rpm admissions."""
    model = ReferenceLimiter([ScopeSpec(Limits(rpm=rpm))], 30_000)
    now, admitted = 0, []
    for i, (advance, tokens) in enumerate(steps):
        now += advance
        if isinstance(model.admit(f"m{i}", tokens, now), Admitted):
            admitted.append(now)
    for t in admitted:
        assert sum(t - WINDOW_MS <= u <= t for u in admitted) <= rpm


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------

DAY = 19_700
T0 = DAY * DAY_MS + 3_600_000
USER = Limits(rpm=10, tpm=1_000, tpd=10_000, conc=10)


@pytest.mark.parametrize(
    ("limits", "tokens", "limit"),
    [(Limits(rpm=5, tpm=10_000), 10, "requests"), (Limits(rpm=100, tpm=250), 50, "tokens")],
)
def test_burst_in_one_millisecond_admits_exactly_the_limit(
    limiter: LimiterFactory, limits: Limits, tokens: int, limit: str
) -> None:
    """Guards exactness at a single instant: the first five admissions of one millisecond pass,
    with the remaining figures counting down, and the sixth is refused, recording nothing."""
    lua = limiter(ScopeSpec(limits, is_user=True))
    for i in range(5):
        decision = lua.admit(f"m{i}", tokens, T0)
        assert isinstance(decision, Admitted)
        assert decision.requests[:2] == (limits.rpm, limits.rpm - i - 1)
        assert decision.tokens[:2] == (limits.tpm, limits.tpm - tokens * (i + 1))
    refused = lua.admit("m5", tokens, T0)
    assert isinstance(refused, Rejected)
    assert (refused.scope, refused.limit) == (1, limit)
    req, tok, amt = lua.scope_keys[0][:3]
    assert lua.client.zcard(req) == lua.client.zcard(tok) == 5
    assert lua.client.hget(amt, "_sum") == str(5 * tokens)


@pytest.mark.parametrize("limit", ["requests", "tokens"])
def test_entry_counts_at_exactly_now_minus_60000_not_one_ms_later(
    limiter: LimiterFactory, limit: str
) -> None:
    """Guards the window edge: an entry admitted at t still counts at t + 60 000 (t >= now -
    60 000) and stops counting at t + 60 001."""
    limits = Limits(rpm=1) if limit == "requests" else Limits(tpm=100)
    lua = limiter(ScopeSpec(limits))
    assert isinstance(lua.admit("a", 100, T0), Admitted)
    refused = lua.admit("b", 1, T0 + WINDOW_MS)
    assert isinstance(refused, Rejected)
    assert (refused.scope, refused.limit) == (1, limit)
    view = lua.view(T0 + WINDOW_MS)[0]
    assert "a" in (view.requests if limit == "requests" else view.tokens)
    assert isinstance(lua.admit("c", 1, T0 + WINDOW_MS + 1), Admitted)


@pytest.mark.parametrize("limit", ["requests", "tokens"])
def test_retry_after_is_long_enough(limiter: LimiterFactory, limit: str) -> None:
    """Guards retry_after_ms (formerly one ms short): it runs to t + 60 001, when the entry
    admitted at t stops counting, so retrying after exactly that long is admitted (and a
    refusal at t + 60 000 says 1, not 0)."""
    limits = Limits(rpm=1) if limit == "requests" else Limits(tpm=100)
    lua = limiter(ScopeSpec(limits))
    assert isinstance(lua.admit("a", 100, T0), Admitted)
    refused = lua.admit("b", 1, T0 + 30_000)
    at_edge = lua.admit("c", 1, T0 + WINDOW_MS)
    assert isinstance(refused, Rejected)
    assert isinstance(at_edge, Rejected)
    assert (refused.retry_after_ms, at_edge.retry_after_ms) == (30_001, 1)
    assert isinstance(lua.admit("d", 1, T0 + 30_000 + refused.retry_after_ms), Admitted)


def test_reset_figures_are_long_enough(limiter: LimiterFactory) -> None:
    """Guards the x-ratelimit-reset-* figures (formerly one ms short): once they have elapsed,
    the oldest entry no longer counts, so capacity is back."""
    lua = limiter(ScopeSpec(Limits(rpm=1, tpm=100)))
    admitted = lua.admit("a", 100, T0)
    assert isinstance(admitted, Admitted)
    assert (admitted.requests, admitted.tokens) == ((1, 0, 60_001), (100, 0, 60_001))
    assert isinstance(lua.admit("b", 100, T0 + admitted.requests[2]), Admitted)


def test_header_figures_come_from_the_tightest_scope_the_first_on_ties(
    limiter: LimiterFactory,
) -> None:
    """Guards the x-ratelimit-* figures: they describe the scope with the least remaining, and
    the first such scope when several tie (here the user scope, limited by an override after
    the other scope had already counted one request)."""
    lua = limiter(ScopeSpec(Limits(), is_user=True), ScopeSpec(Limits(rpm=3, tpm=300)))
    first = lua.admit("a", 100, T0)
    assert isinstance(first, Admitted)
    assert (first.requests[:2], first.tokens[:2]) == ((3, 2), (300, 200))
    lua.set_override("rpm", 2)
    lua.set_override("tpm", 200)
    tie = lua.admit("b", 100, T0 + 1_000)
    assert isinstance(tie, Admitted)
    assert (tie.requests[:2], tie.tokens[:2]) == ((2, 1), (200, 100))
    lua.set_override("rpm", 5)
    lua.set_override("tpm", 1_000)
    tighter = lua.admit("c", 100, T0 + 2_000)
    assert isinstance(tighter, Admitted)
    assert (tighter.requests[:2], tighter.tokens[:2]) == ((3, 0), (300, 0))


def test_settle_after_the_window_charges_only_the_excess(limiter: LimiterFactory) -> None:
    """Guards long requests: once the reservation left the window, settling charges only what
    exceeds it, as a new entry at settle time (and nothing when the usage is below it); while
    it is in the window, settling replaces the reservation by the real usage."""
    lua = limiter(ScopeSpec(Limits(tpm=100), is_user=True))
    assert isinstance(lua.admit("m1", 10, T0), Admitted)
    assert isinstance(lua.admit("m2", 10, T0), Admitted)
    later = T0 + 70_000
    admitted = lua.admit("m3", 10, later)  # evicts m1 and m2 from Redis
    assert isinstance(admitted, Admitted)
    assert admitted.tokens[:2] == (100, 90)
    lua.settle("m1", 50, later)
    lua.settle("m2", 5, later)
    assert lua.view(later)[0].tokens == {"m3": (later, 10), "m1": (later, 40)}
    lua.settle("m3", 30, later + 1)
    assert lua.view(later + 1)[0].tokens == {"m3": (later, 30), "m1": (later, 40)}
    assert lua.view(later + WINDOW_MS + 1)[0].tokens == {}
    assert lua.problems() == []


def test_settle_after_the_window_charges_the_excess_without_admission_between(
    limiter: LimiterFactory,
) -> None:
    """Guards that the excess of a long request is charged whether or not another admission
    happened to evict its reservation first (it used to be lost when none had): settle evicts
    the stale reservation itself and charges only the excess, at settle time."""
    lua = limiter(ScopeSpec(Limits(tpm=100)))
    assert isinstance(lua.admit("m1", 10, T0), Admitted)
    later = T0 + 70_000
    lua.settle("m1", 50, later)
    assert lua.view(later)[0].tokens == {"m1": (later, 40)}
    assert lua.problems() == []
    refused = lua.admit("m2", 61, later)
    assert isinstance(refused, Rejected)
    assert refused.limit == "tokens"
    assert isinstance(lua.admit("m3", 60, later), Admitted)


def test_day_rollover_between_admit_and_settle(limiter: LimiterFactory) -> None:
    """Guards the day counter: settling on the admission's day replaces the reservation (also
    downwards), settling on a later day charges only the excess to the new day and refunds
    nothing, and admissions see the new day's counter."""
    lua = limiter(ScopeSpec(Limits(tpd=1_000)))
    midnight = (DAY + 1) * DAY_MS
    for member, at in (("m1", midnight - 1_000), ("m2", midnight - 1)):
        admitted = lua.admit(member, 100, at)
        assert isinstance(admitted, Admitted)
        assert admitted.day == DAY
    assert lua.view(midnight - 1)[0].day_used == 200
    assert lua.view(midnight)[0].day_used == 0
    lua.settle("m1", 250, midnight + 5)  # the first write of the new day
    assert lua.view(midnight + 5)[0].day_used == 150
    assert isinstance(lua.admit("m3", 100, midnight + 10), Admitted)
    lua.settle("m2", 40, midnight + 20)  # below its reservation: no refund across days
    assert lua.view(midnight + 20)[0].day_used == 250
    lua.settle("m3", 30, midnight + 30)  # same day: refunded
    assert lua.view(midnight + 30)[0].day_used == 180
    refused = lua.admit("m4", 900, midnight + 50)
    assert refused == Rejected(1, "tokens_per_day", DAY_MS - 50, 1_000)
    assert isinstance(lua.admit("m5", 820, midnight + 50), Admitted)
    assert lua.view(midnight + 50)[0].day_used == 1_000
    assert lua.problems() == []


@pytest.mark.parametrize(
    ("limits", "limit", "value"),
    [
        (Limits(rpm=1), "requests", 1),
        (Limits(tpm=100), "tokens", 100),
        (Limits(tpd=100), "tokens_per_day", 100),
        (Limits(conc=1), "concurrency", 1),
    ],
)
def test_rejection_changes_no_counter(
    limiter: LimiterFactory, limits: Limits, limit: str, value: int
) -> None:
    """Guards atomicity: a request refused by the second scope is recorded nowhere, not even
    in the first scope, which it passed."""
    lua = limiter(ScopeSpec(USER, is_user=True), ScopeSpec(limits))
    assert isinstance(lua.admit("a", 100, T0), Admitted)
    before = lua.snapshot()
    assert any(before.values())
    refused = lua.admit("b", 50, T0 + 1_000)
    assert isinstance(refused, Rejected)
    assert (refused.scope, refused.limit, refused.value) == (2, limit, value)
    assert lua.snapshot() == before


def test_every_key_the_scripts_write_has_a_ttl(limiter: LimiterFactory) -> None:
    """Guards against immortal keys: after admissions, a refusal, a renewal, a settlement that
    adds new token entries and one on a new day, every key that exists has PTTL > 0."""
    lua = limiter(
        ScopeSpec(Limits(rpm=5, tpm=100, tpd=1_000, conc=2), is_user=True),
        ScopeSpec(Limits(tpm=50, conc=1)),
        lease_ms=10_000,
    )
    (req, tok, amt, day, conc), (_, tok2, amt2, _, conc2) = lua.scope_keys
    midnight = (DAY + 1) * DAY_MS

    def ttls() -> dict[str, int]:
        """The PTTL of every existing scope key."""
        pipe = lua.client.pipeline(transaction=False)
        for keys in lua.scope_keys:
            for key in keys:
                pipe.pttl(key)
        flat = [key for keys in lua.scope_keys for key in keys]
        found = {key: int(ttl) for key, ttl in zip(flat, pipe.execute(), strict=True) if ttl != -2}
        assert all(ttl > 0 for ttl in found.values()), found
        return found

    assert isinstance(lua.admit("a", 20, midnight - 70_000), Admitted)
    assert set(ttls()) == {req, tok, amt, day, conc, tok2, amt2, conc2}
    assert isinstance(lua.admit("b", 20, midnight - 70_000), Rejected)
    ttls()
    lua.renew("a", midnight - 65_000)
    ttls()
    assert isinstance(lua.admit("c", 20, midnight + 1), Admitted)  # evicts a's reservations
    lua.settle("a", 90, midnight + 2)  # after the window and on a new day: new entries
    assert lua.view(midnight + 2)[1].tokens["a"] == (midnight + 2, 70)
    lua.settle("c", 500, midnight + 3)
    assert set(ttls()) == {req, tok, amt, day, tok2, amt2}  # no slot held: no conc key
    assert lua.problems() == []


def test_override_replaces_the_user_scope_limits_only(limiter: LimiterFactory) -> None:
    """Guards the admin override: its fields replace the limits of the scope marked is_user
    (capping its reservation too), never those of the other scopes; removing it restores them."""
    lua = limiter(ScopeSpec(Limits(rpm=5, tpm=1_000), is_user=True), ScopeSpec(Limits(rpm=3)))
    lua.set_override("rpm", 1)
    lua.set_override("tpm", 50)
    admitted = lua.admit("a", 80, T0)
    assert isinstance(admitted, Admitted)
    assert admitted.needs == (50, 80)
    assert admitted.requests[:2] == (1, 0)
    refused = lua.admit("b", 1, T0)
    assert isinstance(refused, Rejected)
    assert (refused.scope, refused.limit, refused.value) == (1, "requests", 1)
    lua.set_override("rpm", -1)
    assert isinstance(lua.admit("c", 0, T0), Admitted)
    assert isinstance(lua.admit("d", 0, T0), Admitted)
    refused = lua.admit("e", 0, T0)
    assert isinstance(refused, Rejected)
    assert (refused.scope, refused.limit, refused.value) == (2, "requests", 3)
    lua.client.delete(lua.override_key)
    refused = lua.admit("f", 0, T0)
    assert isinstance(refused, Rejected)
    assert refused.scope == 2


def test_renew_extends_a_live_lease_and_settle_frees_it(limiter: LimiterFactory) -> None:
    """Guards leases: a lease expires at admission + lease_ms, a renewal before that moves the
    expiry to renewal + lease_ms, and settling frees the slot at once."""
    lua = limiter(ScopeSpec(Limits(conc=1)), lease_ms=1_000)
    assert isinstance(lua.admit("a", 1, T0), Admitted)
    lua.renew("a", T0 + 900)
    refused = lua.admit("b", 1, T0 + 1_899)
    assert refused == Rejected(1, "concurrency", CONCURRENCY_RETRY_MS, 1)
    assert isinstance(lua.admit("c", 1, T0 + 1_900), Admitted)
    lua.settle("c", 1, T0 + 1_901)
    assert lua.view(T0 + 1_901)[0].leases == {}
    assert isinstance(lua.admit("d", 1, T0 + 1_902), Admitted)


def test_renew_does_not_revive_an_expired_lease(limiter: LimiterFactory) -> None:
    """Guards that an expired lease stays expired: renewing it after expiry, while no
    admission has swept it from Redis yet, does not take the slot back (it used to)."""
    lua = limiter(ScopeSpec(Limits(conc=1)), lease_ms=1_000)
    assert isinstance(lua.admit("a", 1, T0), Admitted)
    lua.renew("a", T0 + 5_000)  # a's lease expired at T0 + 1000
    assert lua.view(T0 + 5_000)[0].leases == {}
    assert isinstance(lua.admit("b", 1, T0 + 5_000), Admitted)


@pytest.mark.parametrize(("estimate", "usage"), [(10, 0), (0, None)])
def test_evicting_zero_token_entries(
    limiter: LimiterFactory, estimate: int, usage: int | None
) -> None:
    """Guards refunds: a request settled with 0 tokens (an upstream error, in the gateway), or
    reserving 0, does not break the admission that evicts its entry a minute later (freeing 0
    used to send HINCRBY _sum "-0", which Redis refuses), nor the ones after it."""
    lua = limiter(ScopeSpec(Limits(tpm=100)))
    assert isinstance(lua.admit("a", estimate, T0), Admitted)
    if usage is not None:
        lua.settle("a", usage, T0 + 10)
    assert isinstance(lua.admit("b", 10, T0 + WINDOW_MS + 11), Admitted)
    assert lua.view(T0 + WINDOW_MS + 11)[0].tokens == {"b": (T0 + WINDOW_MS + 11, 10)}
    assert isinstance(lua.admit("c", 10, T0 + WINDOW_MS + 12), Admitted)
    assert lua.problems() == []


def test_eviction_of_many_entries_keeps_the_sum(limiter: LimiterFactory) -> None:
    """Guards the sliced eviction (Lua's unpack() refuses ~8000 arguments): when thousands of
    reservations leave the window in one admission, exactly they are dropped, and `_sum` stays
    the sum of the entries left."""
    lua = limiter(ScopeSpec(Limits(tpm=10**9)))
    pipe = lua.client.pipeline(transaction=False)
    for i in range(8_003):
        at = T0 if i < 8_000 else T0 + 30_000
        args: list[int | str] = [f"m{i}", 1 + i % 7, at, lua.lease_ms, 1, -1, 10**9, -1, -1, 0]
        lua.scripts.admit(keys=lua.keys, args=args, client=pipe)
    pipe.execute()
    late = T0 + WINDOW_MS + 1
    admitted = lua.admit("late", 5, late)
    assert isinstance(admitted, Admitted)
    kept = {f"m{i}": (T0 + 30_000, 1 + i % 7) for i in range(8_000, 8_003)}
    assert admitted.tokens[1] == 10**9 - sum(amount for _, amount in kept.values()) - 5
    assert lua.view(late)[0].tokens == {**kept, "late": (late, 5)}
    assert lua.client.zcard(lua.scope_keys[0][1]) == 4
    assert lua.problems() == []
