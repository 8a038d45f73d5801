"""A value outside a `Literal` field's choices names file, field path and every allowed value.

The fields are found by walking the settings types, so a `Literal` field added anywhere in the
tree is checked without a line here; the allowed values in the message come from that type too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec
import pytest
import yaml

from gateway.settings import ConfigError, Settings, load_settings
from gateway.settings.loading import _error
from gateway.settings.walk import options

Step = str | int
Path_ = tuple[Step, ...]

FULL: dict[str, Any] = {
    "providers": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "k"}},
    "models": [{"name": "m", "deployments": [{"provider": "openai"}]}],
    "server": {},
    "logging": {},
    "redis": {"url": "rediss://cache:6379/0", "tls": {}},
    "auth": {
        "keys": [{"id": "ci", "hash": "a" * 64, "user": "ci"}],
        "sso": {"issuer": "i", "audience": "a", "jwks_url": "https://x/jwks", "tiers": {}},
    },
    "limits": {"tiers": {"default": {"models": {"m": {}}}}},
    "ledger": {},
    "metrics": {},
}
"""A valid file holding every section, so that each section's fields can be reached."""

WRONG = ("not-one-of-them", 7)
"""A string outside the choices, and a value of the wrong type."""


def _shown(path: Path_) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)[1:]


def _literals(tp: Any, raw: Any, path: Path_) -> Iterator[tuple[Path_, tuple[str, ...]]]:
    """Every `Literal` field at or under `path` (typed `tp`, holding `raw` in FULL)."""
    for option in options(tp):
        origin, args = get_origin(option), get_args(option)
        if origin is Literal:
            yield path, tuple(str(value) for value in args)
        elif isinstance(option, type) and issubclass(option, msgspec.Struct):
            assert isinstance(raw, dict), f"FULL lacks `{_shown(path)}`: add it to check its fields"
            for field in msgspec.structs.fields(option):
                name = field.encode_name
                yield from _literals(field.type, raw.get(name), (*path, name))
        elif origin in (tuple, list):
            item = raw[0] if isinstance(raw, list) and raw else None
            yield from _literals(args[0], item, (*path, 0))
        elif origin is dict:
            key = next(iter(raw), "x") if isinstance(raw, dict) else "x"
            value = raw.get(key) if isinstance(raw, dict) else None
            yield from _literals(args[1], value, (*path, key))


LITERAL_FIELDS = sorted(_literals(Settings, FULL, ()), key=lambda found: _shown(found[0]))


def _with(path: Path_, value: object) -> dict[str, Any]:
    """FULL with `value` at `path`, creating what is missing on the way."""
    config = copy.deepcopy(FULL)
    node: Any = config
    for step, following in zip(path, (*path[1:], None), strict=True):
        if following is None:
            break
        if isinstance(step, int):
            if len(node) <= step:
                node.append({} if isinstance(following, str) else [])
            node = node[step]
        else:
            node = node.setdefault(step, {} if isinstance(following, str) else [])
    last = path[-1]
    if isinstance(last, int) and len(node) <= last:
        node.append(value)
    else:
        node[last] = value
    return config


def test_full_config_loads(tmp_path: Path) -> None:
    """FULL, which the cases below alter one field at a time, is itself valid."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(FULL))
    load_settings(path, environ={})


def test_the_tree_has_literal_fields() -> None:
    """The walk finds the known `Literal` fields (so it does walk), the algorithms list too."""
    found = {_shown(path) for path, _ in LITERAL_FIELDS}
    assert {"logging.level", "logging.format", "redis.mode", "redis.on_failure"} <= found
    assert "auth.sso.algorithms[0]" in found


@pytest.mark.parametrize("wrong", WRONG, ids=["other_string", "other_type"])
@pytest.mark.parametrize(
    ("path", "allowed"), LITERAL_FIELDS, ids=[_shown(path) for path, _ in LITERAL_FIELDS]
)
def test_wrong_literal_value_names_every_allowed_value(
    tmp_path: Path, path: Path_, allowed: tuple[str, ...], wrong: object
) -> None:
    """A wrong value at any `Literal` field: the message names file, field and each choice."""
    file = tmp_path / "gateway.yaml"
    file.write_text(yaml.safe_dump(_with(path, wrong)))
    with pytest.raises(ConfigError) as failure:
        load_settings(file, environ={})
    message = str(failure.value)
    assert message.startswith(f"{file}: {_shown(path)}: expected one of "), message
    for value in allowed:
        assert value in message, message
    assert message.endswith(f", got {wrong!r}" if isinstance(wrong, str) else ", got `int`")


class _Leaf(msgspec.Struct, forbid_unknown_fields=True):
    """A struct with a `Literal` field."""

    kind: Literal["small", "large"] = "small"


class _Tree(msgspec.Struct, forbid_unknown_fields=True):
    """`_Leaf` reached every way a settings struct can be: by key, by index, optionally."""

    by_name: dict[str, _Leaf] = {}
    listed: tuple[_Leaf, ...] = ()
    maybe: _Leaf | None = None
    kinds: dict[str, Literal["red", "blue"]] = {}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"by_name": {"a": {}, "b": {"kind": "huge"}}}, "by_name.b.kind"),
        ({"listed": [{}, {"kind": "huge"}]}, "listed[1].kind"),
        ({"maybe": {"kind": "huge"}}, "maybe.kind"),
        ({"kinds": {"x": "red", "y": "green"}}, "kinds.y"),
    ],
)
def test_allowed_values_are_found_through_dicts_lists_and_optionals(
    raw: dict[str, Any], field: str
) -> None:
    """The field's type is found along a path through a dict (named by its key), a list
    and an optional struct."""
    with pytest.raises(msgspec.ValidationError) as failure:
        msgspec.convert(raw, _Tree, strict=True)
    message = str(_error("f.yaml", raw, _Tree, str(failure.value)))
    assert message.startswith(f"f.yaml: {field}: expected one of "), message
    allowed = ("red", "blue") if field.startswith("kinds") else ("small", "large")
    assert all(value in message for value in allowed), message
