"""Reading a study side by side: compare views, human spot-check marks and blind pairwise ratings.

The Compare screen is a thin view over `CompareView`: everything it shows (verdicts, style figures,
filters, sorts, the next disagreement, gold-answer spans) is computed here, once per view, into
flat arrays so that moving between items is an index lookup rather than a query.
"""

from __future__ import annotations

import getpass
import json
import math
import random
import re
from dataclasses import dataclass, field

import numpy as np

from core.data.datasets import get_suite
from core.errors import BadInput, NotFound
from core.store.workspace import Workspace, now

# Which automatic score decides an output's verdict, most specific first: a suite scored for code
# has pass@1, multiple choice has mc_accuracy, QA has exact_match (answer-extracted) and contains.
FACTUALITY_METRICS = ("pass@1", "mc_accuracy", "exact_match", "contains")
# The paper's Table 2, each measured per output against the teacher's output on the same item.
STYLE_METRICS = ("unigram_overlap", "list_when_teacher_lists", "summary_when_teacher_summarizes", "length_correlation")
# Metrics that the human marks are compared with (0/1 per output, or thresholded at 0.5).
AGREEMENT_METRICS = ("exact_match", "contains", "f1", "mc_accuracy", "pass@1")

CORRECT, WRONG, UNSCORED = 1, 0, -1
VERDICT_NAME = {CORRECT: "correct", WRONG: "wrong", UNSCORED: "unscored"}
VERDICT_SYMBOL = {CORRECT: "✓", WRONG: "✗", UNSCORED: "?"}
MARKS = ("correct", "incorrect", "unsure")
MARK_SYMBOL = {"correct": "✓", "incorrect": "✗", "unsure": "?"}

PATTERNS = {
    "teacher-right-imitation-wrong": "teacher right, imitation wrong",
    "base-right-imitation-wrong": "base right, imitation wrong",
    "convincing-but-wrong": "convincing but wrong",
    "disagree": "models disagree",
}
SORTS = {
    "index": "suite order",
    "support": "coverage support (least supported first)",
    "style": "style similarity to the teacher (closest first)",
}
# "Convincing but wrong" is core.scoring.convincing_but_wrong's rule, evaluated on the view's arrays:
# unigram overlap with the teacher's output at least this (its default), a wrong answer by the
# suite's primary metric (for QA, the gold not contained either), and a list where the teacher used one.
CONVINCING_OVERLAP = 0.3


def default_rater() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "me"


# -- models in a study -------------------------------------------------------------------------------
def models_with_outputs(ws: Workspace, suite: str) -> list[str]:
    s = get_suite(ws, suite)
    return [
        r[0]
        for r in ws.db.execute(
            "select distinct g.model from generations g join items i on i.id = g.item_id"
            " where i.suite_id = ? order by g.model",
            [s["id"]],
        ).fetchall()
    ]


def _adapters_of(ws: Workspace, base: str) -> list[str]:
    """Adapters whose finetune lineage names `base` (as core.report picks imitation models)."""
    out = []
    for name, spec in ws.db.execute("select name, spec from models where kind = 'adapter' order by id"):
        lineage = json.loads(spec or "{}").get("lineage") or {}
        if lineage.get("base") == base:
            out.append(name)
    return out


def roles_of(ws: Workspace) -> dict[str, str]:
    """model name -> role ('teacher', 'base', 'imitation'): the config's `[roles]`; without
    imitation models there, the adapters finetuned from the base."""
    r = ws.config.roles
    imitation = list(r.imitation) or (_adapters_of(ws, r.base) if r.base else [])
    out = {m: "imitation" for m in imitation}
    if r.base:
        out[r.base] = "base"
    if r.teacher:
        out[r.teacher] = "teacher"
    return out


def default_models(ws: Workspace, suite: str) -> list[str]:
    """base | imitation(s) | teacher when the config names them and they have outputs, else all (≤ 4)."""
    have = models_with_outputs(ws, suite)
    r = ws.config.roles
    roles = roles_of(ws)
    wanted = [r.base, *[m for m, role in roles.items() if role == "imitation"], r.teacher]
    picked = [m for m in wanted if m and m in have]
    if len(picked) >= 2:
        if len(picked) > 4:  # keep base and teacher, the newest imitations in between
            picked = [picked[0], *picked[1:-1][-2:], picked[-1]]
        return picked
    return have[:4]


# -- gold spans --------------------------------------------------------------------------------------
def gold_spans(text: str, gold: list[str]) -> list[tuple[int, int]]:
    """Where any gold alias occurs in `text` (case-insensitive, on word boundaries), merged."""
    spans = []
    for g in gold or []:
        g = str(g).strip()
        if len(g) < 1 or (len(g) == 1 and not g.isalnum()):
            continue
        pat = re.compile(r"(?<!\w)" + re.escape(g) + r"(?!\w)", re.IGNORECASE)
        spans += [(m.start(), m.end()) for m in pat.finditer(text)]
    spans.sort()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


