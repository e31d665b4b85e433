"""The Data screen: datasets and suites, their examples and items, search and a conversation view."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class DataScreen(MirageScreen):
    NAME = "data"

    def compose_body(self) -> ComposeResult:
        yield EmptyState("Data: import with `mirage import data FILE --name NAME`.", markup=False)
