"""One meaning of tokens: a subset's exact count is the count `finetune --tokens` trains on; import counts say they are approximate."""

from __future__ import annotations

import json

import pytest
from tiny_lm import build_tiny_llama

from core.cli import main
from core.finetune import config, trainer
from core.finetune import tokens as ftokens

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "Name the largest ocean on the planet, and say in one sentence why it is so large.",
    "Write a short poem about rivers and mountains, then explain the poem line by line for a child.",
    "hello there",
    "What is two plus two?",
    "Complete the following Python function: def add(a, b):",
    "Which is heavier, a kilogram of feathers or a kilogram of iron? Think it through step by step first.",
]
ANSWERS = [
    "Paris.",
    "William Shakespeare.",
    "The Pacific Ocean.",
    "Rivers run, mountains stand.",
    "Hi!",
    "4",
    "return a + b",
    "Neither.",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "base")


def mirage(capsys, ws, *args):
    with pytest.raises(SystemExit) as e:
        main([*args, "--workspace", str(ws.root)])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.out


@pytest.fixture
def data(ws, tmp_path, capsys):
    f = tmp_path / "chat.jsonl"
    f.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in zip(QUESTIONS, ANSWERS)
        )
    )
    return json.loads(mirage(capsys, ws, "import", "data", str(f), "--name", "chat", "--json"))


def test_import_counts_are_labelled_approximate(ws, data, capsys, tmp_path):
    assert data["tokens_approx"] is True and data["tokens"] > 0
    listed = json.loads(mirage(capsys, ws, "ls", "datasets", "--json"))
    assert listed[0]["tokens"] == data["tokens"] and listed[0]["tokens_approx"] is True
    assert f"~{data['tokens']:,}" in mirage(capsys, ws, "ls", "datasets")
    f = tmp_path / "more.jsonl"
    f.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    text = mirage(capsys, ws, "import", "data", str(f), "--name", "more")
    assert "~" in text and "approximate" in text
    out = json.loads(mirage(capsys, ws, "subset", "create", "cut", "--data", "chat", "--max-tokens", "40", "--json"))
    assert out["tokens_approx"] is True and out["tokens_exact"] is None and out["tokens"] <= 40
    assert "approximate" in mirage(capsys, ws, "subset", "create", "cut2", "--data", "chat", "--source", "chat.jsonl")


@pytest.mark.parametrize("template,max_length", [(None, None), ("default", 48)])
def test_subset_exact_tokens_equal_finetune_plan(ws, data, base, capsys, template, max_length):
    extra = [
        *(["--template", template] if template else []),
        *(["--max-length", str(max_length)] if max_length else []),
    ]
    whole = json.loads(
        mirage(capsys, ws, "subset", "create", "all", "--data", "chat", "--base", str(base), *extra, "--json")
    )
    cfg = config.make_config(str(base), "all", template=template, max_length=max_length)
    plan = trainer.make_plan(ws, cfg)
    assert whole["tokens_exact"] == plan.sel.tokens  # the same data, the same number
    assert whole["examples"] == len(plan.sel.ids) and plan.sel.skipped == 0
    assert whole["tokens_exact"] > whole["tokens"]  # the template and the tokenizer, against content bytes
    if max_length:  # long questions leave no assistant token within 48: left out, as finetune skips them
        assert whole["skipped_untrainable"] >= 2 and whole["examples"] == len(QUESTIONS) - whole["skipped_untrainable"]
        assert max(len(x) for x in plan.sel.ids) <= max_length
    # a budget by the same count: the subset is within it, and finetune on it trains on exactly that
    budget = whole["tokens_exact"] // 2
    cut = json.loads(
        mirage(capsys, ws, "subset", "create", "cut", "--data", "chat", "--base", str(base), *extra,
               "--max-tokens", str(budget), "--json")
    )  # fmt: skip
    assert 0 < cut["tokens_exact"] <= budget and cut["examples"] < whole["examples"]
    plan = trainer.make_plan(ws, config.make_config(str(base), "cut", template=template, max_length=max_length))
    assert plan.sel.tokens == cut["tokens_exact"]
    # the finetune budget note reads the same count
    from core.finetune import runs

    (note,) = runs.budget_notes(ws, "cut", [budget * 10], base=str(base), template=template, max_length=max_length)
    assert f"{cut['tokens_exact']:,} tokens by" in note and "approximate" not in note
    shown = mirage(capsys, ws, "subset", "ls")
    assert f"{cut['tokens_exact']:,}" in shown and f"~{cut['tokens_exact']:,}" not in shown


def test_counts_are_cached_by_content_and_tokenizer(ws, data, base):
    auto = ftokens.exact_counter(ws, str(base))
    ids = [r[0] for r in ws.db.execute("select id from examples order by id")]
    first = auto.counts(ids)
    assert ws.db.execute("select count(*) from token_counts where tokenizer = ?", [auto.fingerprint]).fetchone()[0] == 8
    # a cached count is read, not recomputed: overwrite one row and the counter returns the row's value
    h = ws.db.execute("select content_hash from examples where id = ?", [ids[0]]).fetchone()[0]
    ws.db.execute("update token_counts set n_tokens = 7 where content_hash = ?", [h])
    assert ftokens.exact_counter(ws, str(base)).counts(ids[:1]) == {ids[0]: 7}
    # another template is another tokenizer fingerprint: counted apart
    other = ftokens.exact_counter(ws, str(base), template="default")
    assert other.fingerprint != auto.fingerprint
    assert other.counts(ids) != first
    assert ws.db.execute("select count(distinct tokenizer) from token_counts").fetchone()[0] == 2
    # the whole rendering is kept, so another max_length reads the same rows
    short = ftokens.exact_counter(ws, str(base), max_length=10)
    assert short.fingerprint == auto.fingerprint
    assert all(v <= 10 for v in short.counts(ids).values())
    assert ws.db.execute("select count(*) from token_counts").fetchone()[0] == 16
