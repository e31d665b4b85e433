"""The Compare view: a suite × 2–4 models side by side, with verdicts, style figures and filters.

The Compare screen is a thin view over `CompareView`: everything it shows (verdicts, style figures,
filters, sorts, the next disagreement, gold-answer spans) is computed here, once per view, into
flat arrays so that moving between items is an index lookup rather than a query.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from core.analysis.marks import default_rater, set_mark
from core.analysis.roles import default_models, roles_of
from core.api import registry
from core.api.metrics import unigram_overlap
from core.api.suites import CORRECT, UNSCORED, WRONG, suite_kind
from core.coverage import compute as coverage
from core.data.datasets import get_suite, models_with_outputs
from core.errors import BadInput, NotFound
from core.scores import decodings
from core.scores.outputs import recorded_roles, teacher_clause
from core.store.db import select_in
from core.store.workspace import Workspace

VERDICT_NAME = {CORRECT: "correct", WRONG: "wrong", UNSCORED: "unscored"}
VERDICT_SYMBOL = {CORRECT: "✓", WRONG: "✗", UNSCORED: "?"}
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
# The teacher-style figures a pane shows, the overlap first: it is the one the style sort uses.
STYLE_METRICS = ("unigram_overlap",) + tuple(
    s.name for s in registry.metrics(family=registry.TEACHER_STYLE, requires=None) if s.name != "unigram_overlap"
)


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
    # Another tool's own per-sample scores of this output (`mirage import results`): tool:metric -> value.
    tool_scores: dict[str, float] = field(default_factory=dict)

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
        # The teacher the suite's style scores were measured against (as `report` reads them): the
        # one it was last scored with, else the configured one. Only its scores are shown.
        self.teacher = recorded_roles(ws, suite).get("teacher") or ws.config.roles.teacher or None
        if self.teacher and self.roles.get(self.teacher) != "teacher":
            self.roles = {m: r for m, r in self.roles.items() if r != "teacher"}
            self.roles[self.teacher] = "teacher"
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
        # One decoding per model (core.scores.decodings), its latest output per item: what the
        # scores are about, never a mix of two decodings.
        ids, self.decodings = decodings.select(self.ws, self.suite_row["id"], self.models)
        row_of = {m: k for k, m in enumerate(self.models)}
        for gid, model, item_id, out in select_in(
            self.ws.db,
            "select g.id, g.model, g.item_id, g.output from generations g where g.id in ({in})",
            ids,
        ):
            k, p = row_of[model], self.pos_of_item.get(item_id)
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
        cond, params = teacher_clause(self.teacher, "s.teacher")
        for gid, metric, value in self.ws.db.execute(
            f"select s.generation_id, s.metric, s.value from scores s"
            f" join generations g on g.id = s.generation_id join items i on i.id = g.item_id"
            f" where i.suite_id = ? and g.model in ({placeholders}) and {cond} order by s.id",
            [self.suite_row["id"], *self.models, *params],
        ):
            kp = gid_pos.get(gid)
            if kp is None:
                continue
            arr = values.get(metric)
            if arr is None:
                arr = values[metric] = np.full((m, self.n), np.nan)
            arr[kp] = np.nan if value is None else value
        self.metrics = values
        from core.analysis.imported import imported_values

        self.tool_scores = imported_values(self.ws, list(gid_pos))
        self.kind = suite_kind(self.suite_row["kind"])
        if verdict_metric is None:
            verdict_metric = self.kind.verdict_metric(values)
        elif verdict_metric not in values and values:
            raise BadInput(
                "--metric", f"no '{verdict_metric}' scores on suite '{self.suite}' (have: {', '.join(sorted(values))})"
            )
        self.verdict_metric = verdict_metric
        self.verdicts = np.full((m, self.n), UNSCORED, dtype=np.int8)
        if verdict_metric:
            v = values[verdict_metric]
            cut = registry.metric(verdict_metric).correct_at  # SuiteKind.verdict's rule, on the arrays
            with np.errstate(invalid="ignore"):
                self.verdicts[v >= cut] = CORRECT
                self.verdicts[v < cut] = WRONG
        self.style_metrics = [x for x in STYLE_METRICS if x in values]
        self._style_similarity = None

    def _load_marks(self) -> None:
        self.marks: dict[int, str] = {}
        gids = [int(g) for g in self.gen_ids.ravel() if g >= 0]
        sql = "select generation_id, mark from marks where rater = ? and generation_id in ({in})"
        for gid, mark in select_in(self.ws.db, sql, gids, before=[self.rater]):
            self.marks[gid] = mark

    def _load_support(self) -> None:
        self.support = np.full(self.n, np.nan)
        self.support_note = "no coverage: run `mirage coverage --data NAME --suite " + self.suite + "`"
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
            # Any non-teacher output the suite kind's rule finds convincing but wrong, with the
            # view's style similarity (computed where not scored yet) as its overlap.
            sim = self.style_similarity()
            hit = np.zeros(self.n, bool)
            for k in range(len(self.models)):
                if k == self.teacher_row or self.verdict_metric is None:
                    continue
                for p in np.nonzero(v[k] == WRONG)[0]:  # only a wrong output can be convincing but wrong
                    values = {metric: float(arr[k, p]) for metric, arr in self.metrics.items()}
                    values["unigram_overlap"] = float(sim[k, p])
                    hit[p] |= self.kind.convincing_but_wrong(values, metric=self.verdict_metric)
            return hit
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
                    tool_scores={m: v for m, v in sorted(self.tool_scores.get(gid, {}).items()) if v is not None},
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


def _latest_coverage_data(ws: Workspace, suite: str) -> str | None:
    """The imitation dataset whose coverage of this suite was computed last, if any."""
    try:
        runs = coverage.list_runs(ws)  # newest first
    except Exception:  # coverage tables not there yet
        return None
    return next((r["data"] for r in runs if r.get("suite") == suite), None)


def item_neighbours(ws: Workspace, suite: str, item_id: int, *, data: str | None = None, k: int = 5) -> list[dict]:
    """The item's nearest imitation examples from the coverage results ([] when not computed)."""
    data = data or _latest_coverage_data(ws, suite)
    if not data:
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


