"""`mirage coverage` and `mirage subset`: how the imitation data covers a suite, and named slices of it."""

from __future__ import annotations

import click

from core.cli import emit_json, json_option, open_workspace, print_table, workspace_option


@click.command("coverage")
@click.option("--data", "data", required=True, metavar="NAME", help="Imitation dataset (or subset).")
@click.option("--suite", required=True, metavar="NAME", help="Eval suite.")
@click.option("--k", "k", type=int, default=5, show_default=True, help="Nearest examples kept per item.")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Cosine similarity at which an item counts as supported (default 0.65, chosen on NQ-open).",
)
@click.option(
    "--embedding-model",
    metavar="PATH",
    default=None,
    help="Local sentence-transformers folder (default: defaults.embedding_model, the packaged all-MiniLM-L6-v2).",
)
@click.option("--whole-conversation", is_flag=True, help="Embed whole conversations, not only the user turns.")
@click.option("--clusters", "n_clusters", type=int, default=None, help="Topic clusters (default: sqrt(n/2), 2..30).")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="DEV",
    help="Encode with a multi-process pool, one process per device; repeat (e.g. --device cuda:0 --device cuda:1).",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--force", is_flag=True, help="Recompute even if stored results are current.")
@click.option(
    "--items",
    "show_items",
    type=int,
    default=10,
    show_default=True,
    help="Least supported items shown in the table (0: none).",
)
@click.option("--detach", is_flag=True, help="Run as a background job (see `mirage jobs`).")
@json_option
@workspace_option
@click.pass_context
def coverage(
    ctx,
    data,
    suite,
    k,
    threshold,
    embedding_model,
    whole_conversation,
    n_clusters,
    seed,
    devices,
    batch_size,
    force,
    show_items,
    detach,
    as_json,
):
    """How much the imitation data DATA supports each task and item of SUITE."""
    from core.coverage import compute as cov
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    # What a job stores and what runs here take the same options (a job leaves out batch size and
    # --force); the job config names n_clusters "clusters", as coverage.run_job reads it.
    opts = {
        "k": k,
        "threshold": threshold,
        "embedding_model": embedding_model,
        "whole_conversation": whole_conversation,
        "n_clusters": n_clusters,
        "seed": seed,
        "devices": list(devices) or None,
    }
    if detach:
        from core.runtime import jobs

        config = {"clusters" if key == "n_clusters" else key: v for key, v in opts.items()}
        job_id = jobs.submit(ws, "coverage", f"coverage {data} x {suite}", {"data": data, "suite": suite, **config})
        view = jobs.public_view(jobs.get_job(ws, job_id))
        emit_json(view) if as_json else click.echo(f"job {view['id']}: {view['status']} (follow with `mirage jobs`)")
        return
    res = drive(cov.compute(ws, data, suite, **opts, batch_size=batch_size, force=force), "coverage", quiet=as_json)
    if as_json:
        emit_json(res)
        return
    s = res["summary"]
    click.echo(
        f"{data} x {suite}: {res['embedding_model']} ({res['mode']} text), threshold {res['threshold']:.2f}, k {res['k']}"
    )
    click.echo(
        f"support {s['support']:.1%} of {s['items']} items; mean max similarity {s['mean_max_similarity']:.3f}; "
        f"{s['examples_served']} examples serve the suite; {s['contaminated']} contaminated (13-gram); "
        f"{s['answer_leak']} answer leaks in nearest responses"
    )
    rows = [
        {
            **t,
            "support": f"{t['support']:.1%}",
            "mean_max_similarity": f"{t['mean_max_similarity']:.3f}",
            "sources": ", ".join(f"{src} {v['support']:.0%}" for src, v in t["by_source"].items()),
        }
        for t in res["tasks"]
    ]
    print_table(
        rows,
        [
            "task",
            "items",
            "support",
            "mean_max_similarity",
            "examples_served",
            "contaminated",
            "answer_leak",
            "sources",
        ],
        title="tasks",
    )
    if show_items:
        worst = sorted(res["items"], key=lambda r: r["max_similarity"])[:show_items]
        print_table(
            [
                {
                    "item": r["item_id"],
                    "task": r["task"],
                    "prompt": r["prompt"][:70],
                    "max_sim": f"{r['max_similarity']:.3f}",
                    "ngram": r["longest_ngram"],
                    "nearest": (r["neighbors"][0]["text"][:60] if r["neighbors"] else ""),
                }
                for r in worst
            ],
            ["item", "task", "prompt", "max_sim", "ngram", "nearest"],
            title="least supported items",
        )
    print_table(
        [
            {
                "cluster": c["cluster"],
                "size": c["size"],
                "terms": ", ".join(c["terms"][:6]),
                "serves": ", ".join(f"{t['task']} ({t['items']})" for t in c["tasks"][:3]),
            }
            for c in sorted(res["clusters"], key=lambda c: -c["size"])
        ],
        ["cluster", "size", "terms", "serves"],
        title="clusters",
    )


