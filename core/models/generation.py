"""Generation: render prompts for a suite, run them on a local model (batched) or an endpoint
(a bounded pool of requests), and cache every output keyed by (model fingerprint, prompt, decoding).

A rerun costs nothing and an interrupted run resumes: each finished batch is written at once, and
only prompts whose cache key is missing are run. The engine (`run_requests`) also serves teacher
collection (core.models.collect), whose prompts are not suite items.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from core.api.suites import SuiteKind, suite_kind
from core.data import datasets as ds_mod
from core.errors import Cancelled, EndpointError, ModelError
from core.models import greedy
from core.models.kinds import ResolvedModel
from core.models.loading import has_chat_template
from core.models.registry import resolve
from core.runtime import jobs
from core.runtime.progress import Progress, Work, check_cancel, offset
from core.runtime.secrets import redact
from core.store.db import select_in
from core.store.workspace import Workspace, dumps, now

# Batching is where local generation gets its speed (benchmarks/bench_generate.py); left padding keeps
# outputs identical at any batch size.
DEFAULT_BATCH_SIZE = 64
DEFAULT_CONCURRENCY = 4
MAX_ATTEMPTS = 6


@dataclass
class Request:
    """One prompt to run. `prompt` is the exact text sent (chat: the rendered template, or for an
    endpoint the messages as JSON); `messages` is kept for chat requests."""

    prompt: str
    style: str  # chat | completion
    stop: list[str]
    messages: list[dict] | None = None
    item_id: int | None = None
    tag: Any = None  # caller's own reference (collection index, ...)
    key: str = ""
    decoding: dict = field(default_factory=dict)


def cache_key(fp: str, prompt: str, decoding: dict) -> str:
    return hashlib.sha256(dumps([fp, prompt, decoding]).encode()).hexdigest()


# -- prompts -----------------------------------------------------------------------------------------
def _shots(kind: SuiteKind, items: list[dict], k: int) -> Callable[[dict], list[dict]]:
    """Fixed k-shot exemplars from the suite (`SuiteKind.shot_pool`), never the item itself."""
    pool = kind.shot_pool(items, k)
    return lambda item: [s for s in pool if s["id"] != item["id"]][:k]


def resolve_style(rm: ResolvedModel, requested: str) -> str:
    if requested not in ("auto", "chat", "completion"):
        raise ModelError(f"unknown prompt style '{requested}' (auto, chat or completion)")
    if requested != "auto":
        return requested
    return rm.prompt_style


def build_requests(
    ws: Workspace,
    model: str,
    suite: str,
    *,
    style: str,
    kshot: int,
    tokenizer=None,
    task: str | None = None,
    limit: int | None = None,
) -> list[Request]:
    """The suite's items as requests for `model` (local chat prompts rendered with `tokenizer`)."""
    kind = suite_kind(ds_mod.get_suite(ws, suite)["kind"])
    items = list(ds_mod.iter_items(ws, suite, task=task))
    if limit:
        items = items[:limit]
    shots = _shots(kind, items if not task else list(ds_mod.iter_items(ws, suite)), kshot)
    out = []
    for item in items:
        if style == "chat":
            messages = kind.chat_messages(item)
            prompt = render_chat(tokenizer, messages, model) if tokenizer is not None else dumps(messages)
            stop: list[str] = []
        else:
            messages = None
            prompt, stop = kind.completion_prompt(item, shots(item))
        out.append(Request(prompt=prompt, style=style, stop=stop, messages=messages, item_id=item["id"]))
    return out


