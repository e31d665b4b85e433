"""Which decoding a model's scores read: one per model, never a mix of two.

A model may have outputs on a suite under several decodings (greedy, then sampled at 0.7; another
`max_new_tokens`). Scores, aggregates and views read one decoding per model: the one a selector
names (`--decoding`), else the decoding of the model's latest output on the suite; within it, the
latest output of each item. A selector is `key=value[,key=value...]` (values as JSON where they
parse, e.g. `temperature=0.7,max_new_tokens=64`) or the start of a decoding's id (`decoding_id`).
A key a decoding does not have does not rule it out: recorded outputs have no decoding of ours
(`{}`), so a selector never drops the recorded teacher.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from core.errors import BadInput, NotFound
from core.store.db import select_in
from core.store.workspace import Workspace, dumps


def decoding_id(decoding: dict | str) -> str:
    """A short stable id of a decoding (8 hex digits of the sha256 of its stored JSON)."""
    text = decoding if isinstance(decoding, str) else dumps(decoding)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label(decoding: dict | str | None) -> str:
    """How a decoding is shown: `key=value ...` (the stop list left out), `recorded` for none of ours."""
    d = json.loads(decoding) if isinstance(decoding, str) else (decoding or {})
    if not d:
        return "recorded"
    parts = [f"{k}={d[k]}" for k in sorted(d) if k != "stop"]
    return " ".join(parts) + f" ({decoding_id(d)})"


def parse_selector(text: str | None) -> dict | str | None:
    """`key=value,...` as a dict, a bare id prefix as a str, None for none."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if "=" not in text:
        return text.lower()
    sel = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise BadInput("--decoding", f"'{part}' is not key=value (e.g. temperature=0.7)")
        try:
            sel[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            sel[key.strip()] = value.strip()
    return sel


def matches(decoding: dict, selector: dict | str | None) -> bool:
    if selector is None:
        return True
    if isinstance(selector, str):
        return decoding_id(decoding).startswith(selector)
    return all(k not in decoding or decoding[k] == v or str(decoding[k]) == str(v) for k, v in selector.items())


def select(
    ws: Workspace, suite_id: int, models: Iterable[str], selector: dict | str | None = None
) -> tuple[list[int], dict[str, str]]:
    """(generation ids, {model: decoding JSON}): each model's latest output per item under one
    decoding, chosen as the module says. Reads ids and decodings only (no output text)."""
    models = list(models)
    if not models:
        return [], {}
    rows = select_in(
        ws.db,
        "select g.id, g.model, g.item_id, g.decoding from generations g join items i on i.id = g.item_id"
        " where i.suite_id = ? and g.model in ({in}) order by g.id",
        models,
        before=[suite_id],
    )
    latest_decoding: dict[str, str] = {}
    parsed: dict[str, dict] = {}
    for _, model, _, dec in rows:
        if dec not in parsed:
            parsed[dec] = json.loads(dec or "{}")
        if matches(parsed[dec], selector):
            latest_decoding[model] = dec  # rows come in id order: the last one wins
    chosen: dict[tuple[str, int], int] = {}
    for gid, model, item_id, dec in rows:
        if latest_decoding.get(model) == dec:
            chosen[(model, item_id)] = gid
    return sorted(chosen.values()), latest_decoding


def require(decodings: dict[str, str], models: Iterable[str], selector, suite: str) -> None:
    """A one-line error when a model asked for has no output under the selected decoding."""
    missing = [m for m in models if m not in decodings]
    if missing and selector is not None:
        raise NotFound(f"no outputs of {', '.join(missing)} on suite '{suite}' under decoding {selector!r}")


def available(ws: Workspace, suite_id: int, model: str) -> list[dict]:
    """The decodings `model` has outputs under on the suite, latest first, with their counts."""
    rows = ws.db.execute(
        "select g.decoding, count(*), max(g.id) from generations g join items i on i.id = g.item_id"
        " where i.suite_id = ? and g.model = ? group by g.decoding order by max(g.id) desc",
        [suite_id, model],
    ).fetchall()
    return [{"decoding": json.loads(d or "{}"), "id": decoding_id(d), "outputs": n} for d, n, _ in rows]
