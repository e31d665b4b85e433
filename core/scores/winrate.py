"""Win rates against the teacher from pairwise judge preferences, raw and length-controlled.

The length-controlled win rate is AlpacaEval 2's (Dubois et al. 2024, alpaca_eval/metrics/
glm_winrate.py): fit a logistic GLM of the preference on the standardised length difference,
then predict the preference with the length difference set to 0 and average. The formula is its
`length_controlled_minimal` one, `np.tanh(std_delta_len) + not_gamed_baseline - 1` (a tanh
length term and an intercept): its default `length_controlled_v1` adds a per-instruction
difficulty that exists only for AlpacaEval's own 805 instructions (a table it downloads from the
hub at run time) and a regularisation towards its leaderboard's gamed baselines, neither of
which applies to a user's suite. The fit is restated here with scikit-learn, with the package's
settings (L1, liblinear, no separate intercept, 5-fold GroupKFold over items choosing C by the
continuous log loss, random_state 123), because alpaca-eval itself cannot run offline and is a
heavy dependency; tests/test_judge_winrate.py checks the two agree on the same annotations.
"""

from __future__ import annotations

import warnings

import numpy as np

N_SPLITS = 5
MIN_ITEMS = N_SPLITS  # GroupKFold needs a group per fold


def _continuous_log_loss(y_true, y_pred, true_prob):
    # sklearn scorers see binary labels; the duplicated rows carry the real probability.
    p = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return -np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))


def length_controlled_winrate(
    preferences: list[float], model_lengths: list[int], baseline_lengths: list[int]
) -> float | None:
    """The length-controlled win rate in [0, 1], or None with fewer than MIN_ITEMS items.

    `preferences[i]`: how much the model's output beats the baseline's on item i (1 win, 0.5 tie,
    0 loss; averages of several judgements allowed); lengths in characters, as AlpacaEval's.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    pref = np.asarray(preferences, dtype=float)
    if len(pref) < MIN_ITEMS:
        return None
    if np.all(pref == pref[0]):
        # Nothing for length to explain: the fit's intercept is the preference itself (and
        # liblinear, given a class with no weight, would return 0.5 for an all-loss record).
        return float(pref[0])
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    sd = delta.std(ddof=1)
    std_delta = delta / sd if sd > 0 else np.zeros_like(delta)
    x = np.column_stack([np.tanh(std_delta), np.ones_like(std_delta)])
    # Targets that are probabilities: each item twice, label 1 weighted p and label 0 weighted 1 - p.
    n = len(pref)
    x2 = np.vstack([x, x])
    y2 = np.concatenate([np.ones(n), np.zeros(n)])
    prob = np.concatenate([pref, 1 - pref])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    # penalty= is deprecated from scikit-learn 1.8 on; its replacement does not exist in the
    # releases pyproject allows, so the warning is silenced rather than the call changed.
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scorer = make_scorer(
            _continuous_log_loss, response_method="predict_proba", greater_is_better=False
        ).set_score_request(true_prob=True)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=N_SPLITS),
            scoring=scorer,
            random_state=123,
            dual=False,
            penalty="l1",
            solver="liblinear",
            fit_intercept=False,
        )
        model.set_fit_request(sample_weight=True)
        model.fit(x2, y2, sample_weight=prob, groups=groups, true_prob=prob)
    x_test = np.column_stack([np.zeros(n), np.ones(n)])  # no length difference
    return float(model.predict_proba(x_test)[:, 1].mean())
