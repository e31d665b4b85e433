"""Human spot-check marks on outputs (correct / incorrect / unsure) and how often each automatic
metric agrees with them (agreement, Cohen's kappa)."""

from __future__ import annotations

import getpass

from core.api import registry
from core.data.datasets import get_suite
from core.errors import BadInput, NotFound
from core.store.workspace import Workspace, now

MARKS = ("correct", "incorrect", "unsure")
MARK_SYMBOL = {"correct": "✓", "incorrect": "✗", "unsure": "?"}


def default_rater() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "me"


def set_mark(ws: Workspace, generation_id: int, mark: str | None, *, rater: str | None = None) -> None:
    rater = default_rater() if rater is None else rater
    if mark is None:
        ws.db.execute("delete from marks where generation_id = ? and rater = ?", [generation_id, rater])
        return
    if mark not in MARKS:
        raise BadInput("mark", f"unknown mark '{mark}' (known: {', '.join(MARKS)})")
    t = now()
    ws.db.execute(
        "insert into marks (generation_id, mark, rater, created_at, updated_at) values (?, ?, ?, ?, ?)"
        " on conflict (generation_id, rater) do update set mark = excluded.mark, updated_at = excluded.updated_at",
        [generation_id, mark, rater, t, t],
    )


def marks(ws: Workspace, suite: str, *, rater: str | None = None, model: str | None = None) -> list[dict]:
    """The marks on a suite's outputs (every rater's when `rater` is None), oldest first."""
    s = get_suite(ws, suite)
    sql = (
        "select m.generation_id, g.model, g.item_id, i.idx as item, m.mark, m.rater, m.updated_at from marks m"
        " join generations g on g.id = m.generation_id join items i on i.id = g.item_id"
        " where i.suite_id = ?"
    )
    args: list = [s["id"]]
    if rater is not None:
        sql += " and m.rater = ?"
        args.append(rater)
    if model is not None:
        sql += " and g.model = ?"
        args.append(model)
    return [dict(r) for r in ws.db.query(sql + " order by m.id", args)]


def output_generation(ws: Workspace, suite: str, model: str, item: int) -> int:
    """The generation a mark on (model, item) applies to: the latest one, as Compare shows it.

    `item` is the item's 0-based index in the suite (`idx`, as `mirage mark ls --json` prints it).
    """
    s = get_suite(ws, suite)
    row = ws.db.execute("select id from items where suite_id = ? and idx = ?", [s["id"], item]).fetchone()
    if row is None:
        (n,) = ws.db.execute("select count(*) from items where suite_id = ?", [s["id"]]).fetchone()
        raise BadInput("--item", f"suite '{suite}' has no item {item} (items 0..{n - 1})")
    gen = ws.db.execute(
        "select id from generations where item_id = ? and model = ? order by id desc limit 1", [row[0], model]
    ).fetchone()
    if gen is None:
        raise NotFound(f"'{model}' has no output on item {item} of suite '{suite}'")
    return gen[0]


def cohen_kappa(a: list[int], b: list[int]) -> float | None:
    """Cohen's kappa for two binary raters; None when chance agreement is total (kappa undefined).

    Written out rather than taken from scikit-learn: four lines, and core stays light to import.
    """
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def agreement(
    ws: Workspace, suite: str, *, rater: str | None = None, metrics: tuple[str, ...] | None = None
) -> list[dict]:
    """Per automatic metric (default: the registered ones marked `human_check`): how often it
    agrees with the human marks, 0/1 scores or thresholded at 0.5 (unsure marks left out)."""
    if metrics is None:
        metrics = registry.names(registry.metrics(human_check=True))
    s = get_suite(ws, suite)
    sql = (
        "select m.generation_id, m.mark, s.metric, s.value from marks m"
        " join generations g on g.id = m.generation_id join items i on i.id = g.item_id"
        " join scores s on s.generation_id = m.generation_id"
        " where i.suite_id = ? and m.mark != 'unsure' and s.value is not null"
    )
    args: list = [s["id"]]
    if rater is not None:
        sql += " and m.rater = ?"
        args.append(rater)
    latest: dict[tuple[str, int], tuple[int, float]] = {}
    for gid, mark, metric, value in ws.db.execute(sql + " order by s.id", args):
        if metric in metrics:
            latest[(metric, gid)] = (1 if mark == "correct" else 0, value)
    out = []
    for metric in metrics:
        pairs = [(h, 1 if v >= 0.5 else 0) for (mt, _), (h, v) in latest.items() if mt == metric]
        if not pairs:
            continue
        human = [h for h, _ in pairs]
        auto = [a for _, a in pairs]
        out.append(
            {
                "metric": metric,
                "n": len(pairs),
                "agreement": sum(h == a for h, a in pairs) / len(pairs),
                "kappa": cohen_kappa(human, auto),
            }
        )
    return out
