"""Suite kinds as classes (qa, mc, code, prompts), as lm-evaluation-harness's `Task`: everything
about one kind in one place.

A kind says how a record of its import format becomes an item (`read_item`), how an item is
rendered for generation (`completion_prompt`, `chat_messages`, k-shot exemplars), which metrics it
is scored with (from core.api.registry) and how an output is scored inline (`score_inputs`,
`score_output`; code runs in core.scores' sandbox), and its verdict: correct, wrong or unscored
by its primary metric. `suite_kind(name)` returns the kind of a suite row's `kind`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from core.api import metrics as M
from core.api import registry as R
from core.errors import FieldError, read_str, type_name

CORRECT, WRONG, UNSCORED = 1, 0, -1
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IMPORT_LETTERS = "ABCDEFGHIJ"  # answer letters an imported multiple-choice item may use
CODE_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"]
PROMPT_FIELDS = ("instruction", "prompt", "question")
# "Convincing but wrong": unigram overlap with the teacher's output at least this.
CONVINCING_OVERLAP = 0.3


def _known(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


_GSM8K_FINAL = re.compile(r"(?:^|\n)\s*####\s*([^\n]+?)\s*$")
_SENTENCE_THEN_WORD = re.compile(r"[.!?]\s+[A-Z][a-z]")


def is_prose(gold: str) -> bool:
    """A gold answer longer than a sentence: more than 20 words, several lines, or two sentences
    of more than 8 words in all. NQ-open's longest alias has 6 words; "Portugal. The Man" and
    "R. H. Thomson" stay answers."""
    text = gold.strip()
    n = len(text.split())
    return n > 20 or "\n" in text or (n > 8 and _SENTENCE_THEN_WORD.search(text) is not None)


def first_gold(item: Mapping) -> str:
    gold = item.get("gold") or []
    return str(gold[0]) if gold else ""


class SuiteKind:
    name: str
    primary: str  # the registered factuality metric the verdict is read from
    prompt_field = "prompt"  # the import field an empty prompt is reported on
    uses_shots = False  # completion prompts carry k-shot exemplars from the suite

    # -- import --------------------------------------------------------------------------------------
    def detects(self, rec: dict) -> bool:
        """Whether a record looks like this kind's import format."""
        raise NotImplementedError

    def read_item(self, rec: dict) -> dict:
        """The kind's fields of an item (prompt, gold, choices, tests, entry_point, meta) from one
        import record; raises FieldError on a bad field."""
        raise NotImplementedError

    # -- generation ----------------------------------------------------------------------------------
    def completion_prompt(self, item: Mapping, shots: list[Mapping]) -> tuple[str, list[str]]:
        """(prompt, stop sequences) for a completion model."""
        return f"User: {item['prompt'].strip()}\nAssistant:", ["\nUser:"]

    def chat_messages(self, item: Mapping) -> list[dict]:
        return [{"role": "user", "content": item["prompt"]}]

    def shot_pool(self, items: list[Mapping], k: int) -> list[Mapping]:
        """The fixed k-shot exemplars (the first k+1 items with gold: one spare for the item itself)."""
        if not self.uses_shots or k <= 0:
            return []
        return [it for it in items if it.get("gold")][: k + 1]

    # -- scoring -------------------------------------------------------------------------------------
    def metrics(self, *, requires: object = R.ANY, family: str | None = None) -> tuple[str, ...]:
        """Names of the registered metrics computed on this kind."""
        return R.names(R.metrics(kind=self.name, requires=requires, family=family))

    @property
    def inline_factuality(self) -> tuple[str, ...]:
        """The factuality metrics `score_output` computes."""
        return self.metrics(requires=None, family=R.FACTUALITY)

    def score_inputs(self, g: Mapping) -> list:
        """What the kind's factuality scores of an output depend on (hashed into their cache key)."""
        return [g["output"], g["gold"]]

    def score_output(self, g: Mapping) -> dict[str, tuple[float | None, dict]]:
        """metric -> (value, meta) for `inline_factuality`, on one stored generation."""
        return {}

    # -- verdict -------------------------------------------------------------------------------------
    def verdict_metric(self, present) -> str | None:
        """The metric the verdict is read from, given those with scores: the primary metric, else
        the kind's first other factuality metric that is scored (registry order), else None."""
        order = (self.primary,) + tuple(m for m in self.metrics(family=R.FACTUALITY) if m != self.primary)
        return next((m for m in order if m in present), None)

    def verdict(self, values: Mapping[str, float | None], metric: str | None = None) -> int:
        """CORRECT, WRONG or UNSCORED for one output's scores, by `metric` (default: primary)."""
        metric = metric or self.primary
        v = values.get(metric)
        if not _known(v):
            return UNSCORED
        return CORRECT if v >= R.metric(metric).correct_at else WRONG

    def right_after_all(self, values: Mapping[str, float | None]) -> bool:
        """A wrong verdict that another of the kind's scores contradicts."""
        return False

    def convincing_but_wrong(
        self, values: Mapping[str, float | None], *, metric: str | None = None, overlap: float = CONVINCING_OVERLAP
    ) -> bool:
        """Style close to the teacher's while the answer is wrong: unigram overlap with the
        teacher's output at least `overlap`, a list where the teacher used one, and a wrong verdict
        (for QA: the gold not contained either; for free-form prompts: a claim the judge found
        unsupported)."""
        if self.verdict(values, metric) != WRONG or self.right_after_all(values):
            return False
        ov = values.get("unigram_overlap")
        if not _known(ov) or ov < overlap:
            return False
        return values.get("list_when_teacher_lists") != 0.0