def render_chat(tokenizer, messages: list[dict], model: str) -> str:
    if not has_chat_template(tokenizer):
        raise ModelError(f"model '{model}' has no chat template: use --prompt-style completion")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def truncate_at_stop(text: str, stops: list[str]) -> str:
    """Cut at the first stop sequence (batched generation runs past it for rows that finish early)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    # Short answers (stop at a newline) are stripped; code keeps its leading indentation.
    return text[:cut].strip() if "\n" in stops else text[:cut].rstrip()


# -- the engine -------------------------------------------------------------------------------------------
def decoding_for(req: Request, *, max_new_tokens: int, temperature: float, seed: int | None, kshot: int | None) -> dict:
    d = {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "stop": req.stop, "style": req.style}
    if temperature > 0:
        d["seed"] = 0 if seed is None else int(seed)
    if req.style == "completion" and kshot is not None:
        d["kshot"] = int(kshot)
    return d


def run_requests(
    ws: Workspace,
    model: ResolvedModel | str,
    reqs: list[Request],
    *,
    store: Callable[[list[tuple[Request, str, dict]]], None],
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int | None = None,
    cancel: threading.Event | None = None,
    loaded=None,
    timeout: float | None = None,
) -> Work[dict]:
    """Run requests whose results are not cached yet; `store` persists each finished batch.

    `model` is a resolved model, or a name resolved here."""
    rm = model if isinstance(model, ResolvedModel) else resolve(ws, model)
    stats = {"generated": 0, "failed": 0, "errors": []}
    if not reqs:
        return stats
    if rm.kind.endpoint:
        yield from _run_endpoint(
            rm, reqs, store=store, concurrency=concurrency, cancel=cancel, stats=stats, timeout=timeout
        )
    elif rm.kind.loadable:
        yield from _run_local(rm, reqs, store=store, batch_size=batch_size, cancel=cancel, stats=stats, loaded=loaded)
    else:
        raise ModelError(f"'{rm.name}' is a {rm.kind.name} model (imported outputs): it cannot generate")
    return stats


def _encode(tok, group: list[Request], device):
    """One left-padded batch of a group's prompts on the model's device."""
    # A chat prompt is rendered by the template, which already holds any BOS token.
    return tok(
        [r.prompt for r in group],
        return_tensors="pt",
        padding=True,
        add_special_tokens=group[0].style != "chat",
    ).to(device)


def _decoding_key(r: Request) -> str:
    """Requests that differ only in their sampling seed decode together."""
    return dumps({k: v for k, v in r.decoding.items() if k != "seed"})


def _run_local(rm: ResolvedModel, reqs, *, store, batch_size, cancel, stats, loaded) -> Work[None]:
    import torch

    model = rm.name
    model_obj, tok = loaded or rm.load()
    tok.padding_side = "left"  # decoder-only batching: pad on the left so every row ends at the prompt
    device = next(model_obj.parameters()).device
    fast_greedy = greedy.supported(model_obj)
    # Similar lengths in one batch waste less on padding; results are keyed, so order is free.
    order = sorted(reqs, key=lambda r: len(r.prompt))
    done = 0
    yield Progress(0, len(reqs), f"{model}: generating")
    if fast_greedy:
        # Greedy requests with one decoding go to core.models.greedy together, `batch_size` rows
        # decoding at once: an ended row's slot takes the next waiting prompt (continuous
        # batching) instead of the batch stepping on until its longest row ends.
        chunks: dict[str, list[Request]] = {}
        rest = []
        for r in order:
            if r.decoding["temperature"] <= 0:
                chunks.setdefault(_decoding_key(r), []).append(r)
            else:
                rest.append(r)
        for group in chunks.values():
            d = group[0].decoding
            t0 = time.monotonic()
            enc = _encode(tok, group, device)
            finished: list = []
            stream = greedy.rows(
                model_obj, enc, d["max_new_tokens"], tok.pad_token_id, tok=tok, stops=d["stop"], slots=batch_size
            )
            for k in range(len(group)):
                with torch.inference_mode():  # per step: a generator's `with` would leak into the caller
                    i, ids = next(stream)
                finished.append((group[i], ids))
                if len(finished) < max(1, batch_size) and k + 1 < len(group):
                    continue
                # Stored as rows end, a batch's worth at a time: an interrupted run keeps them.
                part = [r for r, _ in finished]
                store(
                    _local_results(
                        tok,
                        part,
                        [t for _, t in finished],
                        d,
                        min(len(group), max(1, batch_size)),
                        time.monotonic() - t0,
                    )
                )
                stats["generated"] += len(part)
                done += len(part)
                finished = []
                yield Progress(done, len(reqs), f"{model}: {done}/{len(reqs)}")
                check_cancel(cancel)
        order = rest
    for start in range(0, len(order), max(1, batch_size)):
        check_cancel(cancel)
        batch = order[start : start + batch_size]
        d = batch[0].decoding
        groups: dict[str, list[Request]] = {}
        for r in batch:  # one generate call per distinct decoding (usually one)
            # Per-request sampling seeds (synthetic collection) share a batch: it is seeded with
            # its first request's seed, so a batch of samples stays one generate call.
            groups.setdefault(_decoding_key(r), []).append(r)
        results = []
        t0 = time.monotonic()
        for group in groups.values():
            d = group[0].decoding
            enc = _encode(tok, group, device)
            kwargs: dict[str, Any] = {"max_new_tokens": d["max_new_tokens"], "pad_token_id": tok.pad_token_id}
            if d["temperature"] > 0:
                torch.manual_seed(d.get("seed", 0))
                kwargs.update(do_sample=True, temperature=d["temperature"], top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if d["stop"]:
                # transformers' own stop_strings precomputes over the whole vocabulary on every
                # call (~10 s for Gemma's 262k tokens); decoding each row's new tokens is cheap.
                kwargs["stopping_criteria"] = _stop_criteria(tok, d["stop"], enc["input_ids"].shape[1])
            with torch.inference_mode():
                out = model_obj.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :]
            results += _local_results(tok, group, new, d, len(group), time.monotonic() - t0)
        store(results)
        stats["generated"] += len(results)
        done += len(batch)
        yield Progress(done, len(reqs), f"{model}: {done}/{len(reqs)}")


def _local_results(tok, group, new, d, batch_size: int, elapsed: float) -> list:
    """(request, text, meta) for each row of new tokens `new` (pad-filled after a row's end)."""
    results = []
    texts = tok.batch_decode(new, skip_special_tokens=True)
    for r, text, ids in zip(group, texts, new):
        n_new = int((ids != tok.pad_token_id).sum()) if tok.pad_token_id is not None else len(ids)
        meta = {
            "new_tokens": n_new,
            "batch_size": batch_size,
            "batch_latency_s": round(elapsed, 3),
            "raw": text if text != truncate_at_stop(text, d["stop"]) else None,
        }
        results.append((r, truncate_at_stop(text, d["stop"]), {k: v for k, v in meta.items() if v is not None}))
    return results


def _stop_criteria(tok, stops: list[str], prompt_len: int):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tok.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def _retry_after(exc) -> float | None:
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    try:
        return float(resp.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def local_server(spec: dict) -> bool:
    """A server mirage started itself on loopback (`register_endpoint` records `served_from`)."""
    host = urlsplit(spec.get("base_url") or "").hostname or ""
    return bool(spec.get("served_from")) and host in ("127.0.0.1", "localhost", "::1")


def _call_endpoint(
    client,
    model_id: str,
    base_url: str,
    api_key_env: str | None,
    req: Request,
    cancel: threading.Event | None,
    retry_timeouts: bool = True,
) -> tuple[str, dict]:
    """One request with retries and backoff on 429, 5xx, timeouts and malformed responses.

    `retry_timeouts=False` (a local server): a request the client gave up on is still being worked
    on by the server, which does not notice the closed connection; a retry only queues another copy
    behind it, and on a loaded machine retries piled up until most requests failed."""
    import openai

    d = req.decoding
    attempt, last = 0, ""
    while True:
        attempt += 1
        check_cancel(cancel)
        t0 = time.monotonic()
        try:
            kwargs: dict[str, Any] = {
                "model": model_id,
                "max_tokens": d["max_new_tokens"],
                "temperature": d["temperature"],
            }
            if d.get("seed") is not None:
                kwargs["seed"] = d["seed"]
            if d["stop"]:
                kwargs["stop"] = d["stop"][:4]  # the OpenAI API takes at most 4
            if req.style == "chat":
                resp = client.chat.completions.create(messages=req.messages, **kwargs)
                choice = resp.choices[0]
                text = choice.message.content
            else:
                resp = client.completions.create(prompt=req.prompt, **kwargs)
                choice = resp.choices[0]
                text = choice.text
            # The client does not validate replies: a number or null in place of the text is malformed.
            if not isinstance(text, str):
                raise ValueError("response has no text")
            usage = resp.usage.model_dump() if getattr(resp, "usage", None) else None
            meta = {
                "latency_s": round(time.monotonic() - t0, 3),
                "attempts": attempt,
                "finish_reason": getattr(choice, "finish_reason", None),
                "usage": usage,
            }
            return truncate_at_stop(text, d["stop"]) if d["stop"] else text, meta
        except openai.AuthenticationError:
            hint = (
                f"check the key in ${api_key_env}"
                if api_key_env
                else "set --api-key-env to the variable holding the key"
            )
            raise EndpointError(f"{base_url}: the API key was rejected (401); {hint}") from None
        except openai.PermissionDeniedError:
            raise EndpointError(f"{base_url}: access denied (403) for model '{model_id}'") from None
        except openai.NotFoundError:
            raise EndpointError(f"{base_url}: model '{model_id}' not found (404)") from None
        except openai.BadRequestError as e:
            raise EndpointError(f"{base_url}: request rejected (400): {_short(e)}") from None
        except openai.RateLimitError as e:
            last, wait_s = "rate limited (429)", _retry_after(e)
        except openai.APITimeoutError:
            last, wait_s = "timed out", None
            if not retry_timeouts:
                raise _RequestFailed(
                    f"timed out after {client.timeout} s on the local server (not retried: it is still"
                    " working on it); rerun to retry, or raise --timeout"
                ) from None
        except openai.APIConnectionError:
            last, wait_s = "connection failed", None
            if attempt >= 3:  # a server that is down stays down: say so quickly
                raise EndpointError(f"cannot reach {base_url} (connection failed)") from None
        except openai.APIStatusError as e:
            if e.status_code < 500:
                raise EndpointError(f"{base_url}: HTTP {e.status_code}: {_short(e)}") from None
            last, wait_s = f"server error (HTTP {e.status_code})", _retry_after(e)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, openai.APIResponseValidationError) as e:
            last, wait_s = f"malformed response ({type(e).__name__})", None
        if attempt >= MAX_ATTEMPTS:
            raise _RequestFailed(f"{last} after {attempt} attempts")
        # Exponential backoff with jitter, honouring Retry-After (capped so a storm cannot stall us).
        delay = wait_s if wait_s is not None else min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())
        if cancel is not None:
            if cancel.wait(min(delay, 30.0)):
                raise Cancelled("cancelled")
        else:
            time.sleep(min(delay, 30.0))


