"""The house rules of `gateway/`: packages by concern, each with a small public face."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.procs import ROOT

PACKAGE = ROOT / "gateway"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str) -> str:
    """`gateway.proxy` for `gateway.proxy.relay`; `gateway` for a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else "gateway"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every `from X import names` of the file, X made absolute."""
    here = _dotted(path).split(".")
    base = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join([*stem, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("gateway"):
                found.append((node.lineno, target, [a.name for a in node.names]))
    return found


def test_packages_meet_only_through_their_faces() -> None:
    """A module imports another package's names from that package itself (its __init__),
    never from the modules inside it, and never a private name."""
    packages = {_dotted(p) for p in PACKAGE.rglob("__init__.py")} - {"gateway"}
    wrong = []
    for path in _modules():
        mine = _dotted(path) if path.name == "__init__.py" else _package_of(_dotted(path))
        for line, target, names in _imports(path):
            theirs = _package_of(target) if target not in packages else target
            if theirs == mine or theirs == "gateway":
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if target != theirs:
                wrong.append(f"{where} reaches into {target} (import from {theirs})")
            wrong += [
                f"{where} imports the private {n} from {target}" for n in names if n[0] == "_"
            ]
    assert wrong == []


def test_every_face_says_what_its_package_is_for() -> None:
    """Each package's __init__ has a docstring and lists its public names in `__all__`,
    every one of them importable."""
    for init in sorted(PACKAGE.rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"
        if init.parent == PACKAGE or init.parent.name == "mock":
            continue
        exported = [
            node
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ]
        assert exported, f"{init.relative_to(ROOT)} names no public face (__all__)"
        names = ast.literal_eval(exported[0].value)
        imported = {
            a.asname or a.name
            for n in tree.body
            if isinstance(n, ast.ImportFrom) and n.module != "__future__"
            for a in n.names
        }
        assert set(names) == imported, f"{init.relative_to(ROOT)}: __all__ is not what it imports"


def test_every_module_names_its_job() -> None:
    """Every module starts with a docstring whose first line says what it does."""
    missing = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert missing == []
