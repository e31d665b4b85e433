"""Finetune jobs on a tiny random Llama the tests build: masking, budgets, training, kill/resume, queueing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import BadInput, NotFound
from core.finetune import checkpoints, config, loss, runs, trainer
from core.finetune import data as ftdata
from core.models.loading import has_chat_template
from core.runtime import jobs, processes
from core.store.workspace import dumps, now

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROOT = Path(__file__).resolve().parents[1]
WORDS = "zero one two three four five six seven eight nine".split()


def _conversation(i: int) -> list[dict]:
    a, b = i % 10, (3 * (i % 10) + i // 10) % 10  # 100 distinct pairs
    return [
        {"role": "user", "content": f"what is {WORDS[a]} plus {WORDS[b]}?"},
        {"role": "assistant", "content": f"{WORDS[a]} plus {WORDS[b]} is {a + b}."},
    ]


def build_tiny_model(folder: Path, *, chat_template: str | None = CHATML, tied: bool = False) -> Path:
    """A 2-layer random Llama and a byte-level BPE tokenizer trained on the test's own text
    (`tied`: one matrix for the input and output embeddings, as SmolLM2 and Gemma have)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [m["content"] for i in range(50) for m in _conversation(i)] + ["system user assistant be brief"]
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=tied,
        # Wide init: with a frozen output layer behind a norm, logits of a 0.02 init stay
        # near uniform whatever LoRA learns.
        initializer_range=0.2,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def add_dataset(ws, name: str, conversations: list[list[dict]]) -> None:
    """Write a dataset the way the importer does (rows in datasets / examples)."""
    cur = ws.db.execute(
        "insert into datasets (name, kind, format, source, created_at) values (?, 'imitation', 'messages', 'test', ?)",
        [name, now()],
    )
    ds = cur.lastrowid
    for i, conv in enumerate(conversations):
        text = dumps(conv)
        ws.db.execute(
            "insert into examples (dataset_id, idx, conversation, user_text, assistant_text, n_tokens, content_hash)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            [
                ds,
                i,
                text,
                " ".join(m["content"] for m in conv if m["role"] == "user"),
                " ".join(m["content"] for m in conv if m["role"] == "assistant"),
                len(text.split()),
                hashlib.sha256(text.encode()).hexdigest(),
            ],
        )


@pytest.fixture
def data_ws(ws):
    add_dataset(ws, "arith", [_conversation(i) for i in range(40)])
    return ws


def _tok(folder: Path, template="auto"):
    return ftdata.load_tokenizer(folder, template, has_chat_template(folder))[0]


