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
    for script, outputs in (
        ("build_samples.py", ["qa.jsonl", "qa_seed_geography.jsonl", "mc.csv", "code.jsonl", "prompts_style.jsonl"]),
        ("make_prompts.py", ["prompts_broad.jsonl"]),
    ):
        copy = tmp_path / script
        copy.write_text((SAMPLES / script).read_text())
        subprocess.run([sys.executable, str(copy)], check=True, capture_output=True, timeout=60)
        for out in outputs:
            assert (tmp_path / out).read_bytes() == (SAMPLES / out).read_bytes(), out


# -- the study, end to end on the real packaged models -----------------------------------------------
QUICK_MODELS = ("gemma3-270m", "imitation-broad-quick", "imitation-geography-quick", "teacher")


def _run_demo(ws_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    import time

    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "core", "demo", "--headless", "--quick", "--workspace", str(ws_path)],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO,
    )
    return proc, time.monotonic() - t0


def _study_counts(ws_path: Path) -> dict:
    from core.runtime import jobs
    from core.store.workspace import Workspace
    from core.study import job as demo

    ws = Workspace.open(ws_path)
    study = [j for j in jobs.list_jobs(ws, kind="study") if j["status"] == "done"][-1]
    return {
        "steps": demo.step_results(ws, study["id"]),
        "generations": ws.db.execute("select count(*) from generations").fetchone()[0],
        "scores": ws.db.execute("select count(*) from scores").fetchone()[0],
        "jobs": ws.db.execute("select count(*) from jobs where kind != 'study'").fetchone()[0],
    }


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_demo_headless_quick_runs_the_study_and_reruns_incrementally(tmp_path):
    ws_path = tmp_path / "demo"
    first, t_first = _run_demo(ws_path)
    assert first.returncode == 0, first.stderr[-4000:]
    report = first.stdout
    # Every model's scores are in the report: a QA row per model with a number in it.
    for model in QUICK_MODELS:
        rows = [ln for ln in report.splitlines() if ln.startswith("|") and f" {model} " in ln]
        assert rows, f"{model} missing from the report:\n{report[:3000]}"
        assert any(any(ch.isdigit() for ch in r.split("|", 2)[2]) for r in rows), rows
    assert "qa-quick" in report and "style-quick" in report
    counts = _study_counts(ws_path)
    assert all(not s.get("cached") for k, s in counts["steps"].items() if k not in ("models", "report")), counts
    assert counts["generations"] >= 4 * (30 + 10 + 3 + 5)  # 4 models x (qa, mc, code, style) quick items

    second, t_second = _run_demo(ws_path)
    assert second.returncode == 0, second.stderr[-4000:]
    again = _study_counts(ws_path)
    # Incremental: nothing new generated, scored, trained or re-run; every step cached.
    assert again["generations"] == counts["generations"]
    assert again["scores"] == counts["scores"]
    assert again["jobs"] == counts["jobs"]
    assert all(s.get("cached") and s.get("new", 0) == 0 for s in again["steps"].values()), again["steps"]
    from core.study.report import same_report

    assert same_report(second.stdout, report)
    print(f"\ndemo --headless --quick: first run {t_first:.0f} s, rerun {t_second:.0f} s")


def test_study_progress_notes_give_the_count_once(ws):
    """The study's log showed "teacher: 27/171 27/171": a detail that already carries the count
    (generation's does) gets no second copy; one without it (embedding's step name) gets it."""
    from core.runtime import jobs
    from core.runtime.progress import Progress
    from core.study.plan import Plan, Study

    job_id = jobs.submit(ws, "selftest", "notes", {"steps": 1, "sleep": 0.0}, detach=False)
    study = Study(jobs.JobContext(ws, jobs.get_job(ws, job_id)), Plan.make(quick=True))
    note = study.progress_note(every_s=0.0)
    note(Progress(27, 171, "teacher: 27/171"))
    note(Progress(3, 8, "embedding"))
    note(Progress(0, 0, "starting"))
    note(Progress(36463, 40208, "48 imported", unit="bytes"))  # a position in a file, not rows
    messages = [e["message"] for e in jobs.events(ws, job_id)][-4:]
    assert messages == ["  teacher: 27/171", "  embedding 3/8", "  starting", "  48 imported 91%"]
