"""The footer: the focused context's key bindings on one line, clickable.

Textual's Footer builds a widget per key (a few dozen styled nodes), which was ~0.1 s of the
app's cold start here; this draws the same hints as one Static and redraws them when the
screen's bindings change (focus moves, keys remapped).
"""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static


class KeyHints(Static):
    DEFAULT_CSS = """
    KeyHints { dock: bottom; height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen) -> None:
        parts, seen = [], set()
        palette = None
        for _node, binding, enabled, _tooltip in screen.active_bindings.values():
            if binding.action in ("app.command_palette", "command_palette"):
                palette = binding
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            key = escape(self.app.get_key_display(binding))
            style = "b $accent" if enabled else "dim"
            parts.append(
                f"[@click=app.simulate_key({binding.key.split(',')[0]!r})][{style}]{key}[/] "
                f"{escape(binding.description)}[/]"
            )
        if palette is not None:
            parts.append(
                f"[@click=app.command_palette][b $accent]{escape(self.app.get_key_display(palette))}[/] Commands[/]"
            )
        self.update("  ".join(parts))