class _RequestFailed(Exception):
    pass


def _short(e) -> str:
    """The first line of an endpoint's error, redacted: error bodies may echo the API key."""
    msg = redact(getattr(e, "message", None) or str(e))
    return msg.splitlines()[0][:200] if msg else type(e).__name__


def _run_endpoint(rm: ResolvedModel, reqs, *, store, concurrency, cancel, stats, timeout) -> Work[None]:
    model, spec = rm.name, rm.spec
    client, model_id = rm.client(timeout=timeout)
    workers = int(concurrency or spec.get("max_concurrency") or DEFAULT_CONCURRENCY)
    retry_timeouts = not local_server(spec)
    # Workers stop at the caller's cancel and at a fatal error (401, endpoint down) alike.
    stop = threading.Event()

    def watch():
        return stop.is_set() or (cancel is not None and cancel.is_set())

    class _Both:
        def is_set(self):
            return watch()

        def wait(self, t):
            end = time.monotonic() + t
            while time.monotonic() < end:
                if watch():
                    return True
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            return watch()

    both = _Both()
    yield Progress(0, len(reqs), f"{model}: requesting")
    fatal: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirage-endpoint")
    try:
        pending = {}
        queue = list(reqs)
        while queue or pending:
            while queue and len(pending) < workers and fatal is None and not watch():
                r = queue.pop(0)
                pending[
                    pool.submit(
                        _call_endpoint,
                        client,
                        model_id,
                        spec["base_url"],
                        spec.get("api_key_env"),
                        r,
                        both,
                        retry_timeouts,
                    )
                ] = r
            if not pending:
                break
            finished, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
            batch = []
            for fut in finished:
                r = pending.pop(fut)
                try:
                    text, meta = fut.result()
                    batch.append((r, text, meta))
                except _RequestFailed as e:
                    stats["failed"] += 1
                    stats["errors"].append(str(e))
                except Cancelled:
                    pass
                except EndpointError as e:
                    if fatal is None:
                        fatal = e
                        stop.set()
            if batch:
                store(batch)
                stats["generated"] += len(batch)
            if finished:
                # Successes only: a run that ends "8/8" and then reports 5 failures misleads.
                failed = f", {stats['failed']} failed" if stats["failed"] else ""
                yield Progress(stats["generated"], len(reqs), f"{model}: {stats['generated']}/{len(reqs)}{failed}")
            if cancel is not None and cancel.is_set():
                stop.set()
        if fatal is not None:
            raise fatal
        check_cancel(cancel)
    except BaseException:
        # Ctrl-C, cancel or a fatal error: close the connections so requests in flight end now
        # instead of at their timeout (what finished is already stored).
        stop.set()
        client.close()
        raise
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


