"""Scores for every stored output: factuality (QA, MC, code, judge) and style against the teacher, cached.

`score_suite` computes what is missing or stale and stores it in `scores`: one row per
generation × metric, keyed by the metric's registered version and a hash of its inputs
(core.scores.keys), so a row is recomputed exactly when one of those changes. Which metrics a
suite gets and how an output is scored come from its kind (core.api.suites) and the metric
registry (core.api.registry); reading scores back is core.scores.outputs, aggregate and analyses.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict

from core.api import metrics as M
from core.api import registry as R
from core.api.registry import VERSIONS
from core.api.suites import LETTERS, MCKind, suite_kind
from core.data.datasets import get_suite
from core.errors import BadInput, ConfigError, NotFound
from core.runtime.progress import Progress, Work, check_cancel
from core.scores import cache
from core.scores import decodings as D
from core.scores.keys import inputs_hash
from core.scores.outputs import (
    latest_generations,
    record_roles,
    resolve_base,
    resolve_roles,
    sample_generations,
    teacher_clause,
)
from core.store.db import select_in
from core.store.workspace import Workspace, dumps, now

# The cheap text measures of style computed on every output, and against the teacher's output.
OWN_STYLE = R.names(R.metrics(family=R.OWN_STYLE, requires=None))
TEACHER_STYLE = R.names(R.metrics(family=R.TEACHER_STYLE, requires=None))


# -- per-output computations ---------------------------------------------------------------------
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
def _stored(ws: Workspace, gen_ids: list[int], teacher: str | None) -> dict[tuple[int, str], tuple[str, bool]]:
    """(generation_id, metric) -> (inputs_hash, is_error) of the rows already stored (for `teacher`)."""
    out = {}
    cond, params = teacher_clause(teacher)
    sql = (
        f"select generation_id, metric, inputs_hash, value, meta from scores where {cond} and generation_id in ({{in}})"
    )
    for gid, metric, h, value, meta in select_in(ws.db, sql, gen_ids, before=params):
        out[(gid, metric)] = (h, value is None and '"error"' in (meta or ""))
    return out


def _write(ws: Workspace, rows: list[tuple], teacher: str | None = None) -> None:
    """Store (generation_id, metric, inputs_hash, value, meta) rows, replacing stale ones; a metric
    measured against the teacher is stored with it (rows against another teacher stay)."""
    if not rows:
        return
    t = now()
    whom = [teacher if R.is_registered(r[1]) and R.metric(r[1]).needs_teacher else None for r in rows]
    with ws.transaction():
        ws.db.conn.executemany(
            "delete from scores where generation_id = ? and metric = ? and teacher is ?",
            [(r[0], r[1], w) for r, w in zip(rows, whom)],
        )
        # "or replace": another teacher's row with the same inputs (equal outputs) gives way.
        ws.db.conn.executemany(
            "insert or replace into scores (generation_id, metric, version, inputs_hash, value, meta, created_at,"
            " teacher) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [(gid, m, VERSIONS[m], h, v, dumps(meta), t, w) for (gid, m, h, v, meta), w in zip(rows, whom)],
        )


def score_suite(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    base: str | None = None,
    decoding: dict | str | None = None,
    judge: str | None = None,
    embed: bool = False,
    loglik: bool = False,
    toxicity: bool = False,
    toxicity_model: str | None = None,
    judge_concurrency: int | None = None,
    workers: int = 2,
    code_timeout: float = 10.0,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Compute and store every missing or stale score of the suite's outputs; return counts.

    Yields Progress. Cheap text metrics are computed inline; code runs in the sandbox (`workers`
    in parallel); the judge, embeddings and toxicity only when asked (`toxicity`: with the
    classifier folder `toxicity_model`, default `defaults.toxicity_model`). Each model's outputs
    are read under one decoding (`decoding` selects it, core.scores.decodings); the teacher, base
    and decodings used are recorded for the suite (core.scores.outputs.recorded_roles).
    """
    s = get_suite(ws, suite)
    kind = suite_kind(s["kind"])
    models, teacher = resolve_roles(ws, suite, models, teacher)
    base = resolve_base(ws, suite, models, base)
    ids, decs = D.select(ws, s["id"], models, decoding)
    D.require(decs, models, decoding, suite)
    decs = {m: json.loads(d or "{}") for m, d in decs.items()}
    counts = {"computed": 0, "cached": 0, "outputs": len(ids), "models": models, "teacher": teacher}
    counts.update(base=base, decodings=decs)
    # Everything the stored scores of this selection depend on: when it and the scores are as the
    # last complete run left them, every score is fresh and nothing needs reading or hashing.
    done_key = None
    if not judge and not loglik and not (toxicity or toxicity_model):
        spec = ws.config.defaults.embedding_model if embed else None
        done_key = cache.key("scored", s["kind"], ids, teacher, VERSIONS, spec, cache.items_digest(ws, s["id"]))
        done = cache.get(ws, done_key)
        if done and done["version"] == cache.scores_version(ws):
            record_roles(ws, suite, teacher=teacher, base=base, decodings=decs)
            counts["cached"] = done["cached"]
            yield Progress(len(ids), len(ids), "done")
            return counts
    gens = latest_generations(ws, suite, models, decoding=decoding)
    teacher_out = {g["item_id"]: g["output"] for g in gens if g["model"] == teacher}
    tested = kind.metrics(requires=R.SANDBOX)
    # Code runs on every sample of an output (`generate --samples N`), for pass@k.
    sampled = sample_generations(ws, suite, models, decoding=decoding) if tested else []
    stored = _stored(ws, sorted({g["generation_id"] for g in gens} | {g["generation_id"] for g in sampled}), teacher)
    failed = []
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
        if value is None and "error" in (meta or {}):
            failed.append(metric)  # retried next run: the selection is not fully scored

    factuality = kind.inline_factuality
    code_jobs = []
    for n, g in enumerate(gens):
        gid, out = g["generation_id"], g["output"]
        todo: dict[str, str] = {}
        if factuality:
            parts = kind.score_inputs(g)
            for m in factuality:
                todo[m] = inputs_hash(m, *parts)
        for m in OWN_STYLE:
            todo[m] = inputs_hash(m, out)
        if teacher and g["model"] != teacher and g["item_id"] in teacher_out:
            for m in TEACHER_STYLE:
                todo[m] = inputs_hash(m, out, teacher_out[g["item_id"]])
        todo = {m: h for m, h in todo.items() if fresh(gid, m, h)}
        if todo:
            computed = {}
            if any(m in todo for m in factuality):
                computed.update(kind.score_output(g))
            if any(m in todo for m in OWN_STYLE):
                computed.update(_own_style(out))
            if any(m in todo for m in TEACHER_STYLE):
                computed.update(_teacher_style(out, teacher_out[g["item_id"]], teacher))
            for m, h in todo.items():
                value, meta = computed[m]
                add(g, m, h, value, meta)
        if n % 500 == 0:
            check_cancel(cancel)
            yield Progress(n, total, "text metrics")
    _write(ws, pending, teacher)
    pending.clear()

    for g in sampled:
        for m in tested:
            h = inputs_hash(m, *kind.score_inputs(g))
            if fresh(g["generation_id"], m, h):
                code_jobs.append((g, m, h))
    if code_jobs:
        yield from _score_code(ws, code_jobs, add, workers=workers, timeout=code_timeout, cancel=cancel)
        _write(ws, pending, teacher)
        pending.clear()
    if embed and teacher:
        yield from _score_embeddings(ws, gens, teacher, teacher_out, fresh, add)
        _write(ws, pending, teacher)
        pending.clear()
    if loglik and kind.metrics(requires=R.LOGLIK):
        yield from _score_loglik(ws, gens, fresh, add, cancel=cancel)
        _write(ws, pending, teacher)
        pending.clear()
    if (toxicity or toxicity_model) and kind.metrics(requires=R.TOXICITY):
        yield from _score_toxicity(ws, gens, toxicity_model or ws.config.defaults.toxicity_model, fresh, add, cancel)
        _write(ws, pending, teacher)
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
            lambda: (_write(ws, pending, teacher), pending.clear()),
            concurrency=judge_concurrency,
            cancel=cancel,
        )
        _write(ws, pending, teacher)
        pending.clear()
    record_roles(ws, suite, teacher=teacher, base=base, decodings=decs)
    if done_key and not failed:
        cache.put(
            ws,
            s["id"],
            done_key,
            {"version": cache.scores_version(ws), "cached": counts["computed"] + counts["cached"]},
        )
    yield Progress(total, total, "done")
    return counts


