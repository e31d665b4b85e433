"""Teacher collection: ask a teacher model and store its answers as an imitation dataset.

Two recipes: answer given prompts (a prompts file or a suite's prompts), and the paper's
NQ-synthetic recipe (show the teacher k random seed QA pairs, ask for a new, different pair,
repeat to N, dedupe). Every answer goes into the request cache and the dataset in one transaction
the moment it arrives, so a collection killed at any point and rerun asks no finished prompt
again, loses no answer and adds no duplicate.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.data import datasets as ds_mod
from core.errors import BadInput, EndpointError, ModelError
from core.models import generation
from core.models.kinds import ResolvedModel
from core.models.loading import has_chat_template
from core.models.registry import resolve
from core.runtime import jobs
from core.runtime.progress import Progress, Work, mapped, offset
from core.runtime.secrets import redact
from core.store.db import select_in
from core.store.workspace import Workspace, dumps, now

PROMPT_FIELDS = ("prompt", "instruction", "question", "text", "query")
SYNTH_TEMPLATE = (
    "Here are some questions with short answers:\n\n{examples}\n\n"
    "Write one new question of the same kind, different from all of these, with its short answer."
    " Use exactly this format:\nQuestion: <question>\nAnswer: <answer>"
)
_Q_RE = re.compile(r"(?:\*\*)?Question:(?:\*\*)?[ \t]*([^\n]*\S[^\n]*)", re.I)
_A_RE = re.compile(r"(?:\*\*)?Answer:(?:\*\*)?[ \t]*([^\n]*\S[^\n]*)", re.I)


# -- reading prompts ------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from .jsonl/.json (a prompt/instruction/question field), .csv (same columns) or .txt."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(p, "no such file")
    suffix = p.suffix.lower()
    prompts: list[str] = []
    try:
        if suffix in (".jsonl", ".json"):
            text = p.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as e:
                    raise BadInput(p, f"invalid JSON: {e.msg}", line=e.lineno) from None
                enum = [(i + 1, r) for i, r in enumerate(rows)]
            else:
                enum = []
                for i, line in enumerate(text.splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        enum.append((i, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise BadInput(p, f"invalid JSON: {e.msg}", line=i) from None
            for line, row in enum:
                prompts.append(_prompt_of(p, line, row))
        elif suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for i, row in enumerate(reader, 2):
                    prompts.append(_prompt_of(p, i, row))
        else:
            prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise BadInput(p, "not UTF-8 text") from None
    if not prompts:
        raise BadInput(p, "no prompts in the file")
    return prompts


def _prompt_of(path: Path, line: int, row) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise BadInput(path, "expected an object with a prompt field", line=line)
    for f in PROMPT_FIELDS:
        v = row.get(f)
        if isinstance(v, str) and v.strip():
            extra = row.get("input") if f == "instruction" else None
            return f"{v.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else v.strip()
    raise BadInput(path, f"no non-empty prompt (fields tried: {', '.join(PROMPT_FIELDS)})", line=line, field="prompt")


# -- storage -------------------------------------------------------------------------------------------------
def content_hash(conv: list[dict]) -> str:
    """The importer's rule (core.data.ingest): sha256 of the stored conversation JSON."""
    return hashlib.sha256(dumps(conv).encode("utf-8", "surrogatepass")).hexdigest()


def _token_counter(ws: Workspace):
    from core.data.ingest import token_counter

    return token_counter(ws).count  # the same counter `mirage import data` uses


def _open_dataset(ws: Workspace, name: str, teacher: str, meta: dict) -> int:
    row = ws.db.execute("select id, meta, kind from datasets where name = ?", [name]).fetchone()
    if row:
        old = json.loads(row[1] or "{}")
        if row[2] != "imitation" or old.get("teacher") != teacher:
            src = f"teacher '{old['teacher']}'" if old.get("teacher") else "an import"
            raise BadInput(
                "collect", f"dataset '{name}' already exists (from {src}); choose another --name", field="name"
            )
        ws.db.execute(
            "update datasets set meta = ? where id = ?",
            [dumps({**old, **meta, "runs": old.get("runs", 0) + 1}), row[0]],
        )
        return row[0]
    cur = ws.db.execute(
        "insert into datasets (name, kind, status, format, source, meta, created_at) values (?, 'imitation',"
        " 'collecting', 'collected', ?, ?, ?)",
        [name, f"teacher:{teacher}", dumps({**meta, "runs": 1}), now()],
    )
    return cur.lastrowid


