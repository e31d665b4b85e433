"""Win rates against the teacher: AlpacaEval 2's length-controlled win rate, checked against the package."""

from __future__ import annotations

import numpy as np
import pytest

from core.scores.winrate import length_controlled_winrate


def _annotations(n=80, seed=0):
    # A judge that only likes length, and a model that is usually longer than the teacher.
    rng = np.random.default_rng(seed)
    teacher_len = rng.integers(50, 3000, n)
    model_len = (teacher_len * rng.uniform(0.6, 2.5, n)).astype(int)
    longer = model_len > teacher_len
    pref = np.where(longer, rng.choice([1.0, 0.75, 0.5], n), rng.choice([0.0, 0.25, 0.5], n))
    return pref, model_len, teacher_len


def _import_alpaca_eval_glm():
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("alpaca_eval") is None:
        pytest.skip("alpaca-eval is not installed (the test extra has it)")
    if importlib.util.find_spec("pkg_resources") is None:
        # alpaca-eval 0.6 imports pkg_resources (gone from setuptools >= 81) for two version
        # helpers the length-controlled fit never calls; packaging's parser stands in for it.
        from importlib.metadata import version

        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda name: types.SimpleNamespace(version=version(name))
        sys.modules["pkg_resources"] = shim
    import alpaca_eval.metrics.glm_winrate as glm

    return glm


def test_length_controlled_winrate_removes_the_length_advantage():
    pref, ml, tl = _annotations()
    lc = length_controlled_winrate(list(pref), list(ml), list(tl))
    raw = pref.mean()
    assert raw > 0.6 and abs(lc - 0.5) < abs(raw - 0.5) - 0.05  # most of the length advantage is gone
    # the same preferences with lengths that carry no information: LC ≈ raw
    flat = length_controlled_winrate(list(pref), [100] * len(pref), [100] * len(pref))
    assert flat == pytest.approx(raw, abs=0.02)
    assert length_controlled_winrate([1.0, 0.0], [1, 2], [2, 1]) is None  # too few items for 5 folds
    lengths = [10, 20, 30, 40, 50, 60]
    for constant in (0.0, 0.5, 1.0):  # every item lost / tied / won
        assert length_controlled_winrate([constant] * 6, lengths, [15] * 6) == constant


def test_matches_alpaca_eval_on_the_same_annotations(tmp_path, monkeypatch):
    glm = _import_alpaca_eval_glm()
    pref, ml, tl = _annotations(n=120, seed=3)
    rng = np.random.default_rng(1)

    def text(n):
        return "".join(rng.choice(list("abcde "), int(n)))

    annotations = [
        {
            "index": i,
            "instruction": f"q{i}",
            "output_1": text(tl[i]),  # the baseline: AlpacaEval's output_1 / generator_1
            "output_2": text(ml[i]),
            "generator_1": "teacher",
            "generator_2": "imitation",
            "annotator": "judge",
            "preference": 1 + pref[i],  # AlpacaEval: 1 baseline wins, 2 model wins
        }
        for i in range(len(pref))
    ]
    # alpaca-eval downloads its instruction-difficulty table from the hub before any fit; the
    # minimal formula never reads it, so a local table of zeros stands in for the download.
    table = tmp_path / "df_gamed.csv"
    table.write_text("model,index,instruction_difficulty\n" + "".join(f"x,{i},0.0\n" for i in range(len(pref))))
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(table))
    theirs = glm.get_length_controlled_winrate(
        annotations, glm_name="length_controlled_minimal", save_weights_dir=None, is_warn_extreme_changes=False
    )
    ours = length_controlled_winrate(
        list(pref), [len(a["output_2"]) for a in annotations], [len(a["output_1"]) for a in annotations]
    )
    assert theirs["win_rate"] / 100 == pytest.approx(pref.mean())
    print(
        f"win rate {theirs['win_rate']:.2f}; LC alpaca-eval {theirs['length_controlled_winrate']:.4f}, mirage {100 * ours:.4f}"
    )
    assert ours == pytest.approx(theirs["length_controlled_winrate"] / 100, abs=1e-6)
