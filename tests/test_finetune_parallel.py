"""Finetunes across processes (torchrun on gloo), the safeguards (eval_loss, NaN stop, trackers) and portable adapters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_finetune import ROOT, _conversation, add_dataset, build_tiny_model

from core.finetune import config, runs, trainer
from core.finetune import data as ftdata
from core.runtime import jobs


@pytest.fixture(scope="module")
def hub_base(tmp_path_factory) -> Path:
    """The tiny model, saved as if downloaded from the hub id 'tiny-org/tiny-llama'."""
    folder = build_tiny_model(tmp_path_factory.mktemp("hub") / "tiny-llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["_name_or_path"] = "tiny-org/tiny-llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def data_ws(ws):
    add_dataset(ws, "arith", [_conversation(i) for i in range(40)])
    return ws


def _steps(ws, job_id) -> dict[int, dict]:
    out = {}
    for e in jobs.events(ws, job_id):
        if e["step"] and e["loss"] is not None:
            out[e["step"]] = e
    return out


def _torchrun(ws, job_id: int, n: int, **popen) -> subprocess.Popen:
    launcher = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [str(launcher), "--nproc_per_node", str(n), "-m", "core.finetune", str(ws.root), str(job_id)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_a_step_is_shared_between_ranks_whole_or_example_by_example():
    sel = ftdata.Selection(ids=[[1] * (i + 2) for i in range(10)], example_ids=list(range(10)))
    sel.targets = [i + 1 for i in range(10)]
    for ga, world in [(2, 2), (1, 2), (3, 2), (4, 4), (2, 3)]:
        cfg = config.make_config("b", "d", batch_size=3, grad_accum=ga)
        plan = trainer.Plan(cfg, Path("."), None, "base", sel, steps_per_epoch=-(-4 // ga), total_steps=4)
        for step in range(plan.total_steps):
            glob = plan.step_batches(step)
            shares = [plan.micro_batches(step, r, world) for r in range(world)]
            # Every rank runs the same number of micro-batches (each backward is an all-reduce) ...
            assert len({len(s) for s in shares}) == 1, (ga, world, shares)
            # ... and together they train on exactly the one-process step, nothing twice.
            assert sorted(i for s in shares for mb in s for i in mb) == sorted(i for mb in glob for i in mb)
            assert plan.step_targets(step) == sum(sel.targets[i] for mb in glob for i in mb)


def test_eval_split_defaults_and_refusals():
    assert ftdata.eval_count(40, None, 500) == (2, "")
    assert ftdata.eval_count(1000, None, 500) == (50, "")
    assert ftdata.eval_count(100_000, None, 500)[0] == 500
    n, note = ftdata.eval_count(12, None, 500)
    assert n == 0 and "12 examples are too few" in note and "--eval-fraction" in note
    assert ftdata.eval_count(40, 0.25, 500) == (10, "")
    assert ftdata.eval_count(40, 0.0, 500)[0] == 0
    with pytest.raises(Exception, match="leaves none to train on"):
        ftdata.eval_count(1, 0.5, 500)


def test_two_processes_train_like_one(data_ws, hub_base):
    """torchrun --nproc_per_node 2 (gloo): same steps, same batches, the same losses as one process."""
    common = dict(
        lr=2e-2, max_steps=6, batch_size=4, grad_accum=2, dropout=0.0, eval_fraction=0.1, target_modules="all-linear"
    )
    (one,) = runs.submit(data_ws, str(hub_base), "arith", detach=False, name="one", **common)
    (two,) = runs.submit(data_ws, str(hub_base), "arith", start=False, name="two", **common)
    proc = _torchrun(data_ws, two, 2)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    j1, j2 = jobs.get_job(data_ws, one), jobs.get_job(data_ws, two)
    assert j1["status"] == j2["status"] == "done", (j1["error"], j2["error"])
    assert j1["total_steps"] == j2["total_steps"] == 6  # the global batch does not grow with the world
    s1, s2 = _steps(data_ws, one), _steps(data_ws, two)
    assert [s1[k]["data"]["batch_ids"] for k in range(1, 7)] == [s2[k]["data"]["batch_ids"] for k in range(1, 7)]
    assert len(s1[1]["data"]["batch_ids"]) == 8
    print("final loss: 1 process", j1["loss"], "2 processes", j2["loss"])
    assert j2["loss"] == pytest.approx(j1["loss"], rel=2e-3)
    e1, e2 = s1[6]["data"]["eval_loss"], s2[6]["data"]["eval_loss"]
    print("final eval_loss: 1 process", e1, "2 processes", e2)
    assert e2 == pytest.approx(e1, rel=2e-3) and e1 < s1[1]["loss"]
    assert any("x 2 processes" in (e["message"] or "") for e in jobs.events(data_ws, two))
    # `mirage jobs log` shows eval_loss.
    from click.testing import CliRunner

    from core.cli import cli

    r = CliRunner().invoke(cli, ["jobs", "log", str(two), "--workspace", str(data_ws.root)])
    assert r.exit_code == 0 and "eval_loss" in r.output, r.output
    # The adapter names its base by hub id and carries a model card; mirage still loads it locally.
    adapter = data_ws.artifacts / "adapters" / "two"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == "tiny-org/tiny-llama"
    assert (adapter / "adapter_model.safetensors").is_file()
    card = (adapter / "README.md").read_text()
    fingerprint = runs.run_record(data_ws, two)["fingerprint"]
    assert "tiny-org/tiny-llama" in card and fingerprint in card and '"lr": 0.02' in card and "template: base" in card
    from core import __version__
    from core.models import registry as models

    assert f"mirage {__version__}" in card
    model, _ = models.load_causal_lm(data_ws, "two", device="cpu")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_run_killed_on_rank_1_resumes_from_its_checkpoint(data_ws, hub_base):
    common = dict(lr=2e-2, max_steps=8, batch_size=4, dropout=0.0, save_every=3, eval_fraction=0.0)
    (ref,) = runs.submit(data_ws, str(hub_base), "arith", detach=False, name="ref", **common)
    (job_id,) = runs.submit(data_ws, str(hub_base), "arith", start=False, name="killed", throttle_s=0.5, **common)
    proc = _torchrun(data_ws, job_id, 2)
    deadline = time.monotonic() + 180
    while (jobs.get_job(data_ws, job_id)["step"] or 0) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        time.sleep(0.2)
    rank0 = jobs.get_job(data_ws, job_id)["pid"]
    (rank1,) = [c for c in _children(proc.pid) if c != rank0]
    os.kill(rank1, signal.SIGKILL)
    proc.communicate(timeout=120)
    killed = jobs.get_job(data_ws, job_id)
    assert killed["status"] in ("failed", "interrupted", "cancelled") and killed["step"] < 8
    data_ws.db.execute("update jobs set config = json_set(config, '$.throttle_s', 0) where id = ?", [job_id])
    # Launched again on 2 processes: rank 1 waits for rank 0 to take the job (its record still
    # shows the earlier attempt's end), then both continue from the checkpoint.
    again = _torchrun(data_ws, job_id, 2)
    out, _ = again.communicate(timeout=240)
    assert again.returncode == 0, out[-3000:]
    assert jobs.get_job(data_ws, job_id)["status"] == "done"
    msgs = [e["message"] or "" for e in jobs.events(data_ws, job_id)]
    assert any(m.startswith("resumed from checkpoint at step 3") for m in msgs)
    assert jobs.get_job(data_ws, job_id)["loss"] == pytest.approx(jobs.get_job(data_ws, ref)["loss"], rel=2e-3)


def test_a_diverging_run_stops_with_a_clear_error(data_ws, hub_base, tmp_path):
    """A base with one NaN weight (a corrupted file) makes the loss NaN: the run stops at step 1."""
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-base"
    shutil.copytree(hub_base, bad)
    (weights,) = bad.glob("*.safetensors")
    state = load_file(str(weights))
    key = next(k for k in state if "layers.0.mlp.down_proj" in k)
    state[key][0, 0] = float("nan")
    save_file(state, str(weights), metadata={"format": "pt"})
    (job_id,) = runs.submit(data_ws, str(bad), "arith", detach=False, name="nan", max_steps=4)
    job = jobs.get_job(data_ws, job_id)
    assert job["status"] == "failed" and "training diverged at step 1: loss nan" in job["error"], job["error"]
    assert "checkpoint is intact" in job["error"]
    assert not (data_ws.artifacts / "adapters" / "nan").exists()


def test_tensorboard_tracker_writes_offline_and_small_data_says_why_no_eval(ws, hub_base):
    pytest.importorskip("tensorboard")
    add_dataset(ws, "few", [_conversation(i) for i in range(8)])
    (job_id,) = runs.submit(
        ws, str(hub_base), "few", detach=False, name="tb", max_steps=2, report_to="tensorboard", weight_decay=0.1
    )
    assert jobs.get_job(ws, job_id)["status"] == "done", jobs.get_job(ws, job_id)["error"]
    logs = list((ws.artifacts / "jobs" / str(job_id) / "trackers").rglob("events.out.tfevents.*"))
    assert logs and logs[0].stat().st_size > 0
    msgs = [e["message"] or "" for e in jobs.events(ws, job_id)]
    assert any("no held-out evaluation: 8 examples are too few" in m for m in msgs)
    assert not any("eval_loss" in m for m in msgs)  # scripts grep the log for it to see evaluation ran
    with pytest.raises(Exception, match="QLoRA needs a CUDA GPU"):
        trainer._qlora_kwargs("cpu", None)


def test_packaged_models_know_their_hub_ids(ws):
    from core.models import registry as models

    assert models.hub_id(ws, "smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.hub_id(ws, "gemma3-270m") == "google/gemma-3-270m"


def test_a_served_adapter_keeps_its_runs_lineage_and_content_hash(data_ws, hub_base):
    from click.testing import CliRunner

    from core.cli import cli
    from core.models import registry as models

    (job_id,) = runs.submit(data_ws, str(hub_base), "arith", detach=False, name="imit", max_steps=2)
    url = "http://127.0.0.1:8000/v1"
    r = CliRunner().invoke(
        cli,
        ["models", "add", "imit-vllm", "--openai-base-url", url, "--openai-model", "imit"]
        + ["--adapter-of", str(job_id), "--json", "--workspace", str(data_ws.root)],
    )
    assert r.exit_code == 0, r.output
    lineage = models.lineage(data_ws, "imit-vllm")
    assert lineage["run"] == job_id and lineage["data"] == "arith" and lineage["served_adapter"] == "imit"
    base = models.lineage(data_ws, "imit")["base"]
    assert models.adapters_of(data_ws, base) == ["imit", "imit-vllm"]  # the report's imitation models
    models.register(data_ws, "plain", "openai", {"base_url": url, "model": "imit"})
    served = models.fingerprint(data_ws, "imit-vllm")
    assert served != models.fingerprint(data_ws, "plain")
    # Retrained weights at the same URL and model id are a different model.
    weights = data_ws.artifacts / "adapters" / "imit" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    models.register(
        data_ws,
        "imit-vllm",
        "openai",
        {"base_url": url, "model": "imit", **models.served_adapter(data_ws, "imit")},
        replace=True,
    )
    assert models.fingerprint(data_ws, "imit-vllm") != served
    r = CliRunner().invoke(
        cli,
        ["models", "add", "x", "--openai-base-url", url, "--openai-model", "m", "--adapter-of", "nope"]
        + ["--workspace", str(data_ws.root)],
    )
    assert r.exit_code != 0 and "no adapter model or finetune run 'nope'" in str(r.exception or r.output)


def test_eval_data_is_held_out_of_training_and_the_split_is_the_same_for_every_budget(data_ws, hub_base):
    tok = ftdata.load_tokenizer(hub_base, "auto", True)[0]
    add_dataset(data_ws, "probe", [_conversation(i) for i in range(35, 45)])  # 5 of them are in "arith"
    sel = ftdata.select(data_ws, "arith", None, 0, tok, 512, eval_data="probe")
    assert len(sel.eval_ids) == 10 and len(sel.ids) == 35 and sel.eval_source == "probe"
    assert not set(sel.hashes) & set(sel.eval_hashes)
    small = ftdata.select(data_ws, "arith", 100, 0, tok, 512, eval_fraction=None)
    big = ftdata.select(data_ws, "arith", None, 0, tok, 512, eval_fraction=None)
    assert small.eval_hashes == big.eval_hashes and len(big.eval_ids) == 2 and len(big.ids) == 38
    assert not set(big.hashes) & set(big.eval_hashes)
    plan = trainer.make_plan(data_ws, config.make_config(str(hub_base), "arith", eval_data="probe", max_steps=5))
    # 5 steps x 4 examples trained against 10 held out: one evaluation (at the end) keeps it cheap.
    assert any("eval_loss on 10 examples (probe) every 5 steps" in n for n in plan.notes())
    plan = trainer.make_plan(data_ws, config.make_config(str(hub_base), "arith", eval_data="probe", max_steps=50))
    assert plan.eval_every() == 10
