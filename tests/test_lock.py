"""uv.lock is what every machine installs: the tests run in exactly it, and it comes from PyPI."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import gateway

ROOT = Path(__file__).resolve().parent.parent

SEEDS = {"pip", "setuptools"}
"""What `python3 -m venv` puts in the virtualenv before uv fills it; uv leaves them."""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> list[dict[str, Any]]:
    packages: list[dict[str, Any]] = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    return packages


def test_the_tests_run_in_exactly_the_lock() -> None:
    """Every package installed in the tests' virtualenv is the version uv.lock pins (`make`
    installs it with `uv sync --locked`), the venv's own pip and setuptools aside; the project
    is installed editable, from this checkout."""
    pinned = {_name(p["name"]): p["version"] for p in _lock()}
    prefix = Path(sys.prefix).resolve()
    installed = {
        _name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if Path(str(dist.locate_file(""))).resolve().is_relative_to(prefix)
    }
    assert "redis" in installed
    unpinned = {n: v for n, v in installed.items() if n not in SEEDS and pinned.get(n) != v}
    assert unpinned == {}, "installed, not as uv.lock pins them (run make, or make lock)"
    assert installed.get("llm-gateway") == pinned["llm-gateway"]
    assert Path(gateway.__file__).resolve().parent == ROOT / "gateway", "editable, from here"


def test_the_lock_comes_from_pypi_alone() -> None:
    """Each locked package, the project aside, comes from PyPI with hashes: no index of one
    machine (a local mirror, a file:// index) leaks into what CI and fresh machines install."""
    for package in _lock():
        source = package["source"]
        if source == {"editable": "."}:
            continue
        assert source == {"registry": "https://pypi.org/simple"}, package["name"]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, package["name"]
        assert all(f["hash"].startswith("sha256:") for f in files), package["name"]
