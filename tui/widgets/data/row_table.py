"""A virtual table of examples or items: renders only visible lines and pages summaries from SQLite on demand.

Textual's DataTable builds every row up front (seconds and hundreds of MB at 100k rows), so this
is a Line API ScrollView: it knows how many rows there are, asks a worker for the summaries of the
window on screen (`core.data.browse.window` by position, or `core.data.browse.summaries` for the ids of a
search's matches), caches them and draws placeholders until they arrive.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tui import messages as msg
from tui.screens.base import CoreWorkers

_MATCH = re.compile(r"\[([^\[\]]*)\]")  # split() keeps the group: odd parts are matches
PAGE = 200  # rows fetched per request
SEARCH_PAGE = 50  # search results carry FTS snippets (~5 ms a row on long conversations)
CACHE_ROWS = 20_000  # summaries kept; beyond this the cache is dropped and refilled from what is visible


@dataclass(frozen=True)
class Column:
    title: str
    get: Callable[[dict], str]
    width: int = 0  # fixed cells; 0 = share of the remaining width
    share: int = 1
    align: str = "left"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _tokens(n) -> str:
    return f"{n:,}" if isinstance(n, int) else ""


DATASET_COLUMNS = [
    Column("#", lambda r: str(r["idx"] + 1), width=7, align="right"),
    # "~": the import's approximate count (content only); a finetune counts the rendered template.
    Column("~tokens", lambda r: _tokens(r["n_tokens"]), width=7, align="right"),
    Column("turns", lambda r: str(r["turns"] or ""), width=5, align="right"),
    Column("user", lambda r: _one_line(r["user"]), share=3),
    Column("assistant", lambda r: _one_line(r["assistant"]), share=3),
]


def _gold(r: dict) -> str:
    gold = r.get("gold") or []
    return " | ".join(str(g) for g in gold)


SUITE_COLUMNS = [
    Column("#", lambda r: str(r["idx"] + 1), width=6, align="right"),
    Column("task", lambda r: str(r["task"]), width=14),
    Column("prompt", lambda r: _one_line(r["prompt"]), share=4),
    Column("gold", _gold, share=2),
]


class RowTable(CoreWorkers, ScrollView, can_focus=True):
    """Rows of one source; `load(...)` replaces them. Posts `messages.ExampleSelected`."""

    COMPONENT_CLASSES = {"row-table--header", "row-table--cursor", "row-table--placeholder", "row-table--match"}
    DEFAULT_CSS = """
    RowTable { background: $surface; scrollbar-gutter: stable; overflow-x: hidden; }
    RowTable > .row-table--header { text-style: bold; background: $panel; }
    RowTable > .row-table--cursor { background: $accent 40%; text-style: bold; }
    RowTable:focus > .row-table--cursor { background: $accent; color: $text; }
    RowTable > .row-table--placeholder { color: $text-muted; }
    RowTable > .row-table--match { color: $warning; text-style: bold underline; }
    """
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown,space", "page(1)", "Page down", show=False),
        Binding("home,g", "jump(0)", "First", show=False),
        Binding("end,G", "jump(-1)", "Last", show=False),
        Binding("enter", "open", "Open", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = "dataset"
        self.search_query = ""  # (not `query`: that is Widget.query, the DOM query)
        self.source_name = ""
        self.ids: list[int] | None = None  # a search's matches; None when browsing by position
        self.total = 0
        self.columns: list[Column] = DATASET_COLUMNS
        self._cache: dict[int, dict] = {}  # position -> summary
        self._generation = 0  # bumps on load(): results for older ids are dropped
        self._fetch_scheduled = False

    # -- data ---------------------------------------------------------------------------------------
    def load(
        self,
        kind: str,
        name: str,
        *,
        total: int | None = None,
        ids: list[int] | None = None,
        first_rows: list[dict] | None = None,
        query: str = "",
        cursor: int = 0,
    ) -> None:
        """Browse `name` (a dataset or suite) by position, `total` rows; or, with `ids`, show those rows
        (a search's matches, `query` giving their snippets). `first_rows`: the first page, if fetched."""
        self.kind = kind
        self.source_name = name
        self.search_query = query
        self.columns = SUITE_COLUMNS if kind == "suite" else DATASET_COLUMNS
        self.ids = ids
        self.total = len(ids) if ids is not None else int(total or 0)
        self._cache = dict(enumerate(first_rows or []))
        self._generation += 1
        self.virtual_size = Size(self.size.width, self.total + 1)  # +1: the header line
        self.scroll_to(0, 0, animate=False, force=True)
        self.cursor = min(cursor, max(self.total - 1, 0))
        self.refresh()

    def row_at(self, pos: int) -> dict | None:
        return self._cache.get(pos)

    @property
    def current_id(self) -> int | None:
        """The SQL id of the row under the cursor (None until its page has arrived)."""
        if self.ids is not None:
            return self.ids[self.cursor] if 0 <= self.cursor < self.total else None
        row = self._cache.get(self.cursor)
        return row["id"] if row and "id" in row else None

    def _visible_range(self) -> range:
        top = int(self.scroll_offset.y)
        return range(top, min(top + self.size.height, self.total))

    def _schedule_fetch(self) -> None:
        if not self._fetch_scheduled:
            self._fetch_scheduled = True
            self.call_after_refresh(self._fetch_visible)

    def _fetch_visible(self) -> None:
        self._fetch_scheduled = False
        visible = self._visible_range()
        missing = [p for p in visible if p not in self._cache]
        if not missing:
            return
        page = SEARCH_PAGE if self.search_query else PAGE
        start = (missing[0] // page) * page
        end = min(((missing[-1] // page) + 1) * page, self.total)
        if len(self._cache) > CACHE_ROWS:
            self._cache = {p: r for p, r in self._cache.items() if p in visible}
        generation, kind = self._generation, self.kind
        from core.data import browse

        done = lambda rows: self._loaded(generation, start, end, rows)  # noqa: E731
        if self.ids is not None:
            self.run_core(browse.summaries, kind, self.ids[start:end], self.search_query, group="rows", on_result=done)
        else:
            self.run_core(browse.window, kind, self.source_name, start, end, group="rows", on_result=done)

    def _loaded(self, generation: int, start: int, end: int, rows: list[dict]) -> None:
        if generation != self._generation:
            return
        if self.ids is not None:
            by_id = {r["id"]: r for r in rows}
            found = [by_id.get(self.ids[pos]) for pos in range(start, end)]
        else:
            found = rows + [None] * (end - start - len(rows))  # rows deleted since the count
        for pos, r in zip(range(start, end), found):
            self._cache[pos] = r if r is not None else {"_missing": True}
        self.refresh()
        if self.cursor in range(start, end):
            self._announce(open=False)

    # -- drawing ------------------------------------------------------------------------------------
    def _widths(self, total: int) -> list[int]:
        gaps = len(self.columns) - 1
        fixed = sum(c.width for c in self.columns)
        shares = sum(c.share for c in self.columns if not c.width)
        rest = max(total - fixed - gaps, shares * 4)
        widths, left = [], rest
        flex = [c for c in self.columns if not c.width]
        for c in self.columns:
            if c.width:
                widths.append(c.width)
            else:
                w = rest * c.share // shares if c is not flex[-1] else left
                left -= w
                widths.append(w)
        return widths

    def _line(self, cells: list[str], widths: list[int], style: Style, match: Style | None = None) -> Strip:
        segs: list[Segment] = []
        for i, (text, w, col) in enumerate(zip(cells, widths, self.columns)):
            if col.align == "right" and cell_len(text) < w:
                text = " " * (w - cell_len(text)) + text
            if match is not None and "[" in text:
                # search snippets wrap matches in [ ]: show them highlighted, without the brackets
                parts = [Segment(t, style + match if k % 2 else style) for k, t in enumerate(_MATCH.split(text)) if t]
                segs.extend(Strip(parts).adjust_cell_length(w, style))
            else:
                segs.append(Segment(set_cell_size(text, w), style))
            if i < len(cells) - 1:
                segs.append(Segment(" ", style))
        return Strip(segs)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        widths = self._widths(width)
        base = self.rich_style
        if y == 0:  # header stays put: line 0 of the viewport, not of the content
            return self._line(
                [c.title for c in self.columns], widths, base + self.get_component_rich_style("row-table--header")
            ).extend_cell_length(width)
        pos = int(self.scroll_offset.y) + y - 1
        if pos >= self.total:
            return Strip.blank(width, base)
        row = self._cache.get(pos)
        style = base
        if pos == self.cursor:
            style = base + self.get_component_rich_style("row-table--cursor")
        if row is None:
            self._schedule_fetch()
            ph = style + self.get_component_rich_style("row-table--placeholder")
            return Strip([Segment(set_cell_size(f"{pos + 1:>6} …", width), ph)])
        if row.get("_missing"):
            return Strip([Segment(set_cell_size(f"{pos + 1:>6} (deleted)", width), style)])
        cells = [c.get(row) for c in self.columns]
        match = self.get_component_rich_style("row-table--match") if self.search_query else None
        return self._line(cells, widths, style, match).extend_cell_length(width, style)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, self.total + 1)

    # -- cursor -------------------------------------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        if not self.total:
            return
        top = int(self.scroll_offset.y)
        rows = max(self.size.height - 1, 1)
        # force: Textual ignores a scroll while it has not yet decided the scrollbar is needed (just
        # after load() set virtual_size), which left the cursor off screen and its page unfetched.
        if new < top:
            self.scroll_to(y=new, animate=False, force=True)
        elif new >= top + rows:
            self.scroll_to(y=new - rows + 1, animate=False, force=True)
        self.refresh()
        self._announce(open=False)

    def _announce(self, *, open: bool) -> None:
        rid = self.current_id
        if rid is not None:
            self.post_message(msg.ExampleSelected(self.kind, rid, open=open, position=self.cursor))

    def action_cursor(self, delta: int) -> None:
        if self.total:
            self.cursor = max(0, min(self.total - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(self.size.height - 2, 1))

    def action_jump(self, where: int) -> None:
        if self.total:
            self.cursor = 0 if where == 0 else self.total - 1

    def action_open(self) -> None:
        self._announce(open=True)

    def on_click(self, event) -> None:
        pos = int(self.scroll_offset.y) + event.y - 1
        if event.y >= 1 and 0 <= pos < self.total:
            self.cursor = pos
            if event.chain >= 2:
                self._announce(open=True)
