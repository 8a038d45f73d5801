"""structlog set up the way the structlog docs recommend for services.

Context variables first, one JSON object per line on stdout (or a readable console format),
and one canonical line per request written by the request path.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

from .settings import LoggingSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _encode(event: dict[str, Any], **_: Any) -> bytes:
    """The event as one JSON object; `_json`, fields encoded already as a JSON object (a request's
    record, `gateway/ledger/record.py`), is spliced in after the event's own fields, unchanged."""
    encoded: bytes | None = event.pop("_json", None)
    if encoded is None:
        return msgspec.json.encode(event)
    if len(event) > len(_OWN):  # bound or context fields: merged, so no key is there twice
        return msgspec.json.encode({**event, **msgspec.json.decode(encoded)})
    line = msgspec.json.encode(event)
    return line if len(encoded) <= 2 else line[:-1] + b"," + encoded[1:]


_OWN = frozenset(("event", "level", "timestamp"))
"""What the processors add to every event (`configure_logging`)."""


def _decode_json(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console format: `_json` (see `_encode`) as the event's own fields."""
    encoded = event.pop("_json", None)
    if encoded is not None:
        event.update(msgspec.json.decode(encoded))
    return event


def configure_logging(settings: LoggingSettings) -> None:
    """Configure structlog (process-wide by nature, so only the CLI and tests call this)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.format == "json":
        processors.append(structlog.processors.format_exc_info)
        processors.append(structlog.processors.JSONRenderer(serializer=_encode))
        factory: Any = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        processors.append(_decode_json)
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Other libraries' stdlib records (uvicorn's errors...) as the same kind of lines.
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS[settings.level])
    logging.getLogger("uvicorn.access").disabled = True  # the canonical line replaces it
