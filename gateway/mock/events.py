"""The mock's answers on the wire: Response objects and the ordered events of their streams.

Shapes and order follow the spec and the real OpenAI recordings: every event's JSON has `type`
first, then its keys in alphabetical order as OpenAI sends them in 2026, except
`sequence_number` (counting from 0), which comes last.

Text: `response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta` x N, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, then the terminal event.
Function call: `response.created`, `response.in_progress`, `response.output_item.added`,
`response.function_call_arguments.delta` x N, `response.function_call_arguments.done`,
`response.output_item.done`, then the terminal event.
The terminal event is `response.completed`, or `response.incomplete` when `max_output_tokens`
cut the output; only it carries `usage`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .answer import Answer

# OpenAI pads every delta event with `obfuscation` so that a frame's size does not give away
# its token: the recordings show 16 - len(delta) random characters. Taking slices of one
# fixed string keeps that shape without paying for randomness on every delta.
_PAD = "Kq7ZxL2pVt9RmW4sYb8NcJ3hGd6FuE1aTr5oQi0eMlHkPzXvBnCgDjSwAy"
_PAD_TO = 16


def _or(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


def _merged(body: dict[str, Any], name: str, default: dict[str, Any]) -> dict[str, Any]:
    value = body.get(name)
    return {**default, **value} if isinstance(value, dict) else default


def usage(answer: Answer) -> dict[str, Any]:
    """Token usage: input and output as the tokenizer counts them, nothing cached or reasoned."""
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def output_item(answer: Answer, done: bool) -> dict[str, Any]:
    """The output item as first announced (empty, in progress) or finished."""
    status = "in_progress"
    if done:
        status = "completed" if answer.complete else "incomplete"
    if answer.kind == "function_call":
        return {
            "id": answer.item_id,
            "type": "function_call",
            "status": status,
            "arguments": answer.text if done else "",
            "call_id": answer.call_id,
            "name": answer.name,
        }
    return {
        "id": answer.item_id,
        "type": "message",
        "status": status,
        "content": [_text_part(answer.text)] if done else [],
        "role": "assistant",
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def response_object(body: dict[str, Any], answer: Answer, final: bool) -> dict[str, Any]:
    """The Response object: in progress (no output, no usage) or final; request params echoed."""
    status = "in_progress"
    if final:
        status = "completed" if answer.complete else "incomplete"
    incomplete = None if not final or answer.complete else {"reason": "max_output_tokens"}
    tier = body.get("service_tier")
    return {
        "id": answer.response_id,
        "object": "response",
        "created_at": answer.created_at,
        "status": status,
        "background": _or(body, "background", False),
        "completed_at": int(time.time()) if final else None,
        "error": None,
        "frequency_penalty": _or(body, "frequency_penalty", 0.0),
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": [output_item(answer, done=True)] if final else [],
        "parallel_tool_calls": _or(body, "parallel_tool_calls", True),
        "presence_penalty": _or(body, "presence_penalty", 0.0),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": _merged(body, "reasoning", {"effort": None, "summary": None}),
        "safety_identifier": body.get("safety_identifier"),
        # "auto" is resolved to the tier that served the request, as OpenAI reports it.
        "service_tier": "default" if tier in (None, "auto") else tier,
        "store": _or(body, "store", True),
        "temperature": _or(body, "temperature", 1.0),
        "text": _merged(body, "text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": _or(body, "tool_choice", "auto"),
        "tools": _or(body, "tools", []),
        "top_logprobs": _or(body, "top_logprobs", 0),
        "top_p": _or(body, "top_p", 1.0),
        "truncation": _or(body, "truncation", "disabled"),
        "usage": usage(answer) if final else None,
        "user": body.get("user"),
        "metadata": _or(body, "metadata", {}),
    }


def stream_events(body: dict[str, Any], answer: Answer) -> Iterator[dict[str, Any]]:
    """Every event of the streamed answer, in order, numbered from 0.

    A generator, so that the terminal event is built (and `completed_at` read) only once the
    deltas before it have been paced out.
    """
    for number, event in enumerate(_events(body, answer)):
        event["sequence_number"] = number
        yield event


def _events(body: dict[str, Any], answer: Answer) -> Iterator[dict[str, Any]]:
    pending = response_object(body, answer, final=False)
    yield {"type": "response.created", "response": pending}
    yield {"type": "response.in_progress", "response": pending}
    yield {
        "type": "response.output_item.added",
        "item": output_item(answer, False),
        "output_index": 0,
    }
    if answer.kind == "function_call":
        yield from _call_events(answer)
    else:
        yield from _text_events(answer)
    yield {
        "type": "response.output_item.done",
        "item": output_item(answer, True),
        "output_index": 0,
    }
    terminal = "response.completed" if answer.complete else "response.incomplete"
    yield {"type": terminal, "response": response_object(body, answer, final=True)}


def _text_events(answer: Answer) -> Iterator[dict[str, Any]]:
    item_id = answer.item_id
    yield {
        "type": "response.content_part.added",
        "content_index": 0,
        "item_id": item_id,
        "output_index": 0,
        "part": _text_part(""),
    }
    for index, token in enumerate(answer.tokens):
        delta: dict[str, Any] = {
            "type": "response.output_text.delta",
            "content_index": 0,
            "delta": token,
            "item_id": item_id,
            "logprobs": [],
        }
        if answer.obfuscate:
            delta["obfuscation"] = _obfuscation(token, index, answer.salt)
        delta["output_index"] = 0
        yield delta
    yield {
        "type": "response.output_text.done",
        "content_index": 0,
        "item_id": item_id,
        "logprobs": [],
        "output_index": 0,
        "text": answer.text,
    }
    yield {
        "type": "response.content_part.done",
        "content_index": 0,
        "item_id": item_id,
        "output_index": 0,
        "part": _text_part(answer.text),
    }


def _call_events(answer: Answer) -> Iterator[dict[str, Any]]:
    for index, token in enumerate(answer.tokens):
        delta: dict[str, Any] = {
            "type": "response.function_call_arguments.delta",
            "delta": token,
            "item_id": answer.item_id,
        }
        if answer.obfuscate:
            delta["obfuscation"] = _obfuscation(token, index, answer.salt)
        delta["output_index"] = 0
        yield delta
    yield {
        "type": "response.function_call_arguments.done",
        "arguments": answer.text,
        "item_id": answer.item_id,
        "name": answer.name,
        "output_index": 0,
    }


def _obfuscation(delta: str, index: int, salt: int) -> str:
    size = max(1, _PAD_TO - len(delta))
    start = (salt + 37 * index) % (len(_PAD) - _PAD_TO)
    return _PAD[start : start + size]
