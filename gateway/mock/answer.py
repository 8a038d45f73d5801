"""Deciding what the mock answers to one request: text or a function call, and how much of it."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from .text import input_tokens, reply_for, tokenize
from .tools import chosen_tool, sample_arguments


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one request, decided before anything is sent."""

    kind: Literal["message", "function_call"]
    tokens: tuple[str, ...]
    """The output, one token per delta (truncated to `max_output_tokens`)."""
    complete: bool
    """False when `max_output_tokens` cut the output: the response is then `incomplete`."""
    input_tokens: int
    response_id: str
    item_id: str
    created_at: int
    name: str = ""
    """The function called (function calls only)."""
    call_id: str = ""
    obfuscate: bool = True
    """Whether deltas carry OpenAI's `obfuscation` padding (off with
    `stream_options.include_obfuscation: false`)."""
    salt: int = 0
    """Varies the padding between responses."""

    @property
    def text(self) -> str:
        """The whole output: the message text or the call's JSON arguments."""
        return "".join(self.tokens)

    @property
    def output_tokens(self) -> int:
        """Tokens of the output, which is the number of deltas streamed."""
        return len(self.tokens)


def plan(body: dict[str, Any], reply: str | None) -> Answer:
    """The answer to a validated body; `reply` replaces the text the mock would make up."""
    tool = chosen_tool(body)
    if tool is None:
        kind: Literal["message", "function_call"] = "message"
        tokens = tokenize(reply_for(body) if reply is None else reply)
        item_id, name, call_id = "msg_" + _hex(), "", ""
    else:
        kind = "function_call"
        tokens = tokenize(sample_arguments(tool.get("parameters")))
        item_id, name, call_id = "fc_" + _hex(), str(tool["name"]), "call_" + secrets.token_hex(12)
    limit = body.get("max_output_tokens")
    complete = limit is None or len(tokens) <= limit
    options = body.get("stream_options")
    return Answer(
        kind=kind,
        tokens=tuple(tokens if complete else tokens[:limit]),
        complete=complete,
        input_tokens=input_tokens(body),
        response_id="resp_" + _hex(),
        item_id=item_id,
        created_at=int(time.time()),
        name=name,
        call_id=call_id,
        obfuscate=not (isinstance(options, dict) and options.get("include_obfuscation") is False),
        salt=secrets.randbelow(1 << 16),
    )


def _hex() -> str:
    # OpenAI's ids are a prefix and about 50 hex digits.
    return secrets.token_hex(25)
