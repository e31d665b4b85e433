"""The base every mirage screen subclasses: the frame (header, navigation, footer), actions, core workers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from tui import actions as actions_mod
from tui import messages as msg
from tui.actions import Action
from tui.widgets.key_hints import KeyHints


class NavBar(Static):
    """One line of clickable screen names; the current one highlighted."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__(id="nav")
        self.current = current

    def on_mount(self) -> None:
        self.refresh_nav()

    def refresh_nav(self) -> None:
        keymap = getattr(self.app, "keymap", {}) or {}
        parts = []
        for name, title, _key in actions_mod.NAV:
            action = actions_mod.REGISTRY[f"app.goto.{name}"]
            key = actions_mod.effective_key(action, keymap).split(",")[0]
            label = f" {key} {title} "
            if name == self.current:
                parts.append(f"[reverse bold]{label}[/]")
            else:
                parts.append(f"[@click=app.goto('{name}')]{label}[/]")
        self.update(" ".join(parts))


class TitleBar(Static):
    """`◆ mirage — <workspace>`: follows `app.sub_title` (tests set it to hide temp paths)."""

    def on_mount(self) -> None:
        self.watch(self.app, "sub_title", self._show)

    def _show(self, sub_title: str) -> None:
        self.update(Text.assemble("◆ mirage — ", (sub_title, "not bold")))


class EmptyState(Static):
    """A centred explanation of what a screen will show and the command that fills it."""

    DEFAULT_CSS = """
    EmptyState { width: 1fr; height: 1fr; content-align: center middle; text-align: center;
                 color: $text-muted; padding: 2 4; }
    """


class CoreWorkers:
    """Mixin for screens and widgets: run a `core` call in a thread worker and get the result back.

    `self.run_core(fn, *args, on_result=cb, group="name")` calls `fn(ws, *args)` in a worker thread
    with a Workspace opened *for that call* (SQLite connections are not shared across threads:
    each worker opens its own and closes it; the UI thread never queries the database). If `fn`
    returns a generator of `core.runtime.progress.Progress`, it is driven in the thread and each step is
    posted as `messages.WorkProgress` (replaceable); cancelling the worker (`self.workers.cancel_group`,
    or a newer call in the same group, since calls are exclusive per group) stops the generator.
    The return value comes back on the UI thread as `messages.WorkDone`, which calls `on_result`.
    Failures are posted as `messages.WorkFailed` and shown by `MirageApp.show_error` (one place).
    """

    def run_core(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], None] | None = None,
        group: str = "core",
        blocking: bool = True,
        exclusive: bool = True,
        **kwargs: Any,
    ) -> Worker:
        ws_path = self.app.ws_path  # type: ignore[attr-defined]
        target: Any = self

        def call() -> None:
            from tui.app import import_sqlite_utils_lean

            import_sqlite_utils_lean()  # no-op once sqlite-utils is loaded
            from core.errors import Cancelled
            from core.store.workspace import Workspace

            worker = get_current_worker()
            try:
                ws = Workspace.open(ws_path)
            except Exception as e:  # e.g. the folder went away while the app was open
                target.post_message(msg.WorkFailed(group, e, blocking))
                return
            try:
                result = fn(ws, *args, **kwargs)
                if inspect.isgenerator(result):
                    gen = result
                    while True:
                        if worker.is_cancelled:
                            gen.close()
                            return
                        try:
                            p = next(gen)
                        except StopIteration as stop:
                            result = stop.value
                            break
                        target.post_message(msg.WorkProgress(group, p.done, p.total, p.detail))
                if not worker.is_cancelled:
                    target.post_message(msg.WorkDone(group, result, on_result))
            except Cancelled:
                pass
            except Exception as e:  # shown by the app, never as a traceback
                if not worker.is_cancelled:
                    target.post_message(msg.WorkFailed(group, e, blocking))
            finally:
                ws.close()

        return self.run_worker(
            call,
            thread=True,
            group=group,
            exclusive=exclusive,  # type: ignore[attr-defined]
            exit_on_error=False,
            name=f"{group}:{getattr(fn, '__name__', 'call')}",
        )

    async def on_work_done(self, message: msg.WorkDone) -> None:
        message.stop()
        if message.callback is not None:
            ret = message.callback(message.result)
            if inspect.isawaitable(ret):  # an async callback (e.g. one that mounts widgets)
                await ret

    def on_work_failed(self, message: msg.WorkFailed) -> None:
        message.stop()
        self.app.show_error(message.error, blocking=message.blocking)  # type: ignore[attr-defined]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Any other worker (not made by run_core) that raised: still shown, never swallowed.
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.app.show_error(event.worker.error)  # type: ignore[attr-defined]


class MirageScreen(CoreWorkers, Screen):
    """Subclass this for a top-level screen; see `tui/screens/__init__.py` for the contract."""

    NAME: ClassVar[str] = ""  # the key in tui.app.SCREENS, e.g. "data"
    ACTIONS: ClassVar[list[Action]] = []  # this screen's actions, ids "<NAME>.<verb>"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        own = cls.__dict__.get("ACTIONS")
        if own:
            actions_mod.register(*own)
            # Textual merges BINDINGS when the class is created, so set them before super().
            cls.BINDINGS = [*cls.__dict__.get("BINDINGS", []), *actions_mod.bindings(own)]
        super().__init_subclass__(**kwargs)

    def __init__(self, **args: Any) -> None:
        super().__init__(name=self.NAME or None, id=f"screen-{self.NAME}" if self.NAME else None)
        self.args: dict[str, Any] = dict(args)

    @property
    def ws_path(self) -> Path:
        return self.app.ws_path  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        # A plain line rather than Textual's Header (three widgets and a clock timer): start-up cost.
        yield TitleBar(id="title-bar")
        yield NavBar(self.NAME)
        with Vertical(id="body"):
            yield from self.compose_body()
        yield KeyHints(id="key-hints")

    def compose_body(self) -> ComposeResult:
        """Override: the screen's own widgets, between the navigation bar and the footer."""
        yield from ()

    def receive_args(self, **args: Any) -> None:
        """Called when the screen is shown again with new arguments (e.g. `mirage compare --suite`).

        The first arguments arrive in `__init__` as `self.args`; override to react to later ones.
        """
        self.args.update(args)

    def on_screen_resume(self) -> None:
        # Keys may have been remapped since this screen was built.
        for nav in self.query(NavBar):
            nav.refresh_nav()