# -- generate over a suite -----------------------------------------------------------------------------------
def generate(
    ws: Workspace,
    model: str,
    suite: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    kshot: int | None = None,
    prompt_style: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int | None = None,
    task: str | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    samples: int = 1,
    cancel: threading.Event | None = None,
    loaded=None,
) -> Work[dict]:
    """Generate `model`'s outputs on `suite`, cached; returns a summary dict.

    `timeout`: an endpoint's seconds per request (default: the model's `timeout_s`). `samples`:
    outputs per item, sampled with seeds seed, seed + 1, ... (needs temperature > 0): the
    several samples pass@k is estimated from."""
    t0 = time.monotonic()
    rm = resolve(ws, model)
    ds_mod.get_suite(ws, suite)  # NotFound early, before any model loads
    if not (rm.kind.endpoint or rm.kind.loadable):
        raise ModelError(f"'{model}' holds imported outputs: it cannot generate")
    style = resolve_style(rm, prompt_style)
    cfg = ws.config.defaults
    max_new_tokens = int(max_new_tokens or cfg.max_new_tokens)
    kshot = cfg.kshot if kshot is None else int(kshot)
    fp = rm.fingerprint
    samples = int(samples)
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ModelError("--samples N needs N >= 1, and --temperature > 0 when N > 1 (greedy samples are all alike)")
    tokenizer = None
    if style == "chat" and not rm.kind.endpoint:
        tokenizer = loaded[1] if loaded is not None else rm.tokenizer
        if not has_chat_template(tokenizer):
            raise ModelError(f"model '{model}' has no chat template: use --prompt-style completion")
    reqs = build_requests(ws, model, suite, style=style, kshot=kshot, tokenizer=tokenizer, task=task, limit=limit)
    n_items = len(reqs)
    if samples > 1:
        first = 0 if seed is None else int(seed)
        reqs = [replace(r, decoding={}) for r in reqs for _ in range(samples)]
    for n, r in enumerate(reqs):
        s_seed = seed if samples == 1 else first + n % samples
        r.decoding = decoding_for(r, max_new_tokens=max_new_tokens, temperature=temperature, seed=s_seed, kshot=kshot)
        r.key = cache_key(fp, r.prompt, r.decoding)
    cached = _cached_keys(ws, "generations", [r.key for r in reqs])
    todo = [r for r in reqs if r.key not in cached]
    yield Progress(len(reqs) - len(todo), len(reqs), f"{model}: {len(reqs) - len(todo)} cached")

    def store(results):
        _store_generations(ws, model, fp, results)

    # Progress of the engine is offset by what the cache already holds.
    base_done = len(reqs) - len(todo)
    stats = yield from offset(
        run_requests(
            ws,
            rm,
            todo,
            store=store,
            batch_size=batch_size,
            concurrency=concurrency,
            cancel=cancel,
            loaded=loaded,
            timeout=timeout,
        ),
        base_done,
        len(reqs),
    )
    summary = {
        "model": model,
        "suite": suite,
        "items": n_items,
        "samples": samples,
        "outputs": len(reqs),
        "cached": base_done,
        "generated": stats["generated"],
        "failed": stats["failed"],
        "style": style,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "fingerprint": fp,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if stats["failed"]:
        first = stats["errors"][0]
        raise EndpointError(
            f"{stats['failed']} of {len(todo)} requests to '{model}' failed ({first});"
            f" {summary['cached'] + summary['generated']} outputs are saved: rerun to retry the rest"
        )
    return summary


def _cached_keys(ws: Workspace, table: str, keys: list[str]) -> set[str]:
    return {r[0] for r in select_in(ws.db, f"select cache_key from {table} where cache_key in ({{in}})", keys)}


def _store_generations(ws: Workspace, model: str, fp: str, results) -> None:
    t = now()
    with ws.transaction():
        ws.db.conn.executemany(
            "insert or ignore into generations (model, fingerprint, item_id, prompt, decoding, cache_key,"
            " output, meta, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (model, fp, r.item_id, r.prompt, dumps(r.decoding), r.key, text, dumps(meta), t)
                for r, text, meta in results
            ],
        )


