"""Reading what the workspace holds: datasets (and subsets) of examples, suites of items.

Importers (core.data.ingest) write these tables; everything else reads them through here.
A subset is a dataset row of kind 'subset' whose examples are listed in `subset_members`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from core.errors import NotFound
from core.store.workspace import Workspace


def _decode(row: dict, *fields: str) -> dict:
    row = dict(row)
    for f in fields:
        if row.get(f) is not None:
            row[f] = json.loads(row[f])
    return row


# -- an example's conversation, stored once ------------------------------------------------------------
# `examples.user_text` / `assistant_text` hold the user and the assistant turns joined by a blank
# line (search, coverage and the Data screen read them). `examples.conversation` holds the
# conversation's *layout*: its turns in order, a user or assistant turn as its length in
# characters ({"role": "user", "n": 42}), a system turn with its text. Keeping the text once
# halves what an import writes.
# Rows written before the layout (and by hand) hold full turns with `content`: both read alike.
SEP = "\n\n"


def pack_conversation(conv: list[dict]) -> tuple[list[dict], str, str]:
    """(layout, user_text, assistant_text) of a [{role, content}] conversation."""
    layout, user, assistant = [], [], []
    for t in conv:
        role, content = t["role"], t["content"]
        if role == "user":
            user.append(content)
        elif role == "assistant":
            assistant.append(content)
        else:
            layout.append({"content": content, "role": role})
            continue
        layout.append({"n": len(content), "role": role})  # keys sorted: see normalise_conversation
    return layout, SEP.join(user), SEP.join(assistant)


def unpack_conversation(layout: list[dict] | str, user_text: str, assistant_text: str) -> list[dict]:
    """The [{role, content}] conversation from its stored layout and texts (see pack_conversation)."""
    if isinstance(layout, str):
        layout = json.loads(layout)
    texts = {"user": user_text or "", "assistant": assistant_text or ""}
    pos = {"user": 0, "assistant": 0}
    out = []
    for t in layout:
        if "content" in t:
            out.append({"role": t["role"], "content": t["content"]})
            continue
        role, n = t["role"], int(t["n"])
        start = pos[role]
        out.append({"role": role, "content": texts[role][start : start + n]})
        pos[role] = start + n + len(SEP)
    return out


def decode_item(row) -> dict:
    """An items row as a dict: `gold`, `choices` and `meta` decoded."""
    return _decode(row, "gold", "choices", "meta")


def decode_example(row) -> dict:
    """An examples row as a dict: `meta` decoded and, if selected, `conversation` rebuilt."""
    row = _decode(row, "meta")
    if row.get("conversation") is not None:
        row["conversation"] = unpack_conversation(row["conversation"], row.get("user_text"), row.get("assistant_text"))
    return row


# -- datasets ----------------------------------------------------------------------------------------
def _get_ready(ws: Workspace, table: str, noun: str, import_cmd: str, name: str) -> dict:
    """The ready row called `name` in `table`, or NotFound listing what there is."""
    rows = list(ws.db.query(f"select * from {table} where name = ? and status = 'ready'", [name]))
    if not rows:
        known = [r["name"] for r in ws.db.query(f"select name from {table} where status='ready' order by name")]
        hint = (
            f" (have: {', '.join(known)})"
            if known
            else f" (none imported yet: `mirage import {import_cmd} FILE --name NAME`)"
        )
        raise NotFound(f"no {noun} '{name}'{hint}")
    return _decode(rows[0], "meta")


def get_dataset(ws: Workspace, name: str) -> dict:
    return _get_ready(ws, "datasets", "dataset", "data", name)


def _examples_sql(ds: dict) -> tuple[str, list]:
    if ds["kind"] == "subset":
        return (
            "select e.* from examples e join subset_members m on m.example_id = e.id"
            " where m.subset_id = ? order by e.dataset_id, e.idx",
            [ds["id"]],
        )
    return "select * from examples where dataset_id = ? order by idx", [ds["id"]]


def iter_examples(ws: Workspace, name: str, *, columns: str = "*") -> Iterator[dict]:
    """Examples of a dataset or subset in a stable order; `conversation` and `meta` decoded."""
    ds = get_dataset(ws, name)
    sql, args = _examples_sql(ds)
    if columns != "*":
        cols = [c.strip() for c in columns.split(",")]
        if "conversation" in cols:  # rebuilt from the texts (pack_conversation)
            cols += [c for c in ("user_text", "assistant_text") if c not in cols]
        sql = sql.replace("select e.*", f"select {', '.join('e.' + c for c in cols)}", 1)
        sql = sql.replace("select *", f"select {', '.join(cols)}", 1)
    for row in ws.db.query(sql, args):
        yield decode_example(row)


def count_examples(ws: Workspace, name: str) -> tuple[int, int]:
    """(examples, tokens) of a dataset or subset."""
    ds = get_dataset(ws, name)
    if ds["kind"] == "subset":
        r = ws.db.execute(
            "select count(*), coalesce(sum(e.n_tokens), 0) from examples e join subset_members m"
            " on m.example_id = e.id where m.subset_id = ?",
            [ds["id"]],
        ).fetchone()
    else:
        r = ws.db.execute(
            "select count(*), coalesce(sum(n_tokens), 0) from examples where dataset_id = ?", [ds["id"]]
        ).fetchone()
    return int(r[0]), int(r[1])


def list_datasets(ws: Workspace) -> list[dict]:
    out = []
    for ds in ws.db.query("select * from datasets where status = 'ready' order by name"):
        ds = _decode(ds, "meta")
        n, tokens = count_examples(ws, ds["name"])
        out.append(
            {
                "name": ds["name"],
                "kind": ds["kind"],
                "examples": n,
                "tokens": tokens,
                # The import's count (content only, fast): `mirage finetune --dry-run` or
                # `subset create --base` count what a base trains on.
                "tokens_approx": True,
                "duplicates": ds["meta"].get("duplicates", 0),
                "format": ds["format"],
                "source": ds["source"],
                "created_at": ds["created_at"],
            }
        )
    return out


# -- suites ------------------------------------------------------------------------------------------
def get_suite(ws: Workspace, name: str) -> dict:
    return _get_ready(ws, "suites", "suite", "suite", name)


def iter_items(ws: Workspace, suite: str, *, task: str | None = None) -> Iterator[dict]:
    s = get_suite(ws, suite)
    sql = "select * from items where suite_id = ?"
    args: list = [s["id"]]
    if task:
        sql += " and task = ?"
        args.append(task)
    for row in ws.db.query(sql + " order by idx", args):
        yield decode_item(row)


def tasks(ws: Workspace, suite: str) -> list[dict]:
    s = get_suite(ws, suite)
    return [
        dict(r)
        for r in ws.db.query(
            "select task, count(*) as items from items where suite_id = ? group by task order by task", [s["id"]]
        )
    ]


def list_suites(ws: Workspace) -> list[dict]:
    out = []
    for s in ws.db.query("select * from suites where status = 'ready' order by name"):
        s = _decode(s, "meta")
        n = ws.db.execute("select count(*) from items where suite_id = ?", [s["id"]]).fetchone()[0]
        t = ws.db.execute("select count(distinct task) from items where suite_id = ?", [s["id"]]).fetchone()[0]
        outputs = _models_with_outputs(ws, s["id"])
        n_outputs = ws.db.execute(
            "select count(*) from generations g join items i on i.id = g.item_id where i.suite_id = ?", [s["id"]]
        ).fetchone()[0]
        out.append(
            {
                "name": s["name"],
                "kind": s["kind"],
                "items": n,
                "tasks": t,
                "outputs": n_outputs,  # stored outputs (generations) on the suite's items
                "model_count": len(outputs),
                "models": outputs,
                "format": s["format"],
                "source": s["source"],
                "created_at": s["created_at"],
            }
        )
    return out


def _models_with_outputs(ws: Workspace, suite_id: int) -> list[str]:
    return [
        r[0]
        for r in ws.db.execute(
            "select distinct g.model from generations g join items i on i.id = g.item_id"
            " where i.suite_id = ? order by g.model",
            [suite_id],
        ).fetchall()
    ]


def models_with_outputs(ws: Workspace, suite: str) -> list[str]:
    """The models with at least one stored output on `suite`, by name."""
    return _models_with_outputs(ws, get_suite(ws, suite)["id"])
