"""core is headless: importing every core module must never import Textual (or the TUI)."""

import ast
import graphlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import core


def _core_modules():
    return sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.endswith("__main__"))


def test_core_never_imports_textual():
    mods = _core_modules()
    assert "core.cli" in mods and "core.runtime.jobs" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'tui')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_start_does_not_import_torch():
    code = (
        "import sys\n"
        "from core.cli import main\n"
        "try:\n    main(['ls', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(sorted(m for m in ('torch', 'transformers', 'textual') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def _core_import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports, at module level or inside functions (from the source)."""
    root = Path(core.__file__).resolve().parent.parent
    mods = {}
    for p in (root / "core").rglob("*.py"):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
                targets = [owner(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.split(".")[0] == "core"]
            else:
                continue
            graph[m].update(t for t in targets if t and t != m)
    return graph


def test_core_has_no_import_cycle():
    graph = _core_import_graph()
    assert "core.scores.scoring" in graph and "core.analysis.report" in graph
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle in core: {' -> '.join(e.args[1])}") from None


def test_cycle_check_sees_imports_inside_functions():
    # A lazy import inside a function makes a cycle as much as a top-level one does.
    graph = _core_import_graph()
    assert "core.runtime.progress" in graph["core.runtime.jobs"]
    assert "core.analysis.report" in graph["core.study.report"]  # imported inside build_report
