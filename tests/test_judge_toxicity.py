"""The judge against the teacher (both orders, concurrent, length-controlled win rate), toxicity by a
local classifier and by the judge, and the report's columns for them and for exact_match_official."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from core.analysis import report
from core.runtime import progress
from core.scores import aggregate, scoring, winrate
from core.store.workspace import dumps, now
from tests.test_scoring import add_outputs, add_suite, run_cli


class _BiasedJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible judge with known habits: `mode` "first" always prefers response A
    (pure position bias), "longer" prefers the longer response; toxicity is 0.9 for "idiot"."""

    mode = "first"
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def do_POST(self):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        time.sleep(0.05)  # long enough for concurrent requests to overlap
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        if "Response A:" in prompt:
            a = prompt.split("Response A:\n")[1].split("\n\nResponse B:")[0]
            b = prompt.split("Response B:\n")[1].split("\n\nReply with")[0]
            reply = "A" if cls.mode == "first" or len(a) > len(b) else "B"
        elif prompt.startswith("Rate how toxic"):
            reply = "0.9" if "idiot" in prompt else "0.05"
        else:
            reply = "3"
        raw = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "j",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        with cls.lock:
            cls.in_flight -= 1

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_ws(ws):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BiasedJudge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ws.db.execute(
        "insert into models (name, kind, spec, created_at) values ('judge', 'openai', ?, ?)",
        [dumps({"base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1", "model": "judge-1"}), now()],
    )
    n = 12
    add_suite(ws, "chat", "prompts", [{"prompt": f"Tell me about topic {i}."} for i in range(n)])
    # the student is longer than the teacher on 9 of 12 items, much shorter on 3; one output is rude
    teacher = [f"Topic {i} is a topic." for i in range(9)] + [
        f"Topic {i} is a topic. " + "More. " * 30 for i in range(9, n)
    ]
    add_outputs(ws, "teacher", "chat", teacher)
    student = [f"Topic {i} is a topic, and here is a lot more about it: " + "detail " * (5 + i) for i in range(9)]
    student += ["Short.", "Tiny.", "You idiot."]
    add_outputs(ws, "student", "chat", student)
    yield ws
    srv.shutdown()


def _values(ws, metric, model="student"):
    return [
        (r[0], json.loads(r[1]))
        for r in ws.db.execute(
            "select s.value, s.meta from scores s join generations g on g.id = s.generation_id"
            " where s.metric = ? and g.model = ? order by g.item_id",
            [metric, model],
        )
    ]


def _rec(recs, model, metric):
    return next(r for r in recs if r["model"] == model and r["task"] == "all" and r["metric"] == metric)


def test_both_orders_cancel_position_bias_and_requests_run_concurrently(judge_ws):
    _BiasedJudge.mode, _BiasedJudge.max_in_flight = "first", 0
    progress.run(scoring.score_suite(judge_ws, "chat", teacher="teacher", judge="judge", judge_concurrency=4))
    prefs = _values(judge_ws, "judge_preference")
    assert len(prefs) == 12
    # a judge that always says "A" gives the teacher one order and the model the other
    assert all(
        v == 0.5 and m["teacher_first"] == "A" and m["model_first"] == "A" and not m["consistent"] for v, m in prefs
    )
    assert 2 <= _BiasedJudge.max_in_flight <= 4
    tox = [v for v, _ in _values(judge_ws, "judge_toxicity")]
    assert tox == [0.05] * 11 + [0.9]


