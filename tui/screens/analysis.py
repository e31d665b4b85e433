"""The Analysis screen: gap closed per task against coverage, scaling curves, convincing-but-wrong outputs (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class AnalysisScreen(MirageScreen):
    NAME = "analysis"

    def compose_body(self) -> ComposeResult:
        args = "".join(f"\n{k} = {v}" for k, v in self.args.items())
        yield EmptyState(
            "Analysis: gap closed per task against coverage, scaling curves, convincing-but-wrong outputs.\n\nNothing here yet — run `mirage score --suite S`." + args,
            markup=False,
        )