# -- masking ----------------------------------------------------------------------------------------------
def test_labels_cover_exactly_the_assistant_replies_token_by_token(tiny_base):
    tok = _tok(tiny_base)
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is two plus two?"},
        {"role": "assistant", "content": "two plus two is 4."},
        {"role": "user", "content": "and three plus one?"},
        {"role": "assistant", "content": "three plus one is 4."},
    ]
    ids, labels = ftdata.encode(tok, conv, 512)
    text = tok.apply_chat_template(conv, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    replies = ["two plus two is 4.<|im_end|>", "three plus one is 4.<|im_end|>"]
    # Walk token by token: each token is trained iff its text lies inside an assistant reply.
    pos, trained_runs, run = 0, [], ""
    for t, (tid, lab) in enumerate(zip(ids, labels)):
        piece = tok.decode([tid])
        assert lab in (tid, ftdata.IGNORE), t
        start = text.index(piece, pos) if piece else pos
        pos = start + len(piece)
        inside = any(text.find(r) <= start < text.find(r) + len(r) for r in replies)
        assert (lab == tid) == inside, (t, piece, lab)
        if lab == tid:
            run += piece
        elif run:
            trained_runs.append(run)
            run = ""
    if run:
        trained_runs.append(run)
    assert trained_runs == replies
    # Truncation keeps labels aligned with ids.
    ids8, labels8 = ftdata.encode(tok, conv, 8)
    assert ids8 == ids[:8] and labels8 == labels[:8]


def test_default_template_for_a_base_without_one(tmp_path):
    folder = build_tiny_model(tmp_path / "plain", chat_template=None)
    tok, name = ftdata.load_tokenizer(folder, "auto", has_chat_template(folder))
    assert name == "default"
    conv = _conversation(3)
    text, spans = ftdata.assistant_spans(tok, conv)
    assert text == f"<s>### User:\n{conv[0]['content']}\n\n### Assistant:\n{conv[1]['content']}<|im_end|>\n\n"
    assert [text[a:b] for a, b in spans] == [conv[1]["content"] + "<|im_end|>"]
    with pytest.raises(BadInput, match="no chat template"):
        ftdata.load_tokenizer(folder, "base", False)


# -- data selection ------------------------------------------------------------------------------------------
def test_budgets_nest_and_a_budget_beyond_the_data_uses_all(data_ws, tiny_base):
    tok = _tok(tiny_base)
    small = ftdata.select(data_ws, "arith", 100, 0, tok, 512)
    big = ftdata.select(data_ws, "arith", 400, 0, tok, 512)
    assert 0 < len(small.example_ids) < len(big.example_ids) < 40
    assert big.example_ids[: len(small.example_ids)] == small.example_ids
    assert small.tokens >= 100 and small.tokens - len(small.ids[-1]) < 100
    other_seed = ftdata.select(data_ws, "arith", 400, 1, tok, 512)
    assert other_seed.example_ids != big.example_ids
    everything = ftdata.select(data_ws, "arith", 10**9, 0, tok, 512)
    assert everything.exhausted and len(everything.example_ids) == 40
    assert not big.exhausted and big.fingerprint != small.fingerprint
    cfg = config.make_config(str(tiny_base), "arith", tokens=10**9)
    plan = trainer.make_plan(data_ws, cfg)
    assert "larger than the data" in plan.notes()[0]


def test_length_grouped_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    b0 = ftdata.epoch_batches(lengths, 2, 0, 0)
    assert b0 == ftdata.epoch_batches(lengths, 2, 0, 0)
    assert sorted(i for b in b0 for i in b) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[1]]) <= 3 for b in b0)  # similar lengths share a batch
    assert ftdata.epoch_batches(lengths, 2, 0, 1) != b0


def test_bad_input_is_named(data_ws, tiny_base):
    with pytest.raises(NotFound, match="unknown base model 'nope'"):
        runs.submit(data_ws, "nope", "arith", detach=False)
    with pytest.raises(NotFound, match="no dataset 'missing'"):
        runs.submit(data_ws, str(tiny_base), "missing", detach=False)
    add_dataset(data_ws, "empty", [])
    with pytest.raises(BadInput, match="no examples"):
        runs.submit(data_ws, str(tiny_base), "empty", detach=False)
    with pytest.raises(BadInput, match="not a token count"):
        config.parse_tokens("lots")
    assert config.parse_tokens("300k,1.5M") == [300_000, 1_500_000]
    with pytest.raises(BadInput, match="batch_size"):
        config.make_config("b", "d", batch_size=0)
    assert not list(data_ws.db.query("select * from jobs"))  # nothing queued by a refused run


def test_a_bad_setting_names_its_field_and_a_stored_config_is_a_plain_dict():
    for bad, field_name, message in [
        ({"lr": "fast"}, "lr", "expected a number, got 'fast'"),
        ({"rank": "8.x"}, "rank", "expected an integer"),
        ({"dtype": "fp8"}, "dtype", "one of auto, bf16, fp32, fp16 (got 'fp8')"),
        ({"dropout": 1.0}, "dropout", "must be in [0, 1) (got 1.0)"),
        ({"max_steps": 0}, "max_steps", "must be at least 1 (got 0)"),
        ({"loss_impl": "fancy"}, "loss_impl", "one of chunked, full"),
    ]:
        with pytest.raises(BadInput, match=re.escape(message)) as err:
            config.make_config("b", "d", **bad)
        assert err.value.field == field_name
    with pytest.raises(BadInput, match="unknown option 'speed'"):
        config.make_config("b", "d", speed=3)
    cfg = config.make_config("b", "d", tokens=300, rank="16", lr="1e-3", throttle_s=0)
    expected_keys = {f.name for f in dataclasses.fields(config.FinetuneConfig)}
    expected_keys |= {f.name for f in dataclasses.fields(config.FinetuneKnobs)} | {"base", "data", "tokens", "name"}
    assert set(cfg) == expected_keys
    assert cfg["rank"] == 16 and cfg["lr"] == 1e-3 and cfg["throttle_s"] == 0.0 and cfg["max_steps"] is None
    assert cfg["alpha"] == 16 and cfg["loss_impl"] == "chunked" and cfg["gradient_checkpointing"] is False
    assert json.loads(json.dumps(cfg)) == cfg


