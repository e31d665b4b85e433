"""The Data screen: datasets and suites, their examples and items, full-text search and a conversation view."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Input, Static

from tui import messages as msg
from tui.actions import Action
from tui.screens.base import EmptyState, MirageScreen
from tui.widgets.data.row_table import PAGE, RowTable
from tui.widgets.data.sources import SourceList, human

DETAIL_DELAY = 0.15  # s: the detail follows the cursor once it rests, not on every key repeat


def load_sources(ws, first: bool = False) -> dict:
    """Datasets and suites; with `first`, also the first page of the first source, so the screen's
    first rows need one worker round trip instead of two."""
    from core.data import browse
    from core.data.datasets import list_datasets, list_suites

    out = {"datasets": list_datasets(ws), "suites": list_suites(ws), "first": None}
    if first:
        pick = (
            ("dataset", out["datasets"][0]["name"])
            if out["datasets"]
            else ("suite", out["suites"][0]["name"])
            if out["suites"]
            else None
        )
        if pick:
            kind, name = pick
            out["first"] = {"kind": kind, "name": name, "rows": browse.window(ws, kind, name, 0, PAGE)}
    return out


class DataScreen(MirageScreen):
    NAME = "data"
    AUTO_FOCUS = "#data-table"
    ACTIONS = [
        Action("data.search", "slash", "Search", "search"),
        Action("data.clear", "escape", "Clear search", "clear_search", show=False),
        Action("data.sources", "s", "Sources", "focus_sources"),
        Action("data.table", "t", "Table", "focus_table", show=False),
        Action("data.detail", "d", "Detail", "focus_detail"),
        Action("data.reload", "r", "Reload", "reload"),
    ]

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self.source: dict | None = None  # the selected dataset/suite row, with "_kind"
        self.query_text = ""
        self.matches: int | None = None
        self._detail_timer: Timer | None = None
        self._shown_id: tuple[str, int] | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="data-layout"):
            with Vertical(id="data-sources"):
                yield SourceList(id="data-source-list")
            with Vertical(id="data-main"):
                yield Input(
                    placeholder="/ full-text search in this dataset or suite (enter runs, esc clears)", id="data-search"
                )
                yield RowTable(id="data-table")
                yield Static("", id="data-status", markup=False)
                # The detail pane (Markdown: the heaviest import of the screen) is mounted here once
                # the first rows are on screen, so it never delays the first useful frame.
                yield Vertical(id="data-detail")
        yield EmptyState(
            "No datasets or suites in this workspace yet.\n\n"
            "mirage import data FILE --name NAME      imitation data (ShareGPT, Alpaca, messages)\n"
            "mirage import suite FILE --name NAME     an eval suite (NQ-open, MMLU CSV, HumanEval)\n\n"
            "then press r to reload.",
            id="data-empty",
            markup=False,
        )

    def on_resize(self) -> None:
        # Below 100 columns the sources list is narrower (app.tcss): 34 of 80 cramped the table.
        self.set_class(self.size.width < 100, "-narrow")

    def on_mount(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")
        self.query_one("#data-layout").display = False
        self.query_one("#data-empty").display = False
        # After the first frame: the frame shows at once, the rows a moment later.
        self.call_after_refresh(self.run_core, load_sources, True, on_result=self._sources_loaded, group="sources")

    # -- sources ------------------------------------------------------------------------------------
    def action_reload(self) -> None:
        self.run_core(load_sources, on_result=self._sources_loaded, group="sources")

    def _sources_loaded(self, result: dict) -> None:
        datasets, suites, first = result["datasets"], result["suites"], result["first"]
        if first is not None:  # the first page came with the list: show it without another round trip
            kind, name = first["kind"], first["name"]
            self.source = next(s for s in (datasets if kind == "dataset" else suites) if s["name"] == name)
            self.source = {**self.source, "_kind": kind}
            self.query_one(RowTable).load(kind, name, total=self._total(self.source), first_rows=first["rows"])
        empty = not datasets and not suites
        self.query_one("#data-layout").display = not empty
        self.query_one("#data-empty").display = empty
        sources = self.query_one(SourceList)
        sources.fill(datasets, suites)
        if sources.highlighted_option is not None:
            self._select(sources.highlighted_option.id)

    def on_option_list_option_highlighted(self, event: SourceList.OptionHighlighted) -> None:
        if event.option.id and not event.option.id.startswith("-"):
            self._select(event.option.id)

    def on_option_list_option_selected(self, event: SourceList.OptionSelected) -> None:
        self.query_one(RowTable).focus()

    def _select(self, option_id: str) -> None:
        src = self.query_one(SourceList).sources.get(option_id)
        if src is None:
            return
        same = self.source is not None and (self.source["_kind"], self.source["name"]) == (src["_kind"], src["name"])
        self.source = src
        table = self.query_one(RowTable)
        if same and table.source_name == src["name"] and table.kind == src["_kind"]:
            self._update_status()
            return
        self.query_text = ""
        self.matches = None
        self.query_one("#data-search", Input).value = ""
        self._load_ids()

    @staticmethod
    def _total(src: dict) -> int:
        return src["items"] if src["_kind"] == "suite" else src["examples"]

    def _load_ids(self) -> None:
        """Show the selected source: all of it by position, or the matches of the current search."""
        from core.data import browse

        src = self.source
        if src is None:
            return
        kind, name, query = src["_kind"], src["name"], self.query_text
        if not query:
            self.matches = None
            self.workers.cancel_group(self, "ids")  # a search still running is moot
            self.query_one(RowTable).load(kind, name, total=self._total(src))
            self._update_status()
            return
        self.query_one("#data-status", Static).update(f"searching for “{query}”…")
        self.run_core(
            browse.search_ids,
            kind,
            name,
            query,
            on_result=lambda ids: self._ids_loaded(kind, name, query, ids),
            group="ids",
        )

    def _ids_loaded(self, kind: str, name: str, query: str, ids: list[int]) -> None:
        if (
            self.source is None
            or (self.source["_kind"], self.source["name"]) != (kind, name)
            or query != self.query_text
        ):
            return  # the user moved on
        self.matches = len(ids)
        self.query_one(RowTable).load(kind, name, ids=ids, query=query)
        self._update_status()

    # -- search -------------------------------------------------------------------------------------
    def action_search(self) -> None:
        self.query_one("#data-search", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "data-search":
            return
        self.query_text = event.value.strip()
        self._load_ids()
        self.query_one(RowTable).focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#data-search", Input)
        if self.query_text or search.value:
            search.value = ""
            self.query_text = ""
            self.matches = None
            self._load_ids()
        self.query_one(RowTable).focus()

    # -- focus --------------------------------------------------------------------------------------
    def action_focus_sources(self) -> None:
        self.query_one(SourceList).focus()

    def action_focus_table(self) -> None:
        self.query_one(RowTable).focus()

    def action_focus_detail(self) -> None:
        for pane in self.query("DetailPane"):
            pane.focus()

    async def _detail_pane(self):
        from tui.widgets.data.detail import DetailPane

        slot = self.query_one("#data-detail")
        if not slot.children:
            await slot.mount(DetailPane(id="data-detail-pane"))
        return slot.query_one(DetailPane)

    # -- rows and detail ----------------------------------------------------------------------------
    async def on_example_selected(self, event: msg.ExampleSelected) -> None:
        event.stop()
        self._update_status()
        await self._detail_pane()
        if self._detail_timer is not None:
            self._detail_timer.stop()
        if event.open:
            self._load_detail(event.kind, event.row_id, focus=True)
        else:
            self._detail_timer = self.set_timer(
                DETAIL_DELAY, lambda: self._load_detail(event.kind, event.row_id, focus=False)
            )

    def _load_detail(self, kind: str, row_id: int, *, focus: bool) -> None:
        from core.data.browse import record

        if self._shown_id == (kind, row_id):
            if focus:
                self.action_focus_detail()
            return

        async def show(rec: dict) -> None:
            pane = await self._detail_pane()
            await pane.show(kind, rec)
            self._shown_id = (kind, row_id)
            if focus:
                pane.focus()

        self.run_core(record, kind, row_id, on_result=show, group="detail")

    def _update_status(self) -> None:
        src = self.source
        status = self.query_one("#data-status", Static)
        if src is None:
            status.update("")
            return
        table = self.query_one(RowTable)
        n = table.total
        parts = [f"row {table.cursor + 1:,}/{n:,}" if n else "no rows"]
        if self.query_text:
            parts.append(f"{n:,} match{'es' if n != 1 else ''} for “{self.query_text}” (esc clears)")
        if src["_kind"] == "suite":
            parts += [
                f"suite {src['name']}",
                f"{src['items']:,} items",
                f"{src['tasks']} task" + ("s" if src["tasks"] != 1 else ""),
            ]
        else:
            parts += [f"dataset {src['name']}", f"{src['examples']:,} examples", f"~{human(src['tokens'])} tokens"]
        status.update(" · ".join(parts))
