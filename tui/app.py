"""The mirage Textual app: the frame every screen plugs into.

Plug-in contract (for whoever builds a screen):

1. A screen lives in its own module and is listed once in `SCREENS` below as
   "module:Class". It is imported the first time it is shown (never at start-up unless it is the
   first screen), so its module may import what it likes at top level except torch,
   transformers, peft, datasets, sentence_transformers (import those inside functions).
2. Subclass `tui.screens.base.MirageScreen`; set `NAME` (the key in `SCREENS`) and override
   `compose_body()` (the header, navigation bar and footer are drawn for you). `self.ws_path`
   is the workspace folder; `self.args` holds the arguments the screen was opened with (e.g. the
   Compare screen gets `suite=` and `models=` from `mirage compare --suite S --models A,B`);
   `receive_args(**args)` is called if it is shown again with new ones
   (`app.goto("compare", suite="nq")`).
3. Keys: declare `ACTIONS = [Action("compare.swap", "s", "Swap columns", "swap")]` on the class
   (ids `<NAME>.<verb>`, `action` is the Textual action method name without `action_`). They
   become the screen's bindings, appear in the footer, the help screen (`?`) and the command
   palette (ctrl+p), and users remap them in mirage.toml `[keys]`. Nothing to edit elsewhere.
4. Work: never query SQLite or call slow core code on the UI thread. Call
   `self.run_core(core_fn, *args, on_result=self.show, group="load")`: it runs `core_fn(ws, *args)`
   in a thread worker with its own Workspace (one SQLite connection per worker thread, closed after
   the call; connections are never shared across threads), drives a progress generator (posting
   `messages.WorkProgress`), and calls `on_result` on the UI thread. Widgets can mix in
   `tui.screens.base.CoreWorkers` for the same helper. Background jobs (finetunes...) are
   separate processes started through core.runtime.jobs; screens only watch them. Start a screen's first
   load after its first frame (`self.call_after_refresh(self.run_core, fn, on_result=...)`) so the
   frame appears at once and the data a moment later.
5. Errors: raise (or let core raise) `core.errors.MirageError` subclasses; a failed `run_core` is
   shown by `MirageApp.show_error` — a modal with the error's title and message when
   `blocking=True` (default), a notification with `blocking=False`; an unexpected exception is
   written (redacted) to a crash report and notified in one line. For a non-error hint call
   `self.notify(...)`. Never print or show a traceback.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.screen import Screen

from core.store.lean import IMPORT_LOCK, import_sqlite_utils, restore_sqlite_utils_types  # noqa: F401 - re-exported
from tui import actions as actions_mod
from tui.palette import MirageCommands

# name -> "module:Class". Imported only when first shown.
SCREENS: dict[str, str] = {
    "data": "tui.screens.data:DataScreen",
    "coverage": "tui.screens.coverage:CoverageScreen",
    "jobs": "tui.screens.jobs:JobsScreen",
    "models": "tui.screens.models:ModelsScreen",
    "compare": "tui.screens.compare:CompareScreen",
    "analysis": "tui.screens.analysis:AnalysisScreen",
}


RESTORE_DELAY = 1.5  # s after the first frame
# core.store.lean's lock: held while numpy/pandas are hidden, and around every other import the app
# makes on its own (screen modules, the restore), so no thread ever sees them hidden. run_core
# workers call import_sqlite_utils_lean first, so they wait here too.
_IMPORT_LOCK = IMPORT_LOCK


def import_sqlite_utils_lean() -> None:
    """Import sqlite-utils without letting it import pandas and numpy (~0.5 s of a ~1 s start-up).

    The TUI draws its first frame without them; `restore_sqlite_utils_types` (run in a worker after
    the first frame) adds their column-type mappings back, so later core calls behave as in the CLI.
    """
    import_sqlite_utils(hide=("pandas", "numpy"))


def load_screen_class(name: str) -> type[Screen]:
    modname, _, cls = SCREENS[name].partition(":")
    with _IMPORT_LOCK:  # a screen module may import numpy: never while it is hidden
        return getattr(importlib.import_module(modname), cls)


class MirageApp(App[int]):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses elsewhere (tests, benchmarks) find it
    TITLE = "mirage"
    COMMANDS = App.COMMANDS | {MirageCommands}
    BINDINGS = actions_mod.bindings(actions_mod.APP_ACTIONS)

    def __init__(
        self,
        ws_path: str | Path,
        *,
        start: str = "data",
        start_args: dict[str, Any] | None = None,
        keymap: dict[str, str] | None = None,
    ) -> None:
        if start not in SCREENS:
            raise ValueError(f"unknown screen {start!r} (have: {', '.join(SCREENS)})")
        # Start in the first screen's mode (Textual's DEFAULT_MODE, read in App.__init__), so no
        # blank default screen is built and then switched away from.
        self.DEFAULT_MODE = start
        super().__init__()
        self.ws_path = Path(ws_path)
        self.keymap: dict[str, str] = dict(keymap or {})
        self.start = start
        self.crash_message: str | None = None
        self._pending_args: dict[str, dict[str, Any]] = {start: dict(start_args or {})}
        self.sub_title = str(self.ws_path)
        for name in SCREENS:
            self.add_mode(name, partial(self._make_screen, name))

    # -- screens -------------------------------------------------------------------------------
    def _make_screen(self, name: str) -> Screen:
        return load_screen_class(name)(**self._pending_args.pop(name, {}))

    def load_all_screen_modules(self) -> None:
        """Import every screen's module so its actions are in the registry (help screen)."""
        for name in SCREENS:
            try:
                load_screen_class(name)
            except Exception as e:  # a broken screen must not take the help screen down
                self.notify(f"screen {name}: {type(e).__name__}: {e}", severity="error")

    def screen_for(self, name: str) -> Screen | None:
        """The base screen of `name` if it has been shown already."""
        stack = self._screen_stacks.get(name)
        return stack[0] if stack else None

    def goto(self, name: str, **args: Any) -> None:
        """Show screen `name`; `args` reach it as `self.args` (first time) or `receive_args`."""
        existing = self.screen_for(name)
        if existing is None:
            self._pending_args[name] = {**self._pending_args.get(name, {}), **args}
        elif args and hasattr(existing, "receive_args"):
            existing.receive_args(**args)
        self.switch_mode(name)

    def action_goto(self, name: str) -> None:
        self.goto(name)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_help_quit(self) -> None:
        # Textual's default ctrl+c only hints at ctrl+q, which terminals swallow: quit instead.
        self.exit()

    def on_mount(self) -> None:
        unknown = sorted(k for k in self.keymap if k.startswith("app.") and k not in actions_mod.REGISTRY)
        if unknown:
            self.notify(
                f"mirage.toml [keys]: unknown action id(s) {', '.join(unknown)} (see ? for ids)",
                severity="warning",
                timeout=8,
            )
        self.set_keymap(self.keymap)

    def on_ready(self) -> None:
        # Finish what start-up skipped, off the UI thread, once the first screen has had time to fill
        # (importing numpy/pandas holds the GIL for ~0.5 s; it should not delay the first rows).
        self.set_timer(
            RESTORE_DELAY,
            lambda: self.run_worker(restore_sqlite_utils_types, thread=True, group="startup", exit_on_error=False),
        )

    # -- errors: the one place that decides how a failure is shown --------------------------------
    def show_error(self, error: BaseException, *, blocking: bool = True) -> None:
        from core.errors import MirageError

        if isinstance(error, MirageError):
            if blocking:
                from tui.screens.error import ErrorModal

                self.push_screen(ErrorModal(error.title, error.message))
            else:
                self.notify(error.message, title=error.title, severity="error", timeout=8)
            return
        from core.runtime.crash import redact, write_report

        path = write_report(error, context=f"mirage tui {self.ws_path}")
        where = f" (report: {path})" if path else ""
        line = (
            redact(f"unexpected {type(error).__name__}: {error}").splitlines()[0]
            if str(error)
            else f"unexpected {type(error).__name__}"
        )
        self.notify(line + where, title="Unexpected error", severity="error", timeout=12)

    def _handle_exception(self, error: Exception) -> None:
        # A crash inside the app: write a redacted report and exit with one line, no traceback.
        # (Overrides Textual's handler, which renders a traceback with locals on exit.)
        from core.runtime.crash import redact, write_report

        path = write_report(error, context=f"mirage tui {self.ws_path}")
        where = f" (report: {path})" if path else ""
        first = (str(error).splitlines() or [""])[0]
        self.crash_message = redact(f"error: mirage crashed: {type(error).__name__}: {first}{where}")
        self._return_code = 1
        if self._exception is None:  # lets Pilot tests see the crash
            self._exception = error
            self._exception_event.set()
        self._close_messages_no_wait()


