"""The Compare screen: base, imitation and teacher outputs side by side with scores (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class CompareScreen(MirageScreen):
    NAME = "compare"

    def compose_body(self) -> ComposeResult:
        args = "".join(f"\n{k} = {v}" for k, v in self.args.items())
        yield EmptyState(
            "Compare: base, imitation and teacher outputs side by side with scores.\n\nNothing here yet — run `mirage compare --suite S --models A,B`." + args,
            markup=False,
        )
