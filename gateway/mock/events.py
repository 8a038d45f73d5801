"""The mock's answers: Response objects and the ordered events of their streams.

Shapes and order follow the official spec and real OpenAI recordings: `response.created`,
`response.in_progress`, the output item's added / delta / done events, then the terminal event
with the usage. Every event's JSON has `type` first and `sequence_number` last.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .text import count_tokens, input_text, reply_for, sample_arguments, tokenize


@dataclass
class Answer:
    """What the mock will answer to one request."""

    kind: str  # "message" or "function_call"
    tokens: list[str]
    complete: bool
    input_tokens: int
    name: str = ""
    call_id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))
    item_id: str = ""
    response_id: str = field(default_factory=lambda: "resp_" + secrets.token_hex(16))
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def plan(body: dict[str, Any], reply: str | None) -> Answer:
    """Decide the answer: a function call when tools ask for one, else text."""
    tool = _chosen_tool(body)
    limit = body.get("max_output_tokens")
    if tool is not None:
        tokens = tokenize(sample_arguments(tool.get("parameters")))
        kind, name, prefix = "function_call", str(tool.get("name", "")), "fc_"
    else:
        tokens = tokenize(reply if reply is not None else reply_for(body))
        kind, name, prefix = "message", "", "msg_"
    complete = not (isinstance(limit, int) and len(tokens) > limit)
    if not complete:
        tokens = tokens[: int(limit or 0)]
    return Answer(
        kind=kind,
        tokens=tokens,
        complete=complete,
        input_tokens=count_tokens(input_text(body)),
        name=name,
        item_id=prefix + secrets.token_hex(16),
    )


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [
        t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"
    ]
    choice = body.get("tool_choice", "auto")
    given = body.get("input")
    answered = (
        isinstance(given, list)
        and bool(given)
        and isinstance(given[-1], dict)
        and given[-1].get("type") == "function_call_output"
    )
    if not tools or choice == "none" or answered:
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
    return tools[0]


def _usage(answer: Answer) -> dict[str, Any]:
    output = len(answer.tokens)
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + output,
    }


def _item(answer: Answer, done: bool) -> dict[str, Any]:
    status = "in_progress" if not done else ("completed" if answer.complete else "incomplete")
    if answer.kind == "function_call":
        return {
            "id": answer.item_id,
            "type": "function_call",
            "status": status,
            "arguments": answer.text if done else "",
            "call_id": answer.call_id,
            "name": answer.name,
        }
    content = [_part(answer.text)] if done else []
    return {
        "id": answer.item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def response_object(body: dict[str, Any], answer: Answer, final: bool) -> dict[str, Any]:
    """The Response object, in progress (no output, no usage) or final."""
    status = "in_progress"
    if final:
        status = "completed" if answer.complete else "incomplete"
    return {
        "id": answer.response_id,
        "object": "response",
        "created_at": answer.created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if final else None,
        "error": None,
        "incomplete_details": None
        if not final or answer.complete
        else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": body.get("model"),
        "output": [_item(answer, True)] if final else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _usage(answer) if final else None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def stream_events(body: dict[str, Any], answer: Answer) -> list[dict[str, Any]]:
    """Every event of the streamed answer, numbered from 0."""
    pending = response_object(body, answer, final=False)
    ids = {"item_id": answer.item_id, "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {"type": "response.output_item.added", "output_index": 0, "item": _item(answer, False)},
    ]
    if answer.kind == "function_call":
        events += [
            {"type": "response.function_call_arguments.delta", **ids, "delta": token}
            for token in answer.tokens
        ]
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": answer.name,
                "arguments": answer.text,
            }
        )
    else:
        part_ids = {**ids, "content_index": 0}
        events.append({"type": "response.content_part.added", **part_ids, "part": _part("")})
        events += [
            {"type": "response.output_text.delta", **part_ids, "delta": token, "logprobs": []}
            for token in answer.tokens
        ]
        events.append(
            {"type": "response.output_text.done", **part_ids, "text": answer.text, "logprobs": []}
        )
        events.append(
            {"type": "response.content_part.done", **part_ids, "part": _part(answer.text)}
        )
    events.append(
        {"type": "response.output_item.done", "output_index": 0, "item": _item(answer, True)}
    )
    terminal = "response.completed" if answer.complete else "response.incomplete"
    events.append({"type": terminal, "response": response_object(body, answer, final=True)})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events
