"""Who is who in a study: the teacher, base and imitation models of the config's `[roles]`, and
the models a side-by-side view shows by default."""

from __future__ import annotations

from core.data.datasets import models_with_outputs
from core.models import registry as models
from core.store.workspace import Workspace


def roles_of(ws: Workspace) -> dict[str, str]:
    """model name -> role ('teacher', 'base', 'imitation'): the config's `[roles]`; without
    imitation models there, the adapters finetuned from the base."""
    r = ws.config.roles
    imitation = list(r.imitation) or (models.adapters_of(ws, r.base) if r.base else [])
    out = {m: "imitation" for m in imitation}
    if r.base:
        out[r.base] = "base"
    if r.teacher:
        out[r.teacher] = "teacher"
    return out


def default_models(ws: Workspace, suite: str) -> list[str]:
    """base | imitation(s) | teacher when the config names them and they have outputs, else all (≤ 4)."""
    have = models_with_outputs(ws, suite)
    r = ws.config.roles
    roles = roles_of(ws)
    wanted = [r.base, *[m for m, role in roles.items() if role == "imitation"], r.teacher]
    picked = [m for m in wanted if m and m in have]
    if len(picked) >= 2:
        if len(picked) > 4:  # keep base and teacher, the newest imitations in between
            picked = [picked[0], *picked[1:-1][-2:], picked[-1]]
        return picked
    return have[:4]
