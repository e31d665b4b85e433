"""The help screen: every action in the registry with its current key, grouped by screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui import actions as actions_mod


def key_label(app, keys: str) -> str:
    return ", ".join(app.get_key_display(Binding(k.strip(), "")) for k in keys.split(","))


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 84; max-width: 95%; height: 90%; border: thick $primary;
                            background: $surface; padding: 0 1; }
    HelpScreen #help-title { text-style: bold; padding: 0 0 1 0; }
    HelpScreen DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("escape,question_mark,f1,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                "Keys — remap any of them by id in mirage.toml [keys]; esc closes", id="help-title", markup=False
            )
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        below = self.app.screen_stack[-2] if len(self.app.screen_stack) > 1 else None
        # Importing every screen module registers its actions (help is rare; the cost is fine here).
        self.app.load_all_screen_modules()
        keymap = self.app.keymap
        table = self.query_one(DataTable)
        table.add_columns("screen", "key", "action", "id")
        order = ["app"] + [name for name, _t, _k in actions_mod.NAV]
        scopes = order + sorted({a.scope for a in actions_mod.REGISTRY.values()} - set(order))
        for scope in scopes:
            for a in actions_mod.by_scope(scope):
                table.add_row(
                    scope, key_label(self.app, actions_mod.effective_key(a, keymap)), a.description, a.id, key=a.id
                )
        # Keys of the focused widget (table movement, scrolling...): not remappable, still listed.
        if below is not None:
            seen = set()
            for key, active in below.active_bindings.items():
                b = active.binding
                if b.id in actions_mod.REGISTRY or not b.description or b.system or (b.action, key) in seen:
                    continue
                seen.add((b.action, key))
                table.add_row("focused", key_label(self.app, key), b.description, "", key=f"local:{key}")
        table.focus()

    def action_close(self) -> None:
        self.dismiss()
