"""Script calls made in the same turn of the event loop, sent to Redis as one pipeline.

Under load many requests are admitted (and settled) at once; each EVALSHA on its own costs a
pooled connection, a write and a read. Queued here and flushed at the end of the loop's current
turn, they share one round trip: no request waits longer than it would have for its own call,
and under load the client-side cost per call is about halved (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from redis.exceptions import MovedError, NoScriptError, ResponseError

from .client import Client, connection, moved, pool_of, unreachable
from .store import RedisStore, RedisUnavailable

Orphan = Callable[[Any], None]
"""Called with the result of a call whose caller stopped waiting (e.g. its client left)."""

_TRANSIENT = {
    "OOM", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "ASK", "MOVED",
    "NOREPLICAS", "NOPERM",
}  # fmt: skip
"""Error replies that say Redis did not run the call now, not that the call is wrong (a MOVED
left after the resend: the slot moved again; NOPERM: an ACL to fix, the records wait)."""


def _code(result: Any) -> str | None:
    """The error code of a reply (``OOM``, ``MOVED``...), None if it is no error. redis-py
    takes the code off the message of the errors it has a class for, and keeps it apart."""
    if not isinstance(result, ResponseError):
        return None
    code = getattr(result, "status_code", None)
    return code if isinstance(code, str) else str(result).split(" ", 1)[0]


class ScriptRefused(RedisUnavailable):
    """The script itself failed on this call (Redis is fine): sending it again fails again."""


def pack(items: Iterable[Any]) -> bytes:
    """`items` as Redis protocol (RESP) bulk strings: text, bytes and numbers."""
    parts = []
    for item in items:
        kind = type(item)
        if kind is str:
            data = item.encode()
        elif kind is bytes:
            data = item
        elif kind is int or kind is float:
            data = repr(item).encode()
        else:
            raise TypeError(f"cannot send {kind.__name__} to Redis")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class Packed(NamedTuple):
    """A script call's keys and arguments, packed (`pack`) by a caller that packs faster
    knowing what repeats: `body` holds `items` items, the first `keys` of them keys; `route`
    is one of the keys (all share a hash tag): the Cluster node holding it runs the call."""

    keys: int
    items: int
    body: bytes
    route: str


class _Call:
    __slots__ = ("future", "on_orphan", "packed", "script")

    def __init__(
        self,
        script: Any,
        packed: Packed,
        future: asyncio.Future[Any],
        on_orphan: Orphan | None,
    ) -> None:
        self.script, self.packed = script, packed
        self.future, self.on_orphan = future, on_orphan


def evalsha(sha: str, packed: Packed) -> bytes:
    """The EVALSHA command of script `sha` with `packed` keys and arguments, in RESP."""
    keys, items, body, _ = packed
    return b"*%d\r\n$7\r\nEVALSHA\r\n" % (items + 3) + pack((sha, keys)) + body


async def _send(r: Client, batch: list[_Call]) -> list[Any]:
    """Each call's reply, in order; the calls grouped by the node that runs them. A node that
    fails takes only its own calls down: theirs become `RedisUnavailable` (they may have run),
    the other nodes' replies stand. Raises only when every node failed."""
    nodes: dict[Any, list[int]] = {}
    for i, call in enumerate(batch):
        nodes.setdefault(pool_of(r, call.packed.route), []).append(i)
    results: list[Any] = [None] * len(batch)

    async def on(pool: Any, indexes: list[int]) -> None:
        payload = b"".join(evalsha(batch[i].script.sha, batch[i].packed) for i in indexes)
        async with connection(pool) as conn:
            await conn.send_packed_command(payload, check_health=False)
            for i in indexes:
                try:
                    results[i] = await conn.read_response()
                except ResponseError as exc:  # the reply of this call; the next follow
                    results[i] = exc

    groups = list(nodes.items())
    if len(groups) == 1:  # one node (always, outside a Cluster): no task per group
        await on(*groups[0])
        return results
    # Every node's calls run to their end, whatever the others do: none may run after its
    # caller was told it failed (an admission undone before it ran would never be undone).
    failures = await asyncio.gather(
        *(on(pool, indexes) for pool, indexes in groups), return_exceptions=True
    )
    failed = [
        (indexes, f) for (_, indexes), f in zip(groups, failures, strict=True) if f is not None
    ]
    if failed:
        unreachable(r)
        if len(failed) == len(groups):
            raise failed[0][1]
        for indexes, failure in failed:
            for i in indexes:
                results[i] = RedisUnavailable(f"{type(failure).__name__}: {failure}")
    return results


