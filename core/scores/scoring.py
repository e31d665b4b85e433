"""Scores for every stored output: factuality (QA, MC, code, judge) and style against the teacher, cached.

`score_suite` computes what is missing or stale and stores it in `scores` (one row per
generation × metric: the version of the metric and a hash of its inputs — output, gold, the
teacher's output for style, the judge model and prompt — so a row is recomputed exactly when one
of those changes). `aggregate` turns stored scores into per model × task × metric means with
bootstrap intervals; `gap_closed`, `compare`, `convincing_but_wrong` and `item_scores` are the
analyses the report and the Compare / Analysis screens read.

Which output of a model on an item: its latest generation (highest id), whatever the decoding.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterable

from core.api import metrics as M
from core.data.datasets import get_suite
from core.errors import BadInput, NotFound
from core.runtime.progress import Progress, Work, check_cancel
from core.scores import stats
from core.store.workspace import Workspace, dumps, now

# Bump a metric's version when its definition changes: its stored scores are then recomputed.
VERSIONS = {
    "exact_match": "3",
    "f1": "3",
    "contains": "1",  # 2: whole-output match, bold rule; 3: restatement rule
    "mc_accuracy": "1",
    "mc_accuracy_loglik": "1",
    "pass@1": "1",
    "uses_list": "1",
    "ends_with_summary": "1",
    "markdown_structure": "1",
    "stock_phrases": "1",
    "length_words": "1",
    "list_when_teacher_lists": "1",
    "summary_when_teacher_summarizes": "1",
    "unigram_overlap": "1",
    "embedding_similarity": "1",
    "judge_correct": "1",
    "judge_claims": "1",
    "judge_preference": "1",
    "judge_authoritative": "1",
}
FACTUALITY = {"qa": ("exact_match", "f1", "contains"), "mc": ("mc_accuracy",), "code": ("pass@1",), "prompts": ()}
# The metric "right or wrong" is read from, per suite kind (gap closed, transitions, convincing-but-wrong).
PRIMARY = {"qa": "exact_match", "mc": "mc_accuracy", "code": "pass@1", "prompts": "judge_claims"}
OWN_STYLE = ("uses_list", "ends_with_summary", "markdown_structure", "stock_phrases", "length_words")
TEACHER_STYLE = ("list_when_teacher_lists", "summary_when_teacher_summarizes", "unigram_overlap")
JUDGE = ("judge_correct", "judge_claims", "judge_preference", "judge_authoritative")
# Table 2 of the paper, plus the extra style measures.
TABLE2 = (
    "list_when_teacher_lists",
    "summary_when_teacher_summarizes",
    "unigram_overlap",
    "length_correlation",
    "uses_list",
    "ends_with_summary",
    "markdown_structure",
    "stock_phrases",
    "embedding_similarity",
    "judge_authoritative",
    "judge_preference",
)
TABLE1 = (
    "exact_match",
    "f1",
    "contains",
    "mc_accuracy",
    "mc_accuracy_loglik",
    "pass@1",
    "judge_correct",
    "judge_claims",
)


def inputs_hash(metric: str, *parts) -> str:
    h = hashlib.sha256(dumps([metric, VERSIONS[metric], *parts]).encode())
    return h.hexdigest()[:32]


# -- what to score ---------------------------------------------------------------------------------
def models_with_outputs(ws: Workspace, suite: str) -> list[str]:
    s = get_suite(ws, suite)
    return [
        r[0]
        for r in ws.db.execute(
            "select distinct g.model from generations g join items i on i.id = g.item_id"
            " where i.suite_id = ? order by g.model",
            [s["id"]],
        ).fetchall()
    ]


def latest_generations(ws: Workspace, suite: str, models: Iterable[str]) -> list[dict]:
    """The latest generation of each model on each item of the suite, with the item's fields."""
    s = get_suite(ws, suite)
    models = list(models)
    if not models:
        return []
    ph = ",".join("?" * len(models))
    rows = ws.db.query(
        f"""select g.id as generation_id, g.model, g.output, g.item_id, i.idx, i.task, i.prompt as item_prompt,
                   i.gold, i.choices, i.tests, i.entry_point, i.meta as item_meta
            from generations g join items i on i.id = g.item_id
            where g.id in (select max(g2.id) from generations g2 join items i2 on i2.id = g2.item_id
                           where i2.suite_id = ? and g2.model in ({ph}) group by g2.item_id, g2.model)
            order by i.idx, g.model""",
        [s["id"], *models],
    )
    out = []
    for r in rows:
        r = dict(r)
        r["gold"] = json.loads(r["gold"] or "[]")
        r["choices"] = json.loads(r["choices"]) if r["choices"] else None
        r["item_meta"] = json.loads(r["item_meta"] or "{}")
        out.append(r)
    return out


