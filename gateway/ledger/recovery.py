"""Streams a replica killed mid-stream would lose: their progress saved, their records adopted.

A replica killed mid-stream cannot write anything: so a stream that runs longer than 3/4 of
`ledger.checkpoint_seconds` has its usage so far saved in Redis, then at that interval
(`lua/ledger_save.lua`, written by `writer.py`), and every replica looks for saves older than
`ledger.orphan_seconds` (`lua/ledger_orphans.lua`) whose writer gave no sign of life for as long:
their replica died, and the last save becomes the record (``end: interrupted``, estimated usage).
The stream's own record, when it ends, removes its save.

Both rounds run as tasks of the `Ledger`, on its state: the streams it follows, its record ids,
its `save` and `queue`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..request_ids import RequestIds
from ..settings import LedgerSettings
from ..state import RedisKeys, RedisUnavailable, ScriptBatcher
from .record import UsageRecord, decode

Progress = Callable[[str], UsageRecord]
"""A running stream's record so far, given the id it is to carry."""


class Following:
    """A running stream the ledger saves the progress of (`Ledger.follow`)."""

    __slots__ = ("progress", "record_id")

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.record_id = ""
        """Given at its first save; the stream's own record carries it then."""


async def checkpoint_forever(
    following: set[Following],
    settings: LedgerSettings,
    ids: RequestIds,
    save: Callable[[UsageRecord], None],
    log: Any,
) -> None:
    """Every quarter of `ledger.checkpoint_seconds`, take the progress of each stream that
    is due, for the writer to save: a stream is first due 3/4 to 4/4 of the interval after
    it started (it was first seen here within a quarter of its start), then every
    interval. A stream gets its record id at its first save (its record must carry it).

    `following`: the `Ledger`'s running streams; `ids`: its record ids; `save`: its
    `Ledger.save`."""
    every = settings.checkpoint_seconds
    due: dict[Following, float] = {}
    """When each stream seen is next due."""
    while True:
        await asyncio.sleep(every / 4)
        now = time.monotonic()
        for ended in [stream for stream in due if stream not in following]:
            del due[ended]
        for stream in following:
            when = due.get(stream)
            if when is None:
                due[stream] = now + every * 0.75
                continue
            if when > now:
                continue
            due[stream] = now + every
            try:
                if not stream.record_id:
                    stream.record_id = ids.new()
                save(stream.progress(stream.record_id))
            except Exception:  # a bug here must not stop the others' checkpoints
                log.exception("ledger_checkpoint_failed")


async def adopt_orphans_forever(
    batch: ScriptBatcher,
    script: Any,
    redis_keys: RedisKeys,
    settings: LedgerSettings,
    writer: str,
    queue: Callable[[UsageRecord], None],
    log: Any,
) -> None:
    """Write the records of streams whose replica died (its saves stopped).

    `script`: `lua/ledger_orphans.lua`, run through `batch`; `writer`: this process's writer
    id; `queue`: its `Ledger.queue`, where each orphan's record goes."""
    orphan_ms, dedupe_ms = int(settings.orphan_seconds * 1000), settings.dedupe_seconds * 1000
    args = [orphan_ms, 100, writer, dedupe_ms]
    keys = [
        *redis_keys.ledger_running(),
        *redis_keys.ledger_writers(),
        redis_keys.ledger_applied(),
    ]
    while True:
        await asyncio.sleep(settings.orphan_seconds / 3)
        try:
            found = await batch.run(script, keys, args)
        except RedisUnavailable:  # logged by the store; the next round tries again
            continue
        for i in range(0, len(found), 2):
            try:
                record = decode(found[i + 1])
            except msgspec.DecodeError:  # not a record this version can read: say so
                log.error("ledger_orphan_unreadable", id=found[i].decode())
                continue
            log.warning(
                "ledger_orphan_recorded",
                request_id=record.request_id,
                user=record.user,
                output_tokens=record.output_tokens,
            )
            queue(record)
