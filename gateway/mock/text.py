"""What the mock says, and how it counts tokens.

Tokenizer: every run of word characters or single other non-space character, together with
the whitespace before it, is one token (`re.findall(r"\\s*(?:\\w+|[^\\w\\s])", text)`). Output
is streamed one token per delta, so `output_tokens` equals the number of deltas.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")


def tokenize(text: str) -> list[str]:
    """Split `text` into tokens whose concatenation is `text` without trailing whitespace."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens `text` holds."""
    return len(_TOKEN.findall(text))


def input_text(body: dict[str, Any]) -> str:
    """All the text a request gives the model: instructions and every input item."""
    parts: list[str] = []
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    given = body.get("input")
    if isinstance(given, str):
        parts.append(given)
    elif isinstance(given, list):
        parts.extend(_item_text(item) for item in given if isinstance(item, dict))
    return "\n".join(p for p in parts if p)


def _item_text(item: dict[str, Any]) -> str:
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else json.dumps(output)
    if item.get("type") == "function_call":
        return str(item.get("arguments", ""))
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (the whole input when it is a string)."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list):
        for item in reversed(given):
            if isinstance(item, dict) and item.get("role", "user") == "user" and "content" in item:
                return _item_text(item)
    return ""


def reply_for(body: dict[str, Any]) -> str:
    """A deterministic answer that quotes the question."""
    given = body.get("input")
    if isinstance(given, list) and given and isinstance(given[-1], dict):
        last = given[-1]
        if last.get("type") == "function_call_output":
            return f"The tool answered: {_item_text(last)[:200]}. That settles it."
    asked = " ".join(last_user_text(body).split()[:24]) or "nothing"
    return (
        f'You said: "{asked}". This is the mock upstream answering; '
        "every word here is one token of the stream."
    )


def sample_arguments(parameters: Any) -> str:
    """JSON arguments for a function tool, one sample value per declared property."""
    if not isinstance(parameters, dict):
        return "{}"
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        return "{}"
    return json.dumps({name: _sample(schema) for name, schema in properties.items()})


def _sample(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    samples: dict[str, Any] = {
        "string": "example",
        "number": 1,
        "integer": 1,
        "boolean": True,
        "array": [],
        "null": None,
    }
    if kind == "object":
        return json.loads(sample_arguments(schema))
    return samples.get(str(kind), "example")
