"""The Compare screen: one eval item's prompt and gold on top, each model's output in its own pane.

All the figures come from `core.analysis.compare.CompareView`, loaded once in a worker; a key press here is
an index lookup and a repaint. Writes (marks) go to the database from worker threads.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Static

from core.analysis import compare as study
from core.analysis import marks, ratings
from core.errors import BadInput
from tui.actions import Action
from tui.screens.base import EmptyState, MirageScreen
from tui.widgets.compare.pane import ModelPane, strip_label
from tui.widgets.compare.rating import RATING_ACTIONS  # noqa: F401  (registers the rating keys: help lists them)
from tui.widgets.compare.rendered import RenderedView

PATTERN_CYCLE = [None, *study.PATTERNS]
SORT_CYCLE = list(study.SORTS)
# As many panes side by side as get this many columns each; h/l scroll the rest into view.
MIN_PANE_WIDTH = 38
PREFETCH_AFTER_S = 0.12
PREFETCH_STEP_S = 0.02


def pane_window(n: int, active: int, first: int, width: int) -> tuple[int, int]:
    """(first, count): the panes shown side by side, `active` among them, moving as little as it can.

    All-or-one left a 120-column terminal with one of four panes (base, two imitation models,
    teacher) where three fit; a window that follows the active pane keeps h/l reaching every model.
    """
    count = max(1, min(n, width // MIN_PANE_WIDTH))
    first = min(max(first, active - count + 1), active)
    return max(0, min(first, n - count)), count


def _status(view: study.CompareView, row: study.ItemRow | None) -> Text:
    t = Text()
    t.append(f"{view.suite}", style="bold")
    if row is None:
        t.append(f" · 0/{view.n} items match · {view.filters.describe()}")
        return t
    t.append(f" · item {row.position + 1}/{row.total}")
    if row.total != view.n:
        t.append(f" of {view.n}", style="dim")
    t.append(f" · #{row.idx} {row.task}")
    t.append(f" · {view.filters.describe()}", style="cyan")
    if row.support is not None:
        t.append(f" · support {row.support:.2f}")
    t.append(f" · verdict by {view.verdict_metric or 'nothing scored (run `mirage score`)'}", style="dim")
    return t


def _top(row: study.ItemRow) -> Text:
    t = Text()
    t.append("Prompt  ", style="bold")
    t.append(row.prompt.strip())
    if row.choices:
        for n, choice in enumerate(row.choices):
            t.append(f"\n  {chr(65 + n)}. {choice}")
    t.append("\nGold    ", style="bold")
    if row.gold:
        for n, g in enumerate(row.gold):
            if n:
                t.append(" | ", style="dim")
            t.append(str(g), style="bold underline black on yellow")
    else:
        t.append("none (free-form prompt)", style="dim")
    return t


class CompareScreen(MirageScreen):
    NAME = "compare"
    ACTIONS = [
        Action("compare.next", "j", "Next item", "move(1)"),
        Action("compare.prev", "k", "Prev item", "move(-1)"),
        Action("compare.first", "g", "First item", "jump(0)", show=False),
        Action("compare.last", "G", "Last item", "jump(-1)", show=False),
        Action("compare.pane_next", "l,tab", "Next pane", "pane(1)"),
        Action("compare.pane_prev", "h,shift+tab", "Prev pane", "pane(-1)", show=False),
        Action("compare.disagree", "n", "Next disagreement", "disagree(1)"),
        Action("compare.disagree_prev", "N", "Prev disagreement", "disagree(-1)", show=False),
        Action("compare.suite", "s", "Next suite", "next_suite", show=False),
        Action("compare.task", "t", "Task filter", "cycle_task"),
        Action("compare.pattern", "v", "Verdict filter", "cycle_pattern"),
        Action("compare.search", "slash", "Search", "search"),
        Action("compare.sort", "o", "Sort", "cycle_sort"),
        Action("compare.clear", "escape", "Clear filters", "clear", show=False),
        Action("compare.neighbours", "e", "Imitation examples", "neighbours"),
        Action("compare.mark_correct", "y", "Mark ✓", "mark('correct')"),
        Action("compare.mark_incorrect", "x", "Mark ✗", "mark('incorrect')"),
        Action("compare.mark_unsure", "u", "Mark ?", "mark('unsure')", show=False),
        Action("compare.rate", "r", "Blind rating", "rate"),
        Action("compare.agreement", "i", "Agreement", "agreement"),
    ]
    DEFAULT_CSS = """
    /* One line each, ending in … when cut: Textual wraps a Static by its CSS, and height 1 then
       dropped the end of the line (the strip's h/l hint at 80 columns) without a sign. */
    CompareScreen #compare-status { height: 1; background: $panel; padding: 0 1; text-wrap: nowrap;
                                    text-overflow: ellipsis; }
    CompareScreen #compare-top { height: 7; padding: 0 0 0 1; border-bottom: hkey $foreground 20%; }
    CompareScreen.-narrow #compare-top { height: 5; }
    CompareScreen #compare-strip { height: 1; padding: 0 1; color: $text-muted; text-wrap: nowrap;
                                   text-overflow: ellipsis; }
    CompareScreen #compare-panes { height: 1fr; }
    CompareScreen #compare-search { dock: bottom; height: 3; display: none; }
    CompareScreen #compare-search.-open { display: block; }
    CompareScreen #compare-empty { height: 1fr; }
    """

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.view: study.CompareView | None = None
        self.position = 0
        self.active = 0
        self.first = 0  # the leftmost pane shown
        self.panes: list[ModelPane] = []
        self.narrow = False
        self._prefetch_timer = None
        self._prefetch_jobs: list | None = None

    # -- layout ------------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        yield Static("", id="compare-status")
        yield RenderedView(id="compare-top")
        yield Static("", id="compare-strip")
        yield Horizontal(id="compare-panes")
        yield EmptyState("Loading…", id="compare-empty", markup=False)
        yield Input(placeholder="search prompt, gold and outputs — enter applies, esc cancels", id="compare-search")

    def on_mount(self) -> None:
        self._show_empty("Loading the comparison…")
        self.load()

    def load(self) -> None:
        models = self.args.get("models") or None
        self.run_core(
            study.open_view,
            self.args.get("suite"),
            models,
            data=self.args.get("data"),
            on_result=self._loaded,
            group="compare-load",
            blocking=False,
        )

    def receive_args(self, **args: Any) -> None:
        super().receive_args(**args)
        self.load()

    def on_work_failed(self, message) -> None:
        # What to run next belongs on the screen itself, not only in a passing notification.
        message.stop()
        self._show_empty(getattr(message.error, "message", str(message.error)))
        self.app.show_error(message.error, blocking=False)

    def _show_empty(self, text: str) -> None:
        empty = self.query_one("#compare-empty", EmptyState)
        empty.update(text)
        empty.display = True
        for wid in ("#compare-top", "#compare-strip", "#compare-panes"):
            self.query_one(wid).display = False

    def _loaded(self, view: study.CompareView) -> None:
        # The view holds ~100k long-lived objects (outputs, prompts); left to the cyclic GC, every
        # full collection walks them all (~0.1 s, a visible stall every few keys). Freezing moves
        # what exists now out of its reach; the view is immutable apart from marks.
        import gc

        gc.collect()
        gc.freeze()
        self.view = view
        self.position = 0
        self.active = min(self.active, len(view.models) - 1)
        container = self.query_one("#compare-panes", Horizontal)
        container.remove_children()
        # No ids: the old panes are removed only after this handler returns, so reloading (another
        # suite) with the same ids raised DuplicateIds and left the screen on "Loading…".
        self.panes = [ModelPane(k) for k in range(len(view.models))]
        container.mount_all(self.panes)
        self.call_after_refresh(self._layout_and_render)

    def _layout_and_render(self) -> None:
        self._apply_layout()
        self.render_item()
        self._focus_active()

    def on_resize(self) -> None:
        if self.view is not None:
            self._apply_layout()

    def _apply_layout(self) -> None:
        if self.view is None:
            return
        self.first, count = pane_window(len(self.panes), self.active, self.first, self.size.width)
        self.narrow = count < len(self.panes)
        self.set_class(self.narrow, "-narrow")
        for pane in self.panes:
            pane.display = self.first <= pane.index < self.first + count

    def _focus_active(self) -> None:
        if self.panes and not self.query_one("#compare-search", Input).has_focus:
            self.panes[self.active].scroller.focus(scroll_visible=False)

    # -- rendering ---------------------------------------------------------------------------------
    def render_item(self) -> None:
        view = self.view
        if view is None:
            return
        empty = self.query_one("#compare-empty", EmptyState)
        if not len(view.order):
            self.query_one("#compare-status", Static).update(_status(view, None), layout=False)
            self._show_empty(
                f"No items match: {view.filters.describe()}.\n\n"
                "esc clears the filters; t task, v verdict pattern, / text."
            )
            self.query_one("#compare-status").display = True
            return
        if empty.display:
            empty.display = False
            for wid in ("#compare-top", "#compare-strip", "#compare-panes"):
                self.query_one(wid).display = True
            self._apply_layout()
        self.position = max(0, min(self.position, len(view.order) - 1))
        row = view.row(self.position)
        self.row = row
        self.query_one("#compare-status", Static).update(_status(view, row), layout=False)
        self.query_one("#compare-top", RenderedView).set_renderable(lambda: _top(row), key=row.item_id)
        self._render_strip(row)
        for pane, data in zip(self.panes, row.panes):
            pane.show(data, active=pane.index == self.active)
        self._schedule_prefetch()

    def _schedule_prefetch(self) -> None:
        # Render the items either side once the user pauses, one view per tick so a key pressed
        # meanwhile waits at most one render; a held key keeps postponing it.
        if self._prefetch_timer is not None:
            self._prefetch_timer.stop()
        self._prefetch_jobs = None
        self._prefetch_timer = self.set_timer(PREFETCH_AFTER_S, self._prefetch_step)

    def _prefetch_plan(self) -> list:
        view, jobs = self.view, []
        top = self.query_one("#compare-top", RenderedView)
        for pos in (self.position + 1, self.position - 1):
            if view is not None and 0 <= pos < len(view.order):
                row = view.row(pos)
                jobs.append(lambda row=row: top.prerender(lambda: _top(row), row.item_id))
                for pane, data in zip(self.panes, row.panes):
                    if pane.display:
                        jobs.append(lambda pane=pane, data=data: pane.prerender(data))
        return jobs

    def _prefetch_step(self) -> None:
        self._prefetch_timer = None
        if self._prefetch_jobs is None:
            self._prefetch_jobs = self._prefetch_plan()
        while self._prefetch_jobs:
            if self._prefetch_jobs.pop(0)():  # painted something: yield to the user until the next tick
                break
        if self._prefetch_jobs:
            self._prefetch_timer = self.set_timer(PREFETCH_STEP_S, self._prefetch_step)
        else:
            # Idle now: run the full collection here, so it does not land on a key press (it
            # cost ~50 ms every ~10 items). Nothing is frozen here: objects frozen while alive
            # and later dropped in a cycle would never be freed.
            import gc

            gc.collect()

    def _render_strip(self, row: study.ItemRow) -> None:
        t = Text()
        if self.narrow:  # first, so it is not the part cut off at 80 columns
            t.append("h/l", style="bold")
        for k, pane in enumerate(row.panes):
            shown = self.panes[k].display if k < len(self.panes) else True
            style = "reverse bold" if k == self.active else ("" if shown else "dim")
            t.append(f" {strip_label(pane)} ", style=style)
            t.append(" ")
        self.query_one("#compare-strip", Static).update(t, layout=False)

    # -- actions -----------------------------------------------------------------------------------
    def action_move(self, step: int) -> None:
        if self.view is None or not len(self.view.order):
            return
        new = max(0, min(self.position + step, len(self.view.order) - 1))
        if new != self.position:
            self.position = new
            self.render_item()

    def action_jump(self, where: int) -> None:
        if self.view is None or not len(self.view.order):
            return
        self.position = where if where >= 0 else len(self.view.order) - 1
        self.render_item()

    def action_pane(self, step: int) -> None:
        if self.view is None or not self.panes:
            return
        self.active = (self.active + step) % len(self.panes)
        self._apply_layout()
        if len(self.view.order):
            for pane in self.panes:
                pane.refresh_title(pane.index == self.active)
            self._render_strip(self.row)
        self._focus_active()

    def action_disagree(self, step: int) -> None:
        if self.view is None:
            return
        pos = self.view.next_disagreement(self.position, step)
        if pos is None:
            self.notify("No item here where the models' verdicts differ.", timeout=3)
            return
        self.position = pos
        self.render_item()

    def _refilter(self, **changes: Any) -> None:
        if self.view is None:
            return
        f = self.view.filters
        new = study.Filters(task=f.task, pattern=f.pattern, text=f.text, sort=f.sort)
        for k, v in changes.items():
            setattr(new, k, v)
        try:
            self.view.apply(new)
        except BadInput as e:  # e.g. a pattern that needs roles the view lacks
            self.app.show_error(e, blocking=False)
            return
        self.position = 0
        self.render_item()

    def action_next_suite(self) -> None:
        # Opened without --suite the screen shows one suite (core's default_suite); without this
        # key the other suites were out of reach from the TUI.
        if self.view is None:
            return
        self.run_core(study.suites_with_outputs, on_result=self._go_next_suite, group="compare-suites")

    def _go_next_suite(self, suites: list[str]) -> None:
        if self.view is None or len(suites) < 2:
            self.notify("no other suite has outputs", timeout=4)
            return
        cur = suites.index(self.view.suite) if self.view.suite in suites else -1
        # The models asked for belong to the suite they were asked for; the next one uses its roles.
        self.args.update(suite=suites[(cur + 1) % len(suites)], models=None)
        self._show_empty("Loading the comparison…")
        self.load()

    def action_cycle_task(self) -> None:
        if self.view is None:
            return
        cycle = [None, *self.view.task_names()]
        cur = cycle.index(self.view.filters.task) if self.view.filters.task in cycle else 0
        self._refilter(task=cycle[(cur + 1) % len(cycle)])

    def action_cycle_pattern(self) -> None:
        if self.view is None:
            return
        cur = PATTERN_CYCLE.index(self.view.filters.pattern)
        # Skip the patterns this view cannot evaluate (missing roles) rather than stopping on an error.
        for step in range(1, len(PATTERN_CYCLE) + 1):
            cand = PATTERN_CYCLE[(cur + step) % len(PATTERN_CYCLE)]
            try:
                if cand is not None:
                    self.view.pattern_mask(cand)
            except BadInput:
                continue
            self._refilter(pattern=cand)
            return

    def action_cycle_sort(self) -> None:
        if self.view is None:
            return
        cur = SORT_CYCLE.index(self.view.filters.sort)
        self._refilter(sort=SORT_CYCLE[(cur + 1) % len(SORT_CYCLE)])

    def action_search(self) -> None:
        if self.view is None:
            return
        box = self.query_one("#compare-search", Input)
        box.value = self.view.filters.text or ""
        box.add_class("-open")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "compare-search":
            return
        event.stop()
        event.input.remove_class("-open")
        self._refilter(text=event.value.strip() or None)
        self._focus_active()

    def action_clear(self) -> None:
        box = self.query_one("#compare-search", Input)
        if box.has_class("-open"):
            box.remove_class("-open")
            self._focus_active()
            return
        self._refilter(task=None, pattern=None, text=None, sort="index")

    def action_mark(self, mark: str) -> None:
        view = self.view
        if view is None or not len(view.order):
            return
        gid = view.generation_at(self.position, self.active)
        if gid is None:
            self.notify(f"{view.models[self.active]} has no output here to mark.", timeout=3)
            return
        new = None if view.marks.get(gid) == mark else mark  # the same key again clears it
        view.remember_mark(gid, new)
        self.run_core(marks.set_mark, gid, new, rater=view.rater, group="compare-mark", exclusive=False, blocking=False)
        self.render_item()

    def action_neighbours(self) -> None:
        view = self.view
        if view is None or not len(view.order):
            return
        from tui.widgets.compare.neighbours import NeighboursModal

        item_id = int(view.item_ids[view.order[self.position]])
        prompt = self.row.prompt

        def show(nbs: list[dict]) -> None:
            self.app.push_screen(NeighboursModal(prompt, nbs, view.support_note))

        self.run_core(
            study.item_neighbours, view.suite, item_id, data=view.data, on_result=show, group="compare-neighbours"
        )

    def action_rate(self) -> None:
        view = self.view
        if view is None:
            return
        from tui.widgets.compare.rating import RatingScreen

        teacher = view.teacher_row
        if teacher is None:
            self.notify(
                "Blind rating needs the teacher in the view: set [roles] teacher in mirage.toml"
                " or pass --models with it.",
                severity="warning",
                timeout=6,
            )
            return
        model_row = (
            self.active
            if self.active != teacher
            else next(
                (k for k in range(len(view.models)) if view.role(view.models[k]) == "imitation"),
                next(k for k in range(len(view.models)) if k != teacher) if len(view.models) > 1 else None,
            )
        )
        if model_row is None:
            return
        self.app.push_screen(RatingScreen(view.suite, view.models[model_row], view.models[teacher], rater=view.rater))

    def action_agreement(self) -> None:
        view = self.view
        if view is None:
            return
        from tui.widgets.compare.agreement import AgreementModal

        teacher = view.models[view.teacher_row] if view.teacher_row is not None else None

        def figures(ws):
            rows = marks.agreement(ws, view.suite, rater=view.rater)
            return rows, ratings.results(ws, view.suite, view.models, teacher=teacher, rater=view.rater)

        self.run_core(figures, on_result=lambda r: self.app.push_screen(AgreementModal(*r)), group="compare-agreement")