def _store(ws: Workspace, dataset_id: int, teacher: str, fp: str, results, to_example) -> int:
    """Cache the answers and add their examples in one transaction; returns examples added."""
    t = now()
    added = 0
    examples = []
    for r, text, _meta in results:
        ex = to_example(r, text)
        if ex is not None:
            examples.append((r, *ex))
    counts = _token_counter(ws)(["\n".join(m["content"] for m in conv) for _, conv, _ in examples])
    with ws.transaction():
        ws.db.conn.executemany(
            "insert or ignore into request_cache (model, fingerprint, prompt, decoding, cache_key, output, meta,"
            " created_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [(teacher, fp, r.prompt, dumps(r.decoding), r.key, text, dumps(meta), t) for r, text, meta in results],
        )
        for (r, conv, ex_meta), n_tokens in zip(examples, counts):
            layout, user, assistant = ds_mod.pack_conversation(conv)
            cur = ws.db.execute(
                "insert or ignore into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
                " n_tokens, content_hash, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    dataset_id,
                    int(r.tag),
                    teacher,
                    dumps(layout),
                    user,
                    assistant,
                    int(n_tokens),
                    content_hash(conv),
                    dumps({**ex_meta, "request": r.key[:16]}),
                ],
            )
            added += cur.rowcount
    return added


def _cached_outputs(ws: Workspace, keys: list[str]) -> dict[str, tuple[str, dict]]:
    sql = "select cache_key, output, meta from request_cache where cache_key in ({in})"
    return {k: (o, json.loads(m)) for k, o, m in select_in(ws.db, sql, keys)}


def _chat_requests(teacher, convs: list[list[dict]], tags, decoding_kw, fp, tokenizer) -> list[generation.Request]:
    reqs = []
    for conv, tag in zip(convs, tags):
        prompt = generation.render_chat(tokenizer, conv, teacher) if tokenizer is not None else dumps(conv)
        r = generation.Request(prompt=prompt, style="chat", stop=[], messages=conv, tag=tag)
        seed = decoding_kw.get("seed")
        if callable(seed):
            seed = seed(tag)
        r.decoding = generation.decoding_for(
            r,
            max_new_tokens=decoding_kw["max_new_tokens"],
            temperature=decoding_kw["temperature"],
            seed=seed,
            kshot=None,
        )
        r.key = generation.cache_key(fp, r.prompt, r.decoding)
        reqs.append(r)
    return reqs


def _teacher_tokenizer(rm: ResolvedModel):
    """The local teacher's tokenizer (its chat template renders the prompts); None for an endpoint."""
    if rm.kind.endpoint:
        return None
    if not rm.kind.loadable:
        raise ModelError(f"'{rm.name}' is a {rm.kind.name} model: it cannot answer prompts")
    if not has_chat_template(rm.tokenizer):
        raise ModelError(f"teacher '{rm.name}' has no chat template: a teacher must be a chat model")
    return rm.tokenizer


# -- the recipes -----------------------------------------------------------------------------------------------
@dataclass
class _Asking:
    """What both recipes (answers to prompts, synthetic QA pairs) share: the teacher, the dataset
    being filled, the decoding and how requests are sent."""

    ws: Workspace
    rm: ResolvedModel
    name: str
    decoding_kw: dict
    recipe: dict
    concurrency: int | None
    batch_size: int
    timeout: float | None
    cancel: threading.Event | None
    t0: float

    def ask(self, todo: list, store) -> Work[dict]:
        """Send the requests not yet cached; `store` is given each batch of answers as it comes."""
        return generation.run_requests(
            self.ws,
            self.rm,
            todo,
            store=store,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            cancel=self.cancel,
            timeout=self.timeout,
        )