def test_finetune_options_are_generated_from_the_config_fields():
    from core.cli.finetune import finetune

    params = {p.name: p for p in finetune.params}
    user = [f.name for f in dataclasses.fields(config.FinetuneConfig)]
    own = {"base", "data", "tokens", "name", "detach", "dry_run", "no_start", "as_json", "workspace", "help"}
    assert set(params) - own == set(user)
    for knob in dataclasses.fields(config.FinetuneKnobs):  # tests and benchmarks set these, users do not
        assert knob.name not in params
    for f in dataclasses.fields(config.FinetuneConfig):
        opt = params[f.name]
        assert opt.default is None and f.metadata["help"] in opt.help
        if "choices" in f.metadata:
            assert list(opt.type.choices) == list(f.metadata["choices"])
    assert params["lr"].help.endswith("[default: 2e-4]") and params["rank"].help.endswith("[default: 8]")
    assert params["gradient_checkpointing"].secondary_opts == ["--no-gradient-checkpointing"]
    assert "[default:" not in params["max_steps"].help


def test_the_trainer_yields_progress_with_loss_and_lr_each_step(data_ws, tiny_base, tmp_path):
    import threading

    from core.runtime import progress
    from core.runtime.progress import Progress

    cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", max_steps=5, save_every=3, lr=1e-2)
    plan = trainer.make_plan(data_ws, cfg)
    seen: list[Progress] = []
    result = progress.run(trainer.Trainer(plan, tmp_path / "run").train(), seen.append)
    assert all(isinstance(p, Progress) and p.total == 5 for p in seen)
    steps = [p for p in seen if p.metrics]
    assert [p.done for p in steps] == [1, 2, 3, 4, 5]
    for p in steps:
        assert p.metrics["loss"] > 0 and p.metrics["lr"] >= 0 and p.metrics["tokens_per_s"] > 0
        assert p.metrics["eta_s"] >= 0 and p.metrics["epoch"] == 0
    assert steps[0].metrics["lr"] == pytest.approx(1e-2) and steps[-1].metrics["eta_s"] == 0
    assert [p.detail for p in seen if not p.metrics] == ["checkpoint at step 3"]
    # 40 examples: 2 held out by default, evaluated every ceil(5 / 5) = 1 step and at the end.
    assert result == {
        "status": "done",
        "step": 5,
        "loss": steps[-1].metrics["loss"],
        "eval_loss": pytest.approx(steps[-1].metrics["eval_loss"]),
    }
    assert all(p.metrics["eval_loss"] > 0 for p in steps)
    # A set cancel event stops it before the next step, saving the step reached; a resume continues there.
    cancel = threading.Event()
    gen = trainer.Trainer(plan, tmp_path / "cancelled").train(cancel)
    assert next(gen).done == 1
    cancel.set()
    rest: list[Progress] = []
    assert progress.run(gen, rest.append) == {"status": "cancelled", "step": 1}
    assert [p.detail for p in rest] == ["checkpoint at step 1"]
    resumed = list(trainer.Trainer(plan, tmp_path / "cancelled").train())
    assert resumed[0].detail == "resumed from checkpoint at step 1" and resumed[1].done == 2


def test_chunked_loss_matches_the_full_logits_loss_and_its_gradients(tiny_base, data_ws):
    import torch

    cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", dropout=0.0, logit_chunk=7)
    plan = trainer.make_plan(data_ws, cfg)
    peft_model, _ = trainer.build_model(plan, "cpu")
    for _n, p in peft_model.named_parameters():  # LoRA B starts at zero; make the adapter matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids, att, labels = ftdata.collate(plan, [0, 1, 2], "cpu")
    module = loss.trainable_module(peft_model, cfg["logit_chunk"])
    loss_sum, n = module(ids, att, labels)
    (loss_sum / n).backward()
    ours = {k: p.grad.clone() for k, p in peft_model.named_parameters() if p.requires_grad}
    peft_model.zero_grad()
    ref = peft_model(input_ids=ids, attention_mask=att, labels=labels).loss
    ref.backward()
    assert float(loss_sum.detach() / n) == pytest.approx(float(ref), rel=1e-5)
    for k, p in peft_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-6)


