"""The Analysis screen: the paper's tables with intervals, gap closed against coverage, the token sweep.

Numbers come from `core.analysis.views.analysis` (core.analysis.report's figures plus the human
checks); this screen lays them out, plots two of them with textual-plotext, and exports the view on show.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from core.analysis import views as analysis_views
from tui.actions import Action
from tui.screens.base import EmptyState, MirageScreen


def _table(title: str, note: str, head: list[str], rows: list[list[str]]) -> Table | Text:
    if not rows:
        return Text(f"{title}\n{note}\n(nothing yet)")
    # Light rules and single spaces between columns: the gap table's nine columns did not fit 80
    # columns inside full borders, and its numbers folded to a digit or two a line.
    t = Table(
        title=title,
        caption=note,
        title_justify="left",
        caption_justify="left",
        expand=False,
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for n, h in enumerate(head):
        if n == 0:  # the model: whole, never folded mid-name ("gemma3-270" / "m" at 80 columns)
            t.add_column(h, justify="left", no_wrap=True, min_width=min(20, max(len(r[0]) for r in rows)))
        elif n == 1:
            t.add_column(h, justify="left", overflow="ellipsis", min_width=10)
        else:
            t.add_column(h, justify="right", overflow="fold", min_width=4)
    for r in rows:
        t.add_row(*[Text(c) for c in r])  # data, not markup: a "[n/a]" interval must not vanish as a tag
    return t


def gap_plot_note(gap_closed: list[dict]) -> str:
    """Why the gap-vs-coverage plot has no point: the one thing that is missing.

    After the demo both were there, but every task's gap closed was n/a (the teacher is below the
    base), and the plot still asked for scores and `mirage coverage`, which had both run.
    """
    rows = [g for g in gap_closed if g["task"] != "all"]
    if not rows:
        return "gap vs coverage: needs gap closed (base, imitation, teacher scored)"
    if all(g.get("support") is None for g in rows):
        return "gap vs coverage: needs `mirage coverage --data D --suite S` for this suite"
    return "gap vs coverage: gap closed is n/a on every task (see the table below for why)"


class AnalysisScreen(MirageScreen):
    NAME = "analysis"
    ACTIONS = [
        Action("analysis.view_next", "l,right", "Next view", "view(1)"),
        Action("analysis.view_prev", "h,left", "Prev view", "view(-1)", show=False),
        Action("analysis.export_md", "e", "Export md", "export('md')"),
        Action("analysis.export_json", "E", "Export JSON", "export('json')"),
        Action("analysis.suite", "s", "Next suite", "next_suite"),
        Action("analysis.reload", "r", "Reload", "reload"),
    ]
    DEFAULT_CSS = """
    /* Textual wraps a Static's text by its CSS, not by the Rich Text's no_wrap/overflow: without these
       the line wrapped at a word and height 1 cut it there, with no sign that more followed. */
    AnalysisScreen #analysis-status { height: 1; background: $panel; padding: 0 1; text-wrap: nowrap;
                                      text-overflow: ellipsis; }
    AnalysisScreen TabbedContent { height: 1fr; }
    AnalysisScreen TabPane { height: 1fr; padding: 0; }
    AnalysisScreen VerticalScroll { height: 1fr; }
    AnalysisScreen PlotextPlot { height: 16; min-height: 10; }
    AnalysisScreen .analysis-table { height: auto; margin: 0 1 1 1; }
    AnalysisScreen #analysis-empty { height: 1fr; }
    """

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.report: dict | None = None
        self.suites: list[str] = []

    def compose_body(self) -> ComposeResult:
        yield Static("", id="analysis-status")
        yield EmptyState("Loading…", id="analysis-empty", markup=False)
        with TabbedContent(id="analysis-tabs"):
            for view, title in analysis_views.ANALYSIS_VIEWS:
                with TabPane(title, id=f"tab-{view}"):
                    with VerticalScroll(id=f"scroll-{view}"):
                        if view == "gap":
                            yield PlotextPlot(id="plot-gap")
                        if view == "sweep":
                            yield PlotextPlot(id="plot-sweep")
                        yield Static("", id=f"tables-{view}", classes="analysis-table")

    def on_mount(self) -> None:
        self.query_one("#analysis-tabs").display = False
        self.load()

    def load(self) -> None:
        def fetch(ws, suite):
            rep = analysis_views.analysis(ws, suite)
            return rep, analysis_views.suites_with_scores(ws)

        self.run_core(fetch, self.args.get("suite"), on_result=self._loaded, group="analysis-load", blocking=False)

    def receive_args(self, **args: Any) -> None:
        super().receive_args(**args)
        self.load()

    def on_work_failed(self, message) -> None:
        message.stop()
        empty = self.query_one("#analysis-empty", EmptyState)
        empty.update(getattr(message.error, "message", str(message.error)))
        empty.display = True
        self.query_one("#analysis-tabs").display = False
        self.app.show_error(message.error, blocking=False)

    def _loaded(self, value) -> None:
        self.report, self.suites = value
        rep = self.report
        self.query_one("#analysis-empty").display = False
        self.query_one("#analysis-tabs").display = True
        self.query_one("#analysis-status", Static).update(
            # The hint before the long model list: at 80 columns the end of the line is cut.
            Text(
                f"{rep['suite']} ({rep['kind']}) · s next suite · e/E export · teacher {rep['teacher'] or '—'}"
                f" · base {rep['base'] or '—'} · imitation {', '.join(rep['imitation']) or '—'}"
                f" · models {', '.join(rep['models'])}"
            )
        )
        for view, _title in analysis_views.ANALYSIS_VIEWS:
            tables = analysis_views.view_tables(rep, view)
            from rich.console import Group

            self.query_one(f"#tables-{view}", Static).update(
                Group(*[_table(*t) for t in tables]) if tables else Text("(nothing yet)")
            )
        self._plot_gap(rep)
        self._plot_sweep(rep)

    def _plot_gap(self, rep: dict) -> None:
        widget = self.query_one("#plot-gap", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        pts = [
            g
            for g in rep["gap_closed"]
            if g["task"] != "all" and g["value"] is not None and g.get("support") is not None
        ]
        if pts:
            for imit in sorted({g["imitation_model"] for g in pts}):
                mine = [g for g in pts if g["imitation_model"] == imit]
                plt.scatter([g["support"] for g in mine], [g["value"] for g in mine], label=imit, marker="dot")
            plt.title("gap closed per task against coverage support")
            plt.xlabel("coverage support")
            plt.ylabel("gap closed")
        else:
            plt.title(gap_plot_note(rep["gap_closed"]))
        widget.refresh()

    def _plot_sweep(self, rep: dict) -> None:
        widget = self.query_one("#plot-sweep", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        pts = rep["sweep"]
        if len(pts) >= 2:
            plt.plot([p["tokens"] for p in pts], [p["value"] for p in pts], marker="dot")
            plt.title(f"{pts[0]['metric']} against imitation tokens")
            plt.xlabel("imitation tokens")
        else:
            plt.title("metric vs tokens: needs a sweep (`mirage finetune --tokens N1,N2,...`) scored")
        widget.refresh()

    # -- actions -----------------------------------------------------------------------------------
    def _current_view(self) -> str:
        active = self.query_one("#analysis-tabs", TabbedContent).active or "tab-table1"
        return active.removeprefix("tab-")

    def action_view(self, step: int) -> None:
        views = [v for v, _ in analysis_views.ANALYSIS_VIEWS]
        cur = views.index(self._current_view())
        self.query_one("#analysis-tabs", TabbedContent).active = f"tab-{views[(cur + step) % len(views)]}"

    def action_export(self, fmt: str) -> None:
        if self.report is None:
            return
        rep, view = self.report, self._current_view()
        self.run_core(
            analysis_views.save_export,
            rep,
            view,
            fmt,
            on_result=lambda path: self.notify(f"exported {view} to {path}", timeout=6),
            group="analysis-export",
        )

    def action_next_suite(self) -> None:
        if self.report is None or not self.suites:
            return
        cur = self.suites.index(self.report["suite"]) if self.report["suite"] in self.suites else -1
        self.args["suite"] = self.suites[(cur + 1) % len(self.suites)]
        self.load()

    def action_reload(self) -> None:
        self.load()