class ScriptBatcher:
    """Queues EVALSHA calls and sends each turn's calls in one pipeline."""

    def __init__(self, store: RedisStore, what: str, log: Any) -> None:
        self._store, self._what, self._log = store, what, log
        self._queue: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    def run(
        self, script: Any, keys: list[str], args: list[Any], on_orphan: Orphan | None = None
    ) -> asyncio.Future[Any]:
        """Queue one call; the future gets its result or `RedisUnavailable`."""
        packed = Packed(len(keys), len(keys) + len(args), pack(keys) + pack(args), keys[0])
        return self.run_packed(script, packed, on_orphan)

    def run_packed(
        self, script: Any, packed: Packed, on_orphan: Orphan | None = None
    ) -> asyncio.Future[Any]:
        """`run` with the keys and arguments already packed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(script, packed, future, on_orphan))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return future

    async def drain(self) -> None:
        """Wait until every queued call was sent (shutdown)."""
        while self._queue or self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
            await asyncio.sleep(0)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            await self._send_batch(batch)
        finally:  # whatever went wrong, no caller is left waiting
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(RedisUnavailable(f"{self._what}: not sent"))

    async def _send_batch(self, batch: list[_Call]) -> None:
        try:
            results = await self._pipeline(batch)
            missing = [
                c for c, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)
            ]
            if missing:  # Redis restarted or was flushed: load the scripts, send those again
                await self._store.call(self._load(missing), "script_load")
                again = iter(await self._pipeline(missing))
                results = [next(again) if isinstance(r, NoScriptError) else r for r in results]
        except RedisUnavailable as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(RedisUnavailable(str(exc), maybe_ran=exc.maybe_ran))
            return
        lost = [r for r in results if isinstance(r, RedisUnavailable)]
        if lost:  # a node failed, the others answered: one line, not one per call
            self._log.warning(
                "redis_error", operation=self._what, detail=str(lost[0])[:200], calls=len(lost)
            )
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, RedisUnavailable):
                if not call.future.done():
                    call.future.set_exception(result)
            elif _code(result) in _TRANSIENT:
                # Redis cannot run scripts right now (out of memory, a replica after a
                # failover, loading, another script running): it did not run; try again.
                self._log.warning("redis_busy", operation=self._what, detail=str(result)[:200])
                if not call.future.done():
                    call.future.set_exception(RedisUnavailable(str(result), maybe_ran=False))
            elif isinstance(result, ResponseError):  # a script error: Redis itself is fine
                self._log.error("redis_script_error", operation=self._what, detail=str(result))
                result = ScriptRefused(f"{self._what}: {result}")
                if not call.future.done():
                    call.future.set_exception(result)
            elif not call.future.done():
                call.future.set_result(result)
            elif call.on_orphan is not None:
                try:
                    call.on_orphan(result)
                except Exception:  # one caller's cleanup must not fail the others
                    self._log.exception("redis_orphan_failed", operation=self._what)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        """Send the calls, each node's on one pooled connection written in one go, and read every
        reply (a script error is returned in its place). Packed here rather than by redis-py's
        pipeline, which costs ~0.5 µs per argument, and which would resend a whole pipeline after a
        connection error: a call must run at most once per send (see `gateway/quotas/limiter.py`). A
        call a Cluster node refused with MOVED (its slot moved) did not run: it is sent again, once,
        to the node the answer names."""

        async def send(r: Client) -> list[Any]:
            results = await _send(r, batch)
            again = [i for i, result in enumerate(results) if isinstance(result, MovedError)]
            if again:
                for i in again:
                    await moved(r, results[i])
                for i, result in zip(again, await _send(r, [batch[i] for i in again]), strict=True):
                    results[i] = result
            return results

        return await self._store.call(send, self._what)

    @staticmethod
    def _load(batch: list[_Call]) -> Callable[[Any], Any]:
        async def load(r: Any) -> None:
            for script in {id(c.script): c.script for c in batch}.values():
                await r.script_load(script.script)

        return load
