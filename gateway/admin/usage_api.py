"""Anyone's usage, for admins: `GET /admin/usage` and `GET /admin/usage/records`.

``/admin/usage?user=&model=&from=&to=&group_by=day,model,user`` sums the ledger by any of
those; ``/admin/usage/records?since=&until=&format=jsonl|csv`` streams the records themselves
(what ``gateway usage export`` prints). Dates are UTC days (``YYYY-MM-DD``); ``since`` and
``until`` also take a time (ISO 8601) or Unix seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, get
from litestar.params import QueryParameter
from litestar.response import Stream

from ..errors import InvalidRequest
from ..ledger import GROUPS, MAX_DAYS, Report, UsageReports, csv_header, csv_line, jsonl_line, today

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LATEST = 4_102_444_800.0  # 2100-01-01, Unix seconds


class UsageAdminController(Controller):
    """/admin/usage: the ledger's sums and records, for admins."""

    path = "/admin/usage"

    @get("")
    async def usage_report(
        self,
        reports: UsageReports,
        user: str | None = None,
        model: str | None = None,
        first: Annotated[str | None, QueryParameter(name="from")] = None,
        last: Annotated[str | None, QueryParameter(name="to")] = None,
        group_by: str = "day",
    ) -> Report:
        """Sums of requests and tokens from `from` to `to` (UTC days, both included; default
        today), of one `user` and `model` if given, one row per `group_by` value."""
        end = _day(last, "to") if last else today()
        start = _day(first, "from") if first else end
        if start > end:
            raise InvalidRequest("`from` must not be after `to`.", param="from")
        if (end - start).days + 1 > MAX_DAYS:
            raise InvalidRequest(f"A report covers at most {MAX_DAYS} days.", param="from")
        groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
        if not groups or any(g not in GROUPS for g in groups) or len(set(groups)) < len(groups):
            raise InvalidRequest(
                f"Invalid 'group_by': expected one or more of {', '.join(GROUPS)}, "
                f"comma-separated, got `{group_by}`.",
                param="group_by",
            )
        return await reports.report(start, end, groups, user, model)

    @get("/records")
    async def usage_records(
        self,
        reports: UsageReports,
        since: str,
        until: str | None = None,
        format: str = "jsonl",  # the query parameter's name
    ) -> Stream:
        """The records of requests that arrived in [`since`, `until`) (default: now)."""
        start = _instant(since, "since")
        end = _instant(until, "until") if until else dt.datetime.now(dt.UTC).timestamp()
        if format not in ("jsonl", "csv"):
            raise InvalidRequest(
                f"Invalid 'format': expected jsonl or csv, got `{format}`.", param="format"
            )
        records = reports.records(start, end)
        # The first page is read before the answer starts: Redis failing is still a 503.
        first = await anext(records, None)

        async def lines() -> AsyncIterator[bytes]:
            line = csv_line if format == "csv" else jsonl_line
            if format == "csv":
                yield csv_header()
            if first is None:
                return
            yield line(first)
            async for record in records:
                yield line(record)

        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return Stream(lines(), media_type=media)


def _day(text: str, param: str) -> dt.date:
    if _DAY.match(text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidRequest(
        f"Invalid '{param}': expected a date YYYY-MM-DD, got `{text}`.", param=param
    )


def _instant(text: str, param: str) -> float:
    """Unix seconds from an ISO date or time (UTC unless it says otherwise) or a number."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequest(
                f"Invalid '{param}': expected an ISO 8601 date or time, or Unix seconds, "
                f"got `{text}`.",
                param=param,
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp()
    if not (math.isfinite(seconds) and 0 <= seconds <= _LATEST):
        raise InvalidRequest(
            f"Invalid '{param}': expected a time from 1970 to 2100, got `{text}`.", param=param
        )
    return seconds
