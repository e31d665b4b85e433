"""The model registry, fingerprints, adapters, the CLI, and one real `transformers serve` run."""

from __future__ import annotations

import json

import pytest
from tiny_lm import build_tiny_llama

from core.cli import main
from core.errors import BadInput, ModelError, NotFound
from core.models import registry as models
from core.runtime import progress


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_packaged_models_resolve_everywhere_and_unknown_lists_known(ws):
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        assert models.get_model(ws, name)["kind"] == "packaged"
    with pytest.raises(NotFound, match=r"no model 'nope' \(known: gemma3-270m, smollm2-135m-instruct;"):
        models.get_model(ws, "nope")
    rows = {r["name"]: r for r in models.list_models(ws)}
    assert set(rows) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert models.prompt_style(ws, "gemma3-270m") == "completion"  # a pretrained base: k-shot prompts


def test_register_hf_and_list(ws, tiny_folder):
    models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    row = next(r for r in models.list_models(ws) if r["name"] == "tiny")
    assert row["kind"] == "hf" and row["chat_template"] is True and row["location"] == str(tiny_folder)
    assert row["size"].endswith("KB") or row["size"].endswith("MB")
    assert models.local_folder(ws, "tiny") == tiny_folder
    model, tok = models.load_causal_lm(ws, "tiny")
    assert model.config.hidden_size == 32 and tok.pad_token is not None and not model.training
    with pytest.raises(BadInput, match="model 'tiny' already exists"):
        models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    models.unregister(ws, "tiny")
    with pytest.raises(NotFound):
        models.get_model(ws, "tiny")


def test_register_rejects_bad_specs(ws, tmp_path):
    with pytest.raises(BadInput, match="no such folder"):
        models.register(ws, "x", "hf", {"path": str(tmp_path / "missing")})
    with pytest.raises(BadInput, match="base URL must start with http"):
        models.register(ws, "x", "openai", {"base_url": "ftp://h", "model": "m"})
    with pytest.raises(BadInput, match="NAME of an environment variable") as e:
        models.register(ws, "x", "openai", {"base_url": "http://h/v1", "model": "m", "api_key_env": "sk-abc123-secret"})
    assert "sk-abc" not in str(e.value)
    with pytest.raises(BadInput, match="not a PEFT adapter folder"):
        models.register(ws, "x", "adapter", {"path": str(tmp_path), "base": "gemma3-270m"})
    with pytest.raises(BadInput, match="packaged model's name"):
        models.register(ws, "gemma3-270m", "hf", {"id": "google/gemma-3-270m"})
    with pytest.raises(ModelError, match="no local weights"):
        models.register(ws, "api", "openai", {"base_url": "http://h/v1", "model": "m"})
        models.load_causal_lm(ws, "api")


def test_fingerprint_tracks_weights_endpoint_and_served_model(ws, tmp_path):
    folder = build_tiny_llama(tmp_path / "m", seed=0)
    models.register(ws, "m", "hf", {"path": str(folder)})
    fp1 = models.fingerprint(ws, "m")
    assert fp1 == models.fingerprint(ws, "m")
    build_tiny_llama(tmp_path / "m", seed=1)  # new weights in place
    assert models.fingerprint(ws, "m") != fp1
    models.register(ws, "e", "openai", {"base_url": "http://127.0.0.1:1/v1", "model": "a"})
    fe = models.fingerprint(ws, "e")
    models.register(ws, "e", "openai", {"base_url": "http://127.0.0.1:1/v1", "model": "b"}, replace=True)
    assert models.fingerprint(ws, "e") != fe
    # A served local model is fingerprinted by its weights, so a new port keeps its cache.
    models.register(ws, "m@local", "openai", {"base_url": "http://127.0.0.1:2/v1", "model": "x", "served_from": "m"})
    a = models.fingerprint(ws, "m@local")
    models.register(
        ws, "m@local", "openai", {"base_url": "http://127.0.0.1:3/v1", "model": "x", "served_from": "m"}, replace=True
    )
    assert models.fingerprint(ws, "m@local") == a


