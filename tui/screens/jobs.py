"""The Jobs screen: launch finetunes (with a dry-run estimate), watch every background job, cancel, resume.

Jobs are separate processes recorded in the workspace (core.runtime.jobs); this screen only reads the
database on a timer, so it re-attaches to whatever is running when the app reopens.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, RichLog, Static
from textual_plotext import PlotextPlot

from core.finetune.config import default_text, user_fields
from core.runtime.progress import format_duration
from tui.actions import Action
from tui.screens.base import MirageScreen

POLL_S = 1.0
# The run settings the launch form offers, in form order; labels and placeholders (the defaults)
# come from the FinetuneConfig fields, as the `mirage finetune` options do.
FORM_SETTINGS = ("lr", "rank", "epochs", "batch_size", "max_length")


def form_fields() -> list[tuple[str, str, str]]:
    """(id, label, placeholder) for each input of the launch form."""
    settings = {f.name: f for f in user_fields()}
    return [
        ("base", "base model", "registered name or HF folder"),
        ("data", "data or subset", "dataset name"),
        ("tokens", "token budget(s)", "all, or 300k,1.5M"),
    ] + [
        (k, settings[k].metadata["label"] or k.replace("_", " "), default_text(settings[k]) or "")
        for k in FORM_SETTINGS
    ]


FORM_FIELDS = form_fields()


# -- core calls (each runs in a worker thread with its own Workspace) ----------------------------------------
def load_jobs(ws, selected: int | None, after_event: int) -> dict:
    """All jobs with their latest ETA, and the selected job's events after `after_event`."""
    from core.runtime import jobs

    rows = [jobs.public_view(j) for j in jobs.list_jobs(ws)]
    eta = {
        r["job_id"]: r["eta_s"]
        for r in ws.db.query(
            "select job_id, eta_s from job_events where id in"
            " (select max(id) from job_events where eta_s is not null group by job_id)"
        )
    }
    for r in rows:
        r["eta_s"] = eta.get(r["id"]) if r["status"] == "running" else None
    evs = jobs.events(ws, selected, after_id=after_event) if selected else []
    return {"jobs": rows, "selected": selected, "events": evs}


def _form_config(values: dict[str, str]) -> tuple[str, str, list, dict]:
    from core.errors import BadInput
    from core.finetune.config import parse_tokens

    base, data = values.get("base", "").strip(), values.get("data", "").strip()
    if not base:
        raise BadInput("launch form", "a base model is needed", field="base")
    if not data:
        raise BadInput("launch form", "a dataset or subset is needed", field="data")
    budgets = parse_tokens(values.get("tokens", "").strip() or None)
    overrides = {k: v.strip() for k, v in values.items() if k not in ("base", "data", "tokens") and v.strip()}
    return base, data, budgets, overrides


def estimate(ws, values: dict[str, str]) -> dict:
    from core.finetune import runs
    from core.finetune.config import make_config

    base, data, budgets, overrides = _form_config(values)
    cfg = make_config(base, data, tokens=budgets[-1], **overrides)
    runs.validate(ws, cfg)
    return runs.dry_run(ws, cfg)


def launch(ws, values: dict[str, str]) -> list[int]:
    from core.finetune import runs

    base, data, budgets, overrides = _form_config(values)
    return runs.submit(ws, base, data, tokens=budgets, detach=True, **overrides)


def cancel_job(ws, job_id: int) -> dict:
    from core.runtime import jobs

    return jobs.public_view(jobs.cancel(ws, job_id))


def resume_job(ws, job_id: int) -> dict:
    from core.runtime import jobs

    return jobs.public_view(jobs.resume(ws, job_id, detach=True))


# -- display helpers ---------------------------------------------------------------------------------------
def duration(s: float | None) -> str:
    return format_duration(s, unknown="")


def progress_bar(step: int | None, total: int | None, width: int = 14) -> Text:
    if not total:
        return Text(f"{step or 0}", style="dim")
    if width <= 0:
        return Text(f"{step or 0}/{total}")
    frac = min(max((step or 0) / total, 0.0), 1.0)
    full = int(round(frac * width))
    return Text.assemble(("█" * full, "green"), ("░" * (width - full), "dim"), f" {step or 0}/{total}")


STATUS_STYLE = {
    "running": "bold green",
    "queued": "yellow",
    "done": "cyan",
    "failed": "bold red",
    "cancelled": "dim",
    "interrupted": "bold magenta",
}


