"""The log line's encoder: a request's record, encoded once, spliced into its line."""

from __future__ import annotations

import json

from gateway.logging import _encode


def test_a_records_json_is_spliced_after_the_events_own_fields() -> None:
    """A record's JSON follows the event's own fields in one object, without re-encoding."""
    event = {"event": "request", "level": "info", "timestamp": "t", "_json": b'{"a":1,"b":"x"}'}
    assert _encode(event) == b'{"event":"request","level":"info","timestamp":"t","a":1,"b":"x"}'


def test_a_bound_field_and_a_records_field_of_one_name_give_one_key() -> None:
    """A context variable or bound field named like a record's field (`request_id`) would make
    the splice write the key twice: such a line is merged instead, the record's value kept."""
    event = {"event": "request", "request_id": "bound", "level": "info", "timestamp": "t"}
    line = _encode({**event, "_json": b'{"request_id":"r-1","n":2}'})
    pairs = json.loads(line, object_pairs_hook=list)
    assert [key for key, _ in pairs] == ["event", "request_id", "level", "timestamp", "n"]
    assert dict(pairs)["request_id"] == "r-1"


def test_other_events_are_encoded_as_they_are() -> None:
    """An event without a record is plain JSON of its fields."""
    assert _encode({"event": "x", "n": None}) == b'{"event":"x","n":null}'
