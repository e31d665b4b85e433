"""Importing other tools' results (lm-eval, inspect_ai, promptfoo, AlpacaEval) and exporting per sample.

The fixtures in tests/fixtures/results/ were written by the real tools (see its README.md); the
last tests regenerate them with the tools where they are installed and import the fresh files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.analysis.export import export_suite
from core.analysis.imported import compare_imported
from core.data.ingest.results import detect, import_results
from core.errors import BadInput
from core.runtime import progress
from core.scores.scoring import score_suite
from core.store.workspace import Workspace

FIX = Path(__file__).parent / "fixtures" / "results"
LM = FIX / "lm_eval"
ALL_LM_SCORES = {
    "lm_eval:exact_match": 32,
    "lm_eval:exact_match,first_word": 16,
    "lm_eval:exact_match,whole": 16,
    "lm_eval:acc": 6,
    "lm_eval:acc_norm": 6,
}
INSPECT_EVAL = next((FIX / "inspect").glob("*.eval"))
INSPECT_JSON = next((FIX / "inspect").glob("*.json"))
PROMPTFOO = FIX / "promptfoo" / "results.json"
ALPACA = FIX / "alpaca_eval"


def run(gen):
    return progress.run(gen)


def lm_samples(task: str) -> list[dict]:
    (path,) = LM.glob(f"samples_{task}_2*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def record(records, metric, task="all"):
    (r,) = [r for r in records if r["metric"] == metric and r["task"] == task]
    return r


def state(ws: Workspace) -> tuple:
    db = ws.db
    return tuple(
        db.execute(f"select count(*) from {t}").fetchone()[0]
        for t in ("suites", "items", "models", "generations", "imported_scores")
    )


# -- lm-evaluation-harness ----------------------------------------------------------------------------
def test_lm_eval_run_folder_becomes_suites_a_recorded_model_and_tool_scores(ws):
    s = run(import_results(ws, [LM]))
    assert s["tools"] == ["lm_eval"] and s["models"] == ["tiny-qa-model"]
    suites = {x["suite"]: x for x in s["suites"]}
    assert {n: (x["kind"], x["items"]) for n, x in suites.items()} == {
        "mirage_qa": ("qa", 16),
        "mirage_qa_strict": ("qa", 16),
        "mirage_qa_filters": ("qa", 16),
        "mirage_mc": ("mc", 6),
    }
    assert s["samples"] == 54 and s["outputs_new"] == 54
    # A task with two filters (a line per document and filter) names each figure `metric,filter`.
    assert s["imported_scores"] == ALL_LM_SCORES

    # Provenance: the tool, its version, each file's sha256, the model's arguments.
    kind, spec = ws.db.execute("select kind, spec from models where name = 'tiny-qa-model'").fetchone()
    spec = json.loads(spec)
    assert kind == "recorded"
    (prov,) = spec["imports"]
    results_json = json.loads(next(LM.glob("results_*.json")).read_text())
    assert prov["tool"] == "lm_eval" and prov["tool_version"] == results_json["lm_eval_version"]
    assert prov["model_args"]["model_args"] == results_json["config"]["model_args"]
    for f in prov["files"]:
        assert f["sha256"] == hashlib.sha256((LM / f["name"]).read_bytes()).hexdigest()

    # Items: prompt from the document, gold aliases from the target, task from the task name.
    item = ws.db.execute(
        "select i.prompt, i.gold, i.task from items i join suites s on s.id = i.suite_id"
        " where s.name = 'mirage_qa' and i.idx = 1"
    ).fetchone()
    assert item == ("Who wrote Hamlet?", '["William Shakespeare","Shakespeare"]', "mirage_qa")

    # The tool's per-sample values, exactly.
    got = dict(
        ws.db.execute(
            "select g.output, x.value from imported_scores x join generations g on g.id = x.generation_id"
            " join items i on i.id = g.item_id join suites s on s.id = i.suite_id"
            " where s.name = 'mirage_qa' and x.metric = 'lm_eval:exact_match'"
        ).fetchall()
    )
    assert got == {r["resps"][0][0]: r["exact_match"] for r in lm_samples("mirage_qa")}


def test_lm_eval_multiple_choice_samples_become_mc_items_with_the_models_choice(ws):
    run(import_results(ws, [LM]))
    rows = ws.db.execute(
        "select g.output, i.choices, i.gold, g.meta from generations g join items i on i.id = g.item_id"
        " join suites s on s.id = i.suite_id where s.name = 'mirage_mc' order by i.idx"
    ).fetchall()
    samples = lm_samples("mirage_mc")
    assert len(rows) == len(samples) == 6
    for (output, choices, gold, meta), smp in zip(rows, samples):
        lls = [float(r[0]) for r in smp["filtered_resps"]]
        best = max(range(len(lls)), key=lls.__getitem__)
        assert output == f"{'ABCD'[best]}. {smp['doc']['choices'][best]}"
        assert json.loads(choices) == smp["doc"]["choices"]
        assert json.loads(gold) == ["ABCD"[smp["doc"]["label"]]]
        assert json.loads(meta)["logliks"] == lls


def test_lm_eval_scores_beside_mirages_with_item_level_agreement(ws):
    run(import_results(ws, [LM]))
    for suite in ("mirage_qa", "mirage_qa_strict", "mirage_mc"):
        run(score_suite(ws, suite))
    qa = compare_imported(ws, "mirage_qa")
    r = record(qa, "lm_eval:exact_match")
    lm_mean = sum(s["exact_match"] for s in lm_samples("mirage_qa")) / 16
    assert r["value"] == pytest.approx(lm_mean) and r["n"] == 16 and r["source"] == "imported"
    assert r["compared_with"] == "exact_match" and r["n_both"] == 16
    # nq_open's filters and exact_match options: lm-eval and mirage judge every output alike.
    assert r["mirage_value"] == pytest.approx(0.75) and r["agreement"] == 1.0 and r["kappa"] == pytest.approx(1.0)
    # lm-eval's exact_match as it comes compares the raw continuation (" Paris" is not "Paris"):
    # 0 everywhere, where mirage finds 12 of 16 right.
    strict = record(compare_imported(ws, "mirage_qa_strict"), "lm_eval:exact_match")
    assert strict["value"] == 0.0 and strict["mirage_value"] == pytest.approx(0.75)
    assert strict["agreement"] == pytest.approx(0.25) and strict["kappa"] == 0.0
    assert strict["agreements"][0]["only_mirage_right"] == 12
    run(score_suite(ws, "mirage_qa_filters"))
    filt = compare_imported(ws, "mirage_qa_filters")
    first_word = record(filt, "lm_eval:exact_match,first_word")  # "da Vinci" -> "da": wrong for lm-eval
    assert first_word["value"] == pytest.approx(0.5) and first_word["agreement"] == pytest.approx(0.75)
    assert record(filt, "lm_eval:exact_match,whole")["agreement"] == pytest.approx(0.875)
    mc = record(compare_imported(ws, "mirage_mc"), "lm_eval:acc")
    assert mc["compared_with"] == "mc_accuracy" and mc["agreement"] == 1.0 and mc["n_both"] == 6


def test_lm_eval_reimport_changes_nothing_and_an_explicit_suite_and_model_are_used(ws):
    run(import_results(ws, [LM]))
    before = state(ws)
    again = run(import_results(ws, [LM]))
    assert state(ws) == before and again["outputs_new"] == 0
    (qa,) = LM.glob("samples_mirage_qa_2*.jsonl")
    s = run(import_results(ws, [qa], suite="nq", model="my-llama"))
    assert s["suites"] == [{"suite": "nq", "kind": "qa", "items_new": 16, "items": 16, "tasks": 1}]
    assert s["models"] == ["my-llama"]


# -- inspect_ai ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log", [INSPECT_EVAL, INSPECT_JSON], ids=["eval", "json"])
def test_inspect_log_imports_with_scorer_values(ws, log):
    if log.suffix == ".eval" and importlib.util.find_spec("zipfile_zstd") is None:
        pytest.skip("zstd .eval logs need zipfile-zstd (the `results` extra)")
    assert detect(log) == "inspect"
    s = run(import_results(ws, [log]))
    assert s["models"] == ["mockllm/model"] and s["samples"] == 8
    assert s["suites"][0]["suite"] == "mirage_inspect_qa" and s["suites"][0]["kind"] == "qa"
    assert s["imported_scores"] == {"inspect:match": 8, "inspect:includes": 8}
    spec = json.loads(ws.db.execute("select spec from models where name = 'mockllm/model'").fetchone()[0])
    assert spec["imports"][0]["tool"] == "inspect" and spec["imports"][0]["tool_version"]
    run(score_suite(ws, "mirage_inspect_qa"))
    recs = compare_imported(ws, "mirage_inspect_qa")
    match, includes = record(recs, "inspect:match"), record(recs, "inspect:includes")
    assert match["value"] == 0.75 and includes["value"] == 0.75
    # "It was written by Shakespeare." — inspect's match() finds the target at the end; mirage's
    # exact match wants the whole answer: one item of eight apart.
    assert match["compared_with"] == "exact_match" and match["agreement"] == pytest.approx(7 / 8)
    assert match["agreements"][0]["only_tool_right"] == 1
    assert includes["compared_with"] == "contains" and includes["agreement"] == 1.0


def test_unfinished_inspect_log_is_refused_whole(ws, tmp_path):
    log = json.loads(INSPECT_JSON.read_text())
    log["status"] = "error"
    bad = tmp_path / "log.json"
    bad.write_text(json.dumps(log))
    with pytest.raises(BadInput, match=r"log.json: inspect log status 'error'"):
        run(import_results(ws, [bad]))
    assert state(ws)[1:] == (0, 0, 0, 0)


# -- promptfoo and AlpacaEval -----------------------------------------------------------------------------
def test_promptfoo_results_import_per_provider_with_assertion_scores(ws):
    s = run(import_results(ws, [PROMPTFOO]))
    assert s["tools"] == ["promptfoo"] and s["models"] == ["canned-qa"] and s["samples"] == 6
    assert s["suites"][0]["suite"] == "mirage_promptfoo_qa"
    assert s["imported_scores"]["promptfoo:pass"] == 6
    run(score_suite(ws, "mirage_promptfoo_qa"))
    recs = compare_imported(ws, "mirage_promptfoo_qa")
    p = record(recs, "promptfoo:pass")
    data = json.loads(PROMPTFOO.read_text())["results"]["results"]
    assert p["value"] == pytest.approx(sum(r["success"] for r in data) / len(data))
    ic = record(recs, "promptfoo:icontains")
    assert ic["compared_with"] == "contains" and ic["agreement"] == 1.0


def test_alpaca_eval_annotations_and_outputs(ws):
    run(import_results(ws, [ALPACA / "annotations.json"]))
    s = run(import_results(ws, [ALPACA / "model_outputs.json"]))
    assert s["outputs_new"] == 0 and s["outputs_already"] == 3  # the annotated outputs, the same generations
    assert s["suites"] == [{"suite": "alpaca_eval", "kind": "prompts", "items_new": 0, "items": 3, "tasks": 2}]
    recs = compare_imported(ws, "alpaca_eval")
    pref = record(recs, "alpaca_eval:preference")
    assert pref["model"] == "my-model" and pref["n"] == 3
    assert pref["value"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)  # AlpacaEval's win rate: 2 -> 1, 1 -> 0, 1.5 -> ½


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_lm_eval_line_names_file_line_and_field_and_writes_nothing(ws, tmp_path):
    run(import_results(ws, [INSPECT_JSON]))
    before = state(ws)
    folder = tmp_path / "run"
    shutil.copytree(LM, folder)
    (qa,) = folder.glob("samples_mirage_qa_2*.jsonl")
    lines = qa.read_text().splitlines()
    rec = json.loads(lines[3])
    del rec["arguments"]
    lines[3] = json.dumps(rec)
    qa.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput) as e:
        run(import_results(ws, [folder]))
    assert str(e.value).startswith(f"{qa}:4: field 'arguments': missing")
    assert state(ws) == before
    lines[3] = lines[3][:40]  # a truncated line
    qa.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput, match=r":4: malformed JSON"):
        run(import_results(ws, [folder]))
    assert state(ws) == before


def test_samples_of_two_kinds_into_one_suite_are_refused(ws):
    with pytest.raises(BadInput, match=r"sample, but suite 'x' gets \w+ items from .*drop --suite"):
        run(import_results(ws, [LM], suite="x"))
    assert state(ws)[:2] == (0, 0)


def test_unknown_file_says_what_it_holds(ws, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"foo": 1, "bar": 2}\n')
    with pytest.raises(BadInput, match=r"unknown results format: first record has foo, bar"):
        run(import_results(ws, [f]))


# -- export ------------------------------------------------------------------------------------------
def test_export_jsonl_reads_back_into_another_workspace_with_the_same_outputs(ws, tmp_path):
    run(import_results(ws, [LM]))
    run(score_suite(ws, "mirage_qa"))
    out = tmp_path / "qa.jsonl"
    s = export_suite(ws, "mirage_qa", fmt="jsonl", out=str(out))
    assert s["records"] == 16
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert first[0]["item"]["gold"] == ["Paris"] and first[0]["scores"]["exact_match"] == 1.0
    assert first[0]["imported_scores"] == {"lm_eval:exact_match": 1.0}
    assert first[0]["decoding"]["until"] == ["\n", ".", ","] and first[0]["fingerprint"].startswith("recorded:")
    other = Workspace.init(tmp_path / "other")
    try:
        run(import_results(other, [out]))
        again = tmp_path / "again.jsonl"
        export_suite(other, "mirage_qa", fmt="jsonl", out=str(again))
        second = [json.loads(x) for x in again.read_text().splitlines()]
        keys = ("item", "model", "output", "decoding", "rendered_prompt", "imported_scores")
        assert [{k: r[k] for k in keys} for r in second] == [{k: r[k] for k in keys} for r in first]
    finally:
        other.close()


def test_export_hf_folder_and_alpaca_eval_files(ws, tmp_path):
    datasets = pytest.importorskip("datasets")
    run(import_results(ws, [LM]))
    run(score_suite(ws, "mirage_mc"))
    export_suite(ws, "mirage_mc", fmt="hf", out=str(tmp_path / "hf"))
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 6 and ds[0]["choices"] == ["carrot", "apple", "potato", "onion"]
    assert ds["imported:lm_eval:acc"] == [s["acc"] for s in lm_samples("mirage_mc")]
    s = export_suite(ws, "mirage_qa", fmt="alpaca-eval", out=str(tmp_path / "ae"))
    rows = json.loads(Path(s["files"][0]).read_text())
    assert Path(s["files"][0]).name == "model_outputs.json" and len(rows) == 16
    assert rows[0] == {
        "instruction": "What is the capital of France?",
        "output": " Paris",
        "generator": "tiny-qa-model",
        "dataset": "mirage_qa",
    }


def test_cli_import_results_score_json_and_export(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

    def mirage(*args):
        r = subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    w = tmp_path / "w"
    mirage("init", w)
    out = mirage("import", "results", PROMPTFOO, "--workspace", w)
    assert "imported 6 samples from promptfoo" in out
    recs = json.loads(mirage("score", "--suite", "mirage_promptfoo_qa", "--json", "--workspace", w))
    tool = [r for r in recs if r.get("source") == "imported" and r["task"] == "all"]
    assert {r["metric"] for r in tool} >= {"promptfoo:pass", "promptfoo:icontains"}
    assert all({"model", "task", "metric", "value", "ci_low", "ci_high", "n"} <= set(r) for r in recs)
    lines = mirage("export", "--suite", "mirage_promptfoo_qa", "--workspace", w).splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["model"] == "canned-qa"
    bad = subprocess.run(
        [sys.executable, "-m", "core", "import", "results", tmp_path / "nope.json", "--workspace", w],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].endswith("nope.json: no such file")


# -- fresh files from the real tools -------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("inspect_ai") is None, reason="inspect-ai not installed")
def test_fresh_inspect_run_imports(ws, tmp_path):
    sys.path.insert(0, str(FIX))
    try:
        import make_fixtures
    finally:
        sys.path.remove(str(FIX))
    (tmp_path / "work").mkdir()
    make_fixtures.run_inspect(tmp_path / "work", tmp_path / "logs")
    logs = sorted((tmp_path / "logs").iterdir())
    assert {p.suffix for p in logs} == {".eval", ".json"}
    s = run(import_results(ws, [p for p in logs if p.suffix == ".json"]))
    assert s["samples"] == 8 and s["imported_scores"]["inspect:match"] == 8


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed")
def test_fresh_lm_eval_run_imports(ws, tmp_path):
    """Trains the tiny model and runs lm-eval (about a minute on 2 cores): `pytest -m slow`."""
    sys.path.insert(0, str(FIX))
    try:
        import make_fixtures
    finally:
        sys.path.remove(str(FIX))
    work = tmp_path / "work"
    make_fixtures.train_tiny(work / "model")
    make_fixtures.run_lm_eval(work, work / "model", tmp_path / "out")
    s = run(import_results(ws, [tmp_path / "out"]))
    assert s["samples"] == 54 and s["imported_scores"] == ALL_LM_SCORES


def test_report_and_compare_view_show_the_tools_scores(ws):
    from core.analysis import report
    from core.analysis.compare import open_view

    run(import_results(ws, [LM]))
    run(score_suite(ws, "mirage_qa_strict"))
    rep = report.build(ws, "mirage_qa_strict")
    r = record(rep["imported"], "lm_eval:exact_match")
    assert r["agreement"] == pytest.approx(0.25)
    md = report.render(rep, "md")
    assert "## Other tools' scores beside mirage's" in md
    assert "| tiny-qa-model | all | lm_eval:exact_match | 0.0 [0.0, 0.0] | exact_match | 75.0 | 25.0% |" in md
    view = open_view(ws, "mirage_qa_strict")
    (pane,) = view.row(0).panes
    assert pane.tool_scores == {"lm_eval:exact_match": 0.0} and pane.verdict_name == "correct"
    from tui.widgets.compare.pane import pane_title

    assert "✓ correct  lm_eval:exact_match ✗" in pane_title(pane, active=False).plain


def test_lm_eval_loglikelihood_task_is_skipped_with_a_note(ws, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(LM, folder)
    (res,) = folder.glob("results_*.json")
    data = json.loads(res.read_text())
    data["configs"]["mirage_qa_strict"]["output_type"] = "loglikelihood"
    res.write_text(json.dumps(data))
    s = run(import_results(ws, [folder]))
    assert sorted(x["suite"] for x in s["suites"]) == ["mirage_mc", "mirage_qa", "mirage_qa_filters"]
    assert len(s["skipped"]) == 1 and "task 'mirage_qa_strict' is loglikelihood" in s["skipped"][0]
    (strict,) = folder.glob("samples_mirage_qa_strict_*.jsonl")
    with pytest.raises(BadInput, match="nothing to import: .*loglikelihood"):
        run(import_results(ws, [strict]))


def test_promptfoo_prompts_compared_are_models_of_their_own(ws):
    s = run(import_results(ws, [FIX / "promptfoo" / "results_two_prompts.json"]))
    assert s["models"] == ["canned-qa@prompt0", "canned-qa@prompt1"] and s["samples"] == 12
    assert s["suites"][0]["items"] == 6
    rendered = {
        r[0] for r in ws.db.execute("select prompt from generations where model = 'canned-qa@prompt0'").fetchall()
    }
    assert "Q: What is the capital of France?\nA:" in rendered


def test_results_attach_to_the_items_of_an_existing_suite_by_prompt(ws, tmp_path):
    from core.data.ingest import import_suite

    nq = tmp_path / "nq.jsonl"
    nq.write_text(
        "".join(
            json.dumps({"question": s["doc"]["question"], "answer": s["doc"]["answer"]}) + "\n"
            for s in lm_samples("mirage_qa")
        )
    )
    run(import_suite(ws, nq, "nq"))  # task label "nq", not lm-eval's "mirage_qa"
    (qa,) = LM.glob("samples_mirage_qa_2*.jsonl")
    s = run(import_results(ws, [qa], suite="nq"))
    assert s["suites"][0]["items_new"] == 0 and s["suites"][0]["items"] == 16 and s["outputs_new"] == 16
    run(score_suite(ws, "nq"))
    assert record(compare_imported(ws, "nq"), "lm_eval:exact_match")["agreement"] == 1.0


def test_tool_scores_follow_the_decoding_scored_and_models_without_them_are_skipped(ws, tmp_path):
    from click.testing import CliRunner

    from core.cli import cli
    from core.data.ingest import import_suite
    from core.scores.decodings import decoding_id

    nq = tmp_path / "nq.jsonl"
    samples = lm_samples("mirage_qa")
    nq.write_text(
        "".join(json.dumps({"question": s["doc"]["question"], "answer": s["doc"]["answer"]}) + "\n" for s in samples)
    )
    run(import_suite(ws, nq, "nq"))
    (qa,) = LM.glob("samples_mirage_qa_2*.jsonl")
    run(import_results(ws, [qa], suite="nq"))
    (model,) = [r[0] for r in ws.db.execute("select distinct model from generations")]
    (recorded_json,) = ws.db.execute("select decoding from generations limit 1").fetchone()
    recorded = decoding_id(recorded_json)
    # The same model sampled later at temperature 0.7 (its latest decoding), and a model of mirage's
    # own with outputs but no tool's scores.
    with ws.transaction():
        for extra_model, decoding in ((model, '{"temperature":0.7}'), ("mine", recorded_json)):
            ws.db.execute(
                "insert into generations (model, fingerprint, item_id, prompt, decoding, cache_key, output, meta,"
                " created_at) select ?, fingerprint, item_id, prompt, ?, cache_key || ? || ?, output, meta, created_at"
                " from generations where model = ?",
                [extra_model, decoding, extra_model, decoding, model],
            )
    run(score_suite(ws, "nq", decoding=recorded))
    both = compare_imported(ws, "nq", models=["mine", model], decoding=recorded)
    assert both == compare_imported(ws, "nq", decoding=recorded)
    assert {r["model"] for r in both} == {model}
    assert record(both, "lm_eval:exact_match")["agreement"] == 1.0
    # Read at the latest decoding, the tool scored none of the outputs: nothing to set beside.
    assert compare_imported(ws, "nq") == []

    def score(*args):
        r = CliRunner().invoke(cli, ["score", "--suite", "nq", "--json", *args, "--workspace", str(ws.root)])
        assert r.exit_code == 0, r.output
        return [x for x in json.loads(r.output) if x.get("source") == "imported"]

    assert score() == []
    tool = score("--decoding", recorded)
    assert record(tool, "lm_eval:exact_match")["agreement"] == 1.0
    from core.analysis import report

    assert report.build(ws, "nq", decoding=recorded)["imported"] == both


def test_import_suite_and_outputs_point_a_tools_file_at_import_results(ws):
    from core.data.ingest import import_outputs, import_suite

    (qa,) = LM.glob("samples_mirage_qa_2*.jsonl")
    with pytest.raises(BadInput, match=r"looks like an lm-eval --log_samples file: use `mirage import results`"):
        run(import_suite(ws, qa, "x"))
    run(import_results(ws, [qa]))
    with pytest.raises(BadInput, match=r"field 'output': missing \(this looks like AlpacaEval annotations"):
        run(import_outputs(ws, ALPACA / "annotations.json", "mirage_qa", "m"))
