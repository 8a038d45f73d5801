"""Attribute docstrings, read from source with `ast`: msgspec keeps none at runtime.

An attribute docstring is the string literal on the line after an annotated field in a class
body, as `schema.py` writes them. A class or field without one is a `MissingDocstring`.
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec


class MissingDocstring(ValueError):
    """A settings class or field has no docstring to document it by."""


ClassDocs = tuple[str, dict[str, str]]
"""A class's docstring, and its fields' docstrings by field name."""


def attribute_docstrings(source: str, filename: str = "<string>") -> dict[str, ClassDocs]:
    """The docstrings of every top-level class in `source` and of its annotated fields (the
    string literal right under a field); `MissingDocstring` for a class or field without one."""
    found: dict[str, ClassDocs] = {}
    for node in ast.parse(source, filename).body:
        if not isinstance(node, ast.ClassDef):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            raise MissingDocstring(f"{filename}:{node.lineno}: class {node.name} has no docstring")
        fields: dict[str, str] = {}
        for statement, following in zip(node.body, [*node.body[1:], None], strict=True):
            if not isinstance(statement, ast.AnnAssign) or not isinstance(
                statement.target, ast.Name
            ):
                continue
            name = statement.target.id
            if not (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip()
            ):
                raise MissingDocstring(
                    f"{filename}:{statement.lineno}: {node.name}.{name} has no docstring "
                    "(a string literal on the line after the field)"
                )
            fields[name] = inspect.cleandoc(following.value.value)
        found[node.name] = (doc, fields)
    return found


class Docstrings:
    """The docstrings of struct classes, read from their modules' source files (or, by module
    name, from `sources`), each file parsed once."""

    def __init__(self, sources: Mapping[str, str] | None) -> None:
        self._sources = sources or {}
        self._modules: dict[str, dict[str, ClassDocs]] = {}

    def _of(self, cls: type) -> ClassDocs | None:
        name = cls.__module__
        if name not in self._modules:
            module = sys.modules[name]
            source = self._sources.get(name)
            if source is None:
                source = Path(inspect.getfile(module)).read_text(encoding="utf-8")
            self._modules[name] = attribute_docstrings(source, inspect.getfile(module))
        return self._modules[name].get(cls.__qualname__)

    def of_class(self, cls: type) -> str:
        """A class's own docstring."""
        docs = self._of(cls)
        if docs is None:
            raise MissingDocstring(f"{cls.__module__}.{cls.__qualname__}: no class definition")
        return docs[0]

    def of_field(self, cls: type, field: str) -> str:
        """A field's docstring, where it is declared (the class or one it inherits from)."""
        for owner in cls.__mro__:
            if not issubclass(owner, msgspec.Struct) or owner is msgspec.Struct:
                continue
            docs = self._of(owner)
            if docs is not None and field in docs[1]:
                return docs[1][field]
        raise MissingDocstring(f"{cls.__module__}.{cls.__qualname__}.{field} has no docstring")