def test_adapter_loads_on_its_base_with_peft(ws, tmp_path, tiny_folder):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_folder))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained-looking adapter: the output must change
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)

    models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    models.register(
        ws, "tiny-imit", "adapter", {"path": str(adapter_dir), "base": "tiny", "lineage": {"data": "d", "tokens": 1000}}
    )
    model, tok = models.load_causal_lm(ws, "tiny-imit")
    assert isinstance(model, PeftModel)
    base_model, _ = models.load_causal_lm(ws, "tiny")
    ids = tok("Question: hello", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**ids).logits, base_model(**ids).logits)
    row = next(r for r in models.list_models(ws) if r["name"] == "tiny-imit")
    assert row["base"] == "tiny" and row["chat_template"] is True
    assert models.get_model(ws, "tiny-imit")["spec"]["lineage"] == {"data": "d", "tokens": 1000}
    fp = models.fingerprint(ws, "tiny-imit")
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(1.0)
    peft_model.save_pretrained(adapter_dir)
    assert models.fingerprint(ws, "tiny-imit") != fp


def test_cli_models_add_ls_show_rm(ws, tiny_folder, capsys, monkeypatch):
    w = ["-w", str(ws.root)]
    code, out, err = run_cli(capsys, "models", "add", "tiny", "--hf", str(tiny_folder), *w)
    assert code == 0 and "added hf model 'tiny'" in out
    code, out, err = run_cli(
        capsys,
        "models",
        "add",
        "api",
        "--openai-base-url",
        "http://127.0.0.1:9/v1",
        "--openai-model",
        "gpt-x",
        "--api-key-env",
        "MY_KEY",
        *w,
    )
    assert code == 0, err
    code, out, err = run_cli(capsys, "ls", "models", "--json", *w)
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"smollm2-135m-instruct", "gemma3-270m", "tiny", "api"}
    assert rows["api"]["location"] == "http://127.0.0.1:9/v1 (gpt-x)" and rows["tiny"]["generations"] == 0
    code, out, err = run_cli(capsys, "models", "show", "api", "--json", *w)
    assert json.loads(out)["spec"] == {"base_url": "http://127.0.0.1:9/v1", "model": "gpt-x", "api_key_env": "MY_KEY"}
    code, out, err = run_cli(
        capsys,
        "models",
        "add",
        "k",
        "--openai-base-url",
        "http://h/v1",
        "--openai-model",
        "m",
        "--api-key-env",
        "sk-live-123",
        *w,
    )
    assert code == 1 and "sk-live" not in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "models", "rm", "api", *w)
    assert code == 0
    code, out, err = run_cli(capsys, "generate", "--model", "nope", "--suite", "s", *w)
    assert code == 1 and err.startswith("error: no model 'nope' (known: gemma3-270m, smollm2-135m-instruct, tiny;")


