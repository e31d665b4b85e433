"""Blind pairwise rating: the teacher's and another model's outputs as A and B, in a seeded random order."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from core.analysis import ratings
from core.analysis.marks import default_rater
from tui import actions as actions_mod
from tui.actions import Action
from tui.screens.base import CoreWorkers
from tui.widgets.compare.pane import GoldMarkdown

RATING_ACTIONS = actions_mod.register(
    # Keys of the rating mode (help lists them under compare); not in the palette, which runs
    # actions on the Compare screen itself.
    Action("compare.rate.a", "a", "A is better", "pick('A')", palette=False),
    Action("compare.rate.b", "b", "B is better", "pick('B')", palette=False),
    Action("compare.rate.tie", "t,equals_sign", "Tie", "pick('tie')", palette=False),
    Action("compare.rate.skip", "s", "Skip", "skip", palette=False),
    Action("compare.rate.close", "escape", "End rating", "close", palette=False),
)


def _result_line(res: dict) -> str:
    if not res or not res.get("n"):
        return "no ratings yet"
    return (
        f"{res['model']} rated ≥ {res['teacher']}: {res['share']:.0%}"
        f" [{res['ci_low']:.0%}, {res['ci_high']:.0%}] (Wilson 95%), n = {res['n']}"
        f"  ({res['wins']} better, {res['ties']} tie, {res['losses']} worse)"
    )


class RatingScreen(CoreWorkers, ModalScreen[None]):
    """Which side is the teacher is hidden; each pick is stored at once with the side shown."""

    DEFAULT_CSS = """
    RatingScreen { background: $background; }
    RatingScreen #rate-status { height: 1; background: $panel; padding: 0 1; }
    RatingScreen #rate-prompt { height: auto; max-height: 6; padding: 0 1; border-bottom: hkey $foreground 20%; }
    RatingScreen #rate-sides { height: 1fr; }
    RatingScreen .rate-side { width: 1fr; height: 1fr; border: round $foreground 25%; }
    RatingScreen .rate-side > Static.rate-head { height: 1; background: $panel; padding: 0 1; text-style: bold; }
    RatingScreen .rate-side VerticalScroll { height: 1fr; padding: 0 1; }
    RatingScreen.-narrow #rate-sides { layout: vertical; }
    """
    BINDINGS = actions_mod.bindings(RATING_ACTIONS) + [Binding("q", "close", show=False)]

    def __init__(self, suite: str, model: str, teacher: str, *, seed: int = 0, rater: str | None = None) -> None:
        super().__init__(id="rating")
        self.suite, self.model, self.teacher = suite, model, teacher
        self.seed = seed
        self.rater = rater or default_rater()
        self.queue: list[ratings.PairTask] = []
        self.pos = 0
        self.result: dict = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="rate-status")
        yield Static("", id="rate-prompt")
        with Horizontal(id="rate-sides"):
            for side in ("A", "B"):
                with Vertical(classes="rate-side"):
                    yield Static(f"Output {side}", classes="rate-head")
                    with VerticalScroll():
                        yield Static("", id=f"rate-{side.lower()}")
        yield Footer()

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < 100, "-narrow")
        self.query_one("#rate-status", Static).update("loading…")
        self.run_core(self._load, on_result=self._loaded, group="rating")

    def on_resize(self) -> None:
        self.set_class(self.app.size.width < 100, "-narrow")

    def _load(self, ws):
        queue = ratings.pairwise_queue(
            ws, self.suite, self.model, teacher=self.teacher, seed=self.seed, rater=self.rater
        )
        return queue, ratings.pairwise_result(ws, self.suite, self.model, teacher=self.teacher, rater=self.rater)

    def _loaded(self, value) -> None:
        self.queue, self.result = value
        self.pos = 0
        self._show()

    def _show(self) -> None:
        status = self.query_one("#rate-status", Static)
        head = f"Blind rating: {self.model} vs the teacher (sides hidden, seed {self.seed}) · "
        if self.pos >= len(self.queue):
            status.update(Text(head + "all rated · " + _result_line(self.result)))
            self.query_one("#rate-prompt", Static).update(
                Text("Nothing left to rate for this pair. esc returns to Compare.")
            )
            for side in ("a", "b"):
                self.query_one(f"#rate-{side}", Static).update("")
            return
        task = self.queue[self.pos]
        status.update(Text(head + f"{self.pos + 1}/{len(self.queue)} · " + _result_line(self.result)))
        self.query_one("#rate-prompt", Static).update(Text(task.prompt))
        self.query_one("#rate-a", Static).update(GoldMarkdown(task.a, []))
        self.query_one("#rate-b", Static).update(GoldMarkdown(task.b, []))

    def action_pick(self, choice: str) -> None:
        if self.pos >= len(self.queue):
            return
        task = self.queue[self.pos]
        self.pos += 1
        self.run_core(self._record, task, choice, on_result=self._recorded, group="rating-write", exclusive=False)
        self._show()

    def _record(self, ws, task, choice):
        ratings.record_rating(ws, task, choice, rater=self.rater)
        return ratings.pairwise_result(ws, self.suite, self.model, teacher=self.teacher, rater=self.rater)

    def _recorded(self, result: dict) -> None:
        self.result = result
        self._show()

    def action_skip(self) -> None:
        if self.pos < len(self.queue):
            self.pos += 1
            self._show()

    def action_close(self) -> None:
        self.dismiss()