@click.group("subset")
def subset_group():
    """Named slices of an imitation dataset (by cluster, source, task support or token budget)."""


@subset_group.command("create")
@click.argument("name")
@click.option("--data", "data", required=True, metavar="NAME", help="Parent dataset.")
@click.option("--cluster", type=int, default=None, help="Only this topic cluster (from `mirage coverage`).")
@click.option("--source", default=None, help="Only examples from this source.")
@click.option("--suite", default=None, help="With --task: examples that support this suite's task.")
@click.option("--task", default=None, help="With --suite: the task whose near neighbours to keep.")
@click.option("--threshold", type=float, default=None, help="Similarity for --suite/--task (default 0.65).")
@click.option("--max-tokens", type=int, default=None, help="Token budget: whole examples until it is reached.")
@click.option("--seed", type=int, default=0, show_default=True, help="Order when no similarity order applies.")
@click.option("--embedding-model", metavar="PATH", default=None)
@click.option(
    "--base",
    metavar="MODEL",
    default=None,
    help="Count tokens as `mirage finetune --base MODEL` does (its tokenizer over the rendered template);"
    " without it, the import's approximate counts.",
)
@click.option(
    "--template", type=click.Choice(["auto", "base", "default"]), default=None, help="With --base: as finetune's."
)
@click.option("--max-length", type=int, default=None, help="With --base: as finetune's (default 512).")
@json_option
@workspace_option
@click.pass_context
def create(
    ctx, name, data, cluster, source, suite, task, threshold, max_tokens, seed, embedding_model, base, template,
    max_length, as_json,
):  # fmt: skip
    """Save a subset NAME of dataset DATA that `mirage finetune --data NAME` can train on."""
    from core.coverage.subsets import make_subset

    if (suite is None) != (task is None):
        raise click.UsageError("--suite and --task go together")
    if base is None and (template or max_length):
        raise click.UsageError("--template and --max-length go with --base")
    ws = open_workspace(ctx)
    counter = None
    if base is not None:
        from core.finetune.tokens import exact_counter

        counter = exact_counter(ws, base, template=template, max_length=max_length)
    out = make_subset(
        ws,
        name,
        data,
        cluster=cluster,
        source=source,
        task_support=(suite, task) if suite else None,
        max_tokens=max_tokens,
        seed=seed,
        threshold=threshold,
        embedding_model=embedding_model,
        token_counter=counter,
    )
    if as_json:
        emit_json(out)
    else:
        click.echo(f"subset {name}: {out['examples']} examples, {_tokens_text(out)} from {data}")


def _tokens_text(row: dict) -> str:
    """Exact tokens with what counted them, else the import's count marked approximate."""
    if row.get("tokens_exact") is not None:
        return f"{row['tokens_exact']:,} tokens ({row['tokenizer']})"
    return f"~{row['tokens']:,} tokens (approximate; --base MODEL counts what a finetune trains on)"


@subset_group.command("ls")
@json_option
@workspace_option
@click.pass_context
def ls(ctx, as_json):
    """List subsets with their parent and filters."""
    from core.coverage.subsets import list_subsets

    rows = list_subsets(open_workspace(ctx))
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no subsets")
    else:
        shown = [
            {**r, "tokens": f"{r['tokens_exact']:,}" if r.get("tokens_exact") is not None else f"~{r['tokens']:,}"}
            for r in rows
        ]
        print_table(shown, ["name", "parent", "examples", "tokens", "filters", "created_at"])
