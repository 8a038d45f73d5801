"""Usage reports read from the ledger: sums by day, model and user, and the records themselves.

The sums come from what `lua/ledger_append.lua` keeps beside the stream (each user's sums of a
month by day and model, and each day's set of users), so a report reads a few hashes per user,
never the records. Days are UTC days. The export reads the stream itself, page by page.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import typing
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec

from ..state import RedisKeys, RedisStore
from .record import UsageRecord, decode, encode

MEASURES = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)
GROUPS = ("day", "model", "user")
MAX_DAYS = 366
"""The longest range one report may cover."""
REPORT_TIMEOUT = 10.0
"""Seconds a report may take in Redis: it reads up to a year of hashes, unlike the hot path."""
EXPORT_PAGE = 2048
"""Records the export reads per round trip, about: a stream entry is a batch of 1 to 256, so a
page asks for as many entries as hold that many at the largest batch size of the page before
(8 to 128 entries: 2,048 to 32,768 records at most, ~1.3 to ~21 MB of typical records)."""
PAGE_ENTRIES = (8, 128)
READ_CHUNK = 1000
"""Hashes read per round trip by a report."""
EXPORT_FIELDS = tuple(UsageRecord.__struct_fields__)


def days(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every day from `first` to `last`, both included."""
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class Report(msgspec.Struct):
    """Sums of the ledger, one row per group."""

    object: str
    start: str
    end: str
    group_by: list[str]
    data: list[dict[str, Any]]


