"""mirage's screens, one per module, each listed in `tui.app.SCREENS` and imported when first shown.

How to plug a screen in (the full contract is the docstring of `tui/app.py`):

    from textual.app import ComposeResult
    from textual.widgets import DataTable
    from core.runtime.jobs import list_jobs
    from tui.actions import Action
    from tui.screens.base import MirageScreen

    class JobsScreen(MirageScreen):
        NAME = "jobs"                                   # key in tui.app.SCREENS
        ACTIONS = [Action("jobs.cancel", "x", "Cancel job", "cancel")]   # keys: registry, palette, help

        def compose_body(self) -> ComposeResult:        # header, nav bar and footer are drawn for you
            yield DataTable(id="jobs-table")

        def on_mount(self) -> None:                     # never query SQLite on the UI thread; load
            self.call_after_refresh(                    # after the first frame: fn(ws, *args) in a thread
                self.run_core, list_jobs, on_result=self.show_jobs, group="jobs")

        def show_jobs(self, jobs: list[dict]) -> None:  # back on the UI thread
            ...

        def action_cancel(self) -> None: ...

- `self.ws_path`: the workspace folder; `self.args`: arguments it was opened with (Compare:
  `suite`, `models`); `receive_args(**args)`: shown again with new ones via `app.goto(name, **args)`.
- Errors: let core raise `MirageError` subclasses; `run_core(..., blocking=False)` turns its
  modal into a notification. Unexpected exceptions get a crash report + one-line notification.
- Progress: a core generator of `Progress` posts `messages.WorkProgress(group, done, total, detail)`
  to the screen (handle `on_work_progress`); cancel with `self.workers.cancel_group(self, group)`
  and show "esc cancels" while it runs.
- Messages: add new message dataclasses to `tui/messages.py`; widgets to `tui/widgets/<screen>/`.
"""
