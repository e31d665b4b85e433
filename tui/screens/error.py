"""The modal that shows an error which blocks what the user was doing: a title and one message."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ErrorModal(ModalScreen[None]):
    DEFAULT_CSS = """
    ErrorModal { align: center middle; }
    ErrorModal > Vertical { width: 72; max-width: 90%; height: auto; border: thick $error;
                            background: $surface; padding: 1 2; }
    ErrorModal #error-title { text-style: bold; color: $error; margin-bottom: 1; }
    ErrorModal #error-message { margin-bottom: 1; }
    ErrorModal Button { width: 100%; }
    """
    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__(id="error-modal")
        self.error_title = title
        self.error_message = message

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.error_title, id="error-title", markup=False)
            yield Static(self.error_message, id="error-message", markup=False)
            yield Button("Close (esc)", variant="error", id="error-close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()

    async def action_dismiss(self, result=None) -> None:  # binding target
        self.dismiss()