def collect(
    ws: Workspace,
    teacher: str,
    *,
    name: str,
    prompts_file: str | None = None,
    suite: str | None = None,
    synthetic_from: str | None = None,
    n: int | None = None,
    k: int = 3,
    seed: int = 0,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    system: str | None = None,
    concurrency: int | None = None,
    batch_size: int = generation.DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    timeout: float | None = None,
    command: str | None = None,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Collect the teacher's answers into dataset `name`; returns a summary dict.

    `timeout`: an endpoint teacher's seconds per request (default: the model's `timeout_s`)."""
    sources = [x for x in (prompts_file, suite, synthetic_from) if x]
    if len(sources) != 1:
        raise BadInput("collect", "give exactly one of --prompts FILE, --suite NAME or --synthetic-from SUITE")
    t0 = time.monotonic()
    rm = resolve(ws, teacher)
    fp = rm.fingerprint
    synthetic = bool(synthetic_from)
    if temperature is None:
        temperature = 0.7 if synthetic else 0.0  # new pairs need variety; answers are greedy
    decoding_kw = {
        "max_new_tokens": int(max_new_tokens or (64 if synthetic else ws.config.defaults.max_new_tokens)),
        "temperature": float(temperature),
    }
    recipe: dict = {
        "teacher": teacher,
        "teacher_fingerprint": fp,
        "collected_at": now(),
        "command": command or " ".join(["mirage", *sys.argv[1:]]),
        "decoding": {**decoding_kw, **({"system": system} if system else {})},
    }
    asking = _Asking(ws, rm, name, decoding_kw, recipe, concurrency, batch_size, timeout, cancel, t0)
    if synthetic:
        if not n or n <= 0:
            raise BadInput("collect", "--synthetic-from needs --n N (how many new QA pairs)", field="n")
        recipe["recipe"] = {"synthetic_from": synthetic_from, "n": int(n), "k": int(k), "seed": int(seed)}
        return (yield from _collect_synthetic(asking, synthetic_from, int(n), int(k), int(seed)))
    if prompts_file:
        prompts = read_prompts(prompts_file)
        recipe["recipe"] = {"prompts_file": str(Path(prompts_file).resolve().name), "prompts": len(prompts)}
    else:
        prompts = [it["prompt"] for it in ds_mod.iter_items(ws, suite)]
        recipe["recipe"] = {"suite": suite, "prompts": len(prompts)}
    if limit:
        prompts = prompts[:limit]
    tokenizer = _teacher_tokenizer(rm)
    dataset_id = _open_dataset(ws, name, teacher, recipe)
    prefix = [{"role": "system", "content": system}] if system else []
    convs = [prefix + [{"role": "user", "content": p}] for p in prompts]
    reqs = _chat_requests(teacher, convs, range(len(convs)), decoding_kw, fp, tokenizer)

    def to_example(r, text):
        if not text.strip():
            return None  # an empty answer teaches nothing; it stays cached and is counted
        return r.messages + [{"role": "assistant", "content": text.strip()}], {"prompt_idx": r.tag}

    # Answers cached by an earlier (killed) run go in first: nothing is asked twice.
    cached = _cached_outputs(ws, [r.key for r in reqs])
    done_reqs = [r for r in reqs if r.key in cached]
    _store(ws, dataset_id, teacher, fp, [(r, *cached[r.key]) for r in done_reqs], to_example)
    todo = [r for r in reqs if r.key not in cached]
    yield Progress(len(done_reqs), len(reqs), f"{len(done_reqs)} answers cached")
    added = [0]

    def store_fn(results):
        added[0] += _store(ws, dataset_id, teacher, fp, results, to_example)

    stats = yield from offset(asking.ask(todo, store_fn), len(done_reqs), len(reqs))
    return _finish(asking, dataset_id, stats, prompts=len(reqs), cached=len(done_reqs))


def _finish(asking: _Asking, dataset_id: int, stats: dict, **extra) -> dict:
    ws, name, teacher, t0 = asking.ws, asking.name, asking.rm.name, asking.t0
    n_examples = ws.db.execute("select count(*) from examples where dataset_id = ?", [dataset_id]).fetchone()[0]
    summary = {
        "dataset": name,
        "teacher": teacher,
        **extra,
        "asked": stats["generated"],
        "failed": stats["failed"],
        "examples": n_examples,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if stats["failed"]:
        # The dataset stays 'collecting' (hidden from `ls`) until a rerun completes it; every answer
        # is kept. Not 'importing': the importer deletes stale 'importing' rows.
        raise EndpointError(
            f"{stats['failed']} requests to '{teacher}' failed ({redact(stats['errors'][0])});"
            f" {n_examples} examples are saved in '{name}': rerun to ask the rest"
        )
    ws.db.execute("update datasets set status = 'ready' where id = ?", [dataset_id])
    return summary


def parse_qa(text: str) -> tuple[str, str] | None:
    """The first "Question: ... / Answer: ..." pair in a reply (each on its own line)."""
    m = _Q_RE.search(text or "")
    if not m:
        return None
    q = m.group(1).strip().strip("*").strip()
    a_m = _A_RE.search(text, m.end())
    if not a_m:
        return None
    a = a_m.group(1).strip().strip("*").strip()
    if "answer:" in a.lower():  # "TheAnswer: X" and similar run-ons
        a = a[a.lower().rindex("answer:") + 7 :].strip()
    if not q or not a or len(q) > 500 or len(a) > 300:
        return None
    return q, a


def _norm_q(q: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", q.lower()).split())


def _collect_synthetic(asking: _Asking, suite: str, n: int, k: int, seed: int) -> Work[dict]:
    ws, rm, name, fp, teacher = asking.ws, asking.rm, asking.name, asking.rm.fingerprint, asking.rm.name
    seeds = [it for it in ds_mod.iter_items(ws, suite) if it.get("gold")]
    if len(seeds) < k:
        raise BadInput(
            "collect",
            f"suite '{suite}' has {len(seeds)} items with answers; --k {k} needs at least {k}",
            field="synthetic_from",
        )
    tokenizer = _teacher_tokenizer(rm)
    dataset_id = _open_dataset(ws, name, teacher, asking.recipe)
    seen = {_norm_q(it["prompt"]) for it in seeds}  # copying a seed question is not a new pair
    existing: set[str] = set()
    for u, h in ws.db.execute(
        "select user_text, content_hash from examples where dataset_id = ?", [dataset_id]
    ).fetchall():
        seen.add(_norm_q(u))
        existing.add(h)
    counts = {"unparsable": 0, "duplicates": 0}

    def request_conv(i: int):
        rng = random.Random(f"{seed}:{i}")  # request i always shows the same seed pairs
        shown = rng.sample(seeds, k)
        text = SYNTH_TEMPLATE.format(
            examples="\n\n".join(f"Question: {s['prompt'].strip()}\nAnswer: {s['gold'][0]}" for s in shown)
        )
        return [{"role": "user", "content": text}], [s["id"] for s in shown]

    def to_example(r, text):
        qa = parse_qa(text)
        if qa is None:
            counts["unparsable"] += 1
            return None
        conv = [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]
        if content_hash(conv) in existing:  # stored by an earlier run: re-inserting is a no-op
            return conv, {}
        key = _norm_q(qa[0])
        if key in seen:
            counts["duplicates"] += 1
            return None
        seen.add(key)
        return (conv, {"synthetic": True, "request_idx": r.tag, "seed_items": shown_ids.get(r.tag, [])})

    def have() -> int:
        return ws.db.execute("select count(*) from examples where dataset_id = ?", [dataset_id]).fetchone()[0]

    shown_ids: dict[int, list[int]] = {}
    issued, asked, failed, errors, cached_total = 0, 0, 0, [], 0
    max_requests = max(4 * n, n + 20)  # a teacher that keeps repeating itself must not loop forever
    while have() < n and issued < max_requests:
        need = n - have()
        batch_n = min(max_requests - issued, max(need + 2, int(need * 1.25)))
        idxs = list(range(issued, issued + batch_n))
        issued += batch_n
        convs = []
        for i in idxs:
            conv, ids = request_conv(i)
            convs.append(conv)
            shown_ids[i] = ids
        # Each request index gets its own sampling seed, so equal prompts still give new pairs.
        kw = {**asking.decoding_kw, "seed": lambda i: seed * 100_003 + i}
        reqs = _chat_requests(teacher, convs, idxs, kw, fp, tokenizer)
        cached = _cached_outputs(ws, [r.key for r in reqs])
        ordered = sorted((r for r in reqs if r.key in cached), key=lambda r: r.tag)
        _store(ws, dataset_id, teacher, fp, [(r, *cached[r.key]) for r in ordered], to_example)
        cached_total += len(ordered)
        todo = [r for r in reqs if r.key not in cached]
        yield Progress(min(have(), n), n, f"{have()} pairs ({cached_total} answers cached)")

        def store_fn(results):
            _store(ws, dataset_id, teacher, fp, sorted(results, key=lambda x: x[0].tag), to_example)

        # Progress counts new pairs (what --n asks for), not requests answered.
        stats = yield from mapped(
            asking.ask(todo, store_fn), lambda p: Progress(min(have(), n), n, f"{have()}/{n} new pairs")
        )
        asked += stats["generated"]
        failed += stats["failed"]
        errors += stats["errors"]
        if stats["failed"]:
            break
    stats = {"generated": asked, "failed": failed, "errors": errors}
    summary = _finish(
        asking,
        dataset_id,
        stats,
        requests=issued,
        cached=cached_total,
        target=n,
        unparsable=counts["unparsable"],
        duplicates=counts["duplicates"],
    )
    if summary["examples"] < n:
        summary["note"] = f"only {summary['examples']} distinct pairs after {issued} requests"
    return summary


# -- job handler -------------------------------------------------------------------------------------------------
COLLECT_OPTIONS = (
    "prompts_file",
    "suite",
    "synthetic_from",
    "n",
    "k",
    "seed",
    "max_new_tokens",
    "temperature",
    "system",
    "concurrency",
    "batch_size",
    "limit",
    "timeout",
    "command",
)


def run_job(ctx) -> dict:
    """Job kind "collect": config {teacher, name, and COLLECT_OPTIONS}."""
    c = ctx.config
    summary = ctx.drive(
        collect(ctx.ws, c["teacher"], name=c["name"], cancel=ctx.cancel, **jobs.given(c, COLLECT_OPTIONS))
    )
    ctx.event(message=f"collected {summary['examples']} examples into {summary['dataset']}", **summary)
    return summary
