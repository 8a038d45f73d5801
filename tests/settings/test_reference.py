"""docs/configuration.md is written from the settings' docstrings, and is current."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import pytest
import yaml

from gateway.settings import Settings, load_settings, schema
from gateway.settings.docstrings import MissingDocstring, attribute_docstrings
from gateway.settings.reference import (
    COMMAND,
    DOC_PATH,
    EXAMPLE,
    HEADER,
    main,
    render,
    repository_root,
)
from gateway.settings.walk import options
from tests.support.procs import ROOT

REGENERATE = f".venv/bin/{COMMAND}"


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _structs(path: str, struct: type[msgspec.Struct]) -> Iterator[tuple[str, type[msgspec.Struct]]]:
    """Every struct of the settings tree with its section's path (``auth.keys[]``...)."""
    yield path, struct
    for field in msgspec.structs.fields(struct):
        where = f"{path}.{field.encode_name}".lstrip(".")
        for option in options(field.type):
            origin, args = get_origin(option), get_args(option)
            if _is_struct(option):
                yield from _structs(where, option)
            elif origin is tuple and _is_struct(args[0]):
                yield from _structs(f"{where}[]", args[0])
            elif origin is dict and _is_struct(args[1]):
                key = "<model>" if "<name>" in path else "<name>"
                yield from _structs(f"{where}.{key}", args[1])


SECTIONS = list(_structs("", Settings))


def test_committed_reference_is_current() -> None:
    """The committed docs/configuration.md is exactly what the generator writes now."""
    committed = (ROOT / DOC_PATH).read_text(encoding="utf-8")
    assert committed == render(), f"{DOC_PATH} is out of date: regenerate it with {REGENERATE}"


def test_reference_starts_with_the_generated_notice() -> None:
    """The file says, on its first line, that it is generated and by which command."""
    assert render().startswith(HEADER + "\n")
    assert COMMAND in HEADER


def test_a_docstring_edit_changes_the_reference() -> None:
    """The reference follows the source: an edited field docstring shows up in it."""
    source = inspect.getsource(schema)
    old = '"""Interface to bind; ``--host`` overrides it."""'
    assert old in source
    edited = source.replace(old, '"""Where to listen, edited: ``::`` for IPv6."""')
    text = render({schema.__name__: edited})
    assert text != render()
    assert "| `host` | string | `127.0.0.1` | Where to listen, edited: `::` for IPv6. |" in text


def test_every_settings_field_has_a_docstring() -> None:
    """Each struct of the tree and each of its fields has a docstring in its source."""
    for _, struct in SECTIONS:
        found: dict[str, str] = {}
        for owner in reversed(struct.__mro__):
            if issubclass(owner, msgspec.Struct) and owner is not msgspec.Struct:
                module = inspect.getmodule(owner)
                assert module is not None
                docs = attribute_docstrings(inspect.getsource(module))
                assert docs[owner.__name__][0].strip(), owner
                found.update(docs[owner.__name__][1])
        for field in msgspec.structs.fields(struct):
            assert found.get(field.name, "").strip(), f"{struct.__name__}.{field.name}"


def test_a_missing_field_docstring_is_caught() -> None:
    """The extractor refuses a field without a docstring, naming file, line and field."""
    source = '''
class Example:
    """Documented."""

    host: str = "x"
    """Documented too."""
    port: int = 1
    timeout: float = 2.0
    """The string under `timeout`, not `port`'s."""
'''
    with pytest.raises(MissingDocstring, match=r"^example\.py:7: Example\.port has no docstring"):
        attribute_docstrings(source, "example.py")


def test_a_missing_class_docstring_is_caught() -> None:
    """The extractor refuses a class without a docstring."""
    with pytest.raises(MissingDocstring, match="class Bare has no docstring"):
        attribute_docstrings("class Bare:\n    x: int = 1\n    '''x.'''\n")


def test_the_generator_refuses_a_settings_field_without_docstring() -> None:
    """Rendering stops when a real settings field loses its docstring."""
    source = inspect.getsource(schema)
    old = '\n    """Interface to bind; ``--host`` overrides it."""'
    assert old in source
    with pytest.raises(MissingDocstring, match=r"ServerSettings\.host has no docstring"):
        render({schema.__name__: source.replace(old, "")})


def test_reference_mentions_every_field_path() -> None:
    """Each field of each section has its row under its section's heading."""
    mentioned: set[str] = set()
    section = None
    for line in render().splitlines():
        heading = re.fullmatch(r"## (?:`(.+)`|Top level)", line)
        if heading:
            section = heading[1] or ""
        row = re.match(r"\| `([a-z_]+)` \|", line)
        if row and section is not None:
            mentioned.add(f"{section}.{row[1]}".lstrip("."))
    expected = {
        f"{path}.{field.encode_name}".lstrip(".")
        for path, struct in SECTIONS
        for field in msgspec.structs.fields(struct)
    }
    assert mentioned == expected


def test_sections_come_in_tree_order() -> None:
    """The sections are the tree's, depth first in field order, each under its heading."""
    headings = [line for line in render().splitlines() if line.startswith("## ")]
    assert headings == ["## Top level"] + [f"## `{path}`" for path, _ in SECTIONS[1:]]


def test_example_file_loads(tmp_path: Path) -> None:
    """The minimal file the reference shows is valid."""
    path = tmp_path / "gateway.yaml"
    path.write_text(EXAMPLE)
    env = {"OPENAI_API_KEY": "k", "GATEWAY_ADMIN_KEY": "a-long-enough-admin-key"}
    settings = load_settings(path, environ=env)
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert (
        yaml.safe_load(EXAMPLE).keys()
        <= yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text()).keys()
    )


def test_main_prints_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    """Without options it prints the reference; ``--check`` passes on the committed file."""
    assert main([]) == 0
    assert capsys.readouterr().out == render()
    assert repository_root() == ROOT
    assert main(["--check"]) == 0