def suites_with_outputs(ws: Workspace) -> list[str]:
    return [
        r[0]
        for r in ws.db.execute(
            "select s.name from suites s where s.status = 'ready' and exists (select 1 from items i"
            " join generations g on g.item_id = i.id where i.suite_id = s.id) order by s.name"
        ).fetchall()
    ]


def default_suite(ws: Workspace, have: list[str]) -> str:
    """Which of `have` (non-empty) a screen opened without a suite shows.

    The suite the latest coverage run measured, where the study is complete (gap closed has its
    coverage support: after the demo, `qa`); else the suite scored most recently; else the first by
    name. The first by name was `code` after the demo, where the README's geography row is not.
    """
    for sql in (
        "select suite_id from coverage_runs order by id desc",
        "select i.suite_id from scores sc join generations g on g.id = sc.generation_id"
        " join items i on i.id = g.item_id order by sc.id desc limit 1",
    ):
        ids = [r[0] for r in ws.db.execute(sql).fetchall()]
        names = {
            r[0]: r[1]
            for r in ws.db.execute(
                f"select id, name from suites where id in ({','.join('?' * len(ids))})", ids
            ).fetchall()
        }
        for sid in ids:
            if names.get(sid) in have:
                return names[sid]
    return have[0]


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
        suite = default_suite(ws, have)
    if not models_with_outputs(ws, suite):
        get_suite(ws, suite)  # a missing suite says so first
        raise NotFound(
            f"no outputs on suite '{suite}' yet: run `mirage generate --model NAME --suite {suite}`",
            title="Nothing to compare",
        )
    view = CompareView(ws, suite, models or None, data=data, rater=rater)
    view.style_similarity()  # computed here, in the loading thread, so a sort never waits on it
    return view