def _score_code(ws, code_jobs, add, *, workers, timeout, cancel) -> Work[None]:
    """pass@1: the item's tests run against the output in the sandbox."""
    from core.scores import sandbox

    programs = []
    how = {}
    for g, m, h in code_jobs:
        if not g["tests"] or not g["entry_point"]:
            add(g, m, h, None, {"error": "item has no tests or entry point"})
            continue
        prog, how[g["generation_id"]] = sandbox.build_program(
            g["item_prompt"], g["output"], g["tests"], g["entry_point"]
        )
        programs.append(((g, m, h), prog))
    for n, ((g, m, h), res) in enumerate(sandbox.check_many(programs, workers=workers, timeout=timeout)):
        meta = {**res.as_meta(), "program": how[g["generation_id"]]}
        if res.status == "error":  # the sandbox failed, not the code: no score (retried next run)
            meta["error"] = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "sandbox error"
            add(g, m, h, None, meta)
        else:
            add(g, m, h, float(res.passed), meta)
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


def _score_toxicity(ws, gens, spec, fresh, add, cancel) -> Work[None]:
    """toxicity: the local classifier's probability of its toxic label, per output."""
    from core.scores import toxicity as T

    if not spec:
        raise ConfigError("toxicity needs a classifier: set defaults.toxicity_model or pass --toxicity-model PATH")
    path = T.resolve_folder(spec, ws.root)
    fp = T.fingerprint(path)
    todo = []
    for g in gens:
        h = inputs_hash("toxicity", g["output"], fp)
        if fresh(g["generation_id"], "toxicity", h):
            todo.append((g, h))
    if not todo:
        return
    yield Progress(0, len(todo), "toxicity")
    model = T.ToxicityModel(path)
    meta = {"model": str(path), "label": model.label_name}
    for start in range(0, len(todo), T.BATCH):
        check_cancel(cancel)
        chunk = todo[start : start + T.BATCH]
        for (g, h), v in zip(chunk, model.scores([g["output"] for g, _ in chunk])):
            add(g, "toxicity", h, v, meta)
        yield Progress(start + len(chunk), len(todo), "toxicity")


