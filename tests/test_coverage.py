"""Coverage: known answers with the real packaged MiniLM on small data, caching, faults, subsets, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest

from core.coverage import compute as cov
from core.coverage import subsets
from core.coverage.inputs import DEFAULT_THRESHOLD
from core.coverage.ngrams import NgramIndex, lexical_words, normalize_answer
from core.data.datasets import iter_examples
from core.errors import Cancelled, MirageError, ModelError
from core.models import embeddings as emb
from core.runtime import progress
from core.store.workspace import dumps, now

PLANTED = (
    "when was the last time the philadelphia eagles won the championship before the super bowl era "
    "and who was their coach"
)
SHORT_PLANTED = "who wrote the opera carmen"
UNRELATED = [
    "how many moons does neptune have",
    "what is the boiling point of mercury in kelvin",
    "who painted the ceiling of the sistine chapel",
]
COOKING = [
    "How do I bake sourdough bread with a starter?",
    "What is a good recipe for tomato soup?",
    "How long should I boil an egg for a soft yolk?",
    "How can I make fluffy pancakes from scratch?",
    "What spices go well in a vegetable curry?",
    "How do I caramelize onions properly?",
]
CODE = [
    "Write a Python function that reverses a list.",
    "How do I sort a list of numbers in Python?",
    "Write a Python function to remove duplicates from a list.",
    "How do I append an item to a list in Python?",
    "Write Python code to find the largest number in a list.",
    "How do I loop over a list with its index in Python?",
]


# -- helpers: rows written the way core.data.ingest writes them (m001 schema) -------------------------------
def add_dataset(ws, name, rows):
    """rows: (user, assistant, source)."""
    with ws.transaction():
        did = ws.db.execute(
            "insert into datasets (name, kind, status, created_at) values (?, 'imitation', 'ready', ?)", [name, now()]
        ).lastrowid
        append_examples(ws, did, rows)
    return did


def append_examples(ws, did, rows):
    start = ws.db.execute("select coalesce(max(idx) + 1, 0) from examples where dataset_id = ?", [did]).fetchone()[0]
    with ws.transaction():
        for i, (u, a, src) in enumerate(rows):
            conv = [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            ws.db.execute(
                "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text, n_tokens,"
                " content_hash) values (?,?,?,?,?,?,?,?)",
                [
                    did,
                    start + i,
                    src,
                    dumps(conv),
                    u,
                    a,
                    len(f"{u} {a}".split()),
                    hashlib.sha256(dumps(conv).encode()).hexdigest(),
                ],
            )


def add_suite(ws, name, rows, kind="qa"):
    """rows: (prompt, gold aliases, task)."""
    with ws.transaction():
        sid = ws.db.execute(
            "insert into suites (name, kind, created_at) values (?, ?, ?)", [name, kind, now()]
        ).lastrowid
        for i, (p, gold, task) in enumerate(rows):
            ws.db.execute(
                "insert into items (suite_id, idx, prompt, task, gold, content_hash) values (?,?,?,?,?,?)",
                [sid, i, p, task, dumps(gold), hashlib.sha256(p.encode()).hexdigest()],
            )
    return sid


@pytest.fixture
def study(ws):
    data = [(q, "Here is a step by step answer.", "chat") for q in COOKING]
    data += [(q, "Sure, here is the code.", "code") for q in CODE]
    data.append((PLANTED, "They won in 1960 under coach Buck Shaw.", "nq-synth"))
    data.append((f"Quick question: {SHORT_PLANTED}? Thanks", "Georges Bizet wrote Carmen.", "nq-synth"))
    add_dataset(ws, "imit", data)
    add_suite(
        ws,
        "qa",
        [(PLANTED, ["1960"], "sports"), (SHORT_PLANTED, ["Georges Bizet"], "music")]
        + [(q, ["x"], "science") for q in UNRELATED],
    )
    return ws


def by_prompt(res):
    return {r["prompt"]: r for r in res["items"]}


# -- known answers ---------------------------------------------------------------------------------
def test_planted_item_found_and_flagged_unrelated_not(study):
    res = progress.run(cov.compute(study, "imit", "qa", k=3))
    items = by_prompt(res)
    planted = items[PLANTED]
    assert planted["max_similarity"] == pytest.approx(1.0, abs=0.01)
    assert planted["contaminated"] and planted["supported"]
    assert planted["longest_ngram"] == len(lexical_words(PLANTED))
    assert planted["answer_leak"] and planted["answer_in_data"] == 1
    nb = planted["neighbors"][0]
    assert nb["source"] == "nq-synth" and nb["text"].startswith("when was the last time")
    assert len(planted["neighbors"]) == 3
    assert [n["similarity"] for n in planted["neighbors"]] == sorted(
        (n["similarity"] for n in planted["neighbors"]), reverse=True
    )
    # shorter than 13 words: contaminated because it occurs whole inside a user turn
    short = items[SHORT_PLANTED]
    assert short["contaminated"] and short["longest_ngram"] == 5 and short["answer_leak"]
    for q in UNRELATED:
        assert not items[q]["contaminated"], q
        assert items[q]["max_similarity"] < DEFAULT_THRESHOLD, q
        assert not items[q]["supported"] and not items[q]["answer_leak"]
    tasks = {t["task"]: t for t in res["tasks"]}
    assert tasks["sports"]["support"] == 1.0 and tasks["science"]["support"] == 0.0
    assert tasks["sports"]["by_source"]["nq-synth"] == {"support": 1.0, "examples_served": 1}
    assert tasks["science"]["examples_served"] == 0
    assert res["summary"]["support"] == pytest.approx(2 / 5)
    # read functions used by the TUI and scoring
    assert cov.task_support(study, "imit", "qa") == {"music": 1.0, "science": 0.0, "sports": 1.0}
    sup = cov.item_support(study, "imit", "qa")
    assert max(sup.values()) == pytest.approx(1.0, abs=0.01) and len(sup) == 5


def test_results_are_stored_and_reused(study):
    first = progress.run(cov.compute(study, "imit", "qa"))
    again = progress.run(cov.compute(study, "imit", "qa"))
    assert again["run_id"] == first["run_id"]
    assert cov.results(study, "imit", "qa")["tasks"] == first["tasks"]
    other = progress.run(cov.compute(study, "imit", "qa", threshold=0.3))
    assert other["run_id"] != first["run_id"] and other["threshold"] == 0.3
    # both kept: keyed by threshold
    assert study.db.execute("select count(*) from coverage_runs").fetchone()[0] == 2


def test_ngram_index_unit():
    users = [PLANTED, "tell me about cats"]
    answers = ["The Eagles won in 1960.", "Cats are small. The capital is Paris."]
    idx = progress.run(NgramIndex.build([7, 8], users, answers))
    assert idx.has_13gram("prefix words " + PLANTED)
    words = lexical_words(PLANTED)
    assert not idx.has_13gram(" ".join(words[:12]))  # only 12 words: no 13-gram
    assert idx.longest_shared([" ".join(words[3:15]), "cats are big", "zebra"]).tolist() == [12, 2, 0]
    hits = idx.answer_hits([["1960"], ["paris", "london"], ["The Eagles"], ["rome"]])
    assert [h.tolist() for h in hits] == [[7], [8], [7], []]
    assert normalize_answer("The  Great, Gatsby!") == "great gatsby"


# -- clusters ---------------------------------------------------------------------------------------
def test_clusters_stable_under_seed_and_separate_topics(study):
    a = progress.run(cov.compute(study, "imit", "qa", n_clusters=2, seed=3))
    study.db.execute("delete from coverage_runs")
    study.db.execute("delete from coverage_clusterings")
    b = progress.run(cov.compute(study, "imit", "qa", n_clusters=2, seed=3))
    assert [c["size"] for c in a["clusters"]] == [c["size"] for c in b["clusters"]]
    assert [c["terms"] for c in a["clusters"]] == [c["terms"] for c in b["clusters"]]

    def members():
        return dict(
            study.db.execute(
                "select e.user_text, m.cluster from coverage_cluster_members m join examples e on e.id = m.example_id"
                " join coverage_clusterings c on c.id = m.clustering_id"
                " where c.id = (select max(id) from coverage_clusterings)"
            )
        )

    m = members()
    # cooking and code questions land in different clusters
    assert len({m[q] for q in COOKING}) == 1 and len({m[q] for q in CODE}) == 1
    assert m[COOKING[0]] != m[CODE[0]]
    assert sum(c["size"] for c in a["clusters"]) == 14
    assert all(c["terms"] and c["samples"] for c in a["clusters"])
    sports = [c for c in a["clusters"] if any(t["task"] == "sports" for t in c["tasks"])]
    assert len(sports) == 1


# -- faults -----------------------------------------------------------------------------------------
def test_empty_data_or_suite_is_a_clear_error(ws):
    add_dataset(ws, "empty", [])
    add_dataset(ws, "imit", [("hello there", "hi", "chat")])
    add_suite(ws, "qa", [("who are you", ["me"], "t")])
    add_suite(ws, "none", [])
    with pytest.raises(MirageError, match="dataset 'empty' has no examples"):
        progress.run(cov.compute(ws, "empty", "qa"))
    with pytest.raises(MirageError, match="suite 'none' has no items"):
        progress.run(cov.compute(ws, "imit", "none"))
    with pytest.raises(MirageError, match="no dataset 'nope'"):
        progress.run(cov.compute(ws, "nope", "qa"))
    with pytest.raises(ModelError, match="not a local folder"):
        progress.run(cov.compute(ws, "imit", "qa", embedding_model="/no/such/model"))


def test_incremental_only_new_rows_embedded(study):
    first = progress.run(cov.compute(study, "imit", "qa"))
    assert first["embedded_now"] == {"examples": 14, "items": 5}
    did = study.db.execute("select id from datasets where name='imit'").fetchone()[0]
    append_examples(
        study,
        did,
        [
            ("how many moons does neptune have exactly", "Fourteen known moons.", "space"),
            ("what is the tallest mountain on mars", "Olympus Mons.", "space"),
        ],
    )
    second = progress.run(cov.compute(study, "imit", "qa"))
    assert second["embedded_now"] == {"examples": 2, "items": 0}
    neptune = by_prompt(second)["how many moons does neptune have"]
    assert neptune["neighbors"][0]["source"] == "space" and neptune["supported"] and neptune["contaminated"]
    # the stale run for the same question was replaced
    assert study.db.execute("select count(*) from coverage_runs").fetchone()[0] == 1


def test_whole_conversation_mode_is_cached_apart(study):
    user = progress.run(cov.compute(study, "imit", "qa"))
    whole = progress.run(cov.compute(study, "imit", "qa", whole_conversation=True))
    assert whole["mode"] == "conversation" and whole["run_id"] != user["run_id"]
    assert whole["embedded_now"] == {"examples": 14, "items": 0}  # prompts reused, conversations new
    planted = by_prompt(whole)[PLANTED]
    # the response is part of the embedded text now, so the match is close but no longer exact
    assert 0.7 < planted["max_similarity"] < 0.999 and planted["contaminated"]
    assert sorted(p.name for p in (study.artifacts / "embeddings" / user["model_key"]).iterdir() if p.is_dir()) == [
        "conversation",
        "prompt",
        "user",
    ]


def test_cancel_halfway_then_continue(study, monkeypatch):
    monkeypatch.setattr(emb, "SHARD_ROWS", 4)
    cancel = threading.Event()
    gen = cov.compute(study, "imit", "qa", cancel=cancel)
    with pytest.raises(Cancelled):
        for p in gen:
            if p.done >= 4:  # after the first shard of 4 examples was written
                cancel.set()
    assert study.db.execute("select count(*) from coverage_runs").fetchone()[0] == 0
    res = progress.run(cov.compute(study, "imit", "qa"))
    assert res["embedded_now"]["examples"] == 14 - 4
    assert by_prompt(res)[PLANTED]["contaminated"]


def _tiny_sentence_model(tmp_path):
    """A 2-layer random BERT with MiniLM's tokenizer: a different embedding model, built in seconds."""
    from transformers import BertConfig, BertModel

    path = tmp_path / "tiny-embedder"
    path.mkdir()
    src = emb.packaged_model_path()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, path / f)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    return path