class JobsScreen(MirageScreen):
    NAME = "jobs"
    ACTIONS = [
        Action("jobs.new", "n", "New run", "toggle_form"),
        Action("jobs.cancel", "c", "Cancel job", "cancel_job"),
        Action("jobs.resume", "r", "Resume job", "resume_job"),
        Action("jobs.estimate", "ctrl+e", "Estimate", "estimate", priority=True),
        Action("jobs.launch", "ctrl+r", "Start run", "launch", priority=True),
    ]
    DEFAULT_CSS = """
    JobsScreen #jobs-form { height: auto; max-height: 20; border-bottom: hkey $foreground 20%; display: none; }
    JobsScreen #jobs-form.open { display: block; }
    JobsScreen .form-row { height: 3; }
    JobsScreen .form-row Label { width: 18; padding: 1 1 0 1; }
    JobsScreen .form-row Input { width: 1fr; }
    JobsScreen #jobs-form-buttons { height: 3; }
    JobsScreen #jobs-estimate { height: auto; padding: 0 1; color: $text-muted; }
    JobsScreen #jobs-table { height: 1fr; min-height: 6; }
    JobsScreen #jobs-detail { height: 1fr; border-top: hkey $foreground 20%; }
    JobsScreen #jobs-loss { width: 1fr; }
    JobsScreen #jobs-log { width: 1fr; border-left: vkey $foreground 20%; }
    JobsScreen #jobs-status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.selected: int | None = args.get("job")  # `python -m tui --screen jobs --job N`
        self.after_event = 0
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.job_rows: list[dict] = []
        self.estimate_result: dict | None = None
        # What the table shows now, by row key, to tell a poll that changed nothing from one that did.
        self.shown_rows: dict[str, list] = {}
        self.shown_narrow: bool | None = None
        self.column_keys: list = []

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="jobs-form"):
            for fid, label, placeholder in FORM_FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label)
                    yield Input(placeholder=placeholder, id=f"form-{fid}")
            with Horizontal(id="jobs-form-buttons"):
                yield Button("Estimate (ctrl+e)", id="btn-estimate")
                yield Button("Start (ctrl+r)", id="btn-launch", variant="primary")
            yield Static(
                "Fill base and data, then estimate: examples, tokens, steps and time from one measured step.",
                id="jobs-estimate",
            )
        table = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        yield table
        with Horizontal(id="jobs-detail"):
            yield PlotextPlot(id="jobs-loss")
            # min_width: RichLog renders at least 78 columns wide by default, wider than this pane
            # beside the loss plot, so long lines ran off its edge instead of wrapping.
            yield RichLog(id="jobs-log", wrap=True, markup=False, max_lines=500, min_width=20)
        yield Static("", id="jobs-status")

    def on_mount(self) -> None:
        table = self.query_one("#jobs-table", DataTable)
        self.column_keys = table.add_columns("id", "name", "kind", "status", "progress", "loss", "ETA", "error")
        # Left to itself the screen focused the hidden launch form's scroller: ↑/↓ did nothing.
        table.focus()
        self._draw_loss()
        self.poll()
        self.set_interval(POLL_S, self.poll)

    def receive_args(self, **args: Any) -> None:
        super().receive_args(**args)
        if args.get("job") is not None:
            self._select(int(args["job"]))

    # -- polling --------------------------------------------------------------------------------------
    def poll(self) -> None:
        self.run_core(
            load_jobs, self.selected, self.after_event, on_result=self.show, group="jobs-poll", blocking=False
        )

    def show(self, state: dict) -> None:
        self.job_rows = state["jobs"]
        table = self.query_one("#jobs-table", DataTable)
        # Below 100 columns (80x24) the error column was off the screen: the bar goes (the count
        # stays), long names are cut, and the error gets what is left (in full in the log below).
        narrow = self.size.width < 100
        rows = []
        for r in self.job_rows:
            name = r["name"]
            if narrow and len(name) > 18:
                name = name[:17] + "…"
            rows.append(
                [
                    str(r["id"]),
                    name,
                    r["kind"],
                    Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
                    progress_bar(r["step"], r["total_steps"], width=0 if narrow else 14),
                    "" if r["loss"] is None else f"{r['loss']:.4f}",
                    duration(r.get("eta_s")),
                ]
            )
        heads = ("id", "name", "kind", "status", "progress", "loss", "ETA")
        used = sum(max([len(h)] + [len(str(row[i])) for row in rows]) + 2 for i, h in enumerate(heads))
        room = max(12, min(60, self.size.width - used - 2))
        for r, row in zip(self.job_rows, rows):
            err = r.get("error") or ""
            row.append(err if len(err) <= room else err[: room - 1] + "…")
        keys = [str(r["id"]) for r in self.job_rows]
        if keys == list(self.shown_rows) and narrow == self.shown_narrow:
            self._update_rows(table, dict(zip(keys, rows)))
        else:
            self._rebuild_rows(table, keys, rows)
        self.shown_narrow = narrow
        if state["selected"] == self.selected and state["events"]:
            log = self.query_one("#jobs-log", RichLog)
            for e in state["events"]:
                self.after_event = max(self.after_event, e["id"])
                if e["loss"] is not None and e["step"] is not None:
                    self.losses.append((e["step"], e["loss"]))
                if (e["data"] or {}).get("eval_loss") is not None and e["step"] is not None:
                    self.eval_losses.append((e["step"], e["data"]["eval_loss"]))
                if e["message"]:
                    log.write(f"{e['time'][11:19]}  {e['message']}")
            self._draw_loss()
        running = sum(r["status"] == "running" for r in self.job_rows)
        queued = sum(r["status"] == "queued" for r in self.job_rows)
        self.query_one("#jobs-status", Static).update(
            f"{len(self.job_rows)} job{'' if len(self.job_rows) == 1 else 's'}, {running} running, {queued} queued"
            " — n new run · c cancel · r resume"
        )

    def _update_rows(self, table: DataTable, rows: dict[str, list]) -> None:
        # The same jobs as last poll: only the cells that changed are written, since clearing the
        # table would scroll it back to the cursor under a reader looking through older jobs.
        for key, row in rows.items():
            for col, new, old in zip(self.column_keys, row, self.shown_rows[key]):
                if new != old:
                    table.update_cell(key, col, new, update_width=True)
        self.shown_rows = rows

    def _rebuild_rows(self, table: DataTable, keys: list[str], rows: list[list]) -> None:
        cursor_id = self.selected
        table.clear()
        for key, row in zip(keys, rows):
            table.add_row(*row, key=key)
        self.shown_rows = dict(zip(keys, rows))
        if self.job_rows:
            ids = [r["id"] for r in self.job_rows]
            if cursor_id not in ids:
                cursor_id = ids[-1]
            table.move_cursor(row=ids.index(cursor_id), animate=False)
            if cursor_id != self.selected:
                self._select(cursor_id)

    def _select(self, job_id: int | None) -> None:
        if job_id == self.selected:
            return
        self.selected = job_id
        self.after_event = 0
        self.losses = []
        self.eval_losses = []
        self.query_one("#jobs-log", RichLog).clear()
        self._draw_loss()
        self.poll()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # Rebuilding the table on every poll highlights row 0 on the way to the cursor's row; by the
        # time that event arrives the cursor has moved on, and following it would select row 0, poll,
        # rebuild and select again, without end.
        if event.cursor_row != event.data_table.cursor_row:
            return
        if event.row_key is not None and event.row_key.value is not None:
            self._select(int(event.row_key.value))

    def _draw_loss(self) -> None:
        plot = self.query_one("#jobs-loss", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"loss — job {self.selected}" if self.selected else "loss")
        if self.losses:
            pts = sorted(dict(self.losses).items())  # a resumed run re-reports steps: keep the latest
            # A legend only with a second curve: a run without held-out data draws as before.
            label = {"label": "loss"} if self.eval_losses else {}
            plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="braille", **label)
            if self.eval_losses:
                held = sorted(dict(self.eval_losses).items())
                plt.plot([p[0] for p in held], [p[1] for p in held], marker="dot", label="eval_loss")
            plt.xlabel("step")
        plot.refresh()

    # -- actions -----------------------------------------------------------------------------------------
    def action_toggle_form(self) -> None:
        form = self.query_one("#jobs-form")
        form.toggle_class("open")
        if form.has_class("open"):
            self.query_one("#form-base", Input).focus()
        else:
            self.query_one("#jobs-table", DataTable).focus()

    def form_values(self) -> dict[str, str]:
        return {fid: self.query_one(f"#form-{fid}", Input).value for fid, _, _ in FORM_FIELDS}

    def action_estimate(self) -> None:
        if not self.query_one("#jobs-form").has_class("open"):
            return
        self.query_one("#jobs-estimate", Static).update("estimating: loading the model and timing one step…")
        self.run_core(estimate, self.form_values(), on_result=self.show_estimate, group="jobs-estimate")

    def show_estimate(self, r: dict) -> None:
        self.estimate_result = r
        from core.finetune.config import human_tokens

        notes = "".join(f"\nnote: {n}" for n in r["notes"])
        self.query_one("#jobs-estimate", Static).update(
            f"budget {human_tokens(r['budget'])}: {r['examples']} examples, {r['tokens']:,} tokens"
            f" ({r['label_tokens']:,} trained), {r['total_steps']} steps; one step {r['step_seconds']:.2f} s"
            f" on {r['device']} {r['dtype']} → about {duration(r['estimated_seconds'])}; template {r['template']}"
            + notes
        )

    def action_launch(self) -> None:
        if not self.query_one("#jobs-form").has_class("open"):
            return
        self.run_core(launch, self.form_values(), on_result=self.launched, group="jobs-launch")

    def launched(self, ids: list[int]) -> None:
        self.notify(f"started job{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}")
        self.query_one("#jobs-form").remove_class("open")
        self.query_one("#jobs-table", DataTable).focus()
        self._select(ids[0])

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "btn-estimate":
            self.action_estimate()
        elif event.button.id == "btn-launch":
            self.action_launch()

    def action_cancel_job(self) -> None:
        if self.selected is None:
            return
        self.run_core(
            cancel_job,
            self.selected,
            on_result=lambda j: self.notify(f"job {j['id']}: {j['status']}"),
            group="jobs-control",
        )

    def action_resume_job(self) -> None:
        if self.selected is None:
            return
        self.run_core(
            resume_job,
            self.selected,
            on_result=lambda j: self.notify(f"job {j['id']}: {j['status']}"),
            group="jobs-control",
        )