class QAKind(SuiteKind):
    name, primary, prompt_field, uses_shots = "qa", "exact_match", "question", True

    def detects(self, rec: dict) -> bool:
        return "question" in rec and ("answer" in rec or "answers" in rec)

    def read_item(self, rec: dict) -> dict:
        key = "answer" if "answer" in rec else "answers"
        gold, meta = rec.get(key), {}
        if isinstance(gold, str):
            m = _GSM8K_FINAL.search(gold)
            if m:
                # GSM8K: the rationale ends in "#### 42"; the gold is the number, the rationale
                # stays with the item as a reference answer.
                gold, meta["reference"] = m.group(1).strip(), gold
        item = {"prompt": read_str(rec, "question"), "gold": self.validate_gold(gold, key)}
        if meta:
            item["meta"] = meta
        return item

    @staticmethod
    def validate_gold(gold: Any, key: str = "answer") -> list[str]:
        """A non-empty list of answer aliases (a single string is one alias)."""
        if gold is None:
            raise FieldError("answer", "missing")
        if isinstance(gold, str):
            gold = [gold]
        if not isinstance(gold, list) or not gold or not all(isinstance(g, (str, int, float)) for g in gold):
            raise FieldError(
                key,
                "expected a non-empty list of answer strings"
                if isinstance(gold, list)
                else f"expected a list of answers, got {type_name(gold)}",
            )
        for g in gold:
            if isinstance(g, str) and is_prose(g):
                raise FieldError(
                    key,
                    f"is prose ({len(g.split())} words), not a short answer: exact match against it means"
                    " nothing; pass --answer-field FIELD to read the short answer from another field, or"
                    " --format prompts to import the questions without gold",
                )
        return [str(g) for g in gold]

    def completion_prompt(self, item, shots):
        parts = [f"Question: {s['prompt'].strip()}\nAnswer: {first_gold(s)}" for s in shots]
        parts.append(f"Question: {item['prompt'].strip()}\nAnswer:")
        return "\n\n".join(parts), ["\n", "\nQuestion:"]

    def chat_messages(self, item):
        return [
            {"role": "user", "content": f"Answer the question with a short answer.\nQuestion: {item['prompt'].strip()}"}
        ]

    def score_output(self, g):
        s = M.qa_scores(g["output"], g["gold"])
        meta = {"extracted": s["extracted"], "rule": s["rule"]}
        return {
            "exact_match": (s["exact_match"], meta),
            "exact_match_official": (s["exact_match_official"], {"rule": "squad_v1.1"}),
            "f1": (s["f1"], meta),
            "contains": (s["contains"], {}),
        }

    def right_after_all(self, values):
        return values.get("contains") == 1.0


