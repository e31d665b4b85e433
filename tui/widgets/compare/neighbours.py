"""A modal listing an eval item's nearest imitation examples (from the coverage results)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _text(value) -> str:
    if isinstance(value, dict):
        for key in ("user_text", "prompt", "text", "user"):
            if value.get(key):
                return str(value[key])
        conv = value.get("conversation")
        if isinstance(conv, list):
            return " / ".join(str(t.get("content", "")) for t in conv if t.get("role") == "user")
    return str(value)


class NeighboursModal(ModalScreen[None]):
    DEFAULT_CSS = """
    NeighboursModal { align: center middle; }
    NeighboursModal > Vertical { width: 90%; max-width: 120; height: 80%; border: thick $accent;
                                 background: $surface; padding: 0 1; }
    NeighboursModal #nb-title { text-style: bold; height: auto; margin-bottom: 1; }
    NeighboursModal VerticalScroll { height: 1fr; }
    NeighboursModal .nb-hint { color: $text-muted; height: 1; }
    """
    BINDINGS = [Binding("escape,e,q", "close", "Close")]

    def __init__(self, prompt: str, neighbours: list[dict], note: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.neighbours = neighbours
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"Nearest imitation examples — {self.prompt[:200]}"), id="nb-title")
            with VerticalScroll():
                if not self.neighbours:
                    yield Static(
                        Text(
                            "No neighbours for this item: coverage has not been computed for this suite.\n"
                            f"{self.note}\nRun `mirage coverage --data NAME --suite SUITE` and reopen Compare."
                        )
                    )
                for n, nb in enumerate(self.neighbours, 1):
                    sim = nb.get("similarity", nb.get("score")) if isinstance(nb, dict) else None
                    head = f"{n}. " + (f"similarity {float(sim):.3f}" if sim is not None else "")
                    src = nb.get("dataset") or nb.get("source") if isinstance(nb, dict) else None
                    if src:
                        head += f"  [{src}]"
                    yield Static(Text(head, style="bold"))
                    yield Static(Text(_text(nb)[:1200]))
            yield Static("esc closes", classes="nb-hint")

    def action_close(self) -> None:
        self.dismiss()
