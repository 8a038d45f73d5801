"""One batch of ledger records and its packing for `lua/ledger_append.lua`, which writes it whole.

The writer (`writer.py`) fills the batches and numbers them in its order; here is what one holds
(the records' JSON and the sums they add) and how it is packed for the script.
"""

from __future__ import annotations

import calendar
from typing import Any

from ..state import Packed, RedisKeys, pack
from .record import UsageRecord, decode, encode, utc_day


class Batch:
    """Records written in one call of `lua/ledger_append.lua`, whole or not at all: each
    record's JSON, and the sums they add, summed here as records arrive (per user, day and
    model: at a few thousand requests per second, packing each record's tokens for Redis cost
    more than the rest of the ledger). A record whose progress was saved is kept apart: it
    counts only if no other writer wrote it first, which only Redis can tell."""

    __slots__ = ("lines", "number", "saved", "sums", "tried")

    def __init__(self) -> None:
        self.tried = False
        """Sent at least once: Redis may hold it (a timeout says nothing), so it is never
        dropped to make room."""
        self.number = 0
        """Its place in its writer's order, set when it is closed: Redis skips a number it
        applied already, so a call retried after a timeout counts once."""
        self.lines: list[bytes] = []
        self.sums: dict[tuple[float, str, str | None], list[int]] = {}
        """(day, user, model) -> [requests, input, cached, output, reasoning, total tokens]."""
        self.saved: list[tuple[int, UsageRecord, tuple[float, str, str | None]]] = []
        """(index in `lines`, record, its key in `sums`) of the records whose progress was
        saved."""

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, record: UsageRecord, line: bytes | None = None) -> None:
        """Add `record` (`line`: its JSON, if encoded already), or raise leaving the batch as
        it was (a record that cannot be encoded or summed: a bug)."""
        if line is None:
            line = encode(record)
        key = (record.time // 86_400, record.user or "-", record.model)
        tokens = _tokens(record)
        sum(tokens)  # raises before any change if one is not a number
        found = self.sums.get(key)
        if found is None:
            found = self.sums[key] = [0, 0, 0, 0, 0, 0]
        if record.checkpointed:
            self.saved.append((len(self.lines), record, key))
        else:
            found[0] += 1
            found[1] += tokens[0]
            found[2] += tokens[1]
            found[3] += tokens[2]
            found[4] += tokens[3]
            found[5] += tokens[4]
        self.lines.append(line)

    def records(self) -> list[UsageRecord]:
        """Its records, read back (to say which were dropped)."""
        return [decode(line) for line in self.lines]


class Packer:
    """Packs a `Batch` for `lua/ledger_append.lua` (its header describes the layout). What
    repeats from batch to batch (a user's keys and sum fields of a day) is packed once."""

    _KEPT = 4096

    def __init__(self, keys: RedisKeys, retention_days: float) -> None:
        self._keys = keys
        self._kept = int(retention_days * 86_400) + 86_400
        self._head_keys = pack(keys.ledger())
        self._route = keys.ledger_stream()
        self._repeated: dict[tuple[float, str, str | None], tuple[bytes, bytes]] = {}

    def call(self, head: list[Any], batch: Batch) -> Packed:
        """A call's keys and arguments: `head` (`ledger_append.lua`'s ARGV[1..4]), then
        `batch`."""
        blob = b"\n".join(batch.lines)
        fixed = (*head, batch.number, blob, len(batch.sums), len(batch.lines))
        keys, args = [self._head_keys], [pack(fixed)]
        groups = {}
        for group, (key, sums) in enumerate(batch.sums.items(), 1):
            groups[key] = group
            group_keys, group_args = self._group(key)
            keys.append(group_keys)
            args += (group_args, pack(sums))
        for index, record, key in batch.saved:
            keys.append(pack((self._keys.ledger_seen(record.id),)))
            args.append(pack((index + 1, record.id, groups[key], *_tokens(record))))
        n_keys = 4 + 2 * len(batch.sums) + len(batch.saved)
        n_args = 8 + 9 * len(batch.sums) + 8 * len(batch.saved)
        return Packed(n_keys, n_keys + n_args, b"".join(keys) + b"".join(args), self._route)

    def _group(self, key: tuple[float, str, str | None]) -> tuple[bytes, bytes]:
        found = self._repeated.get(key)
        if found is None:
            if len(self._repeated) >= self._KEPT:
                self._repeated.clear()
            number, user, model = key
            day = utc_day(int(number))
            keys = pack((self._keys.ledger_users(day), self._keys.ledger_user_month(user, day[:7])))
            found = keys, pack((user, f"{day}\t{model or '-'}\t", _month_end(day) + self._kept))
            self._repeated[key] = found
        return found


def _tokens(record: UsageRecord) -> tuple[int, ...]:
    return (
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        record.reasoning_tokens,
        record.total_tokens,
    )


def _month_end(day: str) -> int:
    """Unix time of the end of the month of `day` (``YYYY-MM-DD``)."""
    year, month = int(day[:4]), int(day[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
