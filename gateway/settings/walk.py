"""Paths in the settings tree, as msgspec writes them (``.auth.keys[0].tier``,
``.limits.tiers[...].models``): the declared type of the field a path names, the value it
names in raw data, and what a declared type may be."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

SEGMENT = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
"""One step of a msgspec path: ``.field``, ``[0]`` (a list item) or ``[...]`` (a dict value)."""


def allowed(root: Any, path: str) -> tuple[str, ...]:
    """The values of the ``Literal`` the field at msgspec `path` under `root` is typed by."""
    values = [
        value
        for tp in types_at(root, path)
        for option in options(tp)
        if get_origin(option) is Literal
        for value in get_args(option)
    ]
    return tuple(str(value) for value in dict.fromkeys(values))


def types_at(root: Any, path: str) -> list[Any]:
    """The declared types of what msgspec `path` (``.auth.keys[0].tier``) names under `root`:
    struct fields by name, list items by ``[n]``, dict values by ``[...]``."""
    found = [root]
    for step in SEGMENT.finditer(path):
        name, _index = step.groups()
        following: list[Any] = []
        for option in (option for tp in found for option in options(tp)):
            if name is not None and isinstance(option, type) and issubclass(option, msgspec.Struct):
                fields = msgspec.structs.fields(option)
                following += [field.type for field in fields if field.encode_name == name]
            elif name is None and get_origin(option) in (tuple, list, dict):
                following.append(get_args(option)[1 if get_origin(option) is dict else 0])
        found = following
    return found


def options(tp: Any) -> list[Any]:
    """What `tp` may be: the members of a union, without ``None`` and ``Annotated`` constraints."""
    if get_origin(tp) is Annotated:
        return options(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [option for member in get_args(tp) for option in options(member)]
    return [] if tp is type(None) else [tp]


def value_at(raw: Any, path: str) -> Any:
    """What msgspec `path` names in the raw data, or None."""
    for step in SEGMENT.finditer(path):
        name, index = step.groups()
        if name is not None and isinstance(raw, dict):
            raw = raw.get(name)
        elif index is not None and index.isdigit() and isinstance(raw, list | tuple):
            raw = raw[int(index)] if int(index) < len(raw) else None
        else:
            return None
    return raw