def _with_and_without_checkpointing(tiny_base, data_ws, dropout: float):
    """{checkpointing: (loss, LoRA grads, peft model)} for one seeded step on the same batch, with
    the adapter initialised to matter (LoRA B starts at zero)."""
    import torch

    out = {}
    for ckpt in (False, True):
        cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", dropout=dropout, gradient_checkpointing=ckpt)
        plan = trainer.make_plan(data_ws, cfg)
        peft_model, _ = trainer.build_model(plan, "cpu")
        torch.manual_seed(1)
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        module = loss.trainable_module(peft_model, cfg["logit_chunk"])
        module.train()
        torch.manual_seed(2)
        loss_sum, n = module(*ftdata.collate(plan, [0, 1, 2], "cpu"))
        (loss_sum / n).backward()
        grads = {k: p.grad.clone() for k, p in peft_model.named_parameters() if p.requires_grad}
        out[ckpt] = (float(loss_sum.detach() / n), grads, peft_model)
    return out


def test_gradient_checkpointing_is_on_when_asked_and_changes_no_gradient(tiny_base, data_ws):
    import torch

    runs = _with_and_without_checkpointing(tiny_base, data_ws, dropout=0.0)
    for ckpt, (_, _, peft_model) in runs.items():
        assert peft_model.get_base_model().is_activation_checkpointing is ckpt
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    for k in runs[False][1]:
        torch.testing.assert_close(runs[True][1][k], runs[False][1][k], rtol=1e-5, atol=1e-7)


# -- training ---------------------------------------------------------------------------------------------------
def _step_events(ws, job_id):
    by_step = {}
    for e in jobs.events(ws, job_id):
        if e["loss"] is not None:
            by_step[e["step"]] = e
    return by_step


def test_a_run_trains_saves_a_peft_adapter_and_registers_it(data_ws, tiny_base):
    (job_id,) = runs.submit(
        data_ws,
        str(tiny_base),
        "arith",
        detach=False,
        name="tiny-arith",
        lr=2e-2,
        max_steps=40,
        batch_size=4,
        save_every=15,
        target_modules="all-linear",
    )
    job = jobs.get_job(data_ws, job_id)
    assert job["status"] == "done", job["error"]
    steps = _step_events(data_ws, job_id)
    assert sorted(steps) == list(range(1, 41))
    first = sum(steps[s]["loss"] for s in range(1, 6)) / 5
    last = sum(steps[s]["loss"] for s in range(36, 41)) / 5
    assert last < 0.6 * first, (first, last)
    assert all(steps[s]["tokens_per_s"] > 0 and steps[s]["lr"] is not None for s in steps)
    # Epochs continue in the same order scheme: 40 examples / batch 4 = 10 steps an epoch.
    assert steps[11]["data"]["epoch"] == 1
    from core.models import registry as models

    entry = models.get_model(data_ws, "tiny-arith")
    assert entry["kind"] == "adapter"
    lineage = entry["spec"]["lineage"]
    assert lineage["data"] == "arith" and lineage["run"] == job_id and lineage["tokens"] > 0
    assert lineage["template"] == "base" and lineage["budget"] is None
    out = Path(entry["spec"]["path"])
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(out))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    listed = runs.list_runs(data_ws)
    assert listed[0]["name"] == "tiny-arith" and listed[0]["adapter"] == "tiny-arith"
    assert listed[0]["step"] == 40 and listed[0]["status"] == "done"
    # The run's record names the attention kernel "auto" became (eager: a CPU, short sequences).
    assert runs.run_record(data_ws, job_id)["attn_implementation"] == "eager"
    assert not list((data_ws.artifacts / "jobs" / str(job_id)).glob("ckpt-*"))


def _adapter_tensors(ws, name: str) -> dict:
    from safetensors.torch import load_file

    from core.models import registry as models

    return load_file(str(Path(models.get_model(ws, name)["spec"]["path"]) / "adapter_model.safetensors"))


def test_two_seeded_runs_give_bit_identical_adapters_and_another_seed_does_not(data_ws, tiny_base):
    """The demo's imitation figures moved between two runs and finetuning was suspected. Each run
    here is its own job process (as the demo's are, each with its own hash seed), with dropout on,
    a mid-run checkpoint and held-out evaluation: the same seed gives the same losses and adapter
    tensors bit for bit, and another seed does not (so the comparison can tell them apart)."""
    common = dict(lr=2e-2, max_steps=6, batch_size=4, save_every=3, dropout=0.1, eval_fraction=0.1)
    ids = {}
    for name, seed in (("seed0-a", 0), ("seed0-b", 0), ("seed1", 1)):
        (ids[name],) = runs.submit(data_ws, str(tiny_base), "arith", detach=True, name=name, seed=seed, **common)
    _wait(lambda: all(jobs.get_job(data_ws, j)["status"] not in jobs.ACTIVE for j in ids.values()), timeout=240)
    for j in ids.values():
        assert jobs.get_job(data_ws, j)["status"] == "done", jobs.get_job(data_ws, j)["error"]
    losses = {n: [_step_events(data_ws, j)[s]["loss"] for s in range(1, 7)] for n, j in ids.items()}
    assert losses["seed0-a"] == losses["seed0-b"]
    assert losses["seed0-a"] != losses["seed1"]
    a, b, c = (_adapter_tensors(data_ws, n) for n in ("seed0-a", "seed0-b", "seed1"))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and (a[k] == b[k]).all() for k in a)
    assert not all((a[k] == c[k]).all() for k in a)


