"""`mirage models`, `mirage serve`, `mirage generate` and `mirage collect`."""

from __future__ import annotations

import sys

import click

from core.cli import emit_json, json_option, open_workspace, print_table, workspace_option

STYLES = click.Choice(["auto", "chat", "completion"])


@click.group("models", invoke_without_command=True)
@json_option
@workspace_option
@click.pass_context
def models_group(ctx, as_json):
    """List models, or add / remove / prepare one."""
    if ctx.invoked_subcommand is not None:
        return
    from core.models import registry as models

    rows = models.list_models(open_workspace(ctx))
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, ["name", "kind", "size", "chat_template", "location", "generations"])


@models_group.command("add")
@click.argument("name")
@click.option("--hf", "hf", metavar="PATH_OR_ID", help="A local Hugging Face model folder (or GGUF file), or a hub id.")
@click.option("--gguf-file", metavar="FILE", help="The GGUF file inside the --hf folder.")
@click.option("--openai-base-url", metavar="URL", help="An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
@click.option("--openai-model", metavar="MODEL", help="The model id the endpoint serves.")
@click.option(
    "--api-key-env", metavar="VAR", help="Name of the environment variable holding the API key (never stored)."
)
@click.option("--max-concurrency", type=int, help="Concurrent requests to the endpoint (default 4).")
@click.option("--adapter", metavar="DIR", help="A PEFT adapter folder ...")
@click.option("--base", metavar="NAME", help="... on this registered base model.")
@click.option(
    "--adapter-of",
    metavar="RUN",
    help="With --openai-base-url: the endpoint serves this run's adapter (vLLM --enable-lora); keeps its lineage.",
)
@click.option("--prompt-style", type=click.Choice(["chat", "completion"]), help="Default prompt style for generation.")
@click.option("--replace", is_flag=True, help="Overwrite an existing entry of that name.")
@json_option
@workspace_option
@click.pass_context
def add(
    ctx,
    name,
    hf,
    gguf_file,
    openai_base_url,
    openai_model,
    api_key_env,
    max_concurrency,
    adapter,
    base,
    adapter_of,
    prompt_style,
    replace,
    as_json,
):
    """Register a model: --hf PATH_OR_ID | --openai-base-url URL --openai-model M | --adapter DIR --base NAME."""
    from core.models import registry as models

    chosen = [k for k, v in (("--hf", hf), ("--openai-base-url", openai_base_url), ("--adapter", adapter)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --hf, --openai-base-url or --adapter")
    if hf:
        kind, spec = "hf", {"path": hf, "gguf_file": gguf_file}
    elif openai_base_url:
        if not openai_model:
            raise click.UsageError("--openai-base-url needs --openai-model")
        kind, spec = (
            "openai",
            {
                "base_url": openai_base_url,
                "model": openai_model,
                "api_key_env": api_key_env,
                "max_concurrency": max_concurrency,
            },
        )
    else:
        if not base:
            raise click.UsageError("--adapter needs --base NAME")
        kind, spec = "adapter", {"path": adapter, "base": base}
    if prompt_style:
        spec["prompt_style"] = prompt_style
    ws = open_workspace(ctx)
    if adapter_of:
        if kind != "openai":
            raise click.UsageError("--adapter-of goes with --openai-base-url (an adapter served by vLLM)")
        spec.update(models.served_adapter(ws, adapter_of))
    entry = models.register(ws, name, kind, spec, replace=replace)
    row = next(r for r in models.list_models(ws) if r["name"] == name)
    if as_json:
        emit_json({**row, "spec": entry["spec"]})
    else:
        click.echo(f"added {kind} model '{name}': {row['location']}")


@models_group.command("rm")
@click.argument("name")
@workspace_option
@click.pass_context
def rm(ctx, name):
    """Remove a model entry (its cached outputs stay)."""
    from core.models import registry as models

    models.unregister(open_workspace(ctx), name)
    click.echo(f"removed model '{name}'")


@models_group.command("show")
@click.argument("name")
@json_option
@workspace_option
@click.pass_context
def show(ctx, name, as_json):
    """Show one model: kind, spec, fingerprint, prompt style."""
    from core.models import registry as models

    ws = open_workspace(ctx)
    rm = models.resolve(ws, name)
    info = {
        **next(r for r in models.list_models(ws) if r["name"] == name),
        "spec": rm.spec,
        "fingerprint": rm.fingerprint,
        "prompt_style": rm.prompt_style,
    }
    if as_json:
        emit_json(info)
    else:
        for k, v in info.items():
            click.echo(f"{k:>14}: {v}")


@models_group.command("prepare")
@click.argument("name")
@click.option("--verify", is_flag=True, help="Re-check the cached weights' sha256.")
@json_option
@workspace_option
@click.pass_context
def prepare(ctx, name, verify, as_json):
    """Convert a packaged model's GGUF to its cached safetensors folder now (done once)."""
    from core.models import registry as models
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    folder = drive(models.resolve(ws, name).ensure_local(verify=verify), f"preparing {name}")
    emit_json({"name": name, "folder": str(folder)}) if as_json else click.echo(str(folder))


@click.command("serve")
@click.argument("model")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--name", "reg_name", metavar="NAME", help="Register it as this openai model (default MODEL@local).")
@click.option(
    "--continuous-batching/--no-continuous-batching",
    default=True,
    show_default=True,
    help="Batch concurrent requests (paged attention); off: one request at a time.",
)
@json_option
@workspace_option
@click.pass_context
def serve(ctx, model, port, reg_name, continuous_batching, as_json):
    """Serve a local model on 127.0.0.1 (OpenAI-compatible, `transformers serve`) until Ctrl-C."""
    from core.models import serving

    ws = open_workspace(ctx)

    def ready(server):
        name = serving.register_endpoint(ws, server, reg_name)
        if as_json:
            emit_json(
                {
                    "model": model,
                    "url": server.base_url,
                    "port": server.port,
                    "pid": server.pid,
                    "registered_as": name,
                    "model_id": server.model_id,
                    "log": server.log,
                }
            )
        else:
            click.echo(f"serving {model} at {server.base_url}  (registered as '{name}'; log {server.log})")
            click.echo(f"try: curl {server.base_url}/models   — Ctrl-C stops it")
        sys.stdout.flush()

    try:
        serving.serve(ws, model, port, on_ready=ready, continuous_batching=continuous_batching)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


def _report(summary: dict, as_json: bool, fields: list[str]) -> None:
    if as_json:
        emit_json(summary)
    else:
        click.echo("  ".join(f"{k}: {summary[k]}" for k in fields if k in summary))


def _started(job_id: int, as_json: bool) -> None:
    """What `generate` and `collect` say when --detach has started their job."""
    emit_json({"job": job_id}) if as_json else click.echo(f"job {job_id} started (`mirage jobs` to watch)")


# generate and collect reach endpoints the same way, so they take the same per-request timeout.
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help=(
        "Endpoints: seconds per request before it is retried (default: the model's timeout_s, else 120;"
        " a server started by mirage: 1800, and a timed-out request is not retried)."
    ),
)


@click.command("generate")
@click.option("--model", required=True, help="Registered model name.")
@click.option("--suite", required=True, help="Suite to generate on.")
@click.option("--max-new-tokens", type=int, help="Default: [defaults] max_new_tokens in mirage.toml.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--seed", type=int, help="Sampling seed (with --temperature > 0).")
@click.option("--kshot", type=int, help="Examples in completion prompts (default: [defaults] kshot).")
@click.option("--prompt-style", type=STYLES, default="auto", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Local models: prompts per batch.")
@click.option("--concurrency", type=int, help="Endpoints: concurrent requests.")
@click.option("--task", help="Only this task of the suite.")
@click.option("--limit", type=int, help="Only the first N items.")
@timeout_option
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    help="Outputs per item, seeds --seed, --seed+1, ... (needs --temperature > 0); for pass@k on code suites.",
)
@click.option("--detach", is_flag=True, help="Run as a background job (see `mirage jobs`).")
@json_option
@workspace_option
@click.pass_context
def generate(
    ctx,
    model,
    suite,
    max_new_tokens,
    temperature,
    seed,
    kshot,
    prompt_style,
    batch_size,
    concurrency,
    task,
    limit,
    timeout,
    samples,
    detach,
    as_json,
):
    """Generate a model's outputs on a suite (cached: a rerun costs nothing, a killed run resumes)."""
    from core.data import datasets
    from core.models import generation
    from core.models import registry as models
    from core.runtime import jobs

    ws = open_workspace(ctx)
    models.get_model(ws, model)
    datasets.get_suite(ws, suite)
    opts = jobs.given(
        {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
            "kshot": kshot,
            "prompt_style": prompt_style,
            "batch_size": batch_size,
            "concurrency": concurrency,
            "task": task,
            "limit": limit,
            "timeout": timeout,
            "samples": samples,
        }
    )
    if detach:
        jid = jobs.submit(ws, "generate", f"generate {model} on {suite}", {"model": model, "suite": suite, **opts})
        _started(jid, as_json)
        return
    from core.runtime.progress import drive

    summary = drive(generation.generate(ws, model, suite, **opts), f"{model} on {suite}")
    _report(summary, as_json, ["model", "suite", "items", "generated", "cached", "style", "seconds"])


@click.command("collect")
@click.option("--teacher", required=True, help="The teacher model (an endpoint or a local chat model).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="JSONL/JSON/CSV/TXT of prompts.")
@click.option("--suite", help="Ask the teacher the prompts of this suite.")
@click.option("--synthetic-from", metavar="SUITE", help="NQ-synthetic: new QA pairs modelled on this suite's.")
@click.option("--n", type=int, help="Synthetic: how many new pairs.")
@click.option("--k", type=int, default=3, show_default=True, help="Synthetic: seed pairs shown per request.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", required=True, help="The imitation dataset to create (or extend).")
@click.option("--max-new-tokens", type=int)
@click.option("--temperature", type=float, help="Default 0 (answers), 0.7 (synthetic pairs).")
@click.option("--system", help="A system message for every request.")
@click.option("--concurrency", type=int, help="Endpoints: concurrent requests.")
@click.option("--limit", type=int, help="Only the first N prompts.")
@timeout_option
@click.option("--detach", is_flag=True, help="Run as a background job.")
@json_option
@workspace_option
@click.pass_context
def collect(
    ctx,
    teacher,
    prompts_file,
    suite,
    synthetic_from,
    n,
    k,
    seed,
    name,
    max_new_tokens,
    temperature,
    system,
    concurrency,
    limit,
    timeout,
    detach,
    as_json,
):
    """Store a teacher's answers as an imitation dataset (with provenance); safe to kill and rerun."""
    from core.models import collect as collect_mod
    from core.models import registry as models
    from core.runtime import jobs

    ws = open_workspace(ctx)
    models.get_model(ws, teacher)
    if sum(bool(x) for x in (prompts_file, suite, synthetic_from)) != 1:
        raise click.UsageError("give exactly one of --prompts FILE, --suite NAME or --synthetic-from SUITE --n N")
    if prompts_file:
        collect_mod.read_prompts(prompts_file)  # bad input fails here, before any job starts
    opts = {
        "prompts_file": str(__import__("pathlib").Path(prompts_file).resolve()) if prompts_file else None,
        "suite": suite,
        "synthetic_from": synthetic_from,
        "n": n,
        "k": k,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "system": system,
        "concurrency": concurrency,
        "limit": limit,
        "timeout": timeout,
        "command": " ".join(["mirage", *sys.argv[1:]]),
    }
    opts = jobs.given(opts)
    if detach:
        jid = jobs.submit(ws, "collect", f"collect {name} from {teacher}", {"teacher": teacher, "name": name, **opts})
        _started(jid, as_json)
        return
    from core.runtime.progress import drive

    summary = drive(collect_mod.collect(ws, teacher, name=name, **opts), f"collecting {name}")
    _report(
        summary,
        as_json,
        ["dataset", "teacher", "examples", "asked", "cached", "duplicates", "unparsable", "note", "seconds"],
    )
