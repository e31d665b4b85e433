"""The action registry: every user action has a stable id, a default key and a description.

Bindings, the command palette, the footer and the help screen are all built from this one table,
and users remap keys by id in the workspace config:

    [keys]
    "data.search" = "ctrl+f"
    "app.goto.jobs" = "f3"

App-wide actions are declared below. A screen declares its own in its module, as a class
attribute `ACTIONS = [Action(...)]` on a `tui.screens.base.MirageScreen` subclass; the base class
registers them here and turns them into that screen's Textual `BINDINGS`, so nobody edits this
file to add a screen's keys. Ids are `<scope>.<verb>`: scope `app` for app-wide actions, the
screen name (`data`, `jobs`, ...) for a screen's.

Keys avoid what terminals and tmux swallow: ctrl+s/ctrl+q (XON/XOFF flow control), ctrl+b (tmux
prefix), ctrl+z (suspend); ctrl+c only quits.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    id: str  # stable, e.g. "data.search"; the key users remap in [keys]
    key: str  # default key(s), Textual syntax, comma-separated for several
    description: str  # shown in the footer, help screen and palette
    action: str  # the Textual action string run on the owner, e.g. "search" or "goto('data')"
    show: bool = True  # in the footer (every action is always in the help screen and palette)
    priority: bool = False  # fires even when a text input has focus (use sparingly)
    palette: bool = True  # offered in the command palette

    @property
    def scope(self) -> str:
        return self.id.split(".", 1)[0]

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.description, show=self.show, priority=self.priority, id=self.id)


REGISTRY: dict[str, Action] = {}


def register(*actions: Action) -> list[Action]:
    """Add actions to the registry (idempotent for the same definition); returns them."""
    for a in actions:
        old = REGISTRY.get(a.id)
        if old is not None and old != a:
            raise ValueError(f"action id {a.id!r} registered twice with different definitions")
        REGISTRY[a.id] = a
    return list(actions)


def bindings(actions: list[Action]) -> list[Binding]:
    return [a.binding() for a in actions]


def effective_key(action: Action, keymap: dict[str, str]) -> str:
    return keymap.get(action.id, action.key)


def by_scope(scope: str) -> list[Action]:
    return [a for a in REGISTRY.values() if a.scope == scope]


# The screens reachable from anywhere, in navigation order: (name, title, default key).
# Their keys show in the navigation bar rather than the footer.
NAV = [
    ("data", "Data", "1"),
    ("coverage", "Coverage", "2"),
    ("jobs", "Jobs", "3"),
    ("models", "Models", "4"),
    ("compare", "Compare", "5"),
    ("analysis", "Analysis", "6"),
]

APP_ACTIONS = register(
    *[Action(f"app.goto.{name}", key, title, f"app.goto('{name}')", show=False) for name, title, key in NAV],
    Action("app.help", "question_mark,f1", "Help", "app.help"),
    Action("app.palette", "ctrl+p", "Commands", "app.command_palette", show=False),
    Action("app.quit", "q", "Quit", "app.quit"),
)
