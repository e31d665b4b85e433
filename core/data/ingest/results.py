"""Importing other tools' results: lm-evaluation-harness samples, inspect_ai logs, promptfoo
result files, AlpacaEval outputs and annotations, and mirage's own per-sample export.

A reader turns a tool's files into `Run`s (one model's samples, with the tool's name, version and
model arguments); `import_results` makes each sample an item of a suite (created or extended), the
sample's output a generation of a 'recorded' model, and the tool's own per-sample scores rows of
`imported_scores` named `tool:metric` (m071_imported_results), all in one transaction: a bad
record anywhere refuses the whole import with `file:line: field 'x': reason`, and nothing is
written. Result files hold one row per sample of a run, so they are held in memory whole.

Formats were read from the tools' own writers: lm-eval's `EvaluationTracker.save_results_samples`
(one JSON line per document and filter), inspect_ai's `EvalLog` (`.json` whole, `.eval` a zip of
`header.json` and `samples/*.json`), promptfoo's `-o results.json` (`results.results[]` of
`EvaluateResult`), AlpacaEval's `model_outputs.json` and `annotations.json`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.api.suites import IMPORT_LETTERS
from core.data.ingest.errors import Loc, bad
from core.data.ingest.outputs import match_key
from core.data.ingest.sources import Source, good_records, read_records
from core.data.ingest.suites import _ITEM_INSERT, item_hash, normalise_item
from core.errors import BadInput, FieldError, type_name
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now

EXPORT_MARK = "mirage_export"  # the key every record of `mirage export --format jsonl` carries
_MODEL_NAME_BAD = re.compile(r"[^A-Za-z0-9._@:+/-]+")


@dataclass
class Sample:
    """One scored sample of a tool: an item (as a suite import record), the output, the scores."""

    file: str
    loc: Loc
    task: str
    kind: str  # qa | mc | code | prompts
    record: dict  # what core.api.suites reads an item of `kind` from
    output: str
    sample_id: str
    rendered_prompt: str | None = None
    decoding: dict = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)  # tool:metric -> value
    score_meta: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    suite: str | None = None  # a suite the file names (mirage's export)


@dataclass
class Run:
    """A tool's run of one model: where it came from and its samples."""

    tool: str
    tool_version: str | None
    model: str  # the model as the tool names it
    model_args: Any
    files: list[dict]  # {name, path, sha256}
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what the import left out, and why


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_meta(path: Path) -> dict:
    return {"name": path.name, "path": str(path.resolve()), "sha256": _sha256(path)}


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except UnicodeDecodeError as e:
        raise BadInput(path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadInput(path, f"malformed JSON at line {e.lineno} column {e.colno}", line=e.lineno) from None


def _as_float(v: Any) -> float | None:
    """A per-sample score as a number: bools and numbers; None for what is not one."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v.strip() else None


def _gold_list(v: Any) -> list[str] | None:
    """Answer aliases from a tool's target: a string (or the text of a Python/JSON list), a list."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):
            # lm-eval renders a list target through its template as the list's repr: "['a', 'b']"
            try:
                parsed = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, list):
                return _gold_list(parsed)
        return [v] if s else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [str(v)]
    if isinstance(v, list):
        out = [str(x) for x in v if isinstance(x, (str, int, float)) and not isinstance(x, bool) and str(x).strip()]
        return out or None
    return None


# -- detection ------------------------------------------------------------------------------------
_LM_SAMPLES = re.compile(r"^samples_(?P<task>.+?)_(?P<stamp>\d{4}-\d\d-\d\dT[\d.\-:]+)\.jsonl$")


