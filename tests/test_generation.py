"""Local generation on a tiny random Llama: prompts, batching, caching, resume, chat/completion."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from tiny_lm import build_tiny_llama

from core.api.suites import CODE_STOPS
from core.errors import Cancelled, ModelError
from core.models import generation
from core.models import registry as models
from core.runtime import progress
from core.store.workspace import dumps, now

QA = [
    ("What is the capital of France?", ["Paris"]),
    ("Who wrote Hamlet?", ["William Shakespeare"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("How many legs has a spider?", ["8", "eight"]),
    ("What colour is the sky?", ["blue"]),
    ("Largest ocean?", ["Pacific"]),
    ("Who painted the Mona Lisa?", ["Leonardo da Vinci"]),
    ("Boiling point of water in C?", ["100"]),
    ("Fastest land animal?", ["cheetah"]),
    ("Capital of Italy?", ["Rome"]),
]


def make_suite(ws, name, kind, items):
    """Insert a suite directly (the importer has its own tests)."""
    with ws.transaction():
        cur = ws.db.execute("insert into suites (name, kind, created_at) values (?, ?, ?)", [name, kind, now()])
        sid = cur.lastrowid
        for i, it in enumerate(items):
            ws.db.execute(
                "insert into items (suite_id, idx, prompt, task, gold, choices, content_hash) values (?,?,?,?,?,?,?)",
                [
                    sid,
                    i,
                    it["prompt"],
                    it.get("task", "all"),
                    dumps(it.get("gold", [])),
                    dumps(it["choices"]) if it.get("choices") else None,
                    hashlib.sha256(it["prompt"].encode()).hexdigest(),
                ],
            )
    return name


def qa_suite(ws, name="qa", n=None):
    return make_suite(ws, name, "qa", [{"prompt": q, "gold": g} for q, g in QA[:n]])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_plain_folder(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-plain") / "tiny-plain", chat_template=False)


@pytest.fixture
def tiny(ws, tiny_folder):
    models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    return "tiny"


def gen_rows(ws, model="tiny"):
    return [dict(r) for r in ws.db.query("select * from generations where model = ? order by item_id", [model])]


def test_completion_prompt_is_kshot_without_the_item(ws, tiny):
    qa_suite(ws)
    reqs = generation.build_requests(ws, tiny, "qa", style="completion", kshot=3)
    first = reqs[0].prompt
    assert first.endswith("Question: What is the capital of France?\nAnswer:")
    assert first.count("Question:") == 4 and "Answer: Paris" not in first  # 3 shots, never its own gold
    assert "Question: Who wrote Hamlet?\nAnswer: William Shakespeare" in first
    assert reqs[5].prompt.startswith("Question: What is the capital of France?\nAnswer: Paris\n\n")
    assert reqs[0].stop == ["\n", "\nQuestion:"]


def test_mc_and_code_prompts(ws, tiny):
    make_suite(
        ws,
        "mc",
        "mc",
        [
            {"prompt": "Which is a colour?", "choices": ["dog", "red", "run", "up"], "gold": ["B"]},
            {"prompt": "Which is a number?", "choices": ["seven", "tree", "sky", "ice"], "gold": ["A"]},
        ],
    )
    make_suite(ws, "code", "code", [{"prompt": 'def add(a, b):\n    """Sum."""\n'}])
    mc = generation.build_requests(ws, tiny, "mc", style="completion", kshot=3)
    assert mc[0].prompt.endswith("Question: Which is a colour?\nA. dog\nB. red\nC. run\nD. up\nAnswer:")
    assert "Answer: A" in mc[0].prompt  # the other item is its one shot
    code = generation.build_requests(ws, tiny, "code", style="completion", kshot=3)
    assert code[0].prompt == 'def add(a, b):\n    """Sum."""\n' and "\ndef " in code[0].stop
    chat = generation.build_requests(
        ws, tiny, "code", style="chat", kshot=3, tokenizer=models.resolve(ws, tiny).tokenizer
    )
    assert chat[0].prompt.startswith("<|user|>\nComplete the following Python function")
    assert chat[0].prompt.endswith("<|assistant|>\n")


def test_generate_caches_and_batched_equals_sequential(ws, tiny):
    qa_suite(ws)
    loaded = models.load_causal_lm(ws, tiny)
    s1 = progress.run(
        generation.generate(ws, tiny, "qa", max_new_tokens=8, batch_size=4, loaded=loaded, prompt_style="completion")
    )
    assert (s1["items"], s1["generated"], s1["cached"]) == (10, 10, 0)
    rows = gen_rows(ws)
    assert len(rows) == 10
    d = json.loads(rows[0]["decoding"])
    assert d == {
        "max_new_tokens": 8,
        "temperature": 0.0,
        "stop": ["\n", "\nQuestion:"],
        "style": "completion",
        "kshot": 3,
    }
    assert all(r["fingerprint"] == models.fingerprint(ws, tiny) for r in rows)

    # Rerun: everything comes from the cache, nothing generated.
    s2 = progress.run(
        generation.generate(ws, tiny, "qa", max_new_tokens=8, batch_size=4, loaded=loaded, prompt_style="completion")
    )
    assert (s2["generated"], s2["cached"]) == (0, 10)
    assert len(gen_rows(ws)) == 10

    # One at a time gives the same greedy outputs as batches with left padding.
    reqs = generation.build_requests(ws, tiny, "qa", style="completion", kshot=3)
    for r in reqs:
        r.decoding = generation.decoding_for(r, max_new_tokens=8, temperature=0.0, seed=None, kshot=3)
    seq: dict[int, str] = {}
    progress.run(
        generation.run_requests(
            ws, tiny, reqs, batch_size=1, loaded=loaded, store=lambda res: seq.update({r.item_id: t for r, t, _ in res})
        )
    )
    assert seq == {r["item_id"]: r["output"] for r in rows}


def test_different_decoding_is_a_different_cache_entry(ws, tiny):
    qa_suite(ws, n=3)
    loaded = models.load_causal_lm(ws, tiny)
    progress.run(generation.generate(ws, tiny, "qa", max_new_tokens=4, loaded=loaded, prompt_style="completion"))
    s = progress.run(
        generation.generate(
            ws, tiny, "qa", max_new_tokens=4, temperature=0.8, seed=1, loaded=loaded, prompt_style="completion"
        )
    )
    assert s["generated"] == 3
    s = progress.run(
        generation.generate(
            ws, tiny, "qa", max_new_tokens=4, temperature=0.8, seed=1, loaded=loaded, prompt_style="completion"
        )
    )
    assert s["generated"] == 0 and len(gen_rows(ws)) == 6


def test_interrupted_run_resumes_where_it_stopped(ws, tiny):
    qa_suite(ws)
    loaded = models.load_causal_lm(ws, tiny)
    cancel = threading.Event()
    gen = generation.generate(
        ws, tiny, "qa", max_new_tokens=6, batch_size=3, loaded=loaded, cancel=cancel, prompt_style="completion"
    )
    with pytest.raises(Cancelled):
        for p in gen:
            if p.done >= 3:  # the first batch is stored; stop before the next one
                cancel.set()
    assert len(gen_rows(ws)) == 3
    s = progress.run(
        generation.generate(ws, tiny, "qa", max_new_tokens=6, batch_size=3, loaded=loaded, prompt_style="completion")
    )
    assert (s["cached"], s["generated"]) == (3, 7)
    assert len(gen_rows(ws)) == 10


def test_chat_style_uses_the_template(ws, tiny):
    qa_suite(ws, n=2)
    s = progress.run(generation.generate(ws, tiny, "qa", max_new_tokens=5))
    assert s["style"] == "chat"
    row = gen_rows(ws)[0]
    assert row["prompt"].startswith("<|user|>\nAnswer the question with a short answer.\nQuestion: What is")
    assert json.loads(row["decoding"])["style"] == "chat"


def test_generate_resolves_the_model_once(ws, tiny, monkeypatch):
    """One generate call looks its model up in the registry once, however many things it needs."""
    from core.models import registry

    qa_suite(ws, n=3)
    lookups = []
    real = registry.get_model
    monkeypatch.setattr(registry, "get_model", lambda w, name: lookups.append(name) or real(w, name))
    s = progress.run(generation.generate(ws, tiny, "qa", max_new_tokens=3))  # chat: tokenizer, weights, fingerprint
    assert s["style"] == "chat" and s["generated"] == 3
    assert lookups == [tiny]
    lookups.clear()
    progress.run(generation.generate(ws, tiny, "qa", max_new_tokens=3, prompt_style="completion"))
    assert lookups == [tiny]


def test_chat_on_a_model_without_template_is_a_clear_error(ws, tiny_plain_folder):
    models.register(ws, "plain", "hf", {"path": str(tiny_plain_folder)})
    qa_suite(ws, n=2)
    assert models.prompt_style(ws, "plain") == "completion"
    with pytest.raises(ModelError, match="model 'plain' has no chat template: use --prompt-style completion"):
        progress.run(generation.generate(ws, "plain", "qa", prompt_style="chat"))
    s = progress.run(generation.generate(ws, "plain", "qa", max_new_tokens=3))  # auto -> completion
    assert s["style"] == "completion" and s["generated"] == 2


def test_truncate_at_stop():
    assert generation.truncate_at_stop(" Paris\nQuestion: x", ["\n", "\nQuestion:"]) == "Paris"
    assert generation.truncate_at_stop("    return a\n\ndef f():", CODE_STOPS) == "    return a"


def test_generate_job_runs_in_foreground(ws, tiny):
    from core.runtime import jobs

    qa_suite(ws, n=4)
    jid = jobs.submit(
        ws,
        "generate",
        "gen tiny",
        {"model": tiny, "suite": "qa", "max_new_tokens": 3, "prompt_style": "completion"},
        detach=False,
    )
    job = jobs.get_job(ws, jid)
    assert job["status"] == "done", job["error"]
    assert job["step"] == 4 and job["total_steps"] == 4
    assert len(gen_rows(ws)) == 4


def _hf_and_fast(model, tok, prompts, max_new_tokens, stops):
    """New tokens from plain HF `generate` (mirage's stop criteria) and from core.models.greedy."""
    import torch

    from core.models import greedy

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
    if stops:
        kwargs["stopping_criteria"] = generation._stop_criteria(tok, stops, enc["input_ids"].shape[1])
    with torch.inference_mode():
        hf = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
        fast = greedy.greedy(model, enc, max_new_tokens, tok.pad_token_id, tok=tok, stops=stops)
    return enc, hf, fast


def test_fast_greedy_gives_generates_tokens(tiny_folder):
    """The shared-prefix greedy loop against HF generate on one left-padded batch of unequal prompts:
    the same tokens, EOS and stop strings ending rows at different steps, max_new_tokens kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.models import greedy

    tok = AutoTokenizer.from_pretrained(tiny_folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_folder).eval()
    # At its init scale the tiny model's attention is near uniform, blind to positions and masks:
    # sharpen it so a wrong position id or a leaked pad changes the tokens.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= 12
            layer.self_attn.k_proj.weight *= 12
    assert greedy.supported(model)
    head = "Answer the question with a short answer.\nQuestion: "
    prompts = [head + q for q, _ in QA[:6]]
    enc, hf, fast = _hf_and_fast(model, tok, prompts, 12, [])
    rows = [r[m.bool()].tolist() for r, m in zip(enc["input_ids"], enc["attention_mask"])]
    assert len({len(r) for r in rows}) > 2  # unequal lengths: real left padding
    assert greedy.common_prefix(rows) >= greedy.MIN_PREFIX  # the prefix path is the one tested
    assert fast.tolist() == hf.tolist() and hf.shape[1] == 12

    # Rows that end at different steps: make a token row 0 emits at step 2 an EOS token.
    # Ended rows leave the batch: the decode steps after row 0's EOS run on fewer rows.
    model.generation_config.eos_token_id = [tok.eos_token_id, int(hf[0, 2])]
    widths = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True
    )
    _, hf_eos, fast_eos = _hf_and_fast(model, tok, prompts, 12, [])
    hook.remove()
    assert fast_eos.tolist() == hf_eos.tolist()
    decode = [w[0] for w in widths if w[1] == 1][-(hf_eos.shape[1] - 1) :]  # greedy's own decode steps
    assert decode[0] == len(prompts) and decode[-1] < len(prompts)
    ends = [int((r == tok.pad_token_id).nonzero()[0]) if (r == tok.pad_token_id).any() else 12 for r in hf_eos]
    assert len(set(ends)) > 1 and min(ends) == 3
    model.generation_config.eos_token_id = tok.eos_token_id

    # A stop string cut from row 1's text ends that row (and any other that writes it) early.
    text = tok.decode(hf[1], skip_special_tokens=True)
    stop = text[len(text) // 3 : len(text) // 3 + 2]
    _, hf_stop, fast_stop = _hf_and_fast(model, tok, prompts, 12, [stop])
    assert fast_stop.tolist() == hf_stop.tolist()
    assert (hf_stop[1] == tok.pad_token_id).any()

    # One row (no prefix to share) and a batch without a common prefix take the same path.
    for batch in (prompts[:1], [q for q, _ in QA[:4]]):
        _, hf_b, fast_b = _hf_and_fast(model, tok, batch, 7, [])
        assert fast_b.tolist() == hf_b.tolist() and hf_b.shape[1] == 7

    # Continuous batching: more prompts than slots; ended rows' slots take waiting prompts (EOS
    # and stop strings ending rows at different steps). Each row's tokens equal those HF generate
    # gives it on batches of `slots` prompts.
    many = [head + q for q, _ in QA[:8]]
    model.generation_config.eos_token_id = [tok.eos_token_id, int(hf[0, 2])]
    for slots, stops in ((3, []), (2, [stop]), (8, [stop])):
        tok.padding_side = "left"
        enc = tok(many, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            fast_many = greedy.greedy(model, enc, 12, tok.pad_token_id, tok=tok, stops=stops, slots=slots)
        hf_rows = []
        for k in range(0, len(many), slots):
            _, hf_k, _ = _hf_and_fast(model, tok, many[k : k + slots], 12, stops)
            hf_rows += hf_k.tolist()

        def trim(r):
            while r and r[-1] == tok.pad_token_id:
                r = r[:-1]
            return r

        assert [trim(r) for r in fast_many.tolist()] == [trim(r) for r in hf_rows]
        assert len({len(trim(r)) for r in hf_rows}) > 1  # rows end at different steps
    model.generation_config.eos_token_id = tok.eos_token_id


def test_packed_linears_are_used_for_small_forwards_only_and_restored(tiny_folder):
    """Decode-sized forwards run the model's nn.Linear layers through oneDNN on prepacked weights
    (the same logits within float rounding); long ones and everything after keep torch's layers,
    and a weight changed in place is packed again rather than served stale."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.models import greedy, packed

    if not packed.available():
        pytest.skip("this torch has no oneDNN linear")
    model = AutoModelForCausalLM.from_pretrained(tiny_folder).eval()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert linears
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    def counting(*a):
        calls.append(1)
        return real(*a)

    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        torch.ops.mkldnn._linear_pointwise = counting
        try:
            with greedy._packed_linears(model, ids.numel(), 1):
                assert all("forward" in m.__dict__ for m in linears)
                packed = model(input_ids=ids).logits
            assert len(calls) == len(linears)
            assert not any("forward" in m.__dict__ for m in linears)
            calls.clear()
            with greedy._packed_linears(model, greedy.PACKED_MAX_TOKENS + 1, 1):
                model(input_ids=ids)
            assert not calls
        finally:
            torch.ops.mkldnn._linear_pointwise = real
        torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
        linears[-1].weight.mul_(2)  # the output layer, changed in place as training would
        doubled = model(input_ids=ids).logits
        with greedy._packed_linears(model, ids.numel(), 1):
            again = model(input_ids=ids).logits
    torch.testing.assert_close(again, doubled, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(doubled, plain)


def test_bf16_packed_linears_give_autocasts_products_and_leave_the_layers_as_they_were():
    """Coverage embeds through `packed_linears(..., torch.bfloat16)` under autocast: the same bf16
    products as autocast's own linear (weights cast once instead of on every call)."""
    import torch

    from core.models import embeddings, packed

    if not (packed.available() and embeddings.cpu_bf16()):
        pytest.skip("this CPU has no native bf16 matmul (coverage embeds in fp32 there)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32)).eval()
    x = torch.randn(40, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = net(x)
        with packed.packed_linears(net, 40, torch.bfloat16):
            assert all("forward" in m.__dict__ for m in net if isinstance(m, torch.nn.Linear))
            got = net(x)
    assert got.dtype == ref.dtype == torch.bfloat16
    # Bit for bit on the Zen 4 this was written on; another CPU's oneDNN kernels may block the sums
    # differently, so within a bf16 rounding step.
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-2, atol=1e-2)
    assert not any("forward" in m.__dict__ for m in net)
    assert net[0].weight.dtype == torch.float32  # the model's own weights are untouched


def test_a_failure_packing_bf16_linears_leaves_autocast_off(monkeypatch):
    """On a CPU whose oneDNN refuses bf16 weights, packing raised inside the embedding call and
    left bf16 autocast on for the rest of the process (every later fp32 result came out rounded)."""
    import contextlib

    import torch

    from core.models import embeddings, packed

    @contextlib.contextmanager
    def refusing(*a, **k):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support ...")
        yield

    monkeypatch.setattr(packed, "packed_linears", refusing)
    with pytest.raises(RuntimeError):
        embeddings._encode(object(), ["a text"], 8, None, bf16=True)
    assert not torch.is_autocast_enabled("cpu")
    assert torch.randn(3, 3).matmul(torch.randn(3, 3)).dtype == torch.float32


def test_bf16_weights_are_not_packed_where_onednn_has_no_bf16(monkeypatch):
    import torch

    from core.models import packed

    if not packed.available():
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    lin = torch.nn.Linear(8, 4)
    assert packed._packed(lin, 2, torch.bfloat16) is None
    assert packed._packed(lin, 2, torch.float32) is not None
