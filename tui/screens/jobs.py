"""The Jobs screen: background finetunes, generation, coverage and collection jobs (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult

from tui.screens.base import EmptyState, MirageScreen


class JobsScreen(MirageScreen):
    NAME = "jobs"

    def compose_body(self) -> ComposeResult:
        args = "".join(f"\n{k} = {v}" for k, v in self.args.items())
        yield EmptyState(
            "Jobs: background finetunes, generation, coverage and collection jobs.\n\nNothing here yet — run `mirage finetune --base MODEL --data D --detach`." + args,
            markup=False,
        )
