"""A modal with the human checks' figures: marks against each automatic metric, and blind-rating shares."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def agreement_table(rows: list[dict]) -> Table | Text:
    if not rows:
        return Text("No marks yet. On Compare, mark outputs with y (correct), x (incorrect), u (unsure).")
    t = Table(title="Your marks against automatic metrics (unsure left out)", title_justify="left")
    for col in ("metric", "n", "agreement", "Cohen's kappa"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows:
        kappa = "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}"
        t.add_row(r["metric"], str(r["n"]), f"{r['agreement']:.0%}", kappa)
    return t


def pairwise_table(rows: list[dict]) -> Table | Text:
    rows = [r for r in rows if r.get("n")]
    if not rows:
        return Text("No blind ratings yet. On Compare, press r to rate a model against the teacher.")
    t = Table(title="Blind pairwise rating: share rated equal to or better than the teacher", title_justify="left")
    for col in ("model", "teacher", "n", "≥ teacher", "95% (Wilson)", "better/tie/worse"):
        t.add_column(col, justify="left" if col in ("model", "teacher") else "right")
    for r in rows:
        t.add_row(
            r["model"],
            r["teacher"],
            str(r["n"]),
            f"{r['share']:.0%}",
            f"[{r['ci_low']:.0%}, {r['ci_high']:.0%}]",
            f"{r['wins']}/{r['ties']}/{r['losses']}",
        )
    return t


class AgreementModal(ModalScreen[None]):
    DEFAULT_CSS = """
    AgreementModal { align: center middle; }
    AgreementModal > Vertical { width: 90%; max-width: 110; height: auto; max-height: 90%;
                                border: thick $accent; background: $surface; padding: 0 1; }
    AgreementModal VerticalScroll { height: auto; max-height: 40; }
    AgreementModal Static { margin-bottom: 1; }
    """
    BINDINGS = [Binding("escape,i,q", "close", "Close")]

    def __init__(self, agreement: list[dict], pairwise: list[dict]) -> None:
        super().__init__()
        self.agreement = agreement
        self.pairwise = pairwise

    def compose(self) -> ComposeResult:
        with Vertical():
            with VerticalScroll():
                yield Static(agreement_table(self.agreement))
                yield Static(pairwise_table(self.pairwise))
            yield Static(Text("esc closes", style="dim"))

    def action_close(self) -> None:
        self.dismiss()