def _peek(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as f:
        return f.read(n).lstrip(b"\xef\xbb\xbf").lstrip()


def detect(path: Path) -> str:
    """The tool a results file (or folder) comes from; BadInput naming what was expected."""
    if path.is_dir():
        if any(path.rglob("samples_*.jsonl")):
            return "lm_eval"
        raise BadInput(path, "a folder without lm-eval samples_*.jsonl files (pass the result files themselves)")
    name = path.name
    if name.endswith(".eval") or zipfile.is_zipfile(path):
        return "inspect"
    if _LM_SAMPLES.match(name):
        return "lm_eval"
    if name.startswith("results_") and name.endswith(".json") and any(path.parent.glob("samples_*.jsonl")):
        return "lm_eval"
    head = _peek(path)
    if not head:
        raise BadInput(path, "empty file")
    if head[:1] == b"{":
        first, _, rest = head.partition(b"\n")
        try:
            rec = json.loads(first)
        except json.JSONDecodeError:
            rec = None  # a pretty-printed object (or a line longer than the peek)
        if isinstance(rec, dict):
            if EXPORT_MARK in rec:
                return "mirage"
            if "doc_id" in rec and ("resps" in rec or "filtered_resps" in rec):
                return "lm_eval"
            if rest.strip():  # JSON lines of no tool known here
                raise BadInput(path, f"unknown results format: first record has {', '.join(list(rec)[:8])}")
        data = rec if isinstance(rec, dict) else _load_json(path)
        if isinstance(data, dict):
            if "eval" in data and ("samples" in data or "status" in data):
                return "inspect"
            if "configs" in data and "results" in data:
                return "lm_eval"  # a results_*.json: its samples must lie beside it
            if isinstance(data.get("results"), (dict, list)):
                return "promptfoo"
        keys = ", ".join(list(data)[:8]) if isinstance(data, dict) else type_name(data)
        raise BadInput(path, f"unknown results format: first record has {keys}")
    if head[:1] == b"[":
        data = _load_json(path)
        first = data[0] if isinstance(data, list) and data else None
        if isinstance(first, dict) and "output_1" in first and "output_2" in first:
            return "alpaca_eval"
        if isinstance(first, dict) and "instruction" in first and "output" in first:
            return "alpaca_eval"
        keys = ", ".join(list(first)[:8]) if isinstance(first, dict) else "no records"
        raise BadInput(path, f"unknown results format: first record has {keys}")
    raise BadInput(path, "unknown results format (expected an lm-eval, inspect, promptfoo or AlpacaEval file)")


# -- lm-evaluation-harness ------------------------------------------------------------------------
# Fields of a document that hold its question, in the order lm-eval's own tasks name them: the
# item's prompt (what a suite matches and dedupes by); else the rendered context is.
_DOC_PROMPT = ("question", "query", "problem", "prompt", "instruction", "input", "text", "ctx", "sentence", "goal")


def _lm_results_for(sample_file: Path) -> Path | None:
    """The run's results_*.json beside a samples file: the one of the same timestamp, else the newest."""
    m = _LM_SAMPLES.match(sample_file.name)
    beside = sorted(sample_file.parent.glob("results_*.json"))
    if m:
        same = sample_file.parent / f"results_{m['stamp']}.json"
        if same.exists():
            return same
    return beside[-1] if beside else None


def read_lm_eval(paths: list[Path]) -> list[Run]:
    """lm-eval `--log_samples` files (or their output folder), with results_*.json for the model."""
    sample_files: list[Path] = []
    for p in paths:
        if p.is_dir():
            sample_files += sorted(p.rglob("samples_*.jsonl"))
        elif p.name.startswith("results_") and p.suffix == ".json":
            stamp = p.name[len("results_") : -len(".json")]
            found = sorted(p.parent.glob(f"samples_*_{stamp}.jsonl"))
            if not found:
                raise BadInput(
                    p, "an lm-eval results file without its samples_*.jsonl beside it (run with --log_samples)"
                )
            sample_files += found
        else:
            sample_files.append(p)
    runs: dict[tuple, Run] = {}
    for sf in dict.fromkeys(sample_files):
        results_path = _lm_results_for(sf)
        results = _load_json(results_path) if results_path else {}
        if not isinstance(results, dict):
            raise BadInput(results_path, f"expected an lm-eval results object, got {type_name(results)}")
        config = results.get("config") or {}
        model = results.get("model_name") or config.get("model_args") or config.get("model") or "lm_eval-model"
        if isinstance(model, dict):
            model = model.get("pretrained") or dumps(model)
        key = (str(model), str(results_path))
        if key not in runs:
            files = [_file_meta(results_path)] if results_path else []
            runs[key] = Run(
                "lm_eval",
                results.get("lm_eval_version"),
                str(model),
                {"model": config.get("model"), "model_args": config.get("model_args")},
                files,
            )
        run = runs[key]
        run.files.append(_file_meta(sf))
        m = _LM_SAMPLES.match(sf.name)
        task = m["task"] if m else sf.stem.removeprefix("samples_")  # an older lm-eval: no timestamp
        task_cfg = (results.get("configs") or {}).get(task) or {}
        if task_cfg.get("output_type") in ("loglikelihood", "loglikelihood_rolling"):
            # A log-likelihood (or perplexity) task has no output text or choice to attach.
            run.skipped.append(f"{sf.name}: task '{task}' is {task_cfg['output_type']} (no outputs to import)")
            continue
        run.samples += _lm_eval_samples(sf, task, task_cfg)
    return list(runs.values())


def _raise(e: BadInput) -> None:
    raise e


def _lm_eval_samples(path: Path, task: str, cfg: dict) -> list[Sample]:
    src = Source(path)
    by_doc: dict[Any, Sample] = {}
    filters: set[str] = set()
    raw_scores: dict[Any, list[tuple[str, str, Any]]] = {}
    for loc, rec in good_records(src, "jsonl", _raise):
        try:
            sample = _lm_eval_sample(src.label, loc, rec, task, cfg)
        except FieldError as fe:
            raise bad(src.label, fe.reason, loc, fe.field) from None
        filt = str(rec.get("filter") or "none")
        filters.add(filt)
        doc_id = rec["doc_id"]
        have = by_doc.setdefault(doc_id, sample)
        metrics = rec.get("metrics")
        if not isinstance(metrics, list):
            metrics = [k for k in rec if k not in _LM_FIELDS and _as_float(rec[k]) is not None]
        raw_scores.setdefault(doc_id, []).extend((str(m), filt, rec.get(m)) for m in metrics)
        if filt != "none":
            have.meta.setdefault("filtered_resps", {})[filt] = rec.get("filtered_resps")
    if not by_doc:
        raise BadInput(src.label, "no records")
    several = len(filters) > 1
    for doc_id, rows in raw_scores.items():
        s = by_doc[doc_id]
        for metric, filt, value in rows:
            # lm-eval names a figure `metric,filter`; with one filter per task the filter is only
            # noted, so the usual case reads `lm_eval:exact_match`.
            name = f"lm_eval:{metric}" + (f",{filt}" if several else "")
            s.scores[name] = _as_float(value)
            s.score_meta[name] = {"filter": filt, "raw": value if _as_float(value) is None else None}
    return list(by_doc.values())


_LM_FIELDS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
}