@pytest.mark.slow
def test_serve_real_smollm2_and_talk_to_it_with_openai(ws):
    """The offline teacher path end to end: packaged GGUF -> cached folder -> transformers serve -> openai."""
    from test_generation import make_suite

    from core.models import generation, packaged, serving

    folder = progress.run(packaged.prepare_packaged("smollm2-135m-instruct"))
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    make_suite(ws, "capitals", "qa", [{"prompt": "What is the capital of France?", "gold": ["Paris"]}])
    with serving.ensure_server(ws, "smollm2-135m-instruct") as (name, server):
        assert name == "smollm2-135m-instruct@local"
        assert [s.port for s in serving.list_servers(ws)] == [server.port]
        # continuous batching: the server batches concurrent requests, so they are sent together
        assert "--continuous-batching" in open(server.log).read()
        assert models.get_model(ws, name)["spec"]["max_concurrency"] == serving.BATCHED_CONCURRENCY
        # its paged KV cache is sized, not taken from the machine's memory (it grew to 14 GB)
        assert serving._get_json(server.base_url + "/models")["object"] == "list"
        client, model_id = models.openai_client(ws, name)
        reply = client.chat.completions.create(
            model=model_id,
            max_tokens=12,
            temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in reply.choices[0].message.content
        make_suite(
            ws,
            "capitals2",
            "qa",
            [
                {"prompt": f"What is the capital of {c}?", "gold": [g]}
                for c, g in (("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"))
            ],
        )
        s = progress.run(generation.generate(ws, name, "capitals", max_new_tokens=12))
        assert s["generated"] == 1
        s = progress.run(generation.generate(ws, name, "capitals2", max_new_tokens=12))  # 3 requests at once
        assert s["generated"] == 3
        out = ws.db.execute("select output, meta from generations").fetchone()
        assert "Paris" in out[0] and json.loads(out[1])["usage"]["completion_tokens"] > 0
        peak_kb = int(next(ln for ln in open(f"/proc/{server.pid}/status") if ln.startswith("VmHWM")).split()[1])
        assert peak_kb < 4 * 1024 * 1024, f"server peak RSS {peak_kb / 1024**2:.1f} GB"
    assert serving.list_servers(ws) == []


def test_model_kind_is_each_kinds_class_for_registered_entries(ws, tmp_path, tiny_folder):
    from core.models import kinds

    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text("{}")
    models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    models.register(ws, "api", "openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    models.register(ws, "tiny-imit", "adapter", {"path": str(adapter_dir), "base": "tiny"})
    models.register(ws, "old", "recorded", {"source": "outputs.jsonl"})
    expected = {
        "tiny": kinds.HfKind,
        "smollm2-135m-instruct": kinds.PackagedKind,
        "api": kinds.OpenAIKind,
        "tiny-imit": kinds.AdapterKind,
        "old": kinds.RecordedKind,
    }
    for name, cls in expected.items():
        kind = models.model_kind(ws, name)
        assert type(kind) is cls and kind.name == models.get_model(ws, name)["kind"]
        assert type(models.resolve(ws, name).kind) is cls
    flags = {n: (k.loadable, k.own_weights, k.on_base, k.endpoint) for n, k in kinds.KINDS.items()}
    assert flags == {
        "hf": (True, True, False, False),
        "packaged": (True, True, False, False),
        "openai": (False, False, False, True),
        "adapter": (True, False, True, False),
        "recorded": (False, False, False, False),
    }
    with pytest.raises(BadInput, match="unknown kind 'gguf'"):
        models.register(ws, "x", "gguf", {})
    with pytest.raises(ModelError, match="'api' is a openai model: it has no local weights to load"):
        models.load_causal_lm(ws, "api")
    with pytest.raises(ModelError, match="'tiny' is a hf model, not an OpenAI-compatible endpoint"):
        models.openai_client(ws, "tiny")
    with pytest.raises(BadInput, match="base 'api' is a openai model, not local weights"):
        models.register(ws, "bad", "adapter", {"path": str(adapter_dir), "base": "api"})


def test_resolved_model_computes_once_and_names_its_base(ws, tmp_path, tiny_folder, monkeypatch):
    from core.models import kinds

    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text("{}")
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"weights")
    models.register(ws, "tiny", "hf", {"path": str(tiny_folder)})
    models.register(ws, "tiny-imit", "adapter", {"path": str(adapter_dir), "base": "tiny"})
    rm = models.resolve(ws, "tiny-imit")
    assert rm.base.name == "tiny" and rm.base.kind.own_weights
    assert rm.fingerprint == models.fingerprint(ws, "tiny-imit") != models.fingerprint(ws, "tiny")
    assert rm.tokenizer_folder() == tiny_folder  # the adapter has no tokenizer of its own
    identities = []
    real = kinds.HfKind.identity
    monkeypatch.setattr(kinds.HfKind, "identity", lambda self, r: identities.append(r.name) or real(self, r))
    fresh = models.resolve(ws, "tiny")
    assert fresh.fingerprint == fresh.fingerprint and identities == ["tiny"]


def test_has_chat_template_reads_folders_and_tokenizers(tmp_path, tiny_folder):
    from core.models.loading import has_chat_template, load_tokenizer

    assert has_chat_template(tiny_folder) and has_chat_template(str(tiny_folder))
    assert has_chat_template(load_tokenizer(tiny_folder))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not has_chat_template(plain)
    (plain / "tokenizer_config.json").write_text('{"chat_template": ""}')
    assert not has_chat_template(plain)
    (plain / "chat_template.jinja").write_text("{{ messages }}")
    assert has_chat_template(plain)

    class NoTemplate:
        chat_template = None

    assert not has_chat_template(NoTemplate())


def test_loading_a_model_draws_no_progress_bar(tiny_folder, capfd):
    """`mirage demo --headless` printed transformers' "Loading weights: 18%|█▊ ..." frames on
    stderr at every model load, among the study's own progress lines."""
    from transformers.utils import logging as hf_logging

    from core.models import loading

    hf_logging.enable_progress_bar()  # as in a fresh process (another test may have turned it off)
    capfd.readouterr()
    loading.load_folder(tiny_folder, dtype=None, device="cpu")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err


def test_the_gguf_conversion_silences_the_readers_bar_and_puts_it_back(capfd):
    """`mirage demo` printed transformers' "Converting and de-quantizing GGUF tensors...: 11%|█"
    frames between the conversion's own progress lines."""
    from transformers import modeling_gguf_pytorch_utils as reader

    from core.models import packaged

    real = reader.tqdm
    with packaged._gguf_reader_quiet():
        for _ in reader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "de-quantizing" not in capfd.readouterr().err
    assert reader.tqdm is real
