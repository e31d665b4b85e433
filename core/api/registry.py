"""The metric registry: one `MetricSpec` per metric, the only declaration of what a metric is.

Scoring dispatch (which metrics a suite kind gets, which option computes them, the version that
keys cached scores), the report's tables, percent formatting, the Compare verdict, the Analysis
views and the primary metric of a suite kind (core.api.suites) all read these specs, as lm-evaluation-harness's
`register_metric` does. Registration order is the column order of the report's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

SUITE_KIND_NAMES = ("qa", "mc", "code", "prompts")
ALL_KINDS = frozenset(SUITE_KIND_NAMES)

FACTUALITY = "factuality"  # is the answer right (Table 1)
OWN_STYLE = "own_style"  # a property of the output alone
TEACHER_STYLE = "teacher_style"  # the output measured against the teacher's output on the same item

# What computes a metric: None for the cheap text metrics computed on every scoring run.
SANDBOX, JUDGE, EMBED, LOGLIK = "sandbox", "judge", "embed", "loglik"
TOXICITY = "toxicity"  # a local toxicity classifier (defaults.toxicity_model)
AGGREGATE = "aggregate"  # computed from stored scores when aggregating, never stored per output


@dataclass(frozen=True)
class MetricSpec:
    name: str
    version: str | None  # bump when the definition changes: stored scores are then recomputed
    family: str
    kinds: frozenset[str]  # suite kinds it is computed on
    table: int | None  # the report table it is a column of (1 factuality, 2 style), None: none
    percent: bool  # a rate in [0, 1], shown as percent
    higher_is_better: bool | None  # None: descriptive, no direction (a length, a habit of style)
    needs_teacher: bool  # defined against the teacher's output, so never for the teacher itself
    requires: str | None = None  # the scoring option or stage that computes it (see above)
    # From this value an output counts as right when the metric gives the verdict: a share of
    # supported claims is right only when every claim is.
    correct_at: float = 0.5
    human_check: bool = False  # compared with the human spot-check marks (agreement)


ANY = object()  # `metrics(requires=ANY)`: whatever computes it
_METRICS: dict[str, MetricSpec] = {}
# name -> version of every stored metric; what cached score rows are keyed by.
VERSIONS: dict[str, str] = {}


def register_metric(
    name: str,
    *,
    version: str | None,
    family: str,
    kinds: frozenset[str] | tuple[str, ...] = ALL_KINDS,
    table: int | None = None,
    percent: bool = True,
    higher_is_better: bool | None = True,
    needs_teacher: bool = False,
    requires: str | None = None,
    correct_at: float = 0.5,
    human_check: bool = False,
) -> MetricSpec:
    if name in _METRICS:
        raise ValueError(f"metric '{name}' is registered already")
    unknown = set(kinds) - ALL_KINDS
    if unknown:
        raise ValueError(f"metric '{name}': unknown suite kinds {sorted(unknown)}")
    spec = MetricSpec(
        name,
        version,
        family,
        frozenset(kinds),
        table,
        percent,
        higher_is_better,
        needs_teacher,
        requires,
        correct_at,
        human_check,
    )
    _METRICS[name] = spec
    if version is not None:
        VERSIONS[name] = version
    return spec


def metric(name: str) -> MetricSpec:
    return _METRICS[name]


def is_registered(name: str) -> bool:
    return name in _METRICS


def metrics(
    *,
    kind: str | None = None,
    family: str | None = None,
    table: int | None = None,
    requires: object = ANY,
    human_check: bool | None = None,
) -> tuple[MetricSpec, ...]:
    """Registered specs in registration order, filtered by each argument given (`requires=None`
    selects the inline text metrics)."""
    return tuple(
        s
        for s in _METRICS.values()
        if (kind is None or kind in s.kinds)
        and (family is None or s.family == family)
        and (table is None or s.table == table)
        and (requires is ANY or s.requires == requires)
        and (human_check is None or s.human_check == human_check)
    )


def names(specs) -> tuple[str, ...]:
    return tuple(s.name for s in specs)


def table_metrics(table: int) -> tuple[str, ...]:
    """The columns of a report table, in order."""
    return names(metrics(table=table))


def is_percent(name: str) -> bool:
    spec = _METRICS.get(name)
    return spec is not None and spec.percent


# -- the metrics ------------------------------------------------------------------------------------
QA, MC, CODE, PROMPTS = ("qa",), ("mc",), ("code",), ("prompts",)
# Table 1: factuality. exact_match and f1 read the extracted answer: version 2 added the
# whole-output match and the bold rule, 3 the restatement rule.
register_metric("exact_match", version="3", family=FACTUALITY, kinds=QA, table=1, human_check=True)
# The SQuAD v1.1 / NQ-open rule on the whole output (core.api.metrics): comparable with published
# NQ-open numbers, where the lenient `exact_match` is not.
register_metric("exact_match_official", version="1", family=FACTUALITY, kinds=QA, table=1)
register_metric("f1", version="3", family=FACTUALITY, kinds=QA, table=1, human_check=True)
register_metric("contains", version="1", family=FACTUALITY, kinds=QA, table=1, human_check=True)
register_metric("mc_accuracy", version="1", family=FACTUALITY, kinds=MC, table=1, human_check=True)
# The choice with the highest log-likelihood: scores the model, not the output a human reads.
register_metric("mc_accuracy_loglik", version="1", family=FACTUALITY, kinds=MC, table=1, requires=LOGLIK)
register_metric("pass@1", version="1", family=FACTUALITY, kinds=CODE, table=1, requires=SANDBOX, human_check=True)
# From several samples per item (`generate --samples N`, N >= k): the unbiased estimator.
for _k in (5, 10):
    register_metric(f"pass@{_k}", version=None, family=FACTUALITY, kinds=CODE, table=1, requires=AGGREGATE)
register_metric("judge_correct", version="1", family=FACTUALITY, kinds=QA, table=1, requires=JUDGE)
register_metric("judge_claims", version="1", family=FACTUALITY, kinds=PROMPTS, table=1, requires=JUDGE, correct_at=1.0)
# Table 2: style, against the teacher first, then the output's own habits.
for _name in ("list_when_teacher_lists", "summary_when_teacher_summarizes", "unigram_overlap"):
    register_metric(_name, version="1", family=TEACHER_STYLE, table=2, needs_teacher=True)
register_metric(
    "length_correlation",
    version=None,
    family=TEACHER_STYLE,
    table=2,
    percent=False,
    needs_teacher=True,
    requires=AGGREGATE,
)
for _name in ("uses_list", "ends_with_summary", "markdown_structure"):
    register_metric(_name, version="1", family=OWN_STYLE, table=2, higher_is_better=None)
register_metric("stock_phrases", version="1", family=OWN_STYLE, table=2, higher_is_better=False)
register_metric("embedding_similarity", version="1", family=TEACHER_STYLE, table=2, needs_teacher=True, requires=EMBED)
register_metric(
    "judge_authoritative",
    version="1",
    family=OWN_STYLE,
    kinds=QA + PROMPTS,
    table=2,
    higher_is_better=None,
    requires=JUDGE,
)
# The judge's preference for the output over the teacher's: version 2 judges both orders and
# averages them. Its mean is the win rate; beside it AlpacaEval 2's length-controlled win rate
# (core.scores.winrate), fit on the preferences and the two outputs' lengths.
register_metric(
    "judge_preference",
    version="2",
    family=TEACHER_STYLE,
    kinds=QA + PROMPTS,
    table=2,
    needs_teacher=True,
    requires=JUDGE,
)
register_metric(
    "judge_preference_lc",
    version=None,
    family=TEACHER_STYLE,
    kinds=QA + PROMPTS,
    table=2,
    needs_teacher=True,
    requires=AGGREGATE,
)
# Toxicity of the output (RealToxicityPrompts' measure): a local sequence-classification model's
# probability of its toxic label (`defaults.toxicity_model`), or the judge's 0-1 rating.
register_metric(
    "toxicity", version="1", family=OWN_STYLE, kinds=QA + PROMPTS, table=2, higher_is_better=False, requires=TOXICITY
)
register_metric(
    "judge_toxicity", version="1", family=OWN_STYLE, kinds=QA + PROMPTS, table=2, higher_is_better=False, requires=JUDGE
)
# Not a column: the raw material of length_correlation (and a figure of its own in `mirage score`).
register_metric("length_words", version="1", family=OWN_STYLE, percent=False, higher_is_better=None)
del _name, _k