def _lm_eval_sample(label: str, loc: Loc, rec: Any, task: str, cfg: dict) -> Sample:
    if not isinstance(rec, dict):
        raise FieldError(None, f"expected an lm-eval sample object, got {type_name(rec)}")
    for f in ("doc_id", "doc", "arguments"):
        if f not in rec:
            raise FieldError(f, "missing (is this an lm-eval --log_samples file?)")
    doc, args = rec["doc"], rec["arguments"]
    if not isinstance(args, dict) or not args:
        raise FieldError("arguments", f"expected an object of gen_args_N, got {type_name(args)}")
    calls = [args[k] for k in sorted(args, key=lambda k: int(re.sub(r"\D", "", k) or 0))]
    if not all(isinstance(c, dict) and "arg_0" in c for c in calls):
        raise FieldError("arguments", "expected gen_args_N objects with arg_0")
    context = calls[0]["arg_0"]
    context = context if isinstance(context, str) else dumps(context)  # a chat-templated list
    out_type = cfg.get("output_type") or (
        "generate_until"
        if isinstance(calls[0].get("arg_1"), dict)
        else "multiple_choice"
        if len(calls) > 1
        else "loglikelihood"
    )
    prompt = next((doc[f].strip() for f in _DOC_PROMPT if isinstance(doc, dict) and _text(doc.get(f))), None)
    prompt = prompt or context.strip()
    resps = rec.get("resps")
    common = {"file": label, "loc": loc, "task": task, "sample_id": str(rec["doc_id"]), "rendered_prompt": context}
    if out_type == "generate_until":
        if not (isinstance(resps, list) and resps and isinstance(resps[0], list) and resps[0]):
            raise FieldError("resps", "expected [[generated text]]")
        output = resps[0][0]
        if not isinstance(output, str):
            raise FieldError("resps", f"expected generated text, got {type_name(output)}")
        gold = _gold_list(rec.get("target"))
        decoding = dict(calls[0].get("arg_1") or {})
        if gold is None:
            return Sample(kind="prompts", record={"prompt": prompt}, output=output, decoding=decoding, **common)
        return Sample(
            kind="qa", record={"question": prompt, "answer": gold}, output=output, decoding=decoding, **common
        )
    if out_type != "multiple_choice":
        raise FieldError(
            "arguments",
            f"an lm-eval {out_type} sample has no output to import (only generate_until and multiple_choice tasks)",
        )
    delim = cfg.get("target_delimiter", " ")
    choices = []
    for c in calls:
        text = c.get("arg_1")
        if not isinstance(text, str):
            raise FieldError("arguments", "expected each choice's continuation text in arg_1")
        choices.append(text[len(delim) :] if delim and text.startswith(delim) else text)
    if len(choices) > len(IMPORT_LETTERS):
        raise FieldError(
            "arguments", f"{len(choices)} choices; mirage's multiple choice takes at most {len(IMPORT_LETTERS)}"
        )
    filtered = rec.get("filtered_resps", resps)
    lls = []
    for r in filtered if isinstance(filtered, list) else []:
        while isinstance(r, list) and r and isinstance(r[0], list):  # resps nest once more than filtered_resps
            r = r[0]
        v = r[0] if isinstance(r, list) and r else r
        try:
            lls.append(float(v))
        except (TypeError, ValueError):
            raise FieldError("filtered_resps", "expected a log-likelihood per choice") from None
    if len(lls) != len(choices):
        raise FieldError("filtered_resps", f"{len(lls)} log-likelihoods for {len(choices)} choices")
    gold = _mc_gold(rec.get("target"), choices)
    # The model's answer is the choice of highest log-likelihood: lm-eval's `acc` decision.
    best = max(range(len(lls)), key=lls.__getitem__)
    return Sample(
        kind="mc",
        record={"question": prompt, "choices": choices, "answer": gold},
        output=f"{IMPORT_LETTERS[best]}. {choices[best]}",
        decoding={"method": "loglikelihood", "target_delimiter": delim},
        meta={"logliks": lls, "chosen": IMPORT_LETTERS[best]},
        **common,
    )


def _mc_gold(target: Any, choices: list[str]) -> int:
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target.strip())
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        return target
    if isinstance(target, str):
        stripped = [c.strip() for c in choices]
        if target.strip() in stripped:
            return stripped.index(target.strip())
        if len(target.strip()) == 1 and target.strip().upper() in IMPORT_LETTERS[: len(choices)]:
            return IMPORT_LETTERS.index(target.strip().upper())
    raise FieldError("target", f"expected the index of one of the {len(choices)} choices, got {target!r}")


# -- inspect_ai -------------------------------------------------------------------------------------
# inspect's score values: C(orrect), I(ncorrect), P(artial), N(o answer), as its value_to_float.
_INSPECT_VALUES = {"C": 1.0, "I": 0.0, "P": 0.5, "N": 0.0, "yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0}


def _inspect_value(v: Any) -> float | None:
    if isinstance(v, str):
        return (
            _INSPECT_VALUES.get(v.strip()) if v.strip() in _INSPECT_VALUES else _INSPECT_VALUES.get(v.strip().lower())
        )
    return _as_float(v)


def _read_inspect_log(path: Path) -> tuple[dict, list[tuple[Loc, Any]]]:
    """(header: version, status, eval, plan, results; [(where, sample)]) of a `.eval` or `.json` log.

    Read as files, not through inspect_ai.log.read_eval_log: the log format is documented and
    stable across inspect versions, and mirage's default install does not pull inspect in."""
    if zipfile.is_zipfile(path):
        import zipfile_zstd  # noqa: F401 - teaches zipfile the zstd method newer .eval logs use

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if "header.json" not in names:
                    start = "_journal/start.json" in names
                    raise BadInput(
                        path,
                        "an inspect log without header.json"
                        + (" (the run did not finish: status started)" if start else " (not an inspect .eval log?)"),
                    )
                header = json.loads(z.read("header.json"))
                sample_names = sorted(
                    (n for n in names if n.startswith("samples/") and n.endswith(".json")),
                    key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)],
                )
                samples = []
                for i, n in enumerate(sample_names):
                    try:
                        samples.append((Loc("item", i + 1), json.loads(z.read(n))))
                    except json.JSONDecodeError as e:
                        raise BadInput(f"{path}: {n}", f"malformed JSON at line {e.lineno} column {e.colno}") from None
        except zipfile.BadZipFile as e:
            raise BadInput(path, f"corrupt .eval file ({e})") from None
        except NotImplementedError:
            raise BadInput(
                path,
                "a zstd-compressed .eval log: install zipfile-zstd (it comes with inspect-ai) to read it,"
                " or convert it with `inspect log convert --to json`",
            ) from None
        return header, samples
    log = _load_json(path)
    if not isinstance(log, dict) or "eval" not in log:
        raise BadInput(path, f"expected an inspect log object with 'eval', got {type_name(log)}")
    raw = log.get("samples")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise BadInput(path, "expected a list", field="samples")
    return log, [(Loc("item", i + 1), s) for i, s in enumerate(raw)]


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "\n".join(parts) if parts else None
    return None