_WORD = re.compile(r"\w+")


def unigram_overlap(output: str, teacher: str) -> float:
    """Unigram overlap with the teacher's output, for outputs `mirage score` has not scored yet:
    core.metrics' definition (the one scores use) when present, else the share of the teacher's
    distinct words the output also uses."""
    try:
        from core.api.metrics import unigram_overlap as scored_definition
    except ImportError:
        t = set(_WORD.findall(teacher.lower()))
        if not t:
            return float("nan")
        return len(set(_WORD.findall(output.lower())) & t) / len(t)
    return scored_definition(output, teacher)


# -- the compare view --------------------------------------------------------------------------------
@dataclass
class Filters:
    task: str | None = None
    pattern: str | None = None  # a key of PATTERNS
    text: str | None = None
    sort: str = "index"  # a key of SORTS

    def describe(self) -> str:
        parts = []
        if self.task:
            parts.append(f"task={self.task}")
        if self.pattern:
            parts.append(PATTERNS.get(self.pattern, self.pattern))
        if self.text:
            parts.append(f"text={self.text!r}")
        if self.sort != "index":
            parts.append(f"sort={self.sort}")
        return ", ".join(parts) or "all items"


@dataclass
class Pane:
    """One model's output on one item, as a pane shows it."""

    model: str
    role: str
    generation_id: int | None
    output: str | None
    verdict: int
    verdict_metric: str | None
    style: dict[str, float]
    mark: str | None
    gold_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return VERDICT_SYMBOL[self.verdict]

    @property
    def verdict_name(self) -> str:
        return VERDICT_NAME[self.verdict]


@dataclass
class ItemRow:
    position: int  # in the filtered, sorted order
    total: int
    item_id: int
    idx: int
    task: str
    prompt: str
    gold: list
    choices: list | None
    support: float | None
    panes: list[Pane]