class UsageReports:
    """Reads the ledger's sums and records."""

    def __init__(self, store: RedisStore, keys: RedisKeys) -> None:
        self._store, self._keys = store, keys

    async def report(
        self,
        first: dt.date,
        last: dt.date,
        group_by: tuple[str, ...],
        user: str | None = None,
        model: str | None = None,
    ) -> Report:
        """Sums from day `first` to `last` (both included), one row per value of `group_by`."""
        wanted = {d.isoformat() for d in days(first, last)}
        rows: dict[tuple[str, ...], dict[str, int]] = {}
        async for day, who, model_name, measure, amount in self._sums(first, last, user):
            if day not in wanted or (model is not None and model_name != model):
                continue
            facts = {"day": day, "model": model_name, "user": who}
            group = tuple(facts[g] for g in group_by)
            row = rows.setdefault(group, dict.fromkeys(MEASURES, 0))
            row[measure] = row.get(measure, 0) + amount
        data = [
            {**dict(zip(group_by, group, strict=True)), **sums}
            for group, sums in sorted(rows.items())
        ]
        return Report("usage.report", first.isoformat(), last.isoformat(), list(group_by), data)

    async def _sums(
        self, first: dt.date, last: dt.date, user: str | None
    ) -> AsyncIterator[tuple[str, str, str, str, int]]:
        """(day, user, model, measure, amount) of the sum fields of the months in range, of
        `user` or of every user with records in range: each user's month hash holds them."""
        span = days(first, last)
        users = [user] if user is not None else await self._users(span)
        months = sorted({d.isoformat()[:7] for d in span})
        pairs = [(who, month) for who in users for month in months]
        for start in range(0, len(pairs), READ_CHUNK):
            chunk = pairs[start : start + READ_CHUNK]
            names = [self._keys.ledger_user_month(who, month) for who, month in chunk]
            for (who, _), fields in zip(chunk, await self._read("hgetall", names), strict=True):
                for field, amount in fields.items():
                    day, model, measure = _sum_field(field)
                    yield day, who, model, measure, int(amount)

    async def _users(self, span: list[dt.date]) -> list[str]:
        """Every user with records on one of these days."""
        names = [self._keys.ledger_users(d.isoformat()) for d in span]
        found: set[bytes] = set()
        for members in await self._read("smembers", names):
            found |= members
        return sorted(member.decode() for member in found)

    async def _read(self, command: str, names: list[str]) -> list[Any]:
        """One read command for each key, in one pipeline."""

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for name in names:
                getattr(pipe, command)(name)
            return list(await pipe.execute())

        result: list[Any] = await self._store.call(
            read, "usage_report", seconds=REPORT_TIMEOUT, verdict=False
        )
        return result

    async def caller(self, user: str) -> dict[str, Any]:
        """`user`'s usage of today and of this month, in all and by model."""
        now = today()
        month = now.isoformat()[:7]
        (fields,) = await self._read("hgetall", [self._keys.ledger_user_month(user, month)])
        periods = {"today": _Period(now.isoformat()), "this_month": _Period(month)}
        for field, amount in fields.items():
            day, model, measure = _sum_field(field)
            periods["this_month"].add(model, measure, int(amount))
            if day == now.isoformat():
                periods["today"].add(model, measure, int(amount))
        return {name: period.view() for name, period in periods.items()}

    async def records(self, since: float, until: float) -> AsyncIterator[UsageRecord]:
        """Every record of a request that arrived in [`since`, `until`) (Unix times), oldest
        write first. A record is written after its request arrived, so the stream is read from
        `since` on, to its end: a record written late (Redis was down) is not missed. Each
        entry is a batch: its `r` holds their JSON, one a line."""
        stream = self._keys.ledger_stream()
        start, count = f"{int(since * 1000)}-0", PAGE_ENTRIES[0]
        while True:
            page = start

            async def read(r: Any, page: str = page, count: int = count) -> list[Any]:
                return list(await r.xrange(stream, min=page, max="+", count=count))

            entries = await self._store.call(
                read, "usage_export", seconds=REPORT_TIMEOUT, verdict=False
            )
            largest = 1
            for _, fields in entries:
                lines = fields[b"r"].split(b"\n")
                largest = max(largest, len(lines))
                for line in lines:
                    record = decode(line)
                    if since <= record.time < until:
                        yield record
            if len(entries) < count:
                return
            count = min(max(EXPORT_PAGE // largest, PAGE_ENTRIES[0]), PAGE_ENTRIES[1])
            last = entries[-1][0].decode()
            start = "(" + last  # exclusive: the next page starts after the last entry


def _sum_field(field: bytes) -> tuple[str, str, str]:
    """``day TAB model TAB measure`` (the model is the part between the first and last TAB)."""
    day, rest = field.decode().split("\t", 1)
    model, measure = rest.rsplit("\t", 1)
    return day, model, measure


class _Period:
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = dict.fromkeys(MEASURES, 0)
        self.by_model: dict[str, dict[str, int]] = {}

    def add(self, model: str, measure: str, amount: int) -> None:
        self.total[measure] = self.total.get(measure, 0) + amount
        sums = self.by_model.setdefault(model, dict.fromkeys(MEASURES, 0))
        sums[measure] = sums.get(measure, 0) + amount

    def view(self) -> dict[str, Any]:
        return {"period": self.name, **self.total, "by_model": dict(sorted(self.by_model.items()))}


def jsonl_line(record: UsageRecord) -> bytes:
    """One JSON object and a newline: the record as the ledger holds it."""
    return encode(record) + b"\n"


def csv_header() -> bytes:
    return _csv_row(EXPORT_FIELDS)


def csv_line(record: UsageRecord) -> bytes:
    """One CSV row: the record's fields in `EXPORT_FIELDS` order. Text fields as they are but
    defused (`_defuse`); numbers, booleans and `metadata` as JSON; an absent value empty."""
    values: list[Any] = []
    for name in EXPORT_FIELDS:
        value = getattr(record, name)
        if value is None:
            values.append("")
        elif name in JSON_FIELDS:
            values.append(msgspec.json.encode(value).decode())
        else:
            values.append(_defuse(value))
    return _csv_row(values)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _defuse(text: str) -> str:
    """`text` with a `'` before it when a spreadsheet would run it as a formula (it starts
    with = + - @, a tab or a carriage return: some text fields are the caller's own, such as
    the request's `user` or `x-request-id`), or when it starts with `'` itself, so that
    a reader can take exactly one off (OWASP's CSV injection advice)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_row(values: Iterable[Any]) -> bytes:
    out = io.StringIO()
    # RFC 4180's CRLF: with a bare LF, Python's writer leaves a CR in a value unquoted, and
    # a reader then splits the row there (a request's `user` field may hold one)
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue().encode()


JSON_FIELDS = frozenset(
    name
    for name, kind in typing.get_type_hints(UsageRecord).items()
    if kind not in (str, str | None)
)
"""The export's columns written as JSON: numbers, booleans and `metadata`."""
