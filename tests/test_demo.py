"""The demo's samples are well-formed, and `mirage demo --headless --quick` runs the study end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


# -- samples ---------------------------------------------------------------------------------------
def test_qa_suite_has_enough_labelled_items():
    rows = _jsonl("qa.jsonl")
    assert len(rows) >= 150
    tasks = Counter(r["task"] for r in rows)
    assert len(tasks) >= 5 and min(tasks.values()) >= 25, tasks
    for r in rows:
        assert r["question"].strip().endswith("?"), r
        assert isinstance(r["answer"], list) and r["answer"] and all(a.strip() for a in r["answer"]), r
    assert len({r["question"].lower() for r in rows}) == len(rows), "duplicate question"
    assert len({r["id"] for r in rows}) == len(rows)


def test_geography_seed_is_held_out_from_the_eval():
    seed = _jsonl("qa_seed_geography.jsonl")
    eval_questions = {r["question"].lower() for r in _jsonl("qa.jsonl")}
    assert len(seed) >= 30
    assert all(r["task"] == "geography" and r["answer"] for r in seed)
    assert not eval_questions & {r["question"].lower() for r in seed}


def test_mc_suite_is_mmlu_shaped():
    with (SAMPLES / "mc.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 25
    assert set(rows[0]) == {"question", "A", "B", "C", "D", "answer", "subject"}
    for r in rows:
        assert r["answer"] in "ABCD" and len(r["answer"]) == 1
        assert len({r[k] for k in "ABCD"}) == 4, r  # four distinct choices
    assert len(Counter(r["subject"] for r in rows)) >= 4


def test_every_code_canonical_solution_passes_its_test(tmp_path):
    tasks = _jsonl("code.jsonl")
    assert len(tasks) >= 5
    for t in tasks:
        assert set(t) >= {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
        program = t["prompt"] + t["canonical_solution"] + "\n" + t["test"] + f"\ncheck({t['entry_point']})\n"
        script = tmp_path / "prog.py"
        script.write_text(program)
        ok = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, (t["task_id"], ok.stderr)
        # ...and the test really tests: a wrong body fails it.
        broken = t["prompt"] + "    return None\n\n" + t["test"] + f"\ncheck({t['entry_point']})\n"
        script.write_text(broken)
        bad = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0, t["task_id"]


def test_broad_prompts_are_many_varied_and_unique():
    rows = _jsonl("prompts_broad.jsonl")
    assert len(rows) >= 300
    cats = Counter(r["category"] for r in rows)
    assert set(cats) >= {"writing", "advice", "coding", "explanation", "chitchat"}
    assert min(cats.values()) >= 40
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_style_prompts_are_held_out_from_training_prompts():
    style = _jsonl("prompts_style.jsonl")
    assert len(style) >= 20 and all(r["prompt"].strip() and r["task"] for r in style)
    assert not {r["prompt"].lower() for r in style} & {r["prompt"].lower() for r in _jsonl("prompts_broad.jsonl")}


def test_sample_generators_reproduce_the_committed_files(tmp_path):
    # The scripts are the provenance: running them must give back exactly the committed files.
    for script, outputs in (("build_samples.py", ["qa.jsonl", "qa_seed_geography.jsonl", "mc.csv", "code.jsonl", "prompts_style.jsonl"]),
                            ("make_prompts.py", ["prompts_broad.jsonl"])):
        copy = tmp_path / script
        copy.write_text((SAMPLES / script).read_text())
        subprocess.run([sys.executable, str(copy)], check=True, capture_output=True, timeout=60)
        for out in outputs:
            assert (tmp_path / out).read_bytes() == (SAMPLES / out).read_bytes(), out