def resolve_roles(
    ws: Workspace, suite: str, models: list[str] | None = None, teacher: str | None = None
) -> tuple[list[str], str | None]:
    """(models to score, teacher): explicit names, else every model with outputs on the suite and
    the configured teacher role if it has outputs there."""
    have = models_with_outputs(ws, suite)
    if not have:
        raise NotFound(
            f"no outputs on suite '{suite}' yet: run `mirage generate --model NAME --suite {suite}`"
            f" or `mirage import outputs FILE --suite {suite} --model NAME`"
        )
    if models:
        missing = [m for m in models if m not in have]
        if missing:
            raise NotFound(
                f"no outputs of {', '.join(missing)} on suite '{suite}'"
                f" (have: {', '.join(have) or 'none'}; run `mirage generate`)"
            )
    else:
        models = list(have)
    if teacher is None:
        teacher = ws.config.roles.teacher if ws.config.roles.teacher in have else None
    elif teacher not in have:
        raise NotFound(f"no outputs of teacher '{teacher}' on suite '{suite}' (have: {', '.join(have) or 'none'})")
    if teacher and teacher not in models:
        models = models + [teacher]
    return models, teacher


# -- per-output computations ---------------------------------------------------------------------
def _qa(g: dict) -> dict:
    s = M.qa_scores(g["output"], g["gold"])
    meta = {"extracted": s["extracted"], "rule": s["rule"]}
    return {"exact_match": (s["exact_match"], meta), "f1": (s["f1"], meta), "contains": (s["contains"], {})}


def _mc(g: dict) -> dict:
    letter, rule = M.extract_letter(g["output"], g["choices"])
    gold = (g["gold"] or [None])[0]
    return {
        "mc_accuracy": (
            float(letter is not None and letter == str(gold).strip().upper()),
            {"letter": letter, "rule": rule, "gold": gold},
        )
    }


def _own_style(out: str) -> dict:
    kinds = M.markdown_elements(out)
    phrases = M.stock_phrases(out)
    return {
        "uses_list": (float(M.has_list(out)), {}),
        "ends_with_summary": (float(M.ends_with_summary(out)), {}),
        "markdown_structure": (float(bool(kinds)), {"elements": kinds}),
        "stock_phrases": (float(bool(phrases)), {"phrases": phrases}),
        "length_words": (float(M.length_words(out)), {}),
    }


def _teacher_style(out: str, teacher_out: str, teacher: str) -> dict:
    t_list = M.has_list(teacher_out)
    t_sum = M.ends_with_summary(teacher_out)
    res = {"unigram_overlap": (M.unigram_overlap(out, teacher_out), {"teacher": teacher})}
    # Defined only on items where the teacher did it: null (not 0) elsewhere, left out of means.
    res["list_when_teacher_lists"] = (
        (float(M.has_list(out)), {"teacher": teacher})
        if t_list
        else (None, {"teacher": teacher, "not_applicable": "teacher used no list"})
    )
    res["summary_when_teacher_summarizes"] = (
        (float(M.ends_with_summary(out)), {"teacher": teacher})
        if t_sum
        else (None, {"teacher": teacher, "not_applicable": "teacher ended without a summary"})
    )
    return res


