"""Reading a POST /v1/responses body: decode it and check what the mock relies on.

Only the fields the mock uses are checked, the way OpenAI words its 400s; unknown fields are
ignored. One deliberate difference: `max_output_tokens` may be any integer >= 1 (OpenAI
requires >= 16) so tests can truncate short answers.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import msgspec

from .errors import MockError, invalid_type, missing
from .tools import named_choice

# (parameter, minimum, maximum) of the numbers OpenAI bounds.
_RANGES = (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0))


def parse_body(raw: bytes, models: Container[str]) -> dict[str, Any]:
    """The decoded body, or MockError: 400 for a malformed request, 404 for an unknown model."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise MockError(
            400, "We could not parse the JSON body of your request: it is not valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise MockError(400, "The request body must be a JSON object.")
    _check_model(body, models)
    _check_input(body)
    _check_options(body)
    _check_tools(body)
    return body


def _check_model(body: dict[str, Any], models: Container[str]) -> None:
    if "model" not in body:
        raise missing("model")
    model = body["model"]
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if model not in models:
        raise MockError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )


def _check_input(body: dict[str, Any]) -> None:
    if "input" not in body:
        raise missing("input")
    given = body["input"]
    if isinstance(given, str):
        return
    if not isinstance(given, list):
        raise invalid_type("input", "a string or an array of input items", given)
    for index, item in enumerate(given):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{index}]", "an object", item)


def _check_options(body: dict[str, Any]) -> None:
    for name in ("instructions", "previous_response_id", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid_type(name, "a string", body[name])
    for name in ("stream", "store", "parallel_tool_calls", "background"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise invalid_type(name, "a boolean", body[name])
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise invalid_type("metadata", "an object", body["metadata"])
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise invalid_type("max_output_tokens", "an integer", limit)
        if limit < 1:
            raise MockError(
                400,
                f"Invalid 'max_output_tokens': integer below minimum value. "
                f"Expected a value >= 1, but got {limit} instead.",
                param="max_output_tokens",
                code="integer_below_min_value",
            )
    for name, low, high in _RANGES:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid_type(name, "a decimal", value)
        if value < low:
            raise _out_of_range(name, value, "below minimum", ">=", low, "decimal_below_min_value")
        if value > high:
            raise _out_of_range(name, value, "above maximum", "<=", high, "decimal_above_max_value")


def _out_of_range(
    name: str, value: float, where: str, relation: str, bound: float, code: str
) -> MockError:
    # Worded like the recorded OpenAI 400: "Invalid 'temperature': decimal below minimum value.
    # Expected a value >= 0, but got -1 instead."
    return MockError(
        400,
        f"Invalid '{name}': decimal {where} value. "
        f"Expected a value {relation} {bound:g}, but got {value:g} instead.",
        param=name,
        code=code,
    )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise invalid_type("tools", "an array", tools)
    names = set()
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid_type(f"tools[{index}]", "an object", tool)
        if "type" not in tool:
            raise missing(f"tools[{index}].type")
        if tool["type"] == "function":
            if "name" not in tool:
                raise missing(f"tools[{index}].name")
            if not isinstance(tool["name"], str):
                raise invalid_type(f"tools[{index}].name", "a string", tool["name"])
            names.add(tool["name"])
    wanted = named_choice(body.get("tool_choice"))
    if wanted is not None and wanted not in names:
        raise MockError(
            400,
            f"Tool choice 'function' not found in 'tools' parameter (no function {wanted!r}).",
            param="tool_choice",
        )
