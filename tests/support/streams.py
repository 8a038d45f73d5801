"""Streams used by the byte-for-byte tests, and an independent reader of their usage.

The recorded transcripts are third-party data: they are read from the shared reference folder,
never copied here. The hand-written streams cover what the recordings do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.procs import ROOT

REFERENCE = ROOT.parent / "shared" / "reference" / "responses-api"


def recorded_transcripts() -> list[Path]:
    """Every real recorded stream in the reference folder."""
    found = sorted(REFERENCE.glob("*.sse"))
    assert found, f"no recorded transcripts under {REFERENCE}"
    return found


def _frame(kind: str | None, payload: dict[str, Any], eol: str = "\n") -> str:
    data = json.dumps(payload, ensure_ascii=False)
    head = f"event: {kind}{eol}" if kind else ""
    return f"{head}data: {data}{eol}{eol}"


def _response(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": "resp_edge", "object": "response", "status": status, "output": [], "usage": usage}


def _text_events(text_parts: list[str], usage: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response("in_progress", None)}),
    ]
    events += [("response.output_text.delta", {"delta": part}) for part in text_parts]
    events.append(("response.completed", {"response": _response("completed", usage)}))
    return [
        (kind, {"type": kind, **payload, "sequence_number": i})
        for i, (kind, payload) in enumerate(events)
    ]


USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 18,
}


def edge_case_streams() -> dict[str, bytes]:
    """Hand-written streams: CRLF, data-only with [DONE], comments, multi-byte characters."""
    events = _text_events(["héllo ", "wörld ", "😀", " 日本語"], USAGE)
    lf = "".join(_frame(k, p) for k, p in events)
    crlf = "".join(_frame(k, p, "\r\n") for k, p in events)
    data_only = "".join(_frame(None, p) for _, p in events) + "data: [DONE]\n\n"
    commented = ": stream opened\n\n" + "".join(
        _frame(k, p) + ": keep-alive\n\n" for k, p in events
    )
    multiline = lf.replace(
        'data: {"type": "response.created"', 'data: {"type":\ndata: "response.created"'
    )
    incomplete = "".join(
        _frame(k, p)
        for k, p in _text_events(["cut"], {**USAGE, "output_tokens": 1, "total_tokens": 12})
    ).replace("response.completed", "response.incomplete")
    return {
        "lf_multibyte": lf.encode(),
        "crlf": crlf.encode(),
        "data_only_done": data_only.encode(),
        "comments": commented.encode(),
        "multiline_data": multiline.encode(),
        "incomplete": incomplete.encode(),
    }


def expected_usage(stream: bytes) -> dict[str, Any] | None:
    """The usage of the stream's terminal event, read with a plain whole-stream parser."""
    text = stream.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    usage = None
    for block in text.split("\n\n"):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if not data or data == "[DONE]":
            continue
        event = json.loads(data)
        if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
            usage = event["response"].get("usage")
    return usage
