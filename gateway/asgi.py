"""What every handler reads from an ASGI request: a header, and a JSON body decoded into a
typed struct, its errors naming the field (OpenAI's `param`)."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from litestar.types import Scope

from .errors import InvalidRequest

_PATH = re.compile(r" - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")
T = TypeVar("T")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), if any."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """A JSON request body decoded by `decoder` (typed), or `InvalidRequest` naming the field
    (its `param`) that is missing, unknown or of the wrong type or range."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc}).") from None
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None


def _invalid(message: str) -> InvalidRequest:
    match = _PATH.search(message)
    detail = message[: match.start()] if match else message
    param = _param(match.group("path")) if match else ""
    if match and match.group("key"):
        detail = f"{detail} (in a key)"
    if detail.startswith("Object missing required field `"):
        field = detail.split("`")[1]
        return missing_parameter(f"{param}.{field}" if param else field)
    if detail.startswith("Object contains unknown field `"):
        field = detail.split("`")[1]  # the Struct forbids unknown fields (the admin API's do)
        param = f"{param}.{field}" if param else field
        return InvalidRequest(
            f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter"
        )
    if not param:  # the top level is not an object at all
        return InvalidRequest(f"Invalid request body: {detail[0].lower()}{detail[1:]}.")
    return InvalidRequest(
        f"Invalid '{param}': {detail[0].lower()}{detail[1:]}.", param=param, code="invalid_value"
    )


def _param(path: str) -> str:
    """`$.metadata[...]`-style paths from msgspec to OpenAI's `param` spelling."""
    path = path.lstrip(".")
    # msgspec names a dict key as `...` and keeps list indexes: metadata[...] → metadata
    return path.replace("[...]", "")


def missing_parameter(param: str) -> InvalidRequest:
    """400 `missing_required_parameter` naming `param`."""
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )
