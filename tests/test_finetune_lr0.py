"""At a learning rate of ~0 training changes nothing: the loss a step reports is the held-out-style
loss of the same batch with the same weights, the same at every step, and the frozen base (tied
embeddings included: the chunked loss reads the output layer that is also the input embedding)
is bit-for-bit the one loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_finetune import _conversation, add_dataset, build_tiny_model

from core.finetune import config, trainer
from core.finetune import data as ftdata
from core.runtime import progress


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lr0") / "tiny-llama", tied=request.param)


def _batch_loss(tr: trainer.Trainer, step: int) -> float:
    """What evaluate() computes (eval mode, no grad), on the training batch of `step`."""
    import torch

    total = count = 0
    tr.module.eval()
    with torch.no_grad():
        for mb in tr.plan.micro_batches(step):
            part, k = tr.module(*ftdata.collate(tr.plan, mb, tr.acc.device))
            total, count = total + float(part), count + int(k)
    tr.module.train()
    return total / count


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_step_at_lr_zero_reports_the_batch_loss_and_changes_no_weight(ws, base, dtype, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    add_dataset(ws, "arith", [_conversation(i) for i in range(10)])
    # One batch of all 10 examples, in two micro-batches: every step trains on the same examples.
    cfg = config.make_config(
        str(base),
        "arith",
        dtype=dtype,
        lr=1e-12,
        dropout=0.0,
        batch_size=5,
        grad_accum=2,
        max_steps=4,
        eval_fraction=0.0,
        save_every=100,
        logit_chunk=7,
        warmup_ratio=0.0,
        scheduler="constant_with_warmup",
    )
    plan = trainer.make_plan(ws, cfg)
    assert plan.steps_per_epoch == 1 and plan.total_steps == 4
    tr = trainer.Trainer(plan, tmp_path / "run")
    tr.setup()
    peft_model = tr.peft_model
    torch.manual_seed(1)
    for p in tr.params:  # LoRA B starts at zero; make the adapter part of every forward
        torch.nn.init.normal_(p, std=0.05)
    lora0 = [p.detach().clone() for p in tr.params]

    before = _batch_loss(tr, 0)
    losses = []
    for step in range(plan.total_steps):
        loss, _, grad_norm, _ = tr.step(step)
        assert grad_norm > 0  # a real backward ran; only the tiny lr keeps the weights put
        losses.append(loss)
        assert loss == pytest.approx(_batch_loss(tr, step), abs=1e-3)
    assert losses == pytest.approx([before] * len(losses), abs=1e-3)
    for p, p0 in zip(tr.params, lora0, strict=True):
        assert float((p.detach() - p0).abs().max()) < 1e-9

    # The frozen base is exactly what was loaded (the tied embedding is both ends of the model).
    loaded = AutoModelForCausalLM.from_pretrained(str(base), dtype=tr.dtype).state_dict()
    trained = peft_model.get_base_model()
    if trained.config.tie_word_embeddings:
        assert trained.get_output_embeddings().weight is trained.get_input_embeddings().weight
    frozen = {
        n.replace("base_layer.", ""): p
        for n, p in trained.named_parameters()
        if not p.requires_grad and "lora_" not in n
    }
    assert frozen, "no frozen weights found"
    for n, p in frozen.items():
        assert torch.equal(p.detach().cpu(), loaded[n]), n


def test_the_loop_at_lr_zero_logs_a_constant_loss_equal_to_eval_loss(ws, base, tmp_path):
    """The whole loop (evaluate between steps, mode switches): the same examples as training
    batch and as held-out set give the same loss at every step."""
    add_dataset(ws, "arith", [_conversation(i) for i in range(8)])
    cfg = config.make_config(
        str(base),
        "arith",
        dtype="fp32",
        lr=1e-12,
        dropout=0.0,
        batch_size=8,
        max_steps=3,
        eval_fraction=0.0,
        eval_every=1,
        save_every=100,
    )
    plan = trainer.make_plan(ws, cfg)
    # Held out = the training examples themselves, so eval_loss is the training batch's loss.
    plan.sel.eval_ids, plan.sel.eval_labels = list(plan.sel.ids), list(plan.sel.labels)
    seen = []
    progress.run(trainer.Trainer(plan, tmp_path / "run").train(), seen.append)
    steps = [p.metrics for p in seen if p.metrics]
    assert len(steps) == 3
    for m in steps:
        assert m["loss"] == pytest.approx(steps[0]["loss"], abs=1e-3)
        assert m["loss"] == pytest.approx(m["eval_loss"], abs=1e-3)