def test_other_embedding_model_never_mixes(study, tmp_path):
    default = progress.run(cov.compute(study, "imit", "qa"))
    tiny = _tiny_sentence_model(tmp_path)
    other = progress.run(cov.compute(study, "imit", "qa", embedding_model=str(tiny)))
    assert other["embedded_now"] == {"examples": 14, "items": 5}  # nothing reused from MiniLM's cache
    assert other["model_key"] != default["model_key"] and other["embedding_model"] == "tiny-embedder"
    dirs = sorted(p.name for p in (study.artifacts / "embeddings").iterdir())
    assert dirs == sorted([default["model_key"], other["model_key"]])
    # a cache folder whose manifest names another model is refused, not overwritten
    manifest = study.artifacts / "embeddings" / other["model_key"] / "manifest.json"
    m = json.loads(manifest.read_text())
    m["fingerprint"] = "0" * 64
    manifest.write_text(json.dumps(m))
    with pytest.raises(ModelError, match="different model"):
        progress.run(cov.compute(study, "imit", "qa", embedding_model=str(tiny), force=True))
    assert cov.results(study, "imit", "qa")["run_id"] == other["run_id"]


# -- subsets ----------------------------------------------------------------------------------------
def test_subsets_by_task_cluster_source_and_budget(study):
    res = progress.run(cov.compute(study, "imit", "qa", n_clusters=2))
    s = subsets.make_subset(study, "sports-support", "imit", task_support=("qa", "sports"))
    assert s["examples"] == 1
    assert [e["user_text"] for e in iter_examples(study, "sports-support")] == [PLANTED]
    subsets.make_subset(study, "code-only", "imit", source="code")
    assert sorted(e["user_text"] for e in iter_examples(study, "code-only")) == sorted(CODE)
    cluster = by_prompt(res)[PLANTED]["neighbors"][0]["cluster"]
    c = subsets.make_subset(study, "c", "imit", cluster=cluster)
    size = next(x["size"] for x in res["clusters"] if x["cluster"] == cluster)
    assert c["examples"] == size
    budget = subsets.make_subset(study, "small", "imit", max_tokens=30, seed=1)
    assert 0 < budget["tokens"] <= 30
    assert sum(e["n_tokens"] for e in iter_examples(study, "small")) == budget["tokens"]
    rows = {r["name"]: r for r in subsets.list_subsets(study)}
    assert rows["code-only"]["examples"] == 6 and rows["code-only"]["parent"] == "imit"
    assert rows["sports-support"]["spec"]["task"] == "sports"
    with pytest.raises(MirageError, match="already exists"):
        subsets.make_subset(study, "code-only", "imit", source="code")
    with pytest.raises(MirageError, match="would be empty"):
        subsets.make_subset(study, "none", "imit", task_support=("qa", "science"))
    with pytest.raises(MirageError, match="out of range"):
        subsets.make_subset(study, "bad", "imit", cluster=9)


