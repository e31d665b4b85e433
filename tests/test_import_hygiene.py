"""core is headless: importing every core module must never import Textual (or the TUI)."""

import pkgutil
import subprocess
import sys

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