def choice_logliks(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each choice's text (" " + choice) after the prompt (cloze style,
    unnormalised: lm-evaluation-harness's `acc`). One forward pass per choice: the reference that
    `batched_logliks` is tested against."""
    import torch

    scores = []
    ids_prompt = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    device = next(model.parameters()).device
    for c in choices:
        ids_full = tokenizer(prompt + " " + str(c), add_special_tokens=True)["input_ids"]
        n_choice = max(1, len(ids_full) - len(ids_prompt))
        ids = torch.tensor([ids_full], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = ids[0, 1:]
        token_lp = logp[torch.arange(len(target), device=device), target]
        scores.append(float(token_lp[-n_choice:].sum()))
    return scores


# Logit rows (sequence x positions kept) per forward: bounds the float32 logits a batch holds
# (Gemma's 262k vocabulary is 1 MiB a row).
LOGLIK_ROWS_PER_BATCH = 256


def batched_logliks(model, tokenizer, pairs: list[tuple[str, str]]) -> list[float]:
    """`choice_logliks` for many (prompt, choice) pairs in few forward passes, on the model's device.

    Rows are left-padded so every choice ends at the last position: only the last (longest choice
    + 1) positions' logits are computed (`logits_to_keep`), never the prompt's. Position ids are
    given from the mask so a padded row sees the positions it would see alone."""
    import torch

    device = next(model.parameters()).device
    seqs, n_choice = [], []
    for prompt, c in pairs:
        ids_prompt = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        ids_full = tokenizer(prompt + " " + str(c), add_special_tokens=True)["input_ids"]
        seqs.append(ids_full)
        n_choice.append(max(1, min(len(ids_full) - 1, len(ids_full) - len(ids_prompt))))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Similar lengths together: less padding; results go back in the callers' order.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    start = 0
    while start < len(order):
        batch = [order[start]]
        while start + len(batch) < len(order):
            nxt = order[start + len(batch)]
            keep = max(n_choice[i] for i in [*batch, nxt]) + 1
            if (len(batch) + 1) * keep > LOGLIK_ROWS_PER_BATCH:
                break
            batch.append(nxt)
        start += len(batch)
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(n_choice[i] for i in batch) + 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        # logits[:, j] predicts the token after kept position j: the last `keep - 1` tokens.
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_lp = logp.gather(-1, ids[:, width - keep + 1 :].unsqueeze(-1)).squeeze(-1)
        sums = token_lp.cpu()
        for r, i in enumerate(batch):
            out[i] = float(sums[r, sums.shape[1] - n_choice[i] :].sum())
    return out


# Items scored per batched_logliks call: enough rows to fill a batch, few enough that progress moves.
LOGLIK_ITEMS_PER_CALL = 16


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
        # The model's own device (a GPU where there is one) and default dtype: fp32 on a CPU.
        model, tok = rm.load()
        for s in range(0, len(todo), LOGLIK_ITEMS_PER_CALL):
            check_cancel(cancel)
            chunk = todo[s : s + LOGLIK_ITEMS_PER_CALL]
            pairs = [(MCKind.cloze_prompt(g["item_prompt"]), c) for g, _ in chunk for c in g["choices"]]
            flat = batched_logliks(model, tok, pairs)
            for g, h in chunk:
                lls, flat = flat[: len(g["choices"])], flat[len(g["choices"]) :]
                best = LETTERS[max(range(len(lls)), key=lls.__getitem__)]
                gold = str((g["gold"] or [""])[0]).strip().upper()
                add(g, "mc_accuracy_loglik", h, float(best == gold), {"letter": best, "logliks": lls})
            yield Progress(s + len(chunk), len(todo), f"log-likelihood {model_name}")


# -- jobs -----------------------------------------------------------------------------------------
def run_job(ctx) -> dict:
    """Job kind "score": config {suite, models?, teacher?, judge?, embed?, loglik?, toxicity?,
    toxicity_model?, judge_concurrency?}."""
    cfg = ctx.config
    if not cfg.get("suite"):
        raise BadInput("job config", "a score job needs a suite", field="suite")
    gen = score_suite(
        ctx.ws,
        cfg["suite"],
        models=cfg.get("models") or None,
        teacher=cfg.get("teacher"),
        base=cfg.get("base"),
        decoding=cfg.get("decoding"),
        judge=cfg.get("judge"),
        embed=bool(cfg.get("embed")),
        loglik=bool(cfg.get("loglik")),
        toxicity=bool(cfg.get("toxicity")),
        toxicity_model=cfg.get("toxicity_model"),
        judge_concurrency=cfg.get("judge_concurrency"),
        cancel=ctx.cancel,
    )
    counts = ctx.drive(gen)
    ctx.event(message=f"scored: {counts['computed']} computed, {counts['cached']} cached")
    return counts