def build_app(
    workspace: str | Path | None = None,
    *,
    start: str = "data",
    start_args: dict[str, Any] | None = None,
    app_class: type[MirageApp] | None = None,
) -> MirageApp:
    """The app for a workspace, with the user's key remaps; raises MirageError if it cannot open.

    Checks what can fail at start-up (folder, mirage.toml, a readable database) without loading
    sqlite-utils: the first worker opens the database through core (and applies migrations) while
    the first frame is drawn.
    """
    import sqlite3

    from core.errors import WorkspaceError
    from core.store.workspace import Workspace

    ws = Workspace.open(workspace)  # the folder holds a database; mirage.toml is valid
    try:
        conn = sqlite3.connect(f"file:{ws.db_path}?mode=ro", uri=True)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise WorkspaceError(f"{ws.db_path}: {e}") from None
    return (app_class or MirageApp)(ws.root, start=start, start_args=start_args, keymap=dict(ws.config.keys))


def launch(app: MirageApp, **run_kwargs: Any) -> int | None:
    """Run the app as its own process does (`run` and the start-up benchmark)."""
    import gc

    # Everything imported so far lives as long as the process: keep the cyclic GC from re-scanning
    # it (one full collection less during start-up, ~30 ms here).
    gc.freeze()
    return app.run(**run_kwargs)


def run(
    workspace: str | Path | None = None,
    *,
    start: str = "data",
    start_args: dict[str, Any] | None = None,
    headless: bool = False,
) -> int:
    """Open the app on a workspace; start-up failures print one line and return 2."""
    from core.errors import MirageError

    try:
        app = build_app(workspace, start=start, start_args=start_args)
    except MirageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    code = launch(app, headless=headless)
    if app.crash_message:
        print(app.crash_message, file=sys.stderr)
        return 1
    return int(code or app.return_code or 0)
