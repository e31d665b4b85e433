"""The Coverage screen: which eval tasks and items the imitation data supports (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class CoverageScreen(MirageScreen):
    NAME = "coverage"

    def compose_body(self) -> ComposeResult:
        args = "".join(f"\n{k} = {v}" for k, v in self.args.items())
        yield EmptyState(
            "Coverage: which eval tasks and items the imitation data supports.\n\nNothing here yet — run `mirage coverage --data D --suite S`." + args,
            markup=False,
        )