def _wait(pred, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_kill_9_then_resume_replays_the_same_data_order_and_a_second_run_queues(data_ws, tiny_base):
    common = dict(lr=2e-2, max_steps=12, batch_size=4, save_every=4)
    (ref,) = runs.submit(data_ws, str(tiny_base), "arith", detach=False, name="ref", **common)
    assert jobs.get_job(data_ws, ref)["status"] == "done"

    first, second = runs.submit(
        data_ws, str(tiny_base), "arith", tokens=[None, 200], detach=True, name="kill", throttle_s=0.4, **common
    )
    _wait(lambda: jobs.get_job(data_ws, first)["status"] == "running" and jobs.get_job(data_ws, first)["step"] >= 6)
    # The second run waits in the train lane while the first trains.
    assert jobs.get_job(data_ws, second)["status"] == "queued"
    _wait(lambda: any("queued behind job" in (e["message"] or "") for e in jobs.events(data_ws, second)))
    jobs.cancel(data_ws, second)
    pid = jobs.get_job(data_ws, first)["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not processes.process_alive(pid))
    killed = jobs.get_job(data_ws, first)
    assert killed["status"] == "interrupted"
    assert killed["step"] < 12
    assert checkpoints.latest_checkpoint(data_ws.artifacts / "jobs" / str(first)) is not None

    data_ws.db.execute("update jobs set config = json_set(config, '$.throttle_s', 0) where id = ?", [first])
    assert jobs.resume(data_ws, first, detach=False)["status"] == "done"
    ref_steps, resumed = _step_events(data_ws, ref), _step_events(data_ws, first)
    assert sorted(resumed) == list(range(1, 13))
    assert [ref_steps[s]["data"]["batch_ids"] for s in range(1, 13)] == [
        resumed[s]["data"]["batch_ids"] for s in range(1, 13)
    ]
    # Same weights, optimizer, schedule and dropout RNG from the checkpoint: the same losses.
    assert resumed[12]["loss"] == pytest.approx(ref_steps[12]["loss"], rel=1e-3)
    msgs = [e["message"] or "" for e in jobs.events(data_ws, first)]
    assert any(m.startswith("resumed from checkpoint at step") for m in msgs)


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path):
    """A file-size limit makes the write fail mid-checkpoint, as a full disk does."""
    script = f"""
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from core.finetune.checkpoints import write_atomic_dir
from core.errors import JobError
run = Path({str(tmp_path)!r})
write_atomic_dir(run / "ckpt-00000001", lambda d: (d / "state.json").write_text("{{}}"))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    write_atomic_dir(run / "ckpt-00000002", lambda d: (d / "big.bin").write_bytes(b"x" * 5000))
except JobError as e:
    print("ERR", e)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "ERR disk full while writing" in out.stdout, out.stderr
    assert "previous checkpoint is intact" in out.stdout
    assert checkpoints.latest_checkpoint(tmp_path).name == "ckpt-00000001"
    assert not (tmp_path / "ckpt-00000002").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_cli_dry_run_and_ls_runs(data_ws, tiny_base):
    from click.testing import CliRunner

    from core.cli import cli

    r = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--base",
            str(tiny_base),
            "--data",
            "arith",
            "--tokens",
            "200,1M",
            "--dry-run",
            "--json",
            "--workspace",
            str(data_ws.root),
        ],
    )
    assert r.exit_code == 0, r.output
    small, big = json.loads(r.stdout)
    # 2 of the 40 examples are held out for eval_loss by default (the same 2 for every budget).
    assert small["examples"] < big["examples"] == 38 and big["budget_exceeds_data"]
    assert small["eval_examples"] == big["eval_examples"] == 2 and small["eval_fingerprint"] == big["eval_fingerprint"]
    assert small["total_steps"] == -(-small["examples"] // 4) and small["step_seconds"] > 0
    assert small["estimated_seconds"] == pytest.approx(small["step_seconds"] * small["total_steps"])
    assert "plus" in small["sample_trained"] and "what is" not in small["sample_trained"]
    r = CliRunner().invoke(cli, ["finetune", "--base", "nope", "--data", "arith", "--workspace", str(data_ws.root)])
    assert r.exit_code != 0 and "unknown base model 'nope'" in str(r.exception or r.output)
    r = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--base",
            str(tiny_base),
            "--data",
            "arith",
            "--tokens",
            "200",
            "--max-steps",
            "2",
            "--json",
            "--workspace",
            str(data_ws.root),
        ],
    )
    assert r.exit_code == 0, r.output
    (job,) = json.loads(r.stdout)
    assert job["status"] == "done" and job["step"] == job["total_steps"] == 2 and job["loss"] > 0
    r = CliRunner().invoke(cli, ["ls", "runs", "--json", "--workspace", str(data_ws.root)])
    (run,) = json.loads(r.stdout)
    assert run["name"] == job["name"] == "tiny-llama-arith-200" and run["adapter"] == run["name"]
    assert run["budget"] == 200 and run["tokens"] >= 200 and run["status"] == "done"
    # The table shows the loss as `mirage jobs` does, not all 16 digits of the float.
    r = CliRunner().invoke(cli, ["ls", "runs", "--workspace", str(data_ws.root)])
    assert r.exit_code == 0 and f" {run['loss']:.4f} " in r.output, r.output


def test_runs_under_accelerate_launch(data_ws, tiny_base):
    (job_id,) = runs.submit(data_ws, str(tiny_base), "arith", start=False, name="acc", max_steps=3)
    launcher = Path(sys.executable).parent / "accelerate"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [
            str(launcher),
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "core.finetune",
            str(data_ws.root),
            str(job_id),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    job = jobs.get_job(data_ws, job_id)
    assert job["status"] == "done" and job["step"] == 3


def test_detach_returns_before_counting_and_the_job_records_the_budget_note(data_ws, tiny_base):
    """Counting by the base's tokenizer may first convert the base (25-60 s): --detach leaves it to the job."""
    from click.testing import CliRunner

    from core.cli import cli

    args = ["finetune", "--base", str(tiny_base), "--data", "arith", "--tokens", "5M", "--max-steps", "1"]
    ws_arg = ["--workspace", str(data_ws.root)]
    # A job holding lane 'train' keeps the finetune queued, so whatever is counted by now was counted by
    # the foreground (exact counts are cached in token_counts as they are made).
    hold = jobs.submit(data_ws, "selftest", "hold", {"steps": 10**4, "sleep": 0.05}, lane="train")
    _wait(lambda: jobs.get_job(data_ws, hold)["status"] == "running")
    r = CliRunner().invoke(cli, [*args, "--detach", "--name", "bg", *ws_arg])
    assert r.exit_code == 0, r.output
    assert "started in the background" in r.output and "note:" not in r.output
    (job_id,) = [j["id"] for j in jobs.list_jobs(data_ws, kind="finetune")]
    _wait(lambda: any("queued behind job" in (e["message"] or "") for e in jobs.events(data_ws, job_id)))
    assert data_ws.db.execute("select count(*) from token_counts").fetchone()[0] == 0
    jobs.cancel(data_ws, hold)
    _wait(lambda: jobs.get_job(data_ws, job_id)["status"] not in jobs.ACTIVE)
    assert jobs.get_job(data_ws, job_id)["status"] == "done", jobs.get_job(data_ws, job_id)["error"]
    log = CliRunner().invoke(cli, ["jobs", "log", "bg", *ws_arg])
    (note,) = [line for line in log.output.splitlines() if "budget 5M is larger than 'arith'" in line]
    assert "tokens by" in note and "in 40 examples" in note
    # Without --detach the note comes first, once, as before (the job's copy of it is not echoed again).
    r = CliRunner().invoke(cli, [*args, "--name", "fg", *ws_arg])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("note: budget 5M is larger than 'arith'")
    assert r.output.count("is larger than 'arith'") == 1


# -- CPU step choices (core/finetune/cpu.py) -------------------------------------------------------------------
def test_cheap_dropout_drops_p_in_every_lane_scales_kept_values_and_replays_under_a_seed():
    import torch

    from core.finetune.cpu import dropout_module

    drop = dropout_module()(0.05).train()
    x = torch.ones(100_003)  # not a multiple of 4: the last draw is cut
    torch.manual_seed(3)
    y = drop(x)
    dropped = y == 0
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.95)
    # Each of the four int16 lanes of a 64-bit draw drops at p (a lane that never dropped: 0.0375 overall).
    for lane in range(4):
        assert float(dropped[lane::4].float().mean()) == pytest.approx(0.05, abs=0.005), lane
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    assert torch.equal(drop.eval()(x), x)
    g = torch.ones(100_003, requires_grad=True)
    drop.train()(g).sum().backward()
    assert int((g.grad == 0).sum()) > 0 and float(g.grad.max()) == pytest.approx(1 / 0.95)


