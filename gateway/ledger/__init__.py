"""The usage ledger: one record per request, written to Redis off the request path and exactly
once; running streams' progress; records of replicas that died; reports and the export."""

from __future__ import annotations

from .record import encode, progress_of, record_of
from .reports import GROUPS, MAX_DAYS, Report, UsageReports, csv_header, csv_line, jsonl_line, today
from .writer import Ledger

__all__ = [
    "GROUPS",
    "MAX_DAYS",
    "Ledger",
    "Report",
    "UsageReports",
    "csv_header",
    "csv_line",
    "encode",
    "jsonl_line",
    "progress_of",
    "record_of",
    "today",
]