def read_inspect(paths: list[Path]) -> list[Run]:
    runs = []
    for path in paths:
        header, samples = _read_inspect_log(path)
        ev = header.get("eval") or {}
        status = header.get("status")
        if status not in (None, "success"):
            raise BadInput(
                path, f"inspect log status '{status}': the run did not finish (import a log of a finished run)"
            )
        packages = ev.get("packages") or {}
        model_args = ev.get("model_args") or {}
        if len(dumps(model_args)) > 4000:  # mockllm's custom outputs and the like: keep the names
            model_args = {k: "…" for k in model_args}
        run = Run(
            "inspect",
            packages.get("inspect_ai"),
            str(ev.get("model") or "inspect-model"),
            {"model_args": model_args, "model_generate_config": ev.get("model_generate_config") or {}},
            [_file_meta(path)],
        )
        task = str(ev.get("task") or path.stem).split("/")[-1]
        seen = set()
        later_epochs = 0
        for loc, s in samples:
            try:
                sample = _inspect_sample(str(path), loc, s, task, ev)
            except FieldError as fe:
                raise bad(path, fe.reason, loc, fe.field) from None
            if sample is None or sample.sample_id in seen:  # later epochs of a sample: the first is kept
                if sample is not None:
                    later_epochs += 1
                continue
            seen.add(sample.sample_id)
            run.samples.append(sample)
        if not run.samples:
            raise BadInput(path, "no samples in the log")
        if later_epochs:
            run.skipped.append(f"{path.name}: {later_epochs} samples of later epochs (the first epoch's are imported)")
        runs.append(run)
    return runs


def _inspect_sample(label: str, loc: Loc, s: Any, task: str, ev: dict) -> Sample | None:
    if not isinstance(s, dict):
        raise FieldError(None, f"expected a sample object, got {type_name(s)}")
    if s.get("error"):
        err = s["error"].get("message") if isinstance(s["error"], dict) else s["error"]
        raise FieldError("error", f"the sample failed in inspect: {str(err)[:200]}")
    inp = s.get("input")
    if isinstance(inp, list):
        users = [_message_text(m.get("content")) for m in inp if isinstance(m, dict) and m.get("role") == "user"]
        inp = users[-1] if users and users[-1] else None
    if not _text(inp):
        raise FieldError("input", "missing or empty")
    out = s.get("output") or {}
    completion = out.get("completion") if isinstance(out, dict) else None
    if completion is None and isinstance(out, dict):
        choices = out.get("choices") or []
        if choices and isinstance(choices[0], dict):
            completion = _message_text((choices[0].get("message") or {}).get("content"))
    if not isinstance(completion, str):
        raise FieldError("output", "missing the model's completion")
    common = {
        "file": label,
        "loc": loc,
        "task": task,
        "sample_id": str(s.get("id")),
        "output": completion,
        "decoding": dict(ev.get("model_generate_config") or {}),
        "meta": {"epoch": s.get("epoch")},
    }
    target, choices = s.get("target"), s.get("choices")
    if isinstance(choices, list) and choices:
        if not all(isinstance(c, str) for c in choices):
            raise FieldError("choices", "expected a list of strings")
        letter = target[0] if isinstance(target, list) and target else target
        if not isinstance(letter, str) or letter.strip().upper() not in IMPORT_LETTERS[: len(choices)]:
            raise FieldError("target", f"expected the letter of one of the {len(choices)} choices, got {target!r}")
        sample = Sample(
            kind="mc", record={"question": inp, "choices": choices, "answer": letter.strip().upper()}, **common
        )
    else:
        gold = _gold_list(target)
        sample = (
            Sample(kind="qa", record={"question": inp, "answer": gold}, **common)
            if gold
            else Sample(kind="prompts", record={"prompt": inp}, **common)
        )
    scores = s.get("scores") or {}
    if not isinstance(scores, dict):
        raise FieldError("scores", f"expected an object of scorer -> score, got {type_name(scores)}")
    for scorer, sc in scores.items():
        value = sc.get("value") if isinstance(sc, dict) else sc
        if isinstance(value, dict):  # a scorer of several metrics
            for k, v in value.items():
                sample.scores[f"inspect:{scorer}.{k}"] = _inspect_value(v)
                sample.score_meta[f"inspect:{scorer}.{k}"] = {"raw": v}
        else:
            sample.scores[f"inspect:{scorer}"] = _inspect_value(value)
            meta = {"raw": value}
            if isinstance(sc, dict) and isinstance(sc.get("answer"), str):
                meta["answer"] = sc["answer"][:500]
            sample.score_meta[f"inspect:{scorer}"] = meta
    return sample


# -- promptfoo --------------------------------------------------------------------------------------
_PF_PROMPT_VARS = ("question", "prompt", "query", "input", "instruction", "text", "topic")
_PF_GOLD_VARS = ("answer", "expected", "target", "gold", "reference")
_PF_GOLD_ASSERTS = ("equals", "icontains", "contains", "starts-with", "contains-any", "icontains-any")