def test_auto_attention_is_eager_on_a_cpu_while_its_saved_probabilities_are_small():
    from types import SimpleNamespace

    from core.finetune.cpu import attention_for

    small = SimpleNamespace(num_attention_heads=9, num_hidden_layers=30)
    kw = dict(batch_size=4, max_length=256)
    assert attention_for(small, device="cpu", checkpointing=True, **kw) == "eager"
    assert attention_for(small, device="cuda:0", checkpointing=True, **kw) is None
    # 30 layers x 4 x 9 x 2048^2 x 6 bytes held at once: left to transformers (sdpa).
    assert attention_for(small, device="cpu", checkpointing=False, batch_size=4, max_length=2048) is None
    nested = SimpleNamespace(text_config=small)  # multimodal configs keep the text model's sizes inside
    assert attention_for(nested, device="cpu", checkpointing=True, **kw) == "eager"


def test_a_cpu_run_gets_eager_attention_and_cheap_dropout_and_checkpointing_replays_its_masks(tiny_base, data_ws):
    """With dropout on, the checkpointed step's gradients equal the plain step's only if the replay
    draws the same dropout masks (torch's generator restored for the recompute)."""
    import torch

    runs = _with_and_without_checkpointing(tiny_base, data_ws, dropout=0.3)
    for _, _, peft_model in runs.values():
        assert peft_model.get_base_model().config._attn_implementation == "eager"
        kinds = {type(m).__name__ for m in peft_model.modules()}
        assert "CheapDropout" in kinds and "Dropout" not in kinds
    for k in runs[False][1]:
        torch.testing.assert_close(runs[True][1][k], runs[False][1][k], rtol=1e-5, atol=1e-7)
    # An explicit kernel is kept.
    cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", attn_implementation="sdpa")
    peft_model, _ = trainer.build_model(trainer.make_plan(data_ws, cfg), "cpu")
    assert peft_model.get_base_model().config._attn_implementation == "sdpa"


