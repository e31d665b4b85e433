"""The Models screen: the registered models and their roles (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class ModelsScreen(MirageScreen):
    NAME = "models"

    def compose_body(self) -> ComposeResult:
        args = "".join(f"\n{k} = {v}" for k, v in self.args.items())
        yield EmptyState(
            "Models: the registered models and their roles.\n\nNothing here yet — run `mirage models add NAME --hf PATH`." + args,
            markup=False,
        )