def read_promptfoo(paths: list[Path]) -> list[Run]:
    runs = []
    for path in paths:
        data = _load_json(path)
        if not isinstance(data, dict):
            raise BadInput(path, f"expected a promptfoo results object, got {type_name(data)}")
        body = data.get("results")
        rows = body.get("results") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            raise BadInput(path, "expected a list of results", field="results.results")
        config = data.get("config") or {}
        meta = data.get("metadata") or {}
        version = meta.get("promptfooVersion") or (body.get("version") if isinstance(body, dict) else None)
        task = _text(config.get("description")) or path.stem
        by_model: dict[str, Run] = {}
        fmeta = _file_meta(path)
        # Prompts compared against each other (several in the config): each provider × prompt is
        # a model of its own, else one item would get two outputs of the same model.
        several_prompts = len({r.get("promptIdx") for r in rows if isinstance(r, dict)}) > 1
        for i, r in enumerate(rows):
            loc = Loc("item", i + 1)
            try:
                model, sample = _promptfoo_sample(str(path), loc, r, task)
            except FieldError as fe:
                raise bad(path, fe.reason, loc, fe.field) from None
            if several_prompts:
                model = f"{model}@prompt{r.get('promptIdx')}"
            run = by_model.get(model)
            if run is None:
                providers = config.get("providers")
                run = by_model[model] = Run(
                    "promptfoo",
                    str(version) if version is not None else None,
                    model,
                    {
                        "provider": (r.get("provider") or {}),
                        "providers": providers if len(dumps(providers)) < 4000 else None,
                    },
                    [fmeta],
                )
            run.samples.append(sample)
        if not by_model:
            raise BadInput(path, "no results")
        runs += by_model.values()
    return runs


def _promptfoo_sample(label: str, loc: Loc, r: Any, task: str) -> tuple[str, Sample]:
    if not isinstance(r, dict):
        raise FieldError(None, f"expected a result object, got {type_name(r)}")
    provider = r.get("provider") or {}
    model = provider.get("label") or provider.get("id") if isinstance(provider, dict) else provider
    if not _text(model):
        raise FieldError("provider", "missing the provider's id")
    response = r.get("response") or {}
    output = response.get("output") if isinstance(response, dict) else None
    if output is None and r.get("error"):
        raise FieldError("error", f"the test failed to run in promptfoo: {str(r['error'])[:200]}")
    if not isinstance(output, str):
        output = dumps(output) if output is not None else None
    if output is None:
        raise FieldError("response.output", "missing")
    test = r.get("testCase") or {}
    vars_ = r.get("vars") or test.get("vars") or {}
    prompt_obj = r.get("prompt") or {}
    rendered = prompt_obj.get("raw") if isinstance(prompt_obj, dict) else None
    texts = {k: v for k, v in vars_.items() if isinstance(v, str) and v.strip()} if isinstance(vars_, dict) else {}
    prompt = next((texts[k] for k in _PF_PROMPT_VARS if k in texts), None)
    if prompt is None and len(texts) == 1:
        prompt = next(iter(texts.values()))
    prompt = prompt or _text(rendered)
    if not prompt:
        raise FieldError("vars", "no prompt: neither a question/prompt variable nor the rendered prompt")
    gold = next((_gold_list(vars_[k]) for k in _PF_GOLD_VARS if isinstance(vars_, dict) and k in vars_), None)
    asserts = test.get("assert") or []
    if gold is None:
        for a in asserts if isinstance(asserts, list) else []:
            if isinstance(a, dict) and a.get("type") in _PF_GOLD_ASSERTS:
                gold = _gold_list(a.get("value"))
                if gold:
                    break
    common = {
        "file": label,
        "loc": loc,
        "task": _text(test.get("metadata", {}).get("task") if isinstance(test.get("metadata"), dict) else None) or task,
        "sample_id": str(r.get("id") or f"{r.get('testIdx')}:{r.get('promptIdx')}"),
        "output": output,
        "rendered_prompt": rendered,
        "decoding": {"prompt_label": prompt_obj.get("label")} if isinstance(prompt_obj, dict) else {},
    }
    sample = (
        Sample(kind="qa", record={"question": prompt, "answer": gold}, **common)
        if gold
        else Sample(kind="prompts", record={"prompt": prompt}, **common)
    )
    grading = r.get("gradingResult") or {}
    success = r.get("success", grading.get("pass") if isinstance(grading, dict) else None)
    sample.scores["promptfoo:pass"] = _as_float(success)
    sample.scores["promptfoo:score"] = _as_float(r.get("score", grading.get("score")))
    named = r.get("namedScores") or {}
    for k, v in named.items() if isinstance(named, dict) else []:
        sample.scores[f"promptfoo:{k}"] = _as_float(v)
    comps = grading.get("componentResults") if isinstance(grading, dict) else None
    for c in comps if isinstance(comps, list) else []:
        a = c.get("assertion") if isinstance(c, dict) else None
        kind = a.get("type") if isinstance(a, dict) else None
        if kind and f"promptfoo:{kind}" not in sample.scores:
            sample.scores[f"promptfoo:{kind}"] = _as_float(c.get("pass"))
            sample.score_meta[f"promptfoo:{kind}"] = {"score": c.get("score"), "reason": str(c.get("reason"))[:300]}
    return str(model), sample


# -- AlpacaEval -------------------------------------------------------------------------------------
def read_alpaca_eval(paths: list[Path]) -> list[Run]:
    """model_outputs.json ({instruction, output, generator}) and annotations.json ({instruction,
    output_1, generator_1, output_2, generator_2, preference}): both sides' outputs become
    generations; the preference is stored on generator_2's output as `alpaca_eval:preference`
    (1 when the annotator preferred it, 0 the reference, 0.5 a tie: AlpacaEval's win rate)."""
    runs: dict[str, Run] = {}
    version = _alpaca_version()
    for path in paths:
        src = Source(path)
        fmeta = _file_meta(path)
        n = 0
        for loc, rec in read_records(src, src.kind()):
            if isinstance(rec, BadInput):
                raise rec
            n += 1
            try:
                for model, sample in _alpaca_samples(str(path), loc, rec):
                    run = runs.get(model)
                    if run is None:
                        run = runs[model] = Run("alpaca_eval", version, model, {}, [])
                    if fmeta not in run.files:
                        run.files.append(fmeta)
                    run.samples.append(sample)
            except FieldError as fe:
                raise bad(src.label, fe.reason, loc, fe.field) from None
        if not n:
            raise BadInput(path, "no records")
    return list(runs.values())


