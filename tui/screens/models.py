"""The Models screen: registered models, local servers, and generation / collection jobs with progress.

Everything here calls core (core.models.registry, core.models.serving, core.runtime.jobs); servers and jobs are separate
processes, so they outlive the app and show up again when it reopens.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from tui import messages as msg
from tui.actions import Action
from tui.screens.base import MirageScreen

MY_JOB_KINDS = ("generate", "collect")
POLL_S = 1.0


# -- core calls (run in worker threads with their own Workspace) ---------------------------------------
def load_state(ws) -> dict:
    from core.models import registry as models
    from core.models import serving
    from core.runtime import jobs

    servers = {s.model: s for s in serving.list_servers(ws)}
    rows = []
    for r in models.list_models(ws):
        s = servers.get(r["name"])
        rows.append({**r, "server": s.base_url if s else ""})
    job_rows = [jobs.public_view(j) for j in jobs.list_jobs(ws) if j["kind"] in MY_JOB_KINDS]
    return {"models": rows, "jobs": job_rows[-20:]}


def model_details(ws, name: str) -> dict:
    from core.models import registry as models

    rm = models.resolve(ws, name)
    return {
        "name": name,
        "kind": rm.kind.name,
        "spec": rm.spec,
        "fingerprint": rm.fingerprint,
        "prompt_style": rm.prompt_style,
    }


def add_model(ws, name: str, kind: str, spec: dict) -> str:
    from core.models import registry as models

    models.register(ws, name, kind, spec)
    return name


def start_server(ws, model: str):
    from core.models import serving

    server = yield from serving.start(ws, model)
    serving.register_endpoint(ws, server)
    return server


def stop_server(ws, model: str) -> str:
    from core.errors import NotFound
    from core.models import serving

    running = [s for s in serving.list_servers(ws) if s.model == model]
    if not running:
        raise NotFound(f"no server running for {model}")
    for s in running:
        serving.stop(ws, s)
    return model


def submit_generate(ws, model: str, suite: str) -> int:
    from core.data import datasets
    from core.models import registry as models
    from core.runtime import jobs

    models.get_model(ws, model)
    datasets.get_suite(ws, suite)
    return jobs.submit(ws, "generate", f"generate {model} on {suite}", {"model": model, "suite": suite})


def cancel_job(ws, job_id: int) -> dict:
    from core.runtime import jobs

    return jobs.public_view(jobs.cancel(ws, job_id))


# -- modals -------------------------------------------------------------------------------------------------
class AddModelForm(ModalScreen[dict | None]):
    """Name + kind + the fields that kind needs. Enter / Add submits, esc closes."""

    DEFAULT_CSS = """
    AddModelForm { align: center middle; }
    AddModelForm > Vertical { width: 76; height: auto; border: round $accent; padding: 1 2; background: $surface; }
    AddModelForm Input, AddModelForm Select { margin-bottom: 1; }
    AddModelForm #form-buttons { height: auto; }
    """
    BINDINGS = [("escape", "dismiss_form", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Add a model")
            yield Input(placeholder="name", id="f-name")
            yield Select(
                [
                    ("Hugging Face folder or hub id", "hf"),
                    ("OpenAI-compatible endpoint", "openai"),
                    ("PEFT adapter on a base", "adapter"),
                ],
                value="hf",
                allow_blank=False,
                id="f-kind",
            )
            yield Input(placeholder="path / hub id / base URL (http://127.0.0.1:8000/v1)", id="f-target")
            yield Input(placeholder="endpoint model id, or the adapter's base model name", id="f-extra")
            yield Input(placeholder="API key env var NAME (optional; the key itself is never stored)", id="f-env")
            with Horizontal(id="form-buttons"):
                yield Button("Add", variant="primary", id="f-add")
                yield Button("Cancel", id="f-cancel")

    def on_mount(self) -> None:
        self.query_one("#f-name", Input).focus()

    def _value(self, wid: str) -> str:
        return self.query_one(wid, Input).value.strip()

    def result(self) -> dict:
        kind = self.query_one("#f-kind", Select).value
        target, extra, env = self._value("#f-target"), self._value("#f-extra"), self._value("#f-env")
        if kind == "hf":
            spec: dict[str, Any] = {"path": target}
        elif kind == "openai":
            spec = {"base_url": target, "model": extra, "api_key_env": env or None}
        else:
            spec = {"path": target, "base": extra}
        return {"name": self._value("#f-name"), "kind": kind, "spec": spec}

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.result() if event.button.id == "f-add" else None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(self.result())

    def action_dismiss_form(self) -> None:
        self.dismiss(None)


class AskSuite(ModalScreen[str | None]):
    DEFAULT_CSS = """
    AskSuite { align: center middle; }
    AskSuite > Vertical { width: 60; height: auto; border: round $accent; padding: 1 2; background: $surface; }
    """
    BINDINGS = [("escape", "close", "Close")]

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Generate with {self.model} on suite:")
            yield Input(placeholder="suite name", id="suite-name")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_close(self) -> None:
        self.dismiss(None)


# -- the screen -------------------------------------------------------------------------------------------------
class ModelsScreen(MirageScreen):
    NAME = "models"
    ACTIONS = [
        Action("models.add", "a", "Add model", "add_model"),
        Action("models.serve", "s", "Serve", "serve"),
        Action("models.stop", "x", "Stop server", "stop_server"),
        Action("models.generate", "g", "Generate", "generate"),
        Action("models.cancel", "escape", "Cancel job (esc)", "cancel"),
        Action("models.reload", "r", "Reload", "reload", show=False),
    ]
    DEFAULT_CSS = """
    #models-table { height: 1fr; }
    #models-detail { height: auto; max-height: 8; padding: 0 1; color: $text-muted; }
    #models-work { height: auto; padding: 0 1; }
    #models-jobs { height: 10; }
    """

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.state: dict = {"models": [], "jobs": []}

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="models-detail", markup=False)
        with Horizontal(id="models-work"):
            yield Static("", id="models-work-label", markup=False)
            yield ProgressBar(id="models-progress", show_eta=False)
        yield DataTable(id="models-jobs", cursor_type="row")

    def on_mount(self) -> None:
        t = self.query_one("#models-table", DataTable)
        # Location last: it is the long one, cut to what is left; at 120 columns it used to push
        # the server column off the edge ("http://127.0.0.").
        t.add_columns("name", "kind", "size", "chat", "outputs", "server", "location")
        j = self.query_one("#models-jobs", DataTable)
        j.add_columns("job", "name", "status", "progress", "error")
        self.query_one("#models-work").display = False
        self.reload()
        self.set_interval(POLL_S, self.poll)

    # -- data ------------------------------------------------------------------------------------------
    def reload(self) -> None:
        self.run_core(load_state, on_result=self.show_state, group="models-state", blocking=False)

    def poll(self) -> None:
        if not self.is_current:
            return
        self.reload()

    def show_state(self, state: dict) -> None:
        self.state = state
        t = self.query_one("#models-table", DataTable)
        keep = t.cursor_row
        t.clear()
        rows = []
        for r in state["models"]:
            chat = {True: "yes", False: "no"}.get(r["chat_template"], "?")
            server = r["server"].removeprefix("http://").removesuffix("/v1")  # 127.0.0.1:PORT
            rows.append(
                [r["name"], r["kind"], r["size"] or "", chat, str(r["generations"]), server, r["location"] or ""]
            )
        # What the other columns leave of the screen (2 cells of padding each), the tail of the
        # path kept: its end names the model.
        heads = ("name", "kind", "size", "chat", "outputs", "server")
        used = sum(max([len(h)] + [len(row[i]) for row in rows]) + 2 for i, h in enumerate(heads))
        room = max(16, self.size.width - used - 4)
        for row, r in zip(rows, state["models"]):
            loc = row[6]
            row[6] = loc if len(loc) <= room else "…" + loc[-(room - 1) :]
            t.add_row(*row, key=r["name"])
        if state["models"]:
            t.move_cursor(row=min(keep, len(state["models"]) - 1))
        j = self.query_one("#models-jobs", DataTable)
        j.clear()
        for job in reversed(state["jobs"]):
            prog = f"{job['step']}/{job['total_steps']}" if job["total_steps"] else str(job["step"] or "")
            j.add_row(str(job["id"]), job["name"], job["status"], prog, job["error"] or "", key=str(job["id"]))

    def selected_model(self) -> str | None:
        t = self.query_one("#models-table", DataTable)
        if not self.state["models"] or t.cursor_row is None or t.cursor_row >= len(self.state["models"]):
            return None
        return self.state["models"][t.cursor_row]["name"]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "models-table" or event.row_key is None:
            return
        self.run_core(
            model_details, event.row_key.value, on_result=self.show_details, group="models-detail", blocking=False
        )

    def show_details(self, d: dict) -> None:
        spec = ", ".join(f"{k}={v}" for k, v in d["spec"].items())
        self.query_one("#models-detail", Static).update(
            f"{d['name']} · {d['kind']} · prompt style {d['prompt_style']} · fingerprint {d['fingerprint']}\n{spec}"
        )

    # -- progress of in-app work (server start) --------------------------------------------------------------
    def on_work_progress(self, message: msg.WorkProgress) -> None:
        if message.group != "models-serve":
            return
        message.stop()
        self.query_one("#models-work").display = True
        self.query_one("#models-work-label", Static).update(f"{message.detail}  (esc cancels)  ")
        self.query_one("#models-progress", ProgressBar).update(total=message.total, progress=message.done)

    def _work_finished(self) -> None:
        self.query_one("#models-work").display = False

    # -- actions -------------------------------------------------------------------------------------------------
    def action_reload(self) -> None:
        self.reload()

    def action_add_model(self) -> None:
        def done(result: dict | None) -> None:
            if result:
                self.run_core(
                    add_model,
                    result["name"],
                    result["kind"],
                    result["spec"],
                    on_result=lambda name: (self.notify(f"added {name}"), self.reload()),
                    group="models-add",
                )

        self.app.push_screen(AddModelForm(), done)

    def action_serve(self) -> None:
        model = self.selected_model()
        if not model:
            return

        def started(server) -> None:
            self._work_finished()
            self.notify(f"serving {model} at {server.base_url} (as {model}@local)")
            self.reload()

        self.run_core(start_server, model, on_result=started, group="models-serve")

    def action_stop_server(self) -> None:
        model = self.selected_model()
        if model:
            self.run_core(
                stop_server,
                model,
                on_result=lambda m: (self.notify(f"stopped {m}"), self.reload()),
                group="models-stop",
            )

    def action_generate(self) -> None:
        model = self.selected_model()
        if not model:
            return

        def chosen(suite: str | None) -> None:
            if suite:
                self.run_core(
                    submit_generate,
                    model,
                    suite,
                    on_result=lambda jid: (self.notify(f"job {jid}: generating (esc cancels)"), self.reload()),
                    group="models-submit",
                )

        self.app.push_screen(AskSuite(model), chosen)

    def action_cancel(self) -> None:
        # In-app work first (a server starting), else the newest active generation/collection job.
        if any(w.group == "models-serve" and not w.is_finished for w in self.workers):
            self.workers.cancel_group(self, "models-serve")
            self._work_finished()
            self.notify("server start cancelled")
            return
        active = [j for j in self.state["jobs"] if j["status"] in ("queued", "running")]
        j = self.query_one("#models-jobs", DataTable)
        if j.cursor_row is not None and self.state["jobs"]:
            shown = list(reversed(self.state["jobs"]))
            if j.cursor_row < len(shown) and shown[j.cursor_row]["status"] in ("queued", "running"):
                active = [shown[j.cursor_row]]
        if active:
            jid = active[-1]["id"]
            self.run_core(
                cancel_job,
                jid,
                on_result=lambda job: (self.notify(f"job {job['id']}: {job['status']}"), self.reload()),
                group="models-cancel",
            )
