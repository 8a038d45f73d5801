"""Function tools: whether the mock calls one, which one, and with what arguments.

The mock calls a function when the request offers function tools, `tool_choice` is not
"none", and the last input item is not already a `function_call_output` (then it answers in
text). `tool_choice: {"type": "function", "name": X}` picks X, an `allowed_tools` choice picks
the first allowed function; otherwise the first function tool is called. Arguments are one
sample value per property of the tool's `parameters` schema.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import msgspec

# A sample per JSON Schema type; "object" and "array" are built from their sub-schemas.
_SAMPLES = MappingProxyType(
    {"string": "example", "number": 1, "integer": 1, "boolean": True, "null": None}
)


def chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function tool the mock calls for this request, or None to answer in text."""
    functions = [
        tool
        for tool in body.get("tools") or ()
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    choice = body.get("tool_choice")
    if not functions or choice == "none" or _tool_answered(body.get("input")):
        return None
    wanted = named_choice(choice)
    if wanted is not None:
        return next((tool for tool in functions if tool.get("name") == wanted), None)
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)}
        return next((tool for tool in functions if tool.get("name") in allowed), None)
    return functions[0]


def named_choice(choice: Any) -> str | None:
    """The function name a `{"type": "function", "name": X}` tool choice asks for."""
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        return name if isinstance(name, str) else None
    return None


def _tool_answered(given: Any) -> bool:
    return (
        isinstance(given, list)
        and bool(given)
        and isinstance(given[-1], dict)
        and given[-1].get("type") == "function_call_output"
    )


def sample_arguments(parameters: Any) -> str:
    """Compact JSON arguments for a tool: a sample value for every declared property."""
    value = _sample(parameters) if isinstance(parameters, dict) else {}
    return msgspec.json.encode(value if isinstance(value, dict) else {}).decode()


def _sample(schema: Any) -> Any:
    """A value matching `schema`: const, first enum value, first alternative, or by type."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for alternatives in ("anyOf", "oneOf"):
        if isinstance(schema.get(alternatives), list) and schema[alternatives]:
            return _sample(schema[alternatives][0])
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first type that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: _sample(sub) for name, sub in properties.items()}
    if kind == "array":
        return [_sample(schema["items"])] if isinstance(schema.get("items"), dict) else []
    return _SAMPLES.get(kind, "example") if isinstance(kind, str) else "example"
