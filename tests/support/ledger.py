"""Reading the usage ledger's stream as a consumer does."""

from __future__ import annotations

from typing import Any

import msgspec
import redis

from gateway.ledger.batch import Batch, Packer
from gateway.ledger.record import UsageRecord
from gateway.ledger.reports import EXPORT_FIELDS, JSON_FIELDS
from gateway.state import RedisKeys
from gateway.state.batch import evalsha
from tests.support.procs import ROOT


def ledger_lines(client: redis.Redis) -> list[Any]:
    """Every record's JSON in the stream, oldest first: each entry is one batch, its field `r`
    the batch's records, one a line (text or bytes, as `client` decodes)."""
    entries: Any = client.xrange(RedisKeys().ledger_stream())
    lines: list[Any] = []
    for _, fields in entries:
        batch = fields["r"] if "r" in fields else fields[b"r"]
        lines += batch.split("\n" if isinstance(batch, str) else b"\n")
    return lines


def append_batch(
    client: redis.Redis,
    writer: str,
    number: int,
    *records: UsageRecord,
    retention_ms: int = 30 * 86_400_000,
) -> Any:
    """One call of ledger_append.lua, the very bytes the writer `writer` sends for its batch
    `number` of `records`."""
    sha = client.script_load((ROOT / "gateway" / "state" / "lua" / "ledger_append.lua").read_text())
    batch = Batch()
    for record in records:
        batch.add(record)
    batch.number = number
    call = Packer(RedisKeys(), 30).call([86_400, retention_ms, 31 * 86_400, writer], batch)
    connection = client.connection_pool.get_connection()
    try:
        connection.send_packed_command([evalsha(sha, call)])  # type: ignore[no-untyped-call]
        return connection.read_response()
    finally:
        client.connection_pool.release(connection)


def record_from_csv(row: dict[str, str]) -> UsageRecord:
    """A row of the CSV export (as `csv.DictReader` reads it) back to its record, as a billing
    system reads it: JSON columns decoded, the `'` that defuses a formula taken off."""
    fields: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        text = row.get(name, "")
        if text == "":
            continue
        if name in JSON_FIELDS:
            fields[name] = msgspec.json.decode(text)
        else:  # undo `_defuse`
            fields[name] = text[1:] if text.startswith("'") else text
    return msgspec.convert(fields, UsageRecord)