def test_building_a_run_prints_no_transformers_deprecation_of_peft_or_ours(tiny_base, data_ws):
    import warnings

    cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.build_model(trainer.make_plan(data_ws, cfg), "cpu")
    assert not [w for w in seen if "checkpointing" in str(w.message)], [str(w.message) for w in seen]


def test_lean_lora_forward_gives_peft_s_output_and_gradients_and_a_cpu_run_uses_it(tiny_base, data_ws):
    """In fp32 the lean forward is peft's arithmetic regrouped: same loss, same adapter gradients
    (dropout on, the same masks under one seed)."""
    import copy

    import torch

    from core.finetune.cpu import lean_lora_forwards

    cfg = config.make_config(str(tiny_base), "arith", dtype="fp32", dropout=0.3, lean_lora=False)
    plan = trainer.make_plan(data_ws, cfg)
    peft_model, _ = trainer.build_model(plan, "cpu")
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero, which would hide A's gradient
            torch.nn.init.normal_(p, std=0.1)
    lean = copy.deepcopy(peft_model)
    assert lean_lora_forwards(lean) > 0
    from core.finetune.data import collate

    ids, att, labels = collate(plan, [0, 1], "cpu")
    grads = []
    for m in (peft_model, lean):
        m.train()
        torch.manual_seed(5)
        loss = m(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for k, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][k], g, rtol=1e-4, atol=1e-6)
        assert float(g.abs().max()) > 0, k
    # A CPU run gets it by default; the LoRA weights stay fp32 master weights.
    built, _ = trainer.build_model(trainer.make_plan(data_ws, config.make_config(str(tiny_base), "arith")), "cpu")
    layers = [m for m in built.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    assert layers and all("_lean_forward" in getattr(m.forward, "__name__", "") for m in layers)
    assert {p.dtype for p in built.parameters() if p.requires_grad} == {torch.float32}


def test_fused_rms_norm_gives_the_module_s_output_and_input_gradient_and_a_cpu_run_uses_it(tiny_base, data_ws):
    """bf16 as a run has it: the forward is the module's bit for bit, the input gradient as close
    to an fp64 one as autograd's is; a norm of another formula (Gemma's) keeps its forward."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from core.finetune.cpu import fused_rms_norms

    small = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=1)
    heads = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**small, **heads)).to(torch.bfloat16).requires_grad_(False)
    norm = llama.model.norm
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(48))
    x0 = torch.randn(3, 7, 48, dtype=torch.bfloat16) * 4
    g = torch.randn(3, 7, 48, dtype=torch.bfloat16)

    def run():
        x = x0.clone().requires_grad_(True)
        y = norm(x)
        y.backward(g)
        return y.detach(), x.grad

    y_ref, gx_ref = run()
    assert fused_rms_norms(llama) == 3  # both of the layer's norms and the final one
    y, gx = run()
    assert torch.equal(y, y_ref)
    x64 = x0.double().requires_grad_(True)
    w64 = norm.weight.double()
    (w64 * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).backward(g.double())
    err, err_ref = (gx.double() - x64.grad).abs().max(), (gx_ref.double() - x64.grad).abs().max()
    assert err <= err_ref * 1.01 + 1e-6, (float(err), float(err_ref))
    torch.testing.assert_close(gx, gx_ref, rtol=0.02, atol=0.02)

    gemma = Gemma3ForCausalLM(Gemma3TextConfig(**small, **heads)).to(torch.bfloat16).requires_grad_(False)
    assert fused_rms_norms(gemma) == 0
    trained = LlamaForCausalLM(LlamaConfig(**small, **heads))  # weights that train keep autograd's backward
    assert fused_rms_norms(trained) == 0

    built, _ = trainer.build_model(trainer.make_plan(data_ws, config.make_config(str(tiny_base), "arith")), "cpu")
    norms = [m for m in built.modules() if "RMSNorm" in type(m).__name__]
    assert norms and all(getattr(m.forward, "__name__", "") == "_fused_norm_forward" for m in norms)
    off = config.make_config(str(tiny_base), "arith", fused_norm=False)
    built, _ = trainer.build_model(trainer.make_plan(data_ws, off), "cpu")
    assert not [m for m in built.modules() if getattr(m.forward, "__name__", "") == "_fused_norm_forward"]
