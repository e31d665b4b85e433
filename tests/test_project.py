"""The project's declarations hold: dependencies cover what core and tui import, the installed
sqlite-utils meets the floor the migrations need, and every core package sits in a layer."""

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Imported behind `except ImportError`, like sqlite-utils itself does: core.store.lean restores
# sqlite-utils' pandas column types only when pandas happens to be installed.
OPTIONAL_IMPORTS = {"pandas"}


def _requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in reqs}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every non-stdlib import in core/ and tui/
    (imports inside function bodies included)."""
    found: dict[str, set[str]] = {}
    for path in sorted([*ROOT.joinpath("core").rglob("*.py"), *ROOT.joinpath("tui").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("core", "tui"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_directly_imported_package_is_declared():
    declared = set(_requirements())
    dists_of = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "textual", "sqlite_utils", "scipy"} <= set(imports)  # the scan sees real imports
    missing = {}
    for module, files in imports.items():
        if module in OPTIONAL_IMPORTS:
            continue
        dists = {canonicalize_name(d) for d in dists_of.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(files)
    assert missing == {}, f"imported by core/tui but not in [project] dependencies: {missing}"


def test_textual_serve_is_an_extra_that_nothing_imports():
    assert "textual-serve" not in _requirements()
    assert "textual-serve" in _requirements("web")
    assert "textual-serve" in _requirements("test")  # tests/test_tui_browser.py serves the TUI
    assert "textual_serve" not in _third_party_imports()


def test_installed_sqlite_utils_meets_the_declared_floor():
    # Below 4.0 `executescript` commits the migration's BEGIN IMMEDIATE, and migrating a blank
    # database fails with "cannot rollback - no transaction is active".
    spec = _requirements()["sqlite-utils"].specifier
    floors = [Version(s.version) for s in spec if s.operator == ">="]
    assert floors and min(floors) >= Version("4.0"), f"the sqlite-utils floor {spec} admits 3.x"
    installed = importlib.metadata.version("sqlite-utils")
    assert spec.contains(installed), f"sqlite-utils {installed} is installed; pyproject.toml needs {spec}"


def _layer_modules() -> list[str]:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [name.strip() for layer in layers for name in layer.split("|")]


def test_every_core_package_has_a_layer():
    """A core package missing from the layers contract would be checked by nothing."""
    core = ROOT / "core"
    packages = {f"core.{p.parent.name}" for p in core.glob("*/__init__.py")}
    modules = {f"core.{p.stem}" for p in core.glob("*.py") if p.stem not in ("__init__", "__main__")}
    layers = _layer_modules()
    assert layers[0] == "tui" and layers[-1] == "core.errors"
    assert sorted((packages | modules) - set(layers)) == []
