"""The stream tap reads usage and timing from any split of a stream."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy import StreamTap
from tests.support.procs import ROOT
from tests.support.streams import edge_case_streams, expected_usage, recorded_transcripts

ALL_STREAMS = {p.name: p.read_bytes() for p in recorded_transcripts()} | edge_case_streams()


def _tap(stream: bytes, cuts: list[int]) -> StreamTap:
    tap = StreamTap()
    previous = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}):
        tap.feed(stream[previous:cut])
        previous = cut
    tap.feed(stream[previous:])
    tap.close()
    return tap


def _usage_dict(tap: StreamTap) -> dict[str, int] | None:
    if tap.outcome is None or tap.outcome.usage is None:
        return None
    u = tap.outcome.usage
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "cached_tokens": u.cached_input_tokens,
        "reasoning_tokens": u.reasoning_tokens,
    }


def _reference(stream: bytes) -> dict[str, int]:
    usage = expected_usage(stream)
    assert usage is not None
    return {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
        "cached_tokens": usage.get("input_tokens_details", {}).get("cached_tokens", 0),
        "reasoning_tokens": usage.get("output_tokens_details", {}).get("reasoning_tokens", 0),
    }


@pytest.mark.parametrize("name", sorted(ALL_STREAMS))
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_usage_is_read_from_any_split(name: str, cuts: list[int]) -> None:
    """However the stream is cut into chunks, the tap reads the terminal event's usage."""
    stream = ALL_STREAMS[name]
    tap = _tap(stream, cuts)
    assert _usage_dict(tap) == _reference(stream)
    assert tap.terminal_event in ("response.completed", "response.incomplete")
    assert tap.first_token_at is not None


@pytest.mark.parametrize("name", sorted(ALL_STREAMS))
def test_byte_at_a_time(name: str) -> None:
    """Feeding one byte at a time (a CRLF split in two included) gives the same usage."""
    stream = ALL_STREAMS[name]
    tap = StreamTap()
    for i in range(len(stream)):
        tap.feed(stream[i : i + 1])
    tap.close()
    assert _usage_dict(tap) == _reference(stream)


def test_edge_case_usage_values() -> None:
    """The hand-written streams carry the usage the tests expect, cached and reasoning included."""
    tap = _tap(edge_case_streams()["crlf"], [])
    assert tap.outcome is not None
    assert tap.outcome.usage is not None
    assert tap.outcome.usage.cached_input_tokens == 4
    assert tap.outcome.usage.reasoning_tokens == 2
    assert tap.outcome.response_id == "resp_edge"


def test_frame_boundary_and_next_sequence_number() -> None:
    """Between frames the tap says so, and knows the sequence number an added event needs."""
    tap = StreamTap()
    tap.feed(b'event: response.created\ndata: {"type":"response.created","sequence_number":4}\n\n')
    assert tap.at_frame_boundary
    assert tap.next_sequence_number() == 5
    tap.feed(b"event: response.in_progress\nda")
    assert not tap.at_frame_boundary


def test_no_terminal_event() -> None:
    """A stream cut before its terminal event has no usage and no terminal event."""
    stream = edge_case_streams()["lf_multibyte"]
    cut = stream.index(b"event: response.completed")
    tap = _tap(stream[:cut], [])
    assert tap.terminal_event is None
    assert tap.outcome is None


def test_error_event_is_terminal() -> None:
    """A spec `error` event ends the stream without usage."""
    tap = _tap(b'event: error\ndata: {"type":"error","code":"x","message":"m"}\n\n', [])
    assert tap.terminal_event == "error"
    assert tap.outcome is None


def test_last_frame_without_blank_line_still_counts() -> None:
    """A terminal frame missing its final blank line is still read, so usage is not lost."""
    stream = edge_case_streams()["lf_multibyte"].rstrip(b"\n")
    assert _usage_dict(_tap(stream, [])) == _reference(edge_case_streams()["lf_multibyte"])


def test_reference_folder_is_read_not_copied() -> None:
    """The recorded transcripts come from the shared folder; none is copied into the repo."""
    here = ROOT
    copies = [p for p in here.rglob("*.sse") if ".venv" not in p.parts]
    assert copies == []


_COMPLETED = (
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r",'
    b'"status":"completed","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}\n\n'
)


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    long_field=st.sampled_from([b"data: ", b"event: ", b": "]),
)
def test_a_line_over_the_cap_is_skipped_not_held(
    cuts: list[int], eol: bytes, long_field: bytes
) -> None:
    """A line longer than `max_line` is dropped as it comes (the tap never holds more than
    the cap), its frame is not read, and the frames after it still are, for any split and any
    line ending."""
    long_frame = long_field + b"x" * 5000 + eol + b"data: {}" + eol + eol
    stream = (long_frame + _COMPLETED).replace(b"\n\n", eol + eol).replace(b"\n", eol)
    tap = StreamTap(max_line=1024)
    previous = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}):
        tap.feed(stream[previous:cut])
        assert len(tap._tail) + tap._tail_size <= 1024 + len(eol)
        previous = cut
    tap.feed(stream[previous:])
    tap.close()
    assert tap.terminal_event == "response.completed"
    assert _usage_dict(tap) == {
        "input_tokens": 1,
        "output_tokens": 2,
        "total_tokens": 3,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }


def test_data_lines_over_the_cap_in_one_frame_are_not_held() -> None:
    """Many short `data:` lines of one frame count toward the cap as one: the frame is
    dropped once its data passes `max_line`, and the next frame is read."""
    tap = StreamTap(max_line=1024)
    tap.feed(b"data: " + b"y" * 100 + b"\n")
    for _ in range(100):
        tap.feed(b"data: " + b"y" * 100 + b"\n")
    assert sum(map(len, tap._data)) <= 1024
    tap.feed(b"\n" + _COMPLETED)
    tap.close()
    assert tap.terminal_event == "response.completed"