class MCKind(SuiteKind):
    name, primary, prompt_field, uses_shots = "mc", "mc_accuracy", "question", True

    def detects(self, rec: dict) -> bool:
        return "question" in rec and ("choices" in rec or {"A", "B", "C", "D"} <= set(rec))

    def read_item(self, rec: dict) -> dict:
        prompt = read_str(rec, "question")
        if "choices" in rec:
            choices = rec["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise FieldError("choices", "expected a list of at least 2 strings")
        else:
            choices = [read_str(rec, letter) for letter in "ABCD"]
            if isinstance(rec.get("E"), str) and rec["E"].strip():
                choices.append(rec["E"])
        return {"prompt": prompt, "choices": choices, "gold": [self.validate_gold(rec, choices)]}

    @staticmethod
    def validate_gold(rec: dict, choices: list[str]) -> str:
        """The answer's letter: a letter of one of the choices, or a 0-based index (as a number or digits)."""
        answer = rec.get("answer")
        if isinstance(answer, str) and answer.strip().isdigit():
            answer = int(answer.strip())
        if isinstance(answer, bool) or answer is None:
            raise FieldError("answer", "missing" if answer is None else "expected a letter or an index")
        if isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise FieldError("answer", f"index {answer} is not one of the {len(choices)} choices")
            return IMPORT_LETTERS[answer]
        if isinstance(answer, str) and answer.strip().upper() in IMPORT_LETTERS[: len(choices)]:
            return answer.strip().upper()
        raise FieldError("answer", f"expected one of {', '.join(IMPORT_LETTERS[: len(choices)])}, got {answer!r}")

    @staticmethod
    def question_block(item: Mapping) -> str:
        lines = [item["prompt"].rstrip()]
        for letter, choice in zip(LETTERS, item.get("choices") or []):
            lines.append(f"{letter}. {choice}")
        return "\n".join(lines)

    def completion_prompt(self, item, shots):
        parts = [f"Question: {self.question_block(s)}\nAnswer: {first_gold(s)}" for s in shots]
        parts.append(f"Question: {self.question_block(item)}\nAnswer:")
        return "\n\n".join(parts), ["\n", "\nQuestion:"]

    def chat_messages(self, item):
        return [
            {"role": "user", "content": f"{self.question_block(item)}\n\nAnswer with the letter of the correct choice."}
        ]

    @staticmethod
    def cloze_prompt(prompt: str) -> str:
        """The prompt the log-likelihood of each choice's text is measured after."""
        prompt = prompt.rstrip()
        return prompt if prompt.endswith("Answer:") else f"Question: {prompt}\nAnswer:"

    def score_inputs(self, g):
        return [g["output"], g["gold"], g["choices"]]

    def score_output(self, g):
        letter, rule = M.extract_letter(g["output"], g["choices"])
        gold = (g["gold"] or [None])[0]
        right = letter is not None and letter == str(gold).strip().upper()
        return {"mc_accuracy": (float(right), {"letter": letter, "rule": rule, "gold": gold})}


class CodeKind(SuiteKind):
    name, primary = "code", "pass@1"

    def detects(self, rec: dict) -> bool:
        return {"prompt", "test", "entry_point"} <= set(rec)

    def read_item(self, rec: dict) -> dict:
        item = {
            "prompt": read_str(rec, "prompt"),
            "tests": read_str(rec, "test"),
            "entry_point": read_str(rec, "entry_point"),
            "meta": {},
        }
        solution = read_str(rec, "canonical_solution", required=False)
        if solution is not None:
            item["meta"]["canonical_solution"] = solution
        return item

    def completion_prompt(self, item, shots):
        return item["prompt"], CODE_STOPS

    def chat_messages(self, item):
        text = f"Complete the following Python function. Reply with code only.\n\n```python\n{item['prompt']}\n```"
        return [{"role": "user", "content": text}]

    def score_inputs(self, g):
        return [g["output"], g["item_prompt"], g["tests"], g["entry_point"]]


class PromptsKind(SuiteKind):
    """Free-form instructions: no gold; right or wrong only by the judge's claim checks."""

    name, primary = "prompts", "judge_claims"

    def detects(self, rec: dict) -> bool:
        return any(f in rec for f in PROMPT_FIELDS)

    def read_item(self, rec: dict) -> dict:
        meta = {}
        for f in PROMPT_FIELDS:
            if f in rec:
                if isinstance(rec[f], dict) and "text" in rec[f]:
                    # RealToxicityPrompts: {"prompt": {"text": ..., "toxicity": ...}, "continuation": ...}
                    prompt = read_str(rec[f], "text", field=f"{f}.text")
                    scores = {k: v for k, v in rec[f].items() if k != "text" and isinstance(v, (int, float))}
                    if scores:
                        meta["prompt_scores"] = scores
                else:
                    prompt = read_str(rec, f)
                break
        else:
            raise FieldError("instruction", "missing (expected instruction, prompt or question)")
        extra = rec.get("input")
        if isinstance(extra, str) and extra.strip():
            prompt += f"\n\n{extra}"
        return {"prompt": prompt, "meta": meta}


# Detection order: the most specific format first (a code record may also hold a "prompt").
SUITE_KINDS: dict[str, SuiteKind] = {k.name: k for k in (CodeKind(), MCKind(), QAKind(), PromptsKind())}


def suite_kind(name: str) -> SuiteKind:
    try:
        return SUITE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown suite kind '{name}' (known: {', '.join(R.SUITE_KIND_NAMES)})") from None


def detect_kind(rec: Any) -> str | None:
    """The import format a record looks like, or None."""
    if not isinstance(rec, dict):
        return None
    return next((k.name for k in SUITE_KINDS.values() if k.detects(rec)), None)


def read_item(kind: str, rec: Any) -> dict:
    """An item's kind-specific fields from one record, every field present (ingest's `normalise_item`
    adds key, task and meta it owns); raises FieldError."""
    if not isinstance(rec, dict):
        raise FieldError(None, f"expected an object, got {type_name(rec)}")
    sk = suite_kind(kind)
    item = {"gold": [], "choices": None, "tests": None, "entry_point": None, "meta": {}, **sk.read_item(rec)}
    if not item["prompt"].strip():
        raise FieldError(sk.prompt_field, "empty")
    return item
