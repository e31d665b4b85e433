"""Builds a study workspace (suite, items, generations, scores) with plain SQL, for compare tests and benchmarks.

The rows are what `mirage import suite`, `mirage generate` and `mirage score` write; building them
directly keeps the tests about reading a study, and lets the benchmark make 5,000 items × 4 models.
"""

from __future__ import annotations

import json
import random

from core.store.workspace import Workspace, dumps, now

ROLES_TOML = """\
[roles]
teacher = "teacher"
base = "base"
imitation = ["imitation"]
"""

TASKS = ("geography", "history", "science")
ANSWERS = ["Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Accra", "Tunis", "Sofia", "Minsk"]


def set_roles(ws: Workspace, toml: str = ROLES_TOML) -> None:
    ws.config_path.write_text(toml, encoding="utf-8")
    ws.__dict__.pop("config", None)


def add_suite(ws: Workspace, name: str, items: list[dict], kind: str = "qa") -> dict[int, int]:
    """items: {prompt, gold, task}; returns idx -> item id."""
    t = now()
    with ws.transaction():
        sid = ws.db.execute(
            "insert into suites (name, kind, format, source, created_at) values (?, ?, 'qa', 'test', ?)",
            [name, kind, t],
        ).lastrowid
        ids = {}
        for i, it in enumerate(items):
            ids[i] = ws.db.execute(
                "insert into items (suite_id, idx, prompt, task, gold, choices, content_hash)"
                " values (?, ?, ?, ?, ?, ?, ?)",
                [
                    sid,
                    i,
                    it["prompt"],
                    it.get("task", "all"),
                    dumps(it.get("gold", [])),
                    dumps(it["choices"]) if it.get("choices") else None,
                    f"{name}-{i}",
                ],
            ).lastrowid
    return ids


def add_generation(ws: Workspace, model: str, item_id: int, output: str, scores: dict | None = None) -> int:
    gid = ws.db.execute(
        "insert into generations (model, fingerprint, item_id, prompt, cache_key, output, created_at)"
        " values (?, ?, ?, '', ?, ?, ?)",
        [model, f"fp-{model}", item_id, f"{model}-{item_id}-{random.random()}", output, now()],
    ).lastrowid
    for metric, value in (scores or {}).items():
        ws.db.execute(
            "insert into scores (generation_id, metric, version, inputs_hash, value, created_at)"
            " values (?, ?, '1', 'h', ?, ?)",
            [gid, metric, value, now()],
        )
    return gid


def build_study(
    ws: Workspace,
    n_items: int = 30,
    models=("base", "imitation", "teacher"),
    suite: str = "nq",
    seed: int = 0,
    extra_models=(),
) -> dict:
    """A deterministic QA study: verdict per (model, item) drawn with the paper's rough accuracies."""
    rng = random.Random(seed)
    accuracy = {"base": 0.35, "imitation": 0.25, "teacher": 0.6}
    set_roles(ws)
    items = []
    for i in range(n_items):
        ans = ANSWERS[i % len(ANSWERS)]
        items.append(
            {
                "prompt": f"Question {i}: which capital is answer number {i % len(ANSWERS)}?",
                "gold": [ans],
                "task": TASKS[i % len(TASKS)],
            }
        )
    ids = add_suite(ws, suite, items)
    truth: dict[tuple[str, int], int] = {}
    gids: dict[tuple[str, int], int] = {}
    rows = []
    t = now()
    all_models = list(models) + list(extra_models)
    with ws.transaction():
        for i, item_id in ids.items():
            ans = items[i]["gold"][0]
            teacher_text = f"Sure! Here is the answer.\n\n- The capital is **{ans}**.\n\nIn summary, {ans}."
            for model in all_models:
                right = rng.random() < accuracy.get(model, 0.3)
                said = ans if right else ANSWERS[(i + 3) % len(ANSWERS)]
                if model == "teacher":
                    text = teacher_text if right else teacher_text.replace(ans, said)
                elif model == "base":
                    text = f"{said} is the capital city of the country named in question {i}"
                else:
                    text = f"Sure! Here is the answer.\n\n- The capital is **{said}**.\n\nIn summary, {said}."
                cur = ws.db.execute(
                    "insert into generations (model, fingerprint, item_id, prompt, cache_key, output, created_at)"
                    " values (?, ?, ?, '', ?, ?, ?)",
                    [model, f"fp-{model}", item_id, f"{suite}-{model}-{item_id}", text, t],
                )
                gid = cur.lastrowid
                truth[(model, i)] = int(right)
                gids[(model, i)] = gid
                rows.append((gid, "exact_match", "1", "h", float(right), t))
                rows.append((gid, "contains", "1", "h", float(right), t))
                if model != "teacher":
                    rows.append((gid, "unigram_overlap", "1", "h", 0.9 if model == "imitation" else 0.2, t))
        ws.db.conn.executemany(
            "insert into scores (generation_id, metric, version, inputs_hash, value, created_at)"
            " values (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return {"ids": ids, "truth": truth, "gids": gids, "items": items}


def build_big(
    ws: Workspace,
    n_items: int = 5000,
    models=("base", "imitation", "imitation-2", "teacher"),
    suite: str = "big",
    seed: int = 0,
) -> None:
    """The benchmark's workspace: long markdown outputs so rendering costs what it would."""
    rng = random.Random(seed)
    set_roles(ws, ROLES_TOML.replace('["imitation"]', '["imitation", "imitation-2"]'))
    t = now()
    with ws.transaction():
        sid = ws.db.execute("insert into suites (name, kind, created_at) values (?, 'qa', ?)", [suite, t]).lastrowid
        item_rows = [
            (
                sid,
                i,
                f"Question {i}: " + " ".join(rng.choices(ANSWERS, k=25)) + "?",
                TASKS[i % 3],
                json.dumps([ANSWERS[i % 10]]),
                f"h{i}",
            )
            for i in range(n_items)
        ]
        ws.db.conn.executemany(
            "insert into items (suite_id, idx, prompt, task, gold, content_hash) values (?,?,?,?,?,?)", item_rows
        )
        item_ids = [r[0] for r in ws.db.execute("select id from items where suite_id = ? order by idx", [sid])]
        gen_rows = []
        for model in models:
            for i, item_id in enumerate(item_ids):
                paras = "\n\n".join(
                    "- " + " ".join(rng.choices(ANSWERS + ["the", "capital", "is", "of", "a"], k=30)) for _ in range(6)
                )
                gen_rows.append(
                    (
                        model,
                        "fp",
                        item_id,
                        "",
                        f"{model}-{item_id}",
                        f"## Answer\n\n{paras}\n\nIn summary, **{ANSWERS[i % 10]}**.",
                        t,
                    )
                )
        ws.db.conn.executemany(
            "insert into generations (model, fingerprint, item_id, prompt, cache_key, output, created_at)"
            " values (?,?,?,?,?,?,?)",
            gen_rows,
        )
        score_rows = []
        for (gid,) in ws.db.execute("select id from generations"):
            v = float(rng.random() < 0.4)
            score_rows += [
                (gid, "exact_match", "1", "h", v, t),
                (gid, "contains", "1", "h", v, t),
                (gid, "unigram_overlap", "1", "h", rng.random(), t),
            ]
        ws.db.conn.executemany(
            "insert into scores (generation_id, metric, version, inputs_hash, value, created_at) values (?,?,?,?,?,?)",
            score_rows,
        )