class CompareView:
    """A suite × 2–4 models, loaded once into arrays; filters and sorts produce an index order."""

    def __init__(
        self,
        ws: Workspace,
        suite: str,
        models: list[str] | None = None,
        *,
        data: str | None = None,
        verdict_metric: str | None = None,
        rater: str | None = None,
    ):
        self.ws = ws
        self.suite = suite
        self.suite_row = get_suite(ws, suite)
        self.models = list(models) if models else default_models(ws, suite)
        known = set(models_with_outputs(ws, suite))
        missing = [m for m in self.models if m not in known]
        if missing:
            have = ", ".join(sorted(known)) or "none"
            raise NotFound(
                f"no outputs of {', '.join(missing)} on suite '{suite}' (have: {have});"
                f" run `mirage generate --model NAME --suite {suite}`"
            )
        if len(self.models) > 4:
            raise BadInput("--models", f"at most 4 models side by side, got {len(self.models)}")
        self.roles = roles_of(ws)
        self.rater = rater or default_rater()
        self.data = data
        self._load_items()
        self._load_outputs()
        self._load_scores(verdict_metric)
        self._load_marks()
        self._load_support()
        self._haystack: list[str] | None = None
        self.filters = Filters()
        self.order = np.arange(self.n, dtype=np.int64)

    # -- loading ---------------------------------------------------------------------------------
    def _load_items(self) -> None:
        rows = self.ws.db.execute(
            "select id, idx, task, prompt, gold, choices from items where suite_id = ? order by idx",
            [self.suite_row["id"]],
        ).fetchall()
        self.item_ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.item_idx = [r[1] for r in rows]
        self.tasks = np.array([r[2] for r in rows], dtype=object)
        self.prompts = [r[3] for r in rows]
        self._gold_raw = [r[4] for r in rows]  # decoded lazily: only the items a user looks at
        self._choices_raw = [r[5] for r in rows]
        self.n = len(rows)
        self.pos_of_item = {int(i): p for p, i in enumerate(self.item_ids)}

    def gold(self, i: int) -> list:
        g = self._gold_raw[i]
        return json.loads(g) if isinstance(g, str) else (g or [])

    def _load_outputs(self) -> None:
        m = len(self.models)
        self.gen_ids = np.full((m, self.n), -1, dtype=np.int64)
        self.outputs: list[list[str | None]] = [[None] * self.n for _ in range(m)]
        for k, model in enumerate(self.models):
            # Several decodings may exist per item; the latest generation is the one shown.
            for item_id, gid, out in self.ws.db.execute(
                "select g.item_id, g.id, g.output from generations g join items i on i.id = g.item_id"
                " where i.suite_id = ? and g.model = ? order by g.id",
                [self.suite_row["id"], model],
            ):
                p = self.pos_of_item.get(item_id)
                if p is not None:
                    self.gen_ids[k, p] = gid
                    self.outputs[k][p] = out

    def _load_scores(self, verdict_metric: str | None) -> None:
        m = len(self.models)
        gid_pos = {}
        for k in range(m):
            for p in np.nonzero(self.gen_ids[k] >= 0)[0]:
                gid_pos[int(self.gen_ids[k, p])] = (k, int(p))
        values: dict[str, np.ndarray] = {}
        placeholders = ",".join("?" * m)
        for gid, metric, value in self.ws.db.execute(
            f"select s.generation_id, s.metric, s.value from scores s"
            f" join generations g on g.id = s.generation_id join items i on i.id = g.item_id"
            f" where i.suite_id = ? and g.model in ({placeholders}) order by s.id",
            [self.suite_row["id"], *self.models],
        ):
            kp = gid_pos.get(gid)
            if kp is None:
                continue
            arr = values.get(metric)
            if arr is None:
                arr = values[metric] = np.full((m, self.n), np.nan)
            arr[kp] = np.nan if value is None else value
        self.metrics = values
        if verdict_metric is None:
            primary = _primary_metric(self.suite_row["kind"])
            verdict_metric = (
                primary if primary in values else next((x for x in FACTUALITY_METRICS if x in values), None)
            )
        elif verdict_metric not in values and values:
            raise BadInput(
                "--metric", f"no '{verdict_metric}' scores on suite '{self.suite}' (have: {', '.join(sorted(values))})"
            )
        self.verdict_metric = verdict_metric
        self.verdicts = np.full((m, self.n), UNSCORED, dtype=np.int8)
        if verdict_metric:
            v = values[verdict_metric]
            # A share of supported claims is right only when every claim is.
            cut = 1.0 if verdict_metric == "judge_claims" else 0.5
            with np.errstate(invalid="ignore"):
                self.verdicts[v >= cut] = CORRECT
                self.verdicts[v < cut] = WRONG
        self.style_metrics = [x for x in STYLE_METRICS if x in values]
        self._style_similarity = None

    def _load_marks(self) -> None:
        self.marks: dict[int, str] = {}
        gids = [int(g) for g in self.gen_ids.ravel() if g >= 0]
        for chunk in range(0, len(gids), 900):  # SQLite's bound-parameter limit
            part = gids[chunk : chunk + 900]
            for gid, mark in self.ws.db.execute(
                f"select generation_id, mark from marks where rater = ? and generation_id in"
                f" ({','.join('?' * len(part))})",
                [self.rater, *part],
            ):
                self.marks[gid] = mark

    def _load_support(self) -> None:
        self.support = np.full(self.n, np.nan)
        self.support_note = "no coverage: run `mirage coverage --data NAME --suite " + self.suite + "`"
        try:
            from core.coverage import compute as coverage
        except ImportError:
            return
        if not hasattr(coverage, "item_support"):
            return
        # An explicit dataset; else the imitation model's training data; else the last coverage run.
        candidates = [self.data] if self.data else [self._imitation_data(), _latest_coverage_data(self.ws, self.suite)]
        sup, data = {}, None
        for data in (c for c in candidates if c):
            try:
                sup = coverage.item_support(self.ws, data, self.suite)
            except Exception:  # coverage not computed for this pair: the sort has nothing to use
                sup = {}
            if sup:
                break
        if not sup:
            return
        for item_id, value in sup.items():
            p = self.pos_of_item.get(int(item_id))
            if p is not None and value is not None:
                self.support[p] = value
        self.data = data
        self.support_note = f"coverage by '{data}'"

    def _imitation_data(self) -> str | None:
        """The dataset the view's imitation model was finetuned on, from its lineage."""
        for model in self.models:
            if self.roles.get(model) != "imitation":
                continue
            row = self.ws.db.execute("select spec from models where name = ?", [model]).fetchone()
            data = (json.loads(row[0] or "{}").get("lineage") or {}).get("data") if row else None
            if data and self.ws.db.execute("select 1 from datasets where name = ?", [data]).fetchone():
                return data
        return None

    # -- roles -----------------------------------------------------------------------------------
    def role(self, model: str) -> str:
        return self.roles.get(model, "")

    def _rows_with_role(self, role: str) -> list[int]:
        return [k for k, m in enumerate(self.models) if self.roles.get(m) == role]

    @property
    def teacher_row(self) -> int | None:
        rows = self._rows_with_role("teacher")
        return rows[0] if rows else None

    # -- derived arrays --------------------------------------------------------------------------
    def style_similarity(self) -> np.ndarray:
        """(models × items) similarity to the teacher's output: the scored unigram overlap,
        else computed here from the two texts (so sorting works before `mirage score`)."""
        if self._style_similarity is not None:
            return self._style_similarity
        sim = self.metrics.get("unigram_overlap")
        sim = np.full((len(self.models), self.n), np.nan) if sim is None else sim.copy()
        t = self.teacher_row
        if t is not None:
            for k in range(len(self.models)):
                for p in np.nonzero(np.isnan(sim[k]))[0]:
                    a, b = self.outputs[k][p], self.outputs[t][p]
                    if a is not None and b is not None:
                        sim[k, p] = 1.0 if k == t else unigram_overlap(a, b)
        self._style_similarity = sim
        return sim

    def disagreement(self) -> np.ndarray:
        v = self.verdicts
        return (v == CORRECT).any(axis=0) & (v == WRONG).any(axis=0)

    def pattern_mask(self, pattern: str) -> np.ndarray:
        v = self.verdicts
        if pattern == "disagree":
            return self.disagreement()
        imit = self._rows_with_role("imitation")
        if pattern == "convincing-but-wrong":
            # Any non-teacher output whose style is close to the teacher's and whose answer is wrong.
            sim = self.style_similarity()
            t = self.teacher_row
            rows = [k for k in range(len(self.models)) if k != t]
            contains = self.metrics.get("contains") if self.suite_row["kind"] == "qa" else None
            lists = self.metrics.get("list_when_teacher_lists")
            hit = []
            with np.errstate(invalid="ignore"):
                for k in rows:
                    h = (v[k] == WRONG) & (sim[k] >= CONVINCING_OVERLAP)
                    if contains is not None:
                        h &= ~(contains[k] == 1.0)
                    if lists is not None:
                        h &= ~(lists[k] == 0.0)
                    hit.append(h)
            return np.logical_or.reduce(hit) if hit else np.zeros(self.n, bool)
        other = {"teacher-right-imitation-wrong": "teacher", "base-right-imitation-wrong": "base"}.get(pattern)
        if other is None:
            raise BadInput("filter", f"unknown verdict pattern '{pattern}' (known: {', '.join(PATTERNS)})")
        right = self._rows_with_role(other)
        if not right or not imit:
            need = [r for r, rows in ((other, right), ("imitation", imit)) if not rows]
            raise BadInput(
                "filter",
                f"'{PATTERNS[pattern]}' needs a {' and an '.join(need)} model in the"
                f" view; set [roles] in mirage.toml or pass --models",
            )
        right_ok = np.logical_or.reduce([v[k] == CORRECT for k in right])
        imit_wrong = np.logical_or.reduce([v[k] == WRONG for k in imit])
        return right_ok & imit_wrong

    def _text_mask(self, text: str) -> np.ndarray:
        if self._haystack is None:
            # Built on the first text search only; later searches are a substring scan.
            self._haystack = [
                "\n".join(
                    [
                        self.prompts[p],
                        self._gold_raw[p] or "",
                        *(self.outputs[k][p] or "" for k in range(len(self.models))),
                    ]
                ).lower()
                for p in range(self.n)
            ]
        needle = text.lower()
        return np.fromiter((needle in h for h in self._haystack), bool, self.n)

    # -- filtering and sorting -------------------------------------------------------------------
    def apply(self, filters: Filters) -> int:
        """Set the filters; returns how many items pass."""
        mask = np.ones(self.n, bool)
        if filters.task:
            mask &= self.tasks == filters.task
        if filters.pattern:
            mask &= self.pattern_mask(filters.pattern)
        if filters.text:
            mask &= self._text_mask(filters.text)
        order = np.nonzero(mask)[0]
        if filters.sort == "support":
            key = self.support[order]
            order = order[np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")]
        elif filters.sort == "style":
            sim = self.style_similarity()
            t = self.teacher_row
            rows = [k for k in range(len(self.models)) if k != t] or list(range(len(self.models)))
            with np.errstate(all="ignore"):
                best = np.nanmax(np.where(np.isnan(sim[rows][:, order]), -np.inf, sim[rows][:, order]), axis=0)
            order = order[np.argsort(-best, kind="stable")]
        elif filters.sort != "index":
            raise BadInput("sort", f"unknown sort '{filters.sort}' (known: {', '.join(SORTS)})")
        self.filters = filters
        self.order = order
        return len(order)

    def task_names(self) -> list[str]:
        return sorted(set(self.tasks.tolist()))

    def next_disagreement(self, position: int, step: int = 1) -> int | None:
        """Position (in the current order) of the next item where the models' verdicts differ."""
        if not len(self.order):
            return None
        dis = self.disagreement()[self.order]
        hits = np.nonzero(dis)[0]
        if not len(hits):
            return None
        if step > 0:
            after = hits[hits > position]
            return int(after[0] if len(after) else hits[0])  # wraps, like a search
        before = hits[hits < position]
        return int(before[-1] if len(before) else hits[-1])

    # -- one item --------------------------------------------------------------------------------
    def row(self, position: int) -> ItemRow:
        p = int(self.order[position])
        gold = self.gold(p)
        choices = self._choices_raw[p]
        panes = []
        for k, model in enumerate(self.models):
            gid = int(self.gen_ids[k, p])
            out = self.outputs[k][p]
            style = {}
            for metric in self.style_metrics:
                val = self.metrics[metric][k, p]
                if not math.isnan(val):
                    style[metric] = float(val)
            if "unigram_overlap" not in style and self.teacher_row is not None and k != self.teacher_row:
                sim = self.style_similarity()[k, p]
                if not math.isnan(sim):
                    style["unigram_overlap"] = float(sim)
            panes.append(
                Pane(
                    model=model,
                    role=self.role(model),
                    generation_id=gid if gid >= 0 else None,
                    output=out,
                    verdict=int(self.verdicts[k, p]),
                    verdict_metric=self.verdict_metric,
                    style=style,
                    mark=self.marks.get(gid),
                    gold_spans=gold_spans(out, gold) if out else [],
                )
            )
        sup = self.support[p]
        return ItemRow(
            position=position,
            total=len(self.order),
            item_id=int(self.item_ids[p]),
            idx=self.item_idx[p],
            task=str(self.tasks[p]),
            prompt=self.prompts[p],
            gold=gold,
            choices=json.loads(choices) if choices else None,
            support=None if math.isnan(sup) else float(sup),
            panes=panes,
        )

    # -- marks -----------------------------------------------------------------------------------
    def generation_at(self, position: int, model_row: int) -> int | None:
        gid = int(self.gen_ids[model_row, int(self.order[position])])
        return gid if gid >= 0 else None

    def remember_mark(self, generation_id: int, mark: str | None) -> None:
        """Update the in-memory copy (the TUI writes the row in a worker thread)."""
        if mark is None:
            self.marks.pop(generation_id, None)
        else:
            self.marks[generation_id] = mark

    def mark(self, position: int, model_row: int, mark: str | None, *, ws: Workspace | None = None) -> None:
        """Mark (or with None, unmark) one output; persisted at once."""
        gid = self.generation_at(position, model_row)
        if gid is None:
            raise NotFound(f"{self.models[model_row]} has no output on this item")
        set_mark(ws or self.ws, gid, mark, rater=self.rater)
        self.remember_mark(gid, mark)

    def neighbours(self, position: int, k: int = 5) -> list[dict]:
        return item_neighbours(self.ws, self.suite, int(self.item_ids[self.order[position]]), data=self.data, k=k)


def _primary_metric(kind: str) -> str | None:
    try:
        from core.scores.scoring import PRIMARY
    except ImportError:
        return None
    return PRIMARY.get(kind)


def _latest_coverage_data(ws: Workspace, suite: str) -> str | None:
    """The imitation dataset whose coverage of this suite was computed last, if any."""
    try:
        from core.coverage import compute as coverage
    except ImportError:
        return None
    try:
        runs = coverage.list_runs(ws)  # newest first
    except Exception:  # coverage tables not there yet
        return None
    return next((r["data"] for r in runs if r.get("suite") == suite), None)


def item_neighbours(ws: Workspace, suite: str, item_id: int, *, data: str | None = None, k: int = 5) -> list[dict]:
    """The item's nearest imitation examples from the coverage results ([] when not computed)."""
    try:
        from core.coverage import compute as coverage
    except ImportError:
        return []
    data = data or _latest_coverage_data(ws, suite)
    if not data or not hasattr(coverage, "results"):
        return []
    try:
        res = coverage.results(ws, data, suite)
    except Exception:
        return []
    items = res.get("items", res) if isinstance(res, dict) else res
    for rec in items or []:
        if int(rec.get("item_id", rec.get("id", -1))) == item_id:
            return list(rec.get("neighbors", rec.get("neighbours", [])))[:k]
    return []


# -- marks -------------------------------------------------------------------------------------------
def set_mark(ws: Workspace, generation_id: int, mark: str | None, *, rater: str | None = None) -> None:
    rater = default_rater() if rater is None else rater
    if mark is None:
        ws.db.execute("delete from marks where generation_id = ? and rater = ?", [generation_id, rater])
        return
    if mark not in MARKS:
        raise BadInput("mark", f"unknown mark '{mark}' (known: {', '.join(MARKS)})")
    t = now()
    ws.db.execute(
        "insert into marks (generation_id, mark, rater, created_at, updated_at) values (?, ?, ?, ?, ?)"
        " on conflict (generation_id, rater) do update set mark = excluded.mark, updated_at = excluded.updated_at",
        [generation_id, mark, rater, t, t],
    )


def marks(ws: Workspace, suite: str, *, rater: str | None = None) -> list[dict]:
    s = get_suite(ws, suite)
    sql = (
        "select m.generation_id, g.model, g.item_id, m.mark, m.rater, m.updated_at from marks m"
        " join generations g on g.id = m.generation_id join items i on i.id = g.item_id"
        " where i.suite_id = ?"
    )
    args: list = [s["id"]]
    if rater is not None:
        sql += " and m.rater = ?"
        args.append(rater)
    return [dict(r) for r in ws.db.query(sql + " order by m.id", args)]


def cohen_kappa(a: list[int], b: list[int]) -> float | None:
    """Cohen's kappa for two binary raters; None when chance agreement is total (kappa undefined).

    Written out rather than taken from scikit-learn: four lines, and core stays light to import.
    """
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def agreement(
    ws: Workspace, suite: str, *, rater: str | None = None, metrics: tuple[str, ...] = AGREEMENT_METRICS
) -> list[dict]:
    """Per automatic metric: how often it agrees with the human marks (unsure marks left out)."""
    s = get_suite(ws, suite)
    sql = (
        "select m.generation_id, m.mark, s.metric, s.value from marks m"
        " join generations g on g.id = m.generation_id join items i on i.id = g.item_id"
        " join scores s on s.generation_id = m.generation_id"
        " where i.suite_id = ? and m.mark != 'unsure' and s.value is not null"
    )
    args: list = [s["id"]]
    if rater is not None:
        sql += " and m.rater = ?"
        args.append(rater)
    latest: dict[tuple[str, int], tuple[int, float]] = {}
    for gid, mark, metric, value in ws.db.execute(sql + " order by s.id", args):
        if metric in metrics:
            latest[(metric, gid)] = (1 if mark == "correct" else 0, value)
    out = []
    for metric in metrics:
        pairs = [(h, 1 if v >= 0.5 else 0) for (mt, _), (h, v) in latest.items() if mt == metric]
        if not pairs:
            continue
        human = [h for h, _ in pairs]
        auto = [a for _, a in pairs]
        out.append(
            {
                "metric": metric,
                "n": len(pairs),
                "agreement": sum(h == a for h, a in pairs) / len(pairs),
                "kappa": cohen_kappa(human, auto),
            }
        )
    return out


# -- blind pairwise rating ---------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (closed form; better than the normal one near 0 or 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class PairTask:
    item_id: int
    prompt: str
    model: str
    teacher: str
    generation_id: int
    teacher_generation_id: int
    a_is_teacher: bool
    seed: int
    a: str
    b: str


def _latest_generations(ws: Workspace, suite_id: int, model: str) -> dict[int, tuple[int, str]]:
    out = {}
    for item_id, gid, text in ws.db.execute(
        "select g.item_id, g.id, g.output from generations g join items i on i.id = g.item_id"
        " where i.suite_id = ? and g.model = ? order by g.id",
        [suite_id, model],
    ):
        out[item_id] = (gid, text)
    return out


def pairwise_queue(
    ws: Workspace, suite: str, model: str, *, teacher: str | None = None, seed: int = 0, rater: str | None = None
) -> list[PairTask]:
    """Items not yet rated by `rater`, each with teacher and model shown as A/B in a seeded order.

    The order of items and the A/B sides come from one `random.Random(seed)`, so a session is
    reproducible; each rating records its side, so the result never depends on re-deriving it.
    """
    rater = default_rater() if rater is None else rater
    teacher = teacher or ws.config.roles.teacher
    if model == teacher:
        raise BadInput("--model", f"'{model}' is the teacher; pick another model to rate against it")
    s = get_suite(ws, suite)
    mine, theirs = _latest_generations(ws, s["id"], model), _latest_generations(ws, s["id"], teacher)
    if not theirs:
        raise NotFound(
            f"no outputs of the teacher '{teacher}' on suite '{suite}'"
            f" (run `mirage generate --model {teacher} --suite {suite}`)"
        )
    done = {
        (g, t)
        for g, t in ws.db.execute(
            "select generation_id, teacher_generation_id from pairwise_ratings where rater = ?", [rater]
        )
    }
    prompts = dict(ws.db.execute("select id, prompt from items where suite_id = ?", [s["id"]]).fetchall())
    rng = random.Random(seed)
    common = sorted(set(mine) & set(theirs))
    rng.shuffle(common)
    tasks = []
    for item_id in common:
        (gid, out), (tgid, tout) = mine[item_id], theirs[item_id]
        a_is_teacher = rng.random() < 0.5  # drawn for every item so later items keep their sides
        if (gid, tgid) in done:
            continue
        a, b = (tout, out) if a_is_teacher else (out, tout)
        tasks.append(PairTask(item_id, prompts[item_id], model, teacher, gid, tgid, a_is_teacher, seed, a, b))
    return tasks


def record_rating(ws: Workspace, task: PairTask, choice: str, *, rater: str | None = None) -> str:
    """Store the rater's pick ('A', 'B' or 'tie'); returns the outcome for the model."""
    rater = default_rater() if rater is None else rater
    if choice not in ("A", "B", "tie"):
        raise BadInput("choice", f"unknown choice '{choice}' (A, B or tie)")
    if choice == "tie":
        outcome = "tie"
    else:
        outcome = "teacher" if (choice == "A") == task.a_is_teacher else "model"
    ws.db.execute(
        "insert into pairwise_ratings (item_id, model, teacher, generation_id, teacher_generation_id,"
        " a_is_teacher, seed, choice, outcome, rater, created_at) values (?,?,?,?,?,?,?,?,?,?,?)"
        " on conflict (generation_id, teacher_generation_id, rater) do update set"
        " choice = excluded.choice, outcome = excluded.outcome, a_is_teacher = excluded.a_is_teacher,"
        " seed = excluded.seed, created_at = excluded.created_at",
        [
            task.item_id,
            task.model,
            task.teacher,
            task.generation_id,
            task.teacher_generation_id,
            int(task.a_is_teacher),
            task.seed,
            choice,
            outcome,
            rater,
            now(),
        ],
    )
    return outcome


def pairwise_result(
    ws: Workspace, suite: str, model: str, *, teacher: str | None = None, rater: str | None = None
) -> dict:
    """Share of the model's outputs rated equal to or better than the teacher's, with a Wilson 95%."""
    teacher = teacher or ws.config.roles.teacher
    s = get_suite(ws, suite)
    sql = (
        "select r.outcome, count(*) from pairwise_ratings r join items i on i.id = r.item_id"
        " where i.suite_id = ? and r.model = ? and r.teacher = ?"
    )
    args: list = [s["id"], model, teacher]
    if rater is not None:
        sql += " and r.rater = ?"
        args.append(rater)
    counts = dict(ws.db.execute(sql + " group by r.outcome", args).fetchall())
    wins, ties, losses = counts.get("model", 0), counts.get("tie", 0), counts.get("teacher", 0)
    n = wins + ties + losses
    lo, hi = wilson_interval(wins + ties, n)
    return {
        "model": model,
        "teacher": teacher,
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "share": (wins + ties) / n if n else None,
        "ci_low": None if n == 0 else lo,
        "ci_high": None if n == 0 else hi,
    }


def suites_with_outputs(ws: Workspace) -> list[str]:
    return [
        r[0]
        for r in ws.db.execute(
            "select s.name from suites s where s.status = 'ready' and exists (select 1 from items i"
            " join generations g on g.item_id = i.id where i.suite_id = s.id) order by s.name"
        ).fetchall()
    ]


def open_view(
    ws: Workspace,
    suite: str | None = None,
    models: list[str] | None = None,
    *,
    data: str | None = None,
    rater: str | None = None,
) -> CompareView:
    """A compare view ready to page through (what `mirage compare` opens); says what to run if empty."""
    if not suite:
        have = suites_with_outputs(ws)
        if not have:
            if not ws.db.execute("select 1 from suites limit 1").fetchone():
                raise NotFound(
                    "no suites yet: import one with `mirage import suite FILE --name NAME`", title="Nothing to compare"
                )
            raise NotFound(
                "no outputs yet: run `mirage generate --model NAME --suite SUITE`"
                " for the base, imitation and teacher models",
                title="Nothing to compare",
            )
        suite = have[0]
    if not models_with_outputs(ws, suite):
        get_suite(ws, suite)  # a missing suite says so first
        raise NotFound(
            f"no outputs on suite '{suite}' yet: run `mirage generate --model NAME --suite {suite}`",
            title="Nothing to compare",
        )
    view = CompareView(ws, suite, models or None, data=data, rater=rater)
    view.style_similarity()  # computed here, in the loading thread, so a sort never waits on it
    return view


# -- analysis ----------------------------------------------------------------------------------------
# The Analysis screen's views, in order: (id, title). Each exports on its own.
ANALYSIS_VIEWS = (
    ("table1", "Table 1 — factuality"),
    ("table2", "Table 2 — style"),
    ("gap", "Gap closed vs coverage"),
    ("sweep", "Metric vs imitation tokens"),
    ("human", "Human checks"),
)


def suites_with_scores(ws: Workspace) -> list[str]:
    return [
        r[0]
        for r in ws.db.execute(
            "select s.name from suites s where s.status = 'ready' and exists (select 1 from items i"
            " join generations g on g.item_id = i.id join scores sc on sc.generation_id = g.id"
            " where i.suite_id = s.id) order by s.name"
        ).fetchall()
    ]


def analysis(ws: Workspace, suite: str | None = None, *, rater: str | None = None) -> dict:
    """The study's figures for one suite: core.report's numbers (Table 1 and 2 with bootstrap
    intervals, gap closed with coverage support, the token sweep) plus the human checks."""
    from core.analysis import report

    if not suite:
        have = suites_with_scores(ws)
        if not have:
            raise NotFound(
                "no scores yet: run `mirage score --suite NAME` after `mirage generate`", title="Nothing to analyse"
            )
        suite = have[0]
    rep = report.build(ws, suite)
    teacher = rep.get("teacher")
    rep["human"] = {
        "rater": rater,
        "agreement": agreement(ws, suite, rater=rater),
        "pairwise": [
            r
            for r in (
                pairwise_result(ws, suite, m, teacher=teacher, rater=rater)
                for m in rep["models"]
                if teacher and m != teacher
            )
            if r["n"]
        ],
    }
    return rep


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def view_tables(rep: dict, view: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of one Analysis view, formatted as the report formats them."""
    from core.analysis import report

    if view == "human":
        h = rep.get("human") or {}
        agree = [
            [r["metric"], str(r["n"]), f"{r['agreement']:.1%}", "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}"]
            for r in h.get("agreement", [])
        ]
        pw = [
            [
                r["model"],
                r["teacher"],
                str(r["n"]),
                f"{r['share']:.1%}",
                f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]",
                f"{r['wins']}/{r['ties']}/{r['losses']}",
            ]
            for r in h.get("pairwise", [])
        ]
        return [
            (
                "Human marks against automatic metrics",
                "Unsure marks left out; kappa is Cohen's.",
                ["metric", "n", "agreement", "kappa"],
                agree,
            ),
            (
                "Blind pairwise rating against the teacher",
                "Share of outputs rated equal to or better than the teacher's, Wilson 95% interval.",
                ["model", "teacher", "n", "≥ teacher", "95% interval", "better/tie/worse"],
                pw,
            ),
        ]
    prefix = {
        "table1": "Table 1",
        "table2": "Table 2",
        "gap": "Gap closed",
        "sweep": "Metric against imitation tokens",
    }.get(view)
    if prefix is None:
        raise BadInput("view", f"unknown view '{view}' (known: {', '.join(v for v, _ in ANALYSIS_VIEWS)})")
    out = []
    for title, note, table in report._sections(rep):
        if title.startswith(prefix):
            head, rows = table if table else ([], [])
            out.append((title, note, head, rows))
    return out


def view_data(rep: dict, view: str):
    """The JSON of one Analysis view (the same records `mirage report --format json` holds)."""
    keys = {
        "table1": ["table1"],
        "table2": ["table2"],
        "gap": ["gap_closed", "gap_vs_support"],
        "sweep": ["sweep"],
        "human": ["human"],
    }[view]
    return {"suite": rep["suite"], "view": view, **{k: rep.get(k) for k in keys}}


def export_view(rep: dict, view: str, fmt: str = "md") -> str:
    if view not in dict(ANALYSIS_VIEWS):
        raise BadInput("view", f"unknown view '{view}' (known: {', '.join(v for v, _ in ANALYSIS_VIEWS)})")
    if fmt == "json":
        return json.dumps(view_data(rep, view), indent=2, ensure_ascii=False, default=str)
    if fmt != "md":
        raise BadInput("format", f"unknown export format '{fmt}' (md or json)")
    lines = [f"# mirage — suite `{rep['suite']}`: {dict(ANALYSIS_VIEWS)[view]}", ""]
    for title, note, head, rows in view_tables(rep, view):
        lines += [f"## {title}", "", note, ""]
        lines += (_md_table(head, rows) if rows else ["(nothing yet)"]) + [""]
    return "\n".join(lines)


def save_export(ws: Workspace, rep: dict, view: str, fmt: str = "md") -> str:
    """Write the view to `artifacts/exports/<suite>-<view>.<md|json>`; returns the path."""
    text = export_view(rep, view, fmt)
    path = ws.artifact_dir("exports") / f"{rep['suite']}-{view}.{fmt}"
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)