def _alpaca_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("alpaca_eval")
    except metadata.PackageNotFoundError:
        return None


def _alpaca_samples(label: str, loc: Loc, rec: Any) -> list[tuple[str, Sample]]:
    if not isinstance(rec, dict):
        raise FieldError(None, f"expected an object, got {type_name(rec)}")
    prompt = rec.get("instruction")
    if not _text(prompt):
        raise FieldError("instruction", "missing or empty")
    task = _text(rec.get("dataset")) or "alpaca_eval"
    # One suite, AlpacaEval's, its subsets (helpful_base, oasst, ...) as tasks.
    common = {
        "file": label,
        "loc": loc,
        "task": task,
        "kind": "prompts",
        "record": {"prompt": prompt},
        "suite": "alpaca_eval",
    }
    if "output_1" in rec or "output_2" in rec:
        out = []
        for side in ("1", "2"):
            text, gen = rec.get(f"output_{side}"), rec.get(f"generator_{side}")
            if not isinstance(text, str):
                raise FieldError(
                    f"output_{side}", "missing" if text is None else f"expected a string, got {type_name(text)}"
                )
            if not _text(gen):
                raise FieldError(f"generator_{side}", "missing")
            out.append((gen, Sample(output=text, sample_id=f"{loc.n}:{side}", **common)))
        pref = rec.get("preference")
        value = None
        if pref is not None:
            p = _as_float(pref)
            if p is None or not 0 <= p <= 2:
                raise FieldError("preference", f"expected 1 or 2 (or a value between), got {pref!r}")
            value = max(0.0, min(1.0, p - 1.0)) if p >= 1 else None  # 0: AlpacaEval's "no preference"
            value = 0.5 if p == 0 else value
        s2 = out[1][1]
        s2.scores["alpaca_eval:preference"] = value
        s2.score_meta["alpaca_eval:preference"] = {
            "raw": pref,
            "reference": out[0][0],
            "annotator": rec.get("annotator"),
        }
        return out
    output = rec.get("output")
    if not isinstance(output, str):
        raise FieldError("output", "missing" if output is None else f"expected a string, got {type_name(output)}")
    gen = _text(rec.get("generator")) or "alpaca_eval-model"
    return [(gen, Sample(output=output, sample_id=str(loc.n), **common))]


# -- mirage's own export --------------------------------------------------------------------------
def read_mirage(paths: list[Path]) -> list[Run]:
    runs: dict[tuple, Run] = {}
    for path in paths:
        src = Source(path)
        fmeta = _file_meta(path)
        for loc, rec in read_records(src, "jsonl"):
            if isinstance(rec, BadInput):
                raise rec
            try:
                if not isinstance(rec, dict) or EXPORT_MARK not in rec:
                    raise FieldError(EXPORT_MARK, "missing (not a `mirage export` record)")
                for f in ("suite", "kind", "item", "model", "output"):
                    if f not in rec:
                        raise FieldError(f, "missing")
                item, kind = rec["item"], rec["kind"]
                if not isinstance(item, dict):
                    raise FieldError("item", f"expected an object, got {type_name(item)}")
                if not isinstance(rec["output"], str):
                    raise FieldError("output", f"expected a string, got {type_name(rec['output'])}")
                record = _export_record(kind, item)
            except FieldError as fe:
                raise bad(src.label, fe.reason, loc, fe.field) from None
            prov = rec.get("provenance") or {}
            key = (rec["model"], rec.get("fingerprint"))
            run = runs.get(key)
            if run is None:
                run = runs[key] = Run(
                    "mirage", prov.get("mirage_version"), rec["model"], {"fingerprint": rec.get("fingerprint")}, [fmeta]
                )
            s = Sample(
                file=src.label,
                loc=loc,
                task=str(item.get("task") or rec["suite"]),
                kind=kind,
                record=record,
                output=rec["output"],
                sample_id=str(item.get("idx")),
                rendered_prompt=rec.get("rendered_prompt"),
                decoding=rec.get("decoding") or {},
                suite=str(rec["suite"]),
            )
            for name, v in (rec.get("imported_scores") or {}).items():
                s.scores[name] = _as_float(v)
            run.samples.append(s)
    return list(runs.values())


def _export_record(kind: str, item: dict) -> dict:
    if kind == "qa":
        return {"question": item.get("prompt"), "answer": item.get("gold")}
    if kind == "mc":
        gold = (item.get("gold") or [None])[0]
        return {"question": item.get("prompt"), "choices": item.get("choices"), "answer": gold}
    if kind == "code":
        return {
            "prompt": item.get("prompt"),
            "test": item.get("tests"),
            "entry_point": item.get("entry_point"),
            **({"canonical_solution": item["canonical_solution"]} if item.get("canonical_solution") else {}),
        }
    if kind == "prompts":
        return {"prompt": item.get("prompt")}
    raise FieldError("kind", f"unknown suite kind {kind!r}")


READERS = {
    "lm_eval": read_lm_eval,
    "inspect": read_inspect,
    "promptfoo": read_promptfoo,
    "alpaca_eval": read_alpaca_eval,
    "mirage": read_mirage,
}


def read_results(paths: list[str | os.PathLike], tool: str = "auto") -> list[Run]:
    """Every run in `paths`, each file's tool detected (or `tool`); BadInput on the first bad record."""
    by_tool: dict[str, list[Path]] = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise BadInput(p, "no such file")
        t = detect(path) if tool == "auto" else tool
        if t not in READERS:
            raise BadInput("--tool", f"unknown tool '{t}' (expected auto, {', '.join(READERS)})")
        by_tool.setdefault(t, []).append(path)
    runs = []
    for t, ps in by_tool.items():
        runs += READERS[t](ps)
    return runs