# -- CLI and job --------------------------------------------------------------------------------------
def test_cli_json_shape_and_errors(study, capsys):
    from core.cli import main

    with pytest.raises(SystemExit) as e:
        main(["coverage", "--data", "imit", "--suite", "qa", "--json", "--k", "2", "--workspace", str(study.root)])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"items", "tasks", "clusters"} <= set(out)
    assert out["embedding_precision"] == emb.resolve_model("").precision
    item = next(r for r in out["items"] if r["prompt"] == PLANTED)
    assert {"prompt", "task", "max_similarity", "contaminated", "neighbors"} <= set(item)
    assert item["contaminated"] is True and len(item["neighbors"]) == 2
    assert {"example_id", "similarity", "source", "text"} <= set(item["neighbors"][0])
    assert {"task", "items", "support"} <= set(out["tasks"][0])
    with pytest.raises(SystemExit) as e:
        main(["subset", "create", "s", "--data", "imit", "--suite", "qa", "--task", "music", "-w", str(study.root)])
    assert e.value.code == 0 and "subset s: 1 examples" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["subset", "ls", "--json", "-w", str(study.root)])
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["s"]
    with pytest.raises(SystemExit) as e:
        main(["coverage", "--data", "imit", "--suite", "missing", "-w", str(study.root)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: no suite 'missing'") and len(err.strip().splitlines()) == 1


def test_coverage_job_runs_in_foreground(study):
    from core.runtime import jobs

    job_id = jobs.submit(study, "coverage", "cov", {"data": "imit", "suite": "qa", "k": 2}, detach=False)
    job = jobs.get_job(study, job_id)
    assert job["status"] == "done", job.get("error")
    assert cov.task_support(study, "imit", "qa")["sports"] == 1.0


def test_multi_process_pool_gives_the_same_vectors(ws, tmp_path):
    """--device cpu --device cpu: sentence-transformers' multi-process pool, same vectors as one process."""
    model = emb.resolve_model(str(_tiny_sentence_model(tmp_path)), precision="fp32")
    texts = [f"question number {i} about {w}" for i, w in enumerate(["rivers", "kings", "songs", "atoms"] * 3)]
    keys = [f"k{i}" for i in range(len(texts))]
    single, n1 = progress.run(emb.embed(ws, model, "user", keys, texts))
    shutil.rmtree(ws.artifacts / "embeddings")
    pooled, n2 = progress.run(emb.embed(ws, model, "user", keys, texts, devices=["cpu", "cpu"]))
    assert n1 == n2 == len(texts)
    np.testing.assert_allclose(pooled.astype(np.float32), single.astype(np.float32), atol=2e-3)


def test_bf16_embedding_keeps_the_fp32_neighbours(ws):
    """The bf16 path (autocast matmuls, larger batches) finds the same nearest examples as fp32, in
    its own cache; a text under two keys is embedded once and stored under both."""
    fp32, bf16 = emb.resolve_model("", precision="fp32"), emb.resolve_model("", precision="bf16")
    assert bf16.key != fp32.key and bf16.vectors_id != fp32.vectors_id
    assert emb.precision_of_key(bf16.key) == "bf16" and emb.precision_of_key(fp32.key) == "fp32"
    examples = COOKING + CODE + UNRELATED + [PLANTED, f"Quick question: {SHORT_PLANTED}? Thanks"]
    examples.append(COOKING[0])
    queries = ["how do i make bread", "python list sorting", "who won the championship for philadelphia"]
    queries += [SHORT_PLANTED, "what is the temperature at which mercury boils"]
    keys = [f"e{i}" for i in range(len(examples))]
    qkeys = [f"q{i}" for i in range(len(queries))]
    got = {}
    for m in (fp32, bf16):
        ex, new = progress.run(emb.embed(ws, m, "user", keys, examples))
        q, _ = progress.run(emb.embed(ws, m, "prompt", qkeys, queries))
        assert new == len(keys) and np.array_equal(ex[0], ex[-1])
        got[m.precision] = (q.astype(np.float32) @ ex.astype(np.float32).T, ex.astype(np.float32))
    ref, sims = got["fp32"][0], got["bf16"][0]
    top = np.argsort(-sims, axis=1)[:, :3]
    # fp32's 3 nearest examples, except those within 0.02 of the 4th (a near tie may swap).
    fourth = np.sort(ref, axis=1)[:, -4]
    for qi in range(len(queries)):
        assert set(np.flatnonzero(ref[qi] > fourth[qi] + 0.02)) <= set(top[qi].tolist()), qi
    assert np.abs(sims - ref).max() < 0.03
    cos = (got["bf16"][1] * got["fp32"][1]).sum(axis=1)
    assert cos.min() > 0.99 and not np.array_equal(got["bf16"][1], got["fp32"][1])  # close, yet really bf16


def test_bf16_batches_group_texts_by_token_count(ws, tmp_path):
    """Batches sorted by characters padded short-token texts to their batch's longest: batches now
    hold texts of near-equal token counts, grow for short texts and never fall below what was asked."""
    st = emb.load(emb.resolve_model(str(_tiny_sentence_model(tmp_path)), precision="fp32"))
    max_len = st.max_seq_length
    texts = ["who wrote carmen"] * 600 + ["word " * 2000] + ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] * 3
    batches = emb._token_batches(st, texts, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    assert batches[0][0] == 600  # the longest in tokens comes first
    assert len(batches[0]) == max(64, min(emb.BF16_BATCH, emb.BF16_BATCH_TOKENS // max_len))
    lengths = [len(st.tokenizer(texts[i], truncation=True, max_length=max_len)["input_ids"]) for i in range(len(texts))]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    assert max(len(b) for b in batches) == emb.BF16_BATCH
    assert len(emb._token_batches(st, ["word " * 2000] * 600, 512)[0]) == 512  # never below what was asked


def test_embed_compile_swaps_in_the_compiled_transformer(ws, tmp_path):
    """MIRAGE_EMBED_COMPILE=1 compiled nothing that ran: the compiled module was set on a read-only
    alias and registered beside the eager one, which kept running."""
    import shutil as sh

    import torch

    model = emb.resolve_model(str(_tiny_sentence_model(tmp_path)), precision="fp32")
    st = emb.load(model)
    eager = st[0].auto_model
    texts = ["who wrote carmen", "a longer question about the river and its bridges"]
    ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    try:
        emb._compile(st)
        if sh.which("cc") or sh.which("gcc"):  # inductor builds C++: without a compiler it stays eager
            assert st[0]._mirage_compiled is True
            assert st[0].auto_model is not eager and hasattr(st[0].auto_model, "_orig_mod")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
            assert float((got * ref).sum(axis=1).min()) > 0.98
    finally:
        st[0].model = eager
        del st[0]._mirage_compiled
