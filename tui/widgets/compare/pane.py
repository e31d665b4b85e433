"""One model's output on the Compare screen: a header (name, verdict, style, mark) over scrolling markdown."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markdown import Markdown
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from core.analysis.compare import VERDICT_SYMBOL, Pane
from core.analysis.marks import MARK_SYMBOL
from tui.widgets.compare.rendered import RenderedView

# Zero-width marks around gold spans survive markdown parsing untouched (Unicode Cf characters are
# neither whitespace nor punctuation to CommonMark) and take no cells, so wrapping is unchanged;
# the rendered segments are then restyled between them.
_START, _END = "\u2060", "\u200b"
GOLD_STYLE = Style(bold=True, underline=True, color="black", bgcolor="yellow")
VERDICT_STYLE = {1: "bold green", 0: "bold red", -1: "bold yellow"}
STYLE_LABELS = {
    "unigram_overlap": "overlap",
    "list_when_teacher_lists": "list",
    "summary_when_teacher_summarizes": "summary",
    "length_correlation": "len",
}


class GoldMarkdown:
    """Markdown with the gold answers' occurrences highlighted (bold + underline + yellow)."""

    def __init__(self, text: str, spans: list[tuple[int, int]]) -> None:
        parts, last = [], 0
        for a, b in spans:
            parts += [text[last:a], _START, text[a:b], _END]
            last = b
        parts.append(text[last:])
        self.markdown = Markdown("".join(parts), hyperlinks=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        inside = False
        for seg in console.render(self.markdown, options):
            text = seg.text
            if seg.control or (not inside and _START not in text and _END not in text):
                yield seg
                continue
            buf = ""
            for ch in text:
                if ch in (_START, _END):
                    if buf:
                        yield Segment(
                            buf,
                            (seg.style + GOLD_STYLE) if inside and seg.style else (GOLD_STYLE if inside else seg.style),
                        )
                    buf = ""
                    inside = ch == _START
                else:
                    buf += ch
            if buf:
                yield Segment(
                    buf, (seg.style + GOLD_STYLE) if inside and seg.style else (GOLD_STYLE if inside else seg.style)
                )


def pane_title(pane: Pane, *, active: bool = False) -> Text:
    """`▶ name (role)  ✗ wrong [exact_match]  overlap 0.90 list ✓  mark ✓`: symbols carry the meaning."""
    t = Text()
    t.append("▶ " if active else "  ", style="bold")
    t.append(pane.model, style="bold")
    if pane.role:
        t.append(f" ({pane.role})", style="dim")
    t.append("  ")
    if pane.output is None:
        t.append("– no output", style="dim")
        return t
    t.append(f"{pane.symbol} {pane.verdict_name}", style=VERDICT_STYLE[pane.verdict])
    for metric, value in pane.tool_scores.items():  # the tool's own verdict beside mirage's
        shown = ("✓" if value >= 0.5 else "✗") if value in (0.0, 1.0) else f"{value:.2f}"
        t.append(f"  {metric} {shown}", style="cyan")
    for metric, value in pane.style.items():
        label = STYLE_LABELS.get(metric, metric)
        if metric in ("list_when_teacher_lists", "summary_when_teacher_summarizes"):
            t.append(f"  {label} {'✓' if value >= 0.5 else '✗'}")
        else:
            t.append(f"  {label} {value:.2f}")
    if pane.mark:
        t.append(f"  mark {MARK_SYMBOL[pane.mark]} {pane.mark}", style="bold magenta")
    return t


def strip_label(pane: Pane) -> str:
    return f"{pane.model} {VERDICT_SYMBOL[pane.verdict] if pane.output is not None else '–'}"


class ModelPane(Vertical):
    """Header line + the output, which scrolls in place when focused (↑/↓, pgup/pgdn)."""

    DEFAULT_CSS = """
    ModelPane { width: 1fr; height: 1fr; border: round $foreground 25%; }
    ModelPane.-active { border: round $accent; }
    ModelPane > .pane-title { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap;
                              text-overflow: ellipsis; }
    ModelPane > RenderedView { height: 1fr; padding: 0 0 0 1; }
    """

    def __init__(self, index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.pane: Pane | None = None
        # Made here, not in compose, so `show` works before the pane has finished mounting.
        self.title = Static("", classes="pane-title")
        self.scroller = RenderedView(classes="pane-body")

    def compose(self) -> ComposeResult:
        yield self.title
        yield self.scroller

    def show(self, pane: Pane, *, active: bool) -> None:
        changed = self.pane is None or pane.generation_id != self.pane.generation_id or pane.output != self.pane.output
        self.pane = pane
        self.set_class(active, "-active")
        self.title.update(pane_title(pane, active=active), layout=False)
        if changed:
            if pane.output is None:
                self.scroller.set_renderable(
                    Text(
                        f"{pane.model} has no output on this item.\n"
                        f"Run `mirage generate --model {pane.model} --suite SUITE`.",
                        style="dim",
                    )
                )
            else:
                self.scroller.set_renderable(lambda: GoldMarkdown(pane.output, pane.gold_spans), key=pane.generation_id)

    def prerender(self, pane: Pane) -> bool:
        if pane.output is None:
            return False
        return self.scroller.prerender(lambda: GoldMarkdown(pane.output, pane.gold_spans), pane.generation_id)

    def refresh_title(self, active: bool) -> None:
        if self.pane is not None:
            self.set_class(active, "-active")
            self.title.update(pane_title(self.pane, active=active), layout=False)
