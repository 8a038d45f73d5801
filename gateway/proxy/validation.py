"""Decode and check a /v1/responses request body, before any upstream is contacted.

Only the fields the gateway checks or needs are decoded; everything else (the API grows every
month) stays in the body that is forwarded untouched. Rules come from the endpoint documentation
and the official OpenAPI spec.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from ..asgi import decode_body, missing_parameter
from ..errors import InvalidRequest

_Str64 = Annotated[str, msgspec.Meta(max_length=64)]
_Str512 = Annotated[str, msgspec.Meta(max_length=512)]
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CHOICE_MODES = ("none", "auto", "required")


class ResponsesRequest(msgspec.Struct, frozen=True):
    """The checked part of a request; unknown fields are ignored here and forwarded as sent."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, msgspec.Raw]]
    instructions: str | None = None
    stream: bool | None = False
    stream_options: dict[str, msgspec.Raw] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    metadata: Annotated[dict[_Str64, _Str512], msgspec.Meta(max_length=16)] | None = None
    user: str | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def parse_request(body: bytes) -> ResponsesRequest:
    """Decode `body` and apply every rule; raise `InvalidRequest` naming the field."""
    request = decode_body(_decoder, body)
    _check(request)
    return request


def _check(request: ResponsesRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "Invalid 'stream_options': only allowed when 'stream' is true.",
            param="stream_options",
            code="invalid_value",
        )
    if request.tools is not None:
        for index, tool in enumerate(request.tools):
            _check_tool(index, tool)
    if request.tool_choice is not None:
        _check_tool_choice(request.tool_choice)


def _check_tool(index: int, tool: dict[str, Any]) -> None:
    where = f"tools[{index}]"
    kind = tool.get("type")
    if kind is None:
        raise missing_parameter(f"{where}.type")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type", "expected a string")
    if kind != "function":
        return  # built-in tools (web_search, mcp, ...) are the provider's to check
    name = tool.get("name")
    if name is None:
        raise missing_parameter(f"{where}.name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise _bad(f"{where}.name", "expected 1 to 64 characters of a-z, A-Z, 0-9, _ and -")
    if "description" in tool and not isinstance(tool["description"], str | None):
        raise _bad(f"{where}.description", "expected a string")
    if "parameters" in tool and not isinstance(tool["parameters"], dict | None):
        raise _bad(f"{where}.parameters", "expected a JSON Schema object")
    if "strict" in tool and not isinstance(tool["strict"], bool | None):
        raise _bad(f"{where}.strict", "expected a boolean")


def _check_tool_choice(choice: str | dict[str, Any]) -> None:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise _bad("tool_choice", "expected one of 'none', 'auto', 'required' or an object")
        return
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise _bad("tool_choice.type", "expected a string")
    if kind == "function" and not isinstance(choice.get("name"), str):
        raise _bad("tool_choice.name", "expected the name of a function tool")


def _bad(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {expected}.", param=param, code="invalid_value")
