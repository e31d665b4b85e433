"""The command palette's provider, built from the action registry (app actions + the current screen's)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui import actions as actions_mod


class MirageCommands(Provider):
    def _candidates(self):
        screen = self.screen
        scope = getattr(screen, "NAME", "")
        keymap = getattr(self.app, "keymap", {})
        for a in actions_mod.REGISTRY.values():
            if not a.palette or a.scope not in ("app", scope):
                continue
            key = actions_mod.effective_key(a, keymap).split(",")[0]
            title = f"{a.description}" if a.scope == "app" else f"{scope.title()}: {a.description}"
            yield title, f"{a.id}  ({key})", partial(self._run, screen, a)

    async def _run(self, screen, action) -> None:
        # App actions carry the "app." namespace in their action string; screen actions run on the screen.
        await screen.run_action(action.action)

    async def discover(self) -> Hits:
        for title, help_text, run in self._candidates():
            yield DiscoveryHit(title, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._candidates():
            score = max(matcher.match(title), matcher.match(help_text) * 0.8)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)