# -- scoring ----------------------------------------------------------------------------------------
def _stored(ws: Workspace, gen_ids: list[int]) -> dict[tuple[int, str], tuple[str, bool]]:
    """(generation_id, metric) -> (inputs_hash, is_error) of the rows already stored."""
    out = {}
    for i in range(0, len(gen_ids), 900):
        chunk = gen_ids[i : i + 900]
        for gid, metric, h, value, meta in ws.db.execute(
            f"select generation_id, metric, inputs_hash, value, meta from scores"
            f" where generation_id in ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall():
            err = value is None and '"error"' in (meta or "")
            out[(gid, metric)] = (h, err)
    return out


def _write(ws: Workspace, rows: list[tuple]) -> None:
    """Store (generation_id, metric, inputs_hash, value, meta) rows, replacing stale ones."""
    if not rows:
        return
    t = now()
    with ws.transaction():
        ws.db.conn.executemany(
            "delete from scores where generation_id = ? and metric = ?", [(r[0], r[1]) for r in rows]
        )
        ws.db.conn.executemany(
            "insert into scores (generation_id, metric, version, inputs_hash, value, meta, created_at)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            [(gid, m, VERSIONS[m], h, v, dumps(meta), t) for gid, m, h, v, meta in rows],
        )


def score_suite(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    judge: str | None = None,
    embed: bool = False,
    loglik: bool = False,
    workers: int = 2,
    code_timeout: float = 10.0,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Compute and store every missing or stale score of the suite's outputs; return counts.

    Yields Progress. Cheap text metrics are computed inline; code runs in the sandbox (`workers`
    in parallel); the judge and embeddings only when asked.
    """
    s = get_suite(ws, suite)
    kind = s["kind"]
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens = latest_generations(ws, suite, models)
    teacher_out = {g["item_id"]: g["output"] for g in gens if g["model"] == teacher}
    stored = _stored(ws, [g["generation_id"] for g in gens])
    counts = {"computed": 0, "cached": 0, "outputs": len(gens), "models": models, "teacher": teacher}
    pending: list[tuple] = []
    total = len(gens)

    def fresh(gid: int, metric: str, h: str) -> bool:
        have = stored.get((gid, metric))
        if have and have[0] == h and not have[1]:
            counts["cached"] += 1
            return False
        return True

    def add(g, metric, h, value, meta):
        pending.append((g["generation_id"], metric, h, value, meta))
        counts["computed"] += 1

    code_jobs = []
    for n, g in enumerate(gens):
        gid, out = g["generation_id"], g["output"]
        todo: dict[str, str] = {}
        if kind == "qa":
            for m in FACTUALITY["qa"]:
                todo[m] = inputs_hash(m, out, g["gold"])
        elif kind == "mc":
            todo["mc_accuracy"] = inputs_hash("mc_accuracy", out, g["gold"], g["choices"])
        for m in OWN_STYLE:
            todo[m] = inputs_hash(m, out)
        if teacher and g["model"] != teacher and g["item_id"] in teacher_out:
            for m in TEACHER_STYLE:
                todo[m] = inputs_hash(m, out, teacher_out[g["item_id"]])
        todo = {m: h for m, h in todo.items() if fresh(gid, m, h)}
        if todo:
            computed = {}
            if kind == "qa" and any(m in todo for m in FACTUALITY["qa"]):
                computed.update(_qa(g))
            if kind == "mc" and "mc_accuracy" in todo:
                computed.update(_mc(g))
            if any(m in todo for m in OWN_STYLE):
                computed.update(_own_style(out))
            if any(m in todo for m in TEACHER_STYLE):
                computed.update(_teacher_style(out, teacher_out[g["item_id"]], teacher))
            for m, h in todo.items():
                value, meta = computed[m]
                add(g, m, h, value, meta)
        if kind == "code":
            h = inputs_hash("pass@1", out, g["item_prompt"], g["tests"], g["entry_point"])
            if fresh(gid, "pass@1", h):
                code_jobs.append((g, h))
        if n % 500 == 0:
            check_cancel(cancel)
            yield Progress(n, total, "text metrics")
    _write(ws, pending)
    pending.clear()

    if code_jobs:
        yield from _score_code(ws, code_jobs, add, workers=workers, timeout=code_timeout, cancel=cancel)
        _write(ws, pending)
        pending.clear()
    if embed and teacher:
        yield from _score_embeddings(ws, gens, teacher, teacher_out, fresh, add)
        _write(ws, pending)
        pending.clear()
    if loglik and kind == "mc":
        yield from _score_loglik(ws, gens, fresh, add, cancel=cancel)
        _write(ws, pending)
        pending.clear()
    if judge:
        from core.scores import judge as J

        yield from J.score_with_judge(
            ws,
            judge,
            kind,
            gens,
            teacher,
            teacher_out,
            fresh,
            add,
            lambda: (_write(ws, pending), pending.clear()),
            cancel=cancel,
        )
        _write(ws, pending)
        pending.clear()
    yield Progress(total, total, "done")
    return counts


def _score_code(ws, code_jobs, add, *, workers, timeout, cancel) -> Work[None]:
    from core.scores import sandbox

    programs = []
    how = {}
    for g, h in code_jobs:
        if not g["tests"] or not g["entry_point"]:
            add(g, "pass@1", h, None, {"error": "item has no tests or entry point"})
            continue
        prog, how[g["generation_id"]] = sandbox.build_program(
            g["item_prompt"], g["output"], g["tests"], g["entry_point"]
        )
        programs.append(((g, h), prog))
    for n, ((g, h), res) in enumerate(sandbox.check_many(programs, workers=workers, timeout=timeout)):
        meta = {**res.as_meta(), "program": how[g["generation_id"]]}
        if res.status == "error":  # the sandbox failed, not the code: no score (retried next run)
            meta["error"] = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "sandbox error"
            add(g, "pass@1", h, None, meta)
        else:
            add(g, "pass@1", h, float(res.passed), meta)
        check_cancel(cancel)
        yield Progress(n + 1, len(programs), "running tests")


def _score_embeddings(ws, gens, teacher, teacher_out, fresh, add) -> Work[None]:
    """Cosine similarity of MiniLM sentence embeddings of the output and the teacher's output."""
    from core.models.embeddings import resolve_model

    model_spec = ws.config.defaults.embedding_model
    todo = []
    for g in gens:
        if g["model"] == teacher or g["item_id"] not in teacher_out:
            continue
        h = inputs_hash("embedding_similarity", g["output"], teacher_out[g["item_id"]], model_spec)
        if fresh(g["generation_id"], "embedding_similarity", h):
            todo.append((g, h))
    if not todo:
        return
    yield Progress(0, len(todo), "embedding")
    from sentence_transformers import SentenceTransformer

    em = resolve_model(model_spec)
    st = SentenceTransformer(str(em.path), device="cpu")
    texts = sorted({g["output"] for g, _ in todo} | {teacher_out[g["item_id"]] for g, _ in todo})
    vecs = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    index = {t: i for i, t in enumerate(texts)}
    for g, h in todo:
        a = vecs[index[g["output"]]]
        b = vecs[index[teacher_out[g["item_id"]]]]
        add(g, "embedding_similarity", h, float(a @ b), {"teacher": teacher, "model": em.name})
    yield Progress(len(todo), len(todo), "embedding")


def choice_logliks(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each choice's text (" " + choice) after the prompt (cloze style,
    unnormalised: lm-evaluation-harness's `acc`)."""
    import torch

    scores = []
    ids_prompt = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    for c in choices:
        ids_full = tokenizer(prompt + " " + str(c), add_special_tokens=True)["input_ids"]
        n_choice = max(1, len(ids_full) - len(ids_prompt))
        ids = torch.tensor([ids_full])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = ids[0, 1:]
        token_lp = logp[torch.arange(len(target)), target]
        scores.append(float(token_lp[-n_choice:].sum()))
    return scores


def _score_loglik(ws, gens, fresh, add, *, cancel) -> Work[None]:
    """mc_accuracy_loglik: the choice with the highest log-likelihood, for models with local weights."""
    from core.models import registry

    by_model = defaultdict(list)
    for g in gens:
        by_model[g["model"]].append(g)
    for model_name, rows in by_model.items():
        try:
            rm = registry.resolve(ws, model_name)
        except NotFound:
            continue
        if not rm.kind.loadable:
            continue
        fp = rm.fingerprint
        todo = []
        for g in rows:
            h = inputs_hash("mc_accuracy_loglik", fp, g["item_prompt"], g["choices"], g["gold"])
            if g["choices"] and fresh(g["generation_id"], "mc_accuracy_loglik", h):
                todo.append((g, h))
        if not todo:
            continue
        model, tok = rm.load(device="cpu")
        for n, (g, h) in enumerate(todo):
            check_cancel(cancel)
            prompt = g["item_prompt"].rstrip()
            if not prompt.endswith("Answer:"):
                prompt = f"Question: {prompt}\nAnswer:"  # cloze style: the choice text follows
            lls = choice_logliks(model, tok, prompt, g["choices"])
            best = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[max(range(len(lls)), key=lls.__getitem__)]
            gold = str((g["gold"] or [""])[0]).strip().upper()
            add(g, "mc_accuracy_loglik", h, float(best == gold), {"letter": best, "logliks": lls})
            yield Progress(n + 1, len(todo), f"log-likelihood {model_name}")


# -- reading scores ---------------------------------------------------------------------------------
def _score_rows(ws: Workspace, suite: str, models: list[str]) -> tuple[list[dict], dict]:
    gens = latest_generations(ws, suite, models)
    by_gid = {g["generation_id"]: g for g in gens}
    values: dict[int, dict[str, float | None]] = defaultdict(dict)
    ids = list(by_gid)
    for i in range(0, len(ids), 900):
        chunk = ids[i : i + 900]
        for gid, metric, value in ws.db.execute(
            f"select generation_id, metric, value from scores where generation_id in ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall():
            values[gid][metric] = value
    return gens, values


def item_scores(
    ws: Workspace, suite: str, models: list[str] | None = None
) -> dict[int, dict[str, dict[str, float | None]]]:
    """{item_id: {model: {metric: value}}} for the latest output of each model (stored scores only)."""
    models = models or models_with_outputs(ws, suite)
    gens, values = _score_rows(ws, suite, models)
    out: dict[int, dict] = defaultdict(dict)
    for g in gens:
        out[g["item_id"]][g["model"]] = dict(values.get(g["generation_id"], {}))
    return dict(out)


def _table(gens, values) -> dict:
    """model -> metric -> {item_id: value} and item_id -> task."""
    table: dict[str, dict[str, dict[int, float | None]]] = defaultdict(lambda: defaultdict(dict))
    for g in gens:
        for metric, v in values.get(g["generation_id"], {}).items():
            table[g["model"]][metric][g["item_id"]] = v
    return table


def aggregate(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """Records {model, task, metric, value, ci_low, ci_high, n}, task "all" for the whole suite.

    Means of per-output scores with bootstrap 95% intervals (nulls left out: not applicable or
    not computable); `length_correlation` is Pearson's r over items between the model's and the
    teacher's output lengths in words, with a bootstrap interval over items.
    """
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens, values = _score_rows(ws, suite, models)
    task_of = {g["item_id"]: g["task"] for g in gens}
    tasks = sorted(set(task_of.values()))
    groups = [("all", None)] + [(t, t) for t in tasks if t != "all"]
    table = _table(gens, values)
    records = []
    for model in models:
        for metric in sorted(table[model]):
            if metric in TEACHER_STYLE + ("embedding_similarity", "judge_preference") and model == teacher:
                continue
            col = table[model][metric]
            for name, task in groups:
                vals = [v for iid, v in col.items() if task is None or task_of[iid] == task]
                iv = stats.mean_ci(vals, n_boot=n_boot)
                if iv.n == 0:
                    continue
                records.append(_rec(model, name, metric, iv))
        if teacher and model != teacher and "length_words" in table[model]:
            mine, theirs = table[model]["length_words"], table[teacher].get("length_words", {})
            for name, task in groups:
                common = [
                    i
                    for i in mine
                    if i in theirs
                    and mine[i] is not None
                    and theirs[i] is not None
                    and (task is None or task_of[i] == task)
                ]
                iv = stats.pearson_ci([mine[i] for i in common], [theirs[i] for i in common], n_boot=n_boot)
                if iv.value is not None:
                    records.append(_rec(model, name, "length_correlation", iv))
    return records


def _rec(model, task, metric, iv: stats.Interval) -> dict:
    return {
        "model": model,
        "task": task,
        "metric": metric,
        "value": iv.value,
        "ci_low": iv.low,
        "ci_high": iv.high,
        "n": iv.n,
    }


# -- analyses -------------------------------------------------------------------------------------
def _primary(kind: str, table: dict, models: list[str]) -> str | None:
    m = PRIMARY.get(kind)
    if m and any(m in table[x] for x in models):
        return m
    for cand in ("exact_match", "mc_accuracy", "pass@1", "judge_correct", "judge_claims"):
        if any(cand in table[x] for x in models):
            return cand
    return None


def _aligned(table, models, metric, items) -> list[list[float]]:
    return [[table[m][metric][i] for i in items] for m in models]


def compare(ws: Workspace, suite: str, a: str, b: str, metric: str | None = None) -> dict:
    """Paired comparison of two models on the items both answered: mean difference (b − a) with a
    paired bootstrap interval, exact McNemar for 0/1 metrics, and wrong→right transitions a→b."""
    kind = get_suite(ws, suite)["kind"]
    gens, values = _score_rows(ws, suite, [a, b])
    table = _table(gens, values)
    metric = metric or _primary(kind, table, [a, b])
    if metric is None:
        raise NotFound(f"no scores on suite '{suite}': run `mirage score --suite {suite}` first")
    items = sorted(
        set(i for i, v in table[a][metric].items() if v is not None)
        & set(i for i, v in table[b][metric].items() if v is not None)
    )
    va, vb = _aligned(table, [a, b], metric, items) if items else ([], [])
    out = {"a": a, "b": b, "metric": metric, "n": len(items), "paired_bootstrap": stats.paired_bootstrap(vb, va)}
    if items and all(v in (0.0, 1.0) for v in va + vb):
        out["mcnemar"] = stats.mcnemar_exact(vb, va)
        out["transitions"] = stats.transitions(va, vb)
    return out


def gap_closed(
    ws: Workspace,
    suite: str,
    *,
    base: str,
    imitation: str,
    teacher: str,
    metric: str | None = None,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """Per task (and "all"): (imitation − base) / (teacher − base) on items all three answered,
    with a paired bootstrap interval; value None (n/a) where teacher − base's interval includes 0."""
    kind = get_suite(ws, suite)["kind"]
    gens, values = _score_rows(ws, suite, [base, imitation, teacher])
    table = _table(gens, values)
    metric = metric or _primary(kind, table, [base, imitation, teacher])
    if metric is None:
        return []
    task_of = {g["item_id"]: g["task"] for g in gens}
    common = set(task_of)
    for m in (base, imitation, teacher):
        common &= {i for i, v in table[m][metric].items() if v is not None}
    out = []
    for task in ["all"] + sorted({task_of[i] for i in common} - {"all"}):
        items = sorted(i for i in common if task == "all" or task_of[i] == task)
        b, i_, t = _aligned(table, [base, imitation, teacher], metric, items)
        g = stats.gap_closed(b, i_, t, n_boot=n_boot)
        out.append(
            {
                "task": task,
                "metric": metric,
                "base_model": base,
                "imitation_model": imitation,
                "teacher_model": teacher,
                **g,
            }
        )
    return out


def gap_vs_support(gaps: list[dict], support: dict[str, float]) -> dict:
    """Spearman's rho between gap closed and coverage support over tasks that have both."""
    pairs = [
        (g["value"], support[g["task"]])
        for g in gaps
        if g["task"] != "all" and g["value"] is not None and g["task"] in support
    ]
    rho = stats.spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else None
    return {"spearman": rho, "tasks": len(pairs)}


def convincing_but_wrong(
    ws: Workspace, suite: str, *, models: list[str] | None = None, teacher: str | None = None, overlap: float = 0.3
) -> list[dict]:
    """Outputs whose style is close to the teacher's while their answer is wrong.

    Close: unigram overlap with the teacher's output ≥ `overlap`, and where the teacher used a
    list the output did too. Wrong: the suite's primary metric is 0 (for QA: exact match 0 and the
    gold not contained either; for free-form prompts: the judge found a claim unsupported).
    Sorted by overlap, highest first.
    """
    kind = get_suite(ws, suite)["kind"]
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens, values = _score_rows(ws, suite, models)
    table = _table(gens, values)
    metric = _primary(kind, table, models)
    if metric is None or teacher is None:
        return []
    rows = []
    for g in gens:
        if g["model"] == teacher:
            continue
        v = values.get(g["generation_id"], {})
        ov = v.get("unigram_overlap")
        score = v.get(metric)
        # Wrong: a 0 score; for claim checks, any claim the judge found unsupported.
        wrong = score is not None and (score < 1.0 if metric == "judge_claims" else score == 0.0)
        if ov is None or ov < overlap or not wrong:
            continue
        if kind == "qa" and v.get("contains") == 1.0:
            continue
        if v.get("list_when_teacher_lists") == 0.0:
            continue
        rows.append(
            {
                "item_id": g["item_id"],
                "generation_id": g["generation_id"],
                "model": g["model"],
                "task": g["task"],
                "prompt": g["item_prompt"],
                "output": g["output"],
                "gold": g["gold"],
                "metric": metric,
                "value": v.get(metric),
                "unigram_overlap": ov,
                "list_when_teacher_lists": v.get("list_when_teacher_lists"),
                "embedding_similarity": v.get("embedding_similarity"),
            }
        )
    rows.sort(key=lambda r: -r["unigram_overlap"])
    return rows


def report_markdown(
    ws: Workspace, suite: str, *, models: list[str] | None = None, teacher: str | None = None, level: int = 2
) -> str:
    """The suite's report section in Markdown (headings from `level`), for documents that hold
    several suites (the demo's report)."""
    from core.analysis import report

    return report.render_md(report.build(ws, suite, models=models, teacher=teacher), level=level)


# -- jobs -----------------------------------------------------------------------------------------
def run_job(ctx) -> dict:
    """Job kind "score": config {suite, models?, teacher?, judge?, embed?, loglik?}."""
    cfg = ctx.config
    if not cfg.get("suite"):
        raise BadInput("job config", "a score job needs a suite", field="suite")
    gen = score_suite(
        ctx.ws,
        cfg["suite"],
        models=cfg.get("models") or None,
        teacher=cfg.get("teacher"),
        judge=cfg.get("judge"),
        embed=bool(cfg.get("embed")),
        loglik=bool(cfg.get("loglik")),
        cancel=ctx.cancel,
    )
    counts = ctx.drive(gen)
    ctx.event(message=f"scored: {counts['computed']} computed, {counts['cached']} cached")
    return counts