def outputs(ws: Workspace, model: str, suite: str) -> list[dict]:
    """The latest cached output per item of `suite` for `model` (any decoding)."""
    s = ds_mod.get_suite(ws, suite)
    rows = ws.db.query(
        "select g.*, i.idx from generations g join items i on i.id = g.item_id where i.suite_id = ?"
        " and g.model = ? order by i.idx, g.id",
        [s["id"], model],
    )
    latest: dict[int, dict] = {}
    for r in rows:
        r = dict(r)
        r["decoding"] = json.loads(r["decoding"])
        r["meta"] = json.loads(r["meta"])
        latest[r["item_id"]] = r
    return list(latest.values())


# -- job handler -------------------------------------------------------------------------------------------------
GENERATE_OPTIONS = (
    "max_new_tokens",
    "temperature",
    "seed",
    "kshot",
    "prompt_style",
    "batch_size",
    "concurrency",
    "task",
    "limit",
    "timeout",
    "samples",
)


def run_job(ctx) -> dict:
    """Job kind "generate": config {model, suite, and any of GENERATE_OPTIONS}."""
    c = ctx.config
    summary = ctx.drive(generate(ctx.ws, c["model"], c["suite"], cancel=ctx.cancel, **jobs.given(c, GENERATE_OPTIONS)))
    ctx.event(message=f"generated {summary['generated']}, cached {summary['cached']}", **summary)
    return summary