def test_win_rate_comes_with_its_length_controlled_value_in_the_report(judge_ws):
    _BiasedJudge.mode = "longer"
    progress.run(scoring.score_suite(judge_ws, "chat", teacher="teacher", judge="judge"))
    prefs = [v for v, _ in _values(judge_ws, "judge_preference")]
    assert prefs == [1.0] * 9 + [0.0] * 3  # the longer response wins, in both orders
    recs = aggregate.aggregate(judge_ws, "chat", teacher="teacher", n_boot=100)
    raw, lc = _rec(recs, "student", "judge_preference"), _rec(recs, "student", "judge_preference_lc")
    assert raw["value"] == pytest.approx(0.75) and lc["n"] == 12
    # the GLM itself is checked against alpaca-eval in test_judge_winrate; here: it is fit on the
    # stored preferences and the lengths of the outputs the judge compared
    assert lc["value"] != pytest.approx(raw["value"], abs=0.01)
    outs = {(r[0], r[1]): r[2] for r in judge_ws.db.execute("select model, item_id, output from generations")}
    items = sorted({i for _, i in outs})
    assert lc["value"] == pytest.approx(
        winrate.length_controlled_winrate(
            prefs, [len(outs[("student", i)]) for i in items], [len(outs[("teacher", i)]) for i in items]
        )
    )
    assert not any(r["model"] == "teacher" and r["metric"].startswith("judge_preference") for r in recs)
    rep = report.build(judge_ws, "chat", teacher="teacher")
    assert rep["table2_metrics"].index("judge_preference_lc") == rep["table2_metrics"].index("judge_preference") + 1
    md = report.render_md(rep)
    assert "judge_preference_lc" in md and f"{100 * lc['value']:.1f}" in md


def test_report_shows_exact_match_official_beside_exact_match(ws):
    add_suite(ws, "qa", "qa", [{"prompt": "What is the capital of France?", "gold": ["Paris"]}] * 2)
    add_outputs(ws, "chatty", "qa", ["The capital of France is Paris.", "Paris"])
    progress.run(scoring.score_suite(ws, "qa", teacher=None))
    rep = report.build(ws, "qa")
    cols = rep["table1_metrics"]
    assert cols.index("exact_match_official") == cols.index("exact_match") + 1
    assert rep["comparable_metric"] == "exact_match_official"
    em = {r["metric"]: r["value"] for r in rep["table1"] if r["task"] == "all"}
    assert em["exact_match"] == 1.0 and em["exact_match_official"] == 0.5
    md = report.render_md(rep)
    assert "comparable with published NQ-open numbers" in md and "exact_match_official" in md


def _tiny_toxicity_classifier(folder):
    """A 2-layer BERT with a word-level tokenizer, trained for a moment to flag the word "idiot"."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "you", "idiot", "stupid", "hello", "friend", "nice", "day"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "neutral", 1: "toxic"},
        label2id={"neutral": 0, "toxic": 1},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    texts = ["you idiot", "idiot", "stupid idiot", "idiot you", "hello friend", "nice day", "hello you", "friend"]
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    enc = tok(texts, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(15):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_toxicity_from_a_local_classifier_on_a_prompts_suite(ws, tmp_path):
    from core.data.ingest import import_suite

    folder = tmp_path / "tox"
    _tiny_toxicity_classifier(folder)
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text(
        "".join(json.dumps({"prompt": {"text": f"Say something {i}", "toxicity": 0.1}}) + "\n" for i in range(3))
    )
    progress.run(import_suite(ws, rtp, "rtp"))
    add_outputs(ws, "m", "rtp", ["hello friend", "you idiot", "idiot idiot"])
    with pytest.raises(Exception, match="toxicity_model"):
        progress.run(scoring.score_suite(ws, "rtp", teacher=None, toxicity=True))
    ws.config.defaults.toxicity_model = str(folder)
    first = progress.run(scoring.score_suite(ws, "rtp", teacher=None, toxicity=True))
    tox = _values(ws, "toxicity", "m")
    values = [v for v, _ in tox]
    assert values[0] < 0.5 < min(values[1], values[2])
    assert tox[0][1]["label"] == "toxic"
    # the stored scores are the folder's model's own softmax of its toxic label
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    clf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = [
            float(torch.softmax(clf(**tok(t, return_tensors="pt")).logits, -1)[0, 1])
            for t in ("hello friend", "you idiot", "idiot idiot")
        ]
    assert values == pytest.approx(ref, abs=1e-5)
    again = progress.run(scoring.score_suite(ws, "rtp", teacher=None, toxicity=True))
    assert again["computed"] == 0 and again["cached"] >= first["cached"] + 3
    rec = _rec(aggregate.aggregate(ws, "rtp", teacher=None, n_boot=50), "m", "toxicity")
    assert rec["value"] == pytest.approx(sum(values) / 3) and rec["n"] == 3
    # the CLI: a folder named on the command line, scores cached under the same fingerprint
    out = json.loads(run_cli(ws, "score", "--suite", "rtp", "--toxicity-model", str(folder), "--json"))
    assert _rec(out, "m", "toxicity")["value"] == pytest.approx(rec["value"])
