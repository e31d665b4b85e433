"""The Coverage screen: per-task support bars, drill into items and their nearest imitation examples,
topic clusters, and subsets made from what is on screen. All logic is in core.coverage."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, ProgressBar, Static

from tui import messages as msg
from tui.actions import Action
from tui.screens.base import MirageScreen

BAR = 20


def bar(value: float, width: int = BAR, style: str = "green") -> Text:
    """A horizontal bar for a share in [0, 1] (similarities below 0 draw empty)."""
    value = min(max(value, 0.0), 1.0)
    full = round(value * width)
    return Text("█" * full, style=style) + Text("░" * (width - full), style="dim")


def _choices(ws) -> dict:
    from core.coverage.compute import list_runs
    from core.data.datasets import list_datasets, list_suites

    runs = list_runs(ws)  # newest first
    return {
        "data": [d["name"] for d in list_datasets(ws)],
        "suites": [s["name"] for s in list_suites(ws)],
        "latest": (runs[0]["data"], runs[0]["suite"]) if runs else None,
    }


def _results(ws, data: str, suite: str):
    from core.coverage import compute as coverage

    return coverage.results(ws, data, suite)


def _compute(ws, data: str, suite: str, **kw):
    from core.coverage import compute as coverage

    return coverage.compute(ws, data, suite, **kw)


def _make_subset(ws, name: str, data: str, spec: dict):
    from core.coverage.subsets import make_subset

    return make_subset(ws, name, data, **spec)


class SubsetName(ModalScreen[str | None]):
    """Asks for the new subset's name: enter saves, esc cancels."""

    DEFAULT_CSS = """
    SubsetName { align: center middle; }
    SubsetName > Vertical { width: 70; height: auto; border: round $accent; padding: 1 2; background: $surface; }
    """
    BINDINGS = [("escape", "dismiss_none", "Cancel")]

    def __init__(self, suggestion: str, what: str) -> None:
        super().__init__()
        self.suggestion = suggestion
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Save a subset: {self.what}", markup=False)
            yield Input(value=self.suggestion, id="subset-name")
            yield Label("enter saves · esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class CoverageScreen(MirageScreen):
    NAME = "coverage"
    ACTIONS = [
        Action("coverage.compute", "c", "Compute", "compute"),
        Action("coverage.back", "escape", "Back / cancel", "back"),
        Action("coverage.data", "d", "Next data", "next_data"),
        Action("coverage.suite", "s", "Next suite", "next_suite"),
        Action("coverage.tasks", "t", "Tasks", "show_tasks"),
        Action("coverage.clusters", "l", "Clusters", "show_clusters"),
        Action("coverage.subset", "n", "Subset from view", "subset"),
        Action("coverage.sort", "o", "Sort order", "toggle_sort"),
    ]
    DEFAULT_CSS = """
    #cov-head { height: auto; padding: 0 1; background: $panel; }
    #cov-busy { height: 1; display: none; padding: 0 1; }
    #cov-busy.busy { display: block; }
    #cov-busy ProgressBar { width: 50; }
    #cov-busy Label { color: $text-muted; padding: 0 1; }
    #cov-table { height: 1fr; }
    #cov-item { height: 1fr; display: none; }
    #cov-item.shown { display: block; }
    #cov-item-left { width: 1fr; padding: 0 1; border-right: vkey $foreground 20%; }
    #cov-item-right { width: 2fr; padding: 0 1; }
    #cov-status { height: 1; padding: 0 1; background: $panel; color: $text-muted; }
    """

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.data_name: str | None = args.get("data")
        self.suite_name: str | None = args.get("suite")
        self.choices: dict = {"data": [], "suites": []}
        self.res: dict | None = None
        self.level = "tasks"
        self.sel_task: str | None = None
        self.sel_item: dict | None = None
        self.ascending = False
        self.computing = False
        self._cov_cancel = None

    # -- layout ------------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        yield Static("", id="cov-head")
        with Horizontal(id="cov-busy"):
            yield ProgressBar(total=None, show_eta=True, id="cov-progress")
            yield Label("computing coverage · esc cancels", id="cov-busy-label", markup=False)
        yield DataTable(id="cov-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="cov-item"):
            with VerticalScroll(id="cov-item-left"):
                yield Static("", id="cov-item-prompt")
            with VerticalScroll(id="cov-item-right"):
                yield Static("", id="cov-item-neighbors")
        yield Static("", id="cov-status")

    def on_mount(self) -> None:
        self.run_core(_choices, on_result=self._cov_got_choices, group="choices")

    def receive_args(self, **args: Any) -> None:
        super().receive_args(**args)
        self.data_name = args.get("data", self.data_name)
        self.suite_name = args.get("suite", self.suite_name)
        self._cov_load()

    # -- loading -----------------------------------------------------------------------------------
    def _cov_got_choices(self, choices: dict) -> None:
        self.choices = choices
        # Opened without a pair, show the one computed last (after `mirage demo`: imitation × qa)
        # rather than the first names, whose coverage is usually not computed.
        latest = choices.get("latest")
        if latest and self.data_name is None and self.suite_name is None:
            self.data_name, self.suite_name = latest
        if self.data_name not in choices["data"]:
            self.data_name = choices["data"][0] if choices["data"] else None
        if self.suite_name not in choices["suites"]:
            self.suite_name = choices["suites"][0] if choices["suites"] else None
        self._cov_load()

    def _cov_load(self) -> None:
        self.res = None
        self._cov_render_head()
        if not self.data_name or not self.suite_name:
            self._cov_status(
                "import a dataset and a suite first: `mirage import data FILE --name D`, "
                "`mirage import suite FILE --name S`"
            )
            self._cov_fill_table([], [])
            return
        self.run_core(_results, self.data_name, self.suite_name, on_result=self._cov_got_results, group="results")

    def _cov_got_results(self, res: dict | None) -> None:
        self.res = res
        self.level, self.sel_task, self.sel_item = "tasks", None, None
        self._cov_render()

    # -- compute with progress and cancel -------------------------------------------------------------
    def action_compute(self) -> None:
        if self.computing or not self.data_name or not self.suite_name:
            return
        import threading

        self._cov_cancel = threading.Event()
        self.computing = True
        self.query_one("#cov-busy").add_class("busy")
        self.query_one("#cov-progress", ProgressBar).update(total=None, progress=0)
        self._cov_status(f"computing coverage of {self.suite_name} by {self.data_name}…")
        self.run_core(
            _compute,
            self.data_name,
            self.suite_name,
            cancel=self._cov_cancel,
            on_result=self._cov_computed,
            group="compute",
        )

    def on_work_progress(self, message: msg.WorkProgress) -> None:
        if message.group != "compute":
            return
        message.stop()
        bar_ = self.query_one("#cov-progress", ProgressBar)
        bar_.update(total=message.total, progress=message.done)
        if message.detail:
            self.query_one("#cov-busy-label", Label).update(f"{message.detail} · esc cancels")

    def _cov_computed(self, res: dict) -> None:
        self._cov_idle()
        self._cov_got_results(res)
        self.notify(f"coverage: support {res['summary']['support']:.0%} over {res['summary']['items']} items")

    def on_work_failed(self, message: msg.WorkFailed) -> None:
        if message.group == "compute":
            self._cov_idle()
            self._cov_status("coverage failed")
        super().on_work_failed(message)

    def _cov_idle(self) -> None:
        self.computing = False
        self.query_one("#cov-busy").remove_class("busy")

    def action_back(self) -> None:
        if self.computing:
            if self._cov_cancel is not None:
                self._cov_cancel.set()
            self.workers.cancel_group(self, "compute")
            self._cov_idle()
            self._cov_status("cancelled: embeddings made so far are kept; c continues where it stopped")
            return
        if self.level == "item":
            self.level, self.sel_item = "items", None
        elif self.level in ("items", "clusters"):
            self.level, self.sel_task = "tasks", None
        else:
            return
        self._cov_render()

    # -- navigation ---------------------------------------------------------------------------------
    def _cov_cycle(self, which: str) -> None:
        names = self.choices["data" if which == "data" else "suites"]
        if not names or self.computing:
            return
        cur = self.data_name if which == "data" else self.suite_name
        nxt = names[(names.index(cur) + 1) % len(names)] if cur in names else names[0]
        if which == "data":
            self.data_name = nxt
        else:
            self.suite_name = nxt
        self._cov_load()

    def action_next_data(self) -> None:
        self._cov_cycle("data")

    def action_next_suite(self) -> None:
        self._cov_cycle("suite")

    def action_show_tasks(self) -> None:
        self.level, self.sel_task, self.sel_item = "tasks", None, None
        self._cov_render()

    def action_show_clusters(self) -> None:
        self.level, self.sel_item = "clusters", None
        self._cov_render()

    def action_toggle_sort(self) -> None:
        self.ascending = not self.ascending
        if self.level == "items":
            self._cov_render()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if self.res is None or event.row_key is None or event.row_key.value is None:
            return
        key = event.row_key.value
        if self.level == "tasks":
            self.level, self.sel_task = "items", key
        elif self.level == "items":
            self.sel_item = next(r for r in self.res["items"] if str(r["item_id"]) == key)
            self.level = "item"
        else:
            return
        self._cov_render()

    # -- drawing ------------------------------------------------------------------------------------
    def _cov_status(self, text: str) -> None:
        self.query_one("#cov-status", Static).update(Text(text))

    def _cov_render_head(self) -> None:
        head = f"[b]data[/b] {escape(self.data_name or '—')}  [b]suite[/b] {escape(self.suite_name or '—')}"
        if self.res:
            s = self.res["summary"]
            head += (
                f"  ·  {escape(self.res['embedding_model'])} ({self.res['mode']})  threshold "
                f"{self.res['threshold']:.2f}  k {self.res['k']}\n"
                f"support {s['support']:.0%} of {s['items']} items · mean max similarity "
                f"{s['mean_max_similarity']:.2f} · {s['examples_served']} examples serve it · "
                f"{s['contaminated']} contaminated · {s['answer_leak']} answer leaks"
            )
        self.query_one("#cov-head", Static).update(head)

    def _cov_fill_table(self, columns: list[str], rows: list[tuple[str, list]]) -> None:
        table = self.query_one("#cov-table", DataTable)
        table.clear(columns=True)
        for c in columns:
            table.add_column(c, key=c)
        for key, cells in rows:
            table.add_row(*cells, key=key)
        self.query_one("#cov-table").display = True
        self.query_one("#cov-item").remove_class("shown")
        if rows:
            table.focus()

    def _cov_render(self) -> None:
        self._cov_render_head()
        if self.res is None:
            self._cov_fill_table([], [])
            self._cov_status("no coverage computed for this pair yet · c computes it (d/s change data/suite)")
            return
        getattr(self, f"_cov_render_{self.level}")()

    def _cov_render_tasks(self) -> None:
        rows = []
        for t in sorted(self.res["tasks"], key=lambda t: -t["support"]):
            rows.append(
                (
                    t["task"],
                    [
                        t["task"],
                        str(t["items"]),
                        bar(t["support"]),
                        f"{t['support']:.0%}",
                        bar(t["mean_max_similarity"], style="cyan"),
                        f"{t['mean_max_similarity']:.2f}",
                        str(t["examples_served"]),
                        str(t["contaminated"]),
                        ", ".join(f"{s} {v['support']:.0%}" for s, v in t["by_source"].items()),
                    ],
                )
            )
        self._cov_fill_table(
            ["task", "items", "support", "", "mean max sim", " ", "served", "contam.", "by source"], rows
        )
        self._cov_status("enter: items of a task · l clusters · n subset of the task's support · c recompute")

    def _cov_task_items(self) -> list[dict]:
        items = [r for r in self.res["items"] if r["task"] == self.sel_task]
        return sorted(items, key=lambda r: r["max_similarity"], reverse=not self.ascending)

    def _cov_render_items(self) -> None:
        rows = []
        for r in self._cov_task_items():
            flags = ("C" if r["contaminated"] else "·") + ("A" if r["answer_leak"] else "·")
            nearest = r["neighbors"][0]["text"] if r["neighbors"] else ""
            rows.append(
                (
                    str(r["item_id"]),
                    [
                        bar(r["max_similarity"], 12, "cyan"),
                        f"{r['max_similarity']:.2f}",
                        flags,
                        str(r["longest_ngram"]),
                        r["prompt"][:60],
                        nearest[:50],
                    ],
                )
            )
        self._cov_fill_table(["max sim", "", "C/A", "ngram", "prompt", "nearest example"], rows)
        order = "ascending" if self.ascending else "descending"
        self._cov_status(
            f"task {self.sel_task}: {len(rows)} items by similarity ({order}; o flips) · enter: nearest "
            "examples · n subset · esc back"
        )

    def _cov_render_item(self) -> None:
        r = self.sel_item
        self.query_one("#cov-table").display = False
        self.query_one("#cov-item").add_class("shown")
        flags = []
        if r["contaminated"]:
            flags.append("contaminated (13-gram)")
        if r["answer_leak"]:
            flags.append("gold answer in a neighbour's response")
        left = Text.assemble(
            (f"item {r['item_id']} · task {r['task']}\n\n", "bold"),
            r["prompt"],
            "\n\n",
            f"max similarity {r['max_similarity']:.3f}\n",
            f"examples above threshold {r['n_above']}\n",
            f"longest shared n-gram {r['longest_ngram']} words\n",
            f"responses containing a gold answer {r['answer_in_data']}\n",
            (" · ".join(flags), "bold red") if flags else "",
        )
        self.query_one("#cov-item-prompt", Static).update(left)
        right = Text()
        for i, nb in enumerate(r["neighbors"], 1):
            right.append(f"{i}. ", "bold")
            right.append_text(bar(nb["similarity"], 10, "cyan"))
            right.append(
                f" {nb['similarity']:.3f}  {nb['source']}  #{nb['example_id']}  cluster {nb.get('cluster', '')}\n",
                "bold",
            )
            right.append(nb["text"] + "\n\n")
        self.query_one("#cov-item-neighbors", Static).update(right)
        self._cov_status("the item beside its nearest imitation examples · esc back")

    def _cov_render_clusters(self) -> None:
        rows = []
        # What a cluster serves comes before its terms: at 80 columns "serves" was cut to "geograp".
        n_terms = 6 if self.size.width >= 100 else 3
        for c in sorted(self.res["clusters"], key=lambda c: -c["size"]):
            rows.append(
                (
                    str(c["cluster"]),
                    [
                        str(c["cluster"]),
                        str(c["size"]),
                        ", ".join(f"{t['task']} ({t['items']})" for t in c["tasks"][:3]),
                        ", ".join(c["terms"][:n_terms]),
                        (c["samples"][0]["text"][:50] if c["samples"] else ""),
                    ],
                )
            )
        self._cov_fill_table(["cluster", "size", "serves", "terms", "sample"], rows)
        self._cov_status("topic clusters of the imitation data · n subset of the cluster under the cursor · esc back")

    # -- subsets from the current view -----------------------------------------------------------------
    def _cov_subset_spec(self) -> tuple[dict, str, str] | None:
        if self.res is None:
            return None
        table = self.query_one("#cov-table", DataTable)
        if self.level == "clusters":
            if not table.row_count:
                return None
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            return {"cluster": int(key)}, f"{self.data_name}-cluster{key}", f"cluster {key} of {self.data_name}"
        task = self.sel_task if self.level in ("items", "item") else None
        if task is None and self.level == "tasks" and table.row_count:
            task = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if task is None:
            return None
        spec = {"task_support": (self.suite_name, task), "threshold": self.res["threshold"]}
        if self.res["mode"] == "conversation":
            spec["whole_conversation"] = True
        return (
            spec,
            f"{self.data_name}-{task}".replace(" ", "-"),
            (
                f"examples of {self.data_name} at least {self.res['threshold']:.2f} similar to an item of {self.suite_name}/{task}"
            ),
        )

    def action_subset(self) -> None:
        got = self._cov_subset_spec()
        if got is None:
            self.notify("nothing to make a subset of here", severity="warning")
            return
        spec, suggestion, what = got

        def made(name: str | None) -> None:
            if name:
                self.run_core(_make_subset, name, self.data_name, spec, on_result=self._cov_subset_made, group="subset")

        self.app.push_screen(SubsetName(suggestion, what), made)

    def _cov_subset_made(self, out: dict) -> None:
        self.notify(
            f"subset {out['name']}: {out['examples']} examples, ~{out['tokens']:,} tokens "
            f"(finetune with --data {out['name']})"
        )
        self.choices["data"] = sorted({*self.choices["data"], out["name"]})