# -- import -----------------------------------------------------------------------------------------
def _model_name(name: str) -> str:
    """A registry name for a tool's model: a path's last part, other characters as '-'."""
    name = name.rstrip("/\\")
    if name.startswith((".", "/", "~")) or "\\" in name:  # a local path; a hub id keeps its owner/
        name = re.split(r"[/\\]", name)[-1] or name
    return _MODEL_NAME_BAD.sub("-", name).strip("-.") or "imported-model"


def import_results(
    ws: Workspace,
    paths: list[str | os.PathLike],
    *,
    suite: str | None = None,
    model: str | None = None,
    tool: str = "auto",
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Import other tools' per-sample results: items into suites (created or extended; the
    suite is `suite`, else the tool's task name), outputs as generations of a 'recorded' model
    (`model`, else the tool's model name) with the tool, its version, the files' sha256 and the
    model's arguments as provenance, and the tool's per-sample scores as `imported_scores`.

    Every file is read and checked before anything is written, and the writes are one
    transaction: a bad file leaves the workspace as it was."""
    from core.data.datasets import get_suite

    runs = read_results(paths, tool)
    skipped = [note for r in runs for note in r.skipped]
    runs = [r for r in runs if r.samples]
    if not runs:
        raise BadInput(paths[0], "nothing to import" + (f": {'; '.join(skipped)}" if skipped else ""))
    yield Progress(1, 3, "read")
    models = {m: _model_name(m) if model is None else model for m in {r.model for r in runs}}
    if model is not None and len({r.model for r in runs}) > 1:
        names = sorted({r.model for r in runs})
        raise BadInput(
            "--model", f"the files hold {len(names)} models ({', '.join(names[:5])}); import them one by one"
        )
    if model is not None and not model.strip():
        raise BadInput("--model", "empty model name")
    # Items by suite, checked as the suite kind reads them.
    plan: dict[str, dict] = {}
    for run in runs:
        for s in run.samples:
            name = suite or s.suite or s.task
            p = plan.setdefault(name, {"kind": s.kind, "items": {}, "first": s})
            if p["kind"] != s.kind:
                raise bad(
                    s.file,
                    f"a {s.kind} sample, but suite '{name}' gets {p['kind']} items from {p['first'].file}"
                    " (import them into separate suites: drop --suite)",
                    s.loc,
                )
            try:
                item = normalise_item(s.record, s.kind, s.task, name)
            except FieldError as fe:
                raise bad(s.file, fe.reason, s.loc, fe.field) from None
            h = item_hash(item)
            p["items"].setdefault(h, item)
            s.meta["_item_hash"] = h
            s.meta["_suite"] = name
    for name, p in plan.items():
        try:
            existing = get_suite(ws, name)
        except Exception:  # noqa: BLE001 - NotFound: the import creates it
            existing = None
        if existing is not None and existing["kind"] != p["kind"]:
            raise BadInput(
                p["first"].file, f"suite '{name}' holds {existing['kind']} items; these samples are {p['kind']}"
            )
        p["existing"] = existing
        if existing is not None:
            _match_existing(ws, existing["id"], p, [s for r in runs for s in r.samples if s.meta["_suite"] == name])
    check_cancel(cancel)
    yield Progress(2, 3, "checked")
    summary = {
        "files": sorted({f["name"] for r in runs for f in r.files}),
        "tools": sorted({r.tool for r in runs}),
        "suites": [],
        "models": sorted(set(models.values())),
        "samples": sum(len(r.samples) for r in runs),
        "outputs_new": 0,
        "outputs_already": 0,
        "imported_scores": {},
        "skipped": skipped,
    }
    with ws.transaction():
        suite_ids = {}
        for name, p in plan.items():
            suite_ids[name], added = _write_suite(ws, name, p, runs)
            summary["suites"].append({"suite": name, "kind": p["kind"], "items_new": added})
        for run in runs:
            mname = models[run.model]
            _register(ws, mname, run)
            fp_sha = hashlib.sha256("".join(sorted(f["sha256"] for f in run.files)).encode()).hexdigest()[:16]
            fp = f"recorded:{mname}:{run.tool}:{fp_sha}"
            for s in run.samples:
                sid = suite_ids[s.meta["_suite"]]
                if "_item_id" in s.meta:
                    (item_id, item_prompt) = ws.db.execute(
                        "select id, prompt from items where id = ?", [s.meta["_item_id"]]
                    ).fetchone()
                else:
                    (item_id, item_prompt) = ws.db.execute(
                        "select id, prompt from items where suite_id = ? and content_hash = ?",
                        [sid, s.meta["_item_hash"]],
                    ).fetchone()
                rendered = s.rendered_prompt if s.rendered_prompt is not None else item_prompt
                key = hashlib.sha256(
                    dumps([fp, rendered, s.decoding, item_id, s.sample_id]).encode("utf-8", "surrogatepass")
                ).hexdigest()
                gmeta = {
                    "tool": run.tool,
                    "tool_version": run.tool_version,
                    "file": Path(s.file).name,
                    "sample_id": s.sample_id,
                    "task": s.task,
                    **{k: v for k, v in s.meta.items() if not k.startswith("_")},
                }
                # The same output of the same model on the item (another file of the same run:
                # AlpacaEval's outputs and its annotations) is one generation: it gets the scores.
                same = ws.db.execute(
                    "select id from generations where model = ? and item_id = ? and output = ? and decoding = ?"
                    " order by id desc limit 1",
                    [mname, item_id, s.output, dumps(s.decoding)],
                ).fetchone()
                if same is not None:
                    summary["outputs_already"] += 1
                    gid = same[0]
                else:
                    gid = None
                cur = (
                    None
                    if same is not None
                    else ws.db.execute(
                        "insert or ignore into generations (model, fingerprint, item_id, prompt, decoding, cache_key,"
                        " output, meta, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [mname, fp, item_id, rendered, dumps(s.decoding), key, s.output, dumps(gmeta), now()],
                    )
                )
                if cur is not None:
                    if cur.rowcount:
                        summary["outputs_new"] += 1
                    else:
                        summary["outputs_already"] += 1
                    (gid,) = ws.db.execute("select id from generations where cache_key = ?", [key]).fetchone()
                for metric, value in s.scores.items():
                    meta = {"file": Path(s.file).name, "sample_id": s.sample_id, **(s.score_meta.get(metric) or {})}
                    ws.db.execute(
                        "insert or replace into imported_scores (generation_id, metric, value, meta, created_at)"
                        " values (?, ?, ?, ?, ?)",
                        [gid, metric, value, dumps(meta), now()],
                    )
                    summary["imported_scores"][metric] = summary["imported_scores"].get(metric, 0) + 1
    for entry in summary["suites"]:
        n_items, n_tasks = ws.db.execute(
            "select count(*), count(distinct task) from items where suite_id = ?", [suite_ids[entry["suite"]]]
        ).fetchone()
        entry.update(items=n_items, tasks=n_tasks)
    yield Progress(3, 3, "done")
    return summary


def _match_existing(ws: Workspace, suite_id: int, p: dict, samples: list[Sample]) -> None:
    """Samples of an existing suite attach to its items: the same item (content hash), else the
    item with the same prompt (`match_key`, as `import outputs` matches; the same task label
    first), whatever gold or task label the tool gave it. Only the rest become new items."""
    by_hash, by_prompt = {}, {}
    for iid, prompt, task, h in ws.db.execute(
        "select id, prompt, task, content_hash from items where suite_id = ? order by idx", [suite_id]
    ):
        by_hash[h] = iid
        by_prompt.setdefault(match_key(prompt), []).append((task, iid))
    for s in samples:
        h = s.meta["_item_hash"]
        item = p["items"].get(h)
        if h in by_hash or item is None:
            continue
        cands = by_prompt.get(match_key(item["prompt"]))
        if cands:
            s.meta["_item_id"] = next((iid for task, iid in cands if task == s.task), cands[0][1])
    matched = {s.meta["_item_hash"] for s in samples if "_item_id" in s.meta}
    unmatched = {s.meta["_item_hash"] for s in samples if "_item_id" not in s.meta}
    for h in matched - unmatched:
        p["items"].pop(h, None)


def _write_suite(ws: Workspace, name: str, p: dict, runs: list[Run]) -> tuple[int, int]:
    """Create or extend suite `name` with the plan's items (inside the caller's transaction);
    (suite id, items added). Items of a ready suite are indexed by the FTS insert trigger."""
    sample_files = {str(Path(s.file).resolve()) for r in runs for s in r.samples}
    mine = {str(Path(s.file).resolve()) for r in runs for s in r.samples if s.meta.get("_suite") == name}
    files = [
        {**f, "format": p["kind"], "tool": r.tool, "tool_version": r.tool_version}
        for r in runs
        for f in r.files
        if any(s.meta.get("_suite") == name for s in r.samples)
        and (f["path"] in mine or f["path"] not in sample_files)  # its samples, and the run's shared files
    ]
    files = list({f["sha256"]: f for f in files}.values())
    existing = p["existing"]
    if existing is None:
        meta = {"duplicates": 0, "files": files}
        cur = ws.db.execute(
            "insert into suites (name, status, kind, format, source, meta, created_at) values (?, 'ready', ?, ?, ?, ?, ?)",
            [name, p["kind"], "results", ", ".join(f["name"] for f in files), dumps(meta), now()],
        )
        sid, start = cur.lastrowid, 0
    else:
        sid = existing["id"]
        meta = existing["meta"] if isinstance(existing["meta"], dict) else json.loads(existing["meta"] or "{}")
        known = {f.get("sha256") for f in meta.get("files", [])}
        meta["files"] = list(meta.get("files", [])) + [f for f in files if f["sha256"] not in known]
        ws.db.execute(
            "update suites set source = ?, meta = ? where id = ?",
            [", ".join(f["name"] for f in meta["files"]), dumps(meta), sid],
        )
        (start,) = ws.db.execute("select coalesce(max(idx) + 1, 0) from items where suite_id = ?", [sid]).fetchone()
    added = 0
    for h, item in p["items"].items():
        cur = ws.db.execute(
            _ITEM_INSERT,
            [
                sid,
                start + added,
                item["key"],
                item["prompt"],
                item["task"],
                dumps(item["gold"]),
                dumps(item["choices"]) if item["choices"] is not None else None,
                item["tests"],
                item["entry_point"],
                h,
                dumps(item["meta"]),
            ],
        )
        added += cur.rowcount
    return sid, added


def _register(ws: Workspace, name: str, run: Run) -> None:
    """Register (or note another import on) the model the outputs are recorded under."""
    prov = {
        "tool": run.tool,
        "tool_version": run.tool_version,
        "tool_model": run.model,
        "model_args": run.model_args,
        "files": run.files,
    }
    row = ws.db.execute("select kind, spec from models where name = ?", [name]).fetchone()
    if row is None:
        spec = {"source": run.files[-1]["path"] if run.files else run.tool, "generator": run.model, "imports": [prov]}
        ws.db.execute(
            "insert into models (name, kind, spec, created_at) values (?, 'recorded', ?, ?)",
            [name, dumps(spec), now()],
        )
        return
    spec = json.loads(row[1] or "{}")
    have = {f["sha256"] for i in spec.get("imports", []) for f in i.get("files", [])}
    if not {f["sha256"] for f in run.files} <= have:
        spec["imports"] = list(spec.get("imports", [])) + [prov]
        ws.db.execute("update models set spec = ? where name = ?", [dumps(spec), name])


__all__ = ["READERS", "Run", "Sample", "detect", "import_results", "read_results"]
