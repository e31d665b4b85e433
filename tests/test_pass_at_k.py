"""pass@k: the Codex paper's unbiased estimator over several samples per item (`generate --samples`)."""

from __future__ import annotations

import hashlib
import json
from math import comb

import pytest
from fake_openai import FakeOpenAI

from core.api.metrics import pass_at_k
from core.errors import ModelError
from core.models import generation
from core.models import registry as models
from core.runtime import progress
from core.scores import aggregate, scoring
from core.store.workspace import dumps, now
from tests.test_scoring import add_suite

PROMPT = 'def add(a, b):\n    """Add."""\n'
TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n"


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_estimator_equals_the_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)
    with pytest.raises(ValueError):
        pass_at_k(n, 0, n + 1)


def _add_samples(ws, model, item_id, outputs):
    if not ws.db.execute("select 1 from models where name = ?", [model]).fetchone():
        ws.db.execute(
            "insert into models (name, kind, spec, created_at) values (?, 'recorded', '{}', ?)", [model, now()]
        )
    for seed, out in enumerate(outputs):
        decoding = {"max_new_tokens": 64, "temperature": 0.8, "stop": [], "style": "completion", "seed": seed}
        ws.db.execute(
            "insert into generations (model, fingerprint, item_id, prompt, decoding, cache_key, output, created_at)"
            " values (?, 'fp', ?, ?, ?, ?, ?, ?)",
            [
                model,
                item_id,
                PROMPT,
                dumps(decoding),
                hashlib.sha256(f"{model}{item_id}{seed}".encode()).hexdigest(),
                out,
                now(),
            ],
        )


def test_pass_at_k_from_sampled_outputs_run_in_the_sandbox(ws):
    add_suite(ws, "code", "code", [{"prompt": PROMPT, "tests": TESTS, "entry_point": "add"}] * 2)
    ids = [r[0] for r in ws.db.execute("select id from items order by idx")]
    right, wrong = "    return a + b\n", "    return a - b\n"
    _add_samples(ws, "m", ids[0], [right] * 3 + [wrong] * 7)  # 3 of 10 pass
    _add_samples(ws, "m", ids[1], [wrong] * 9 + [right])  # 1 of 10 pass; the latest one passes
    counts = progress.run(scoring.score_suite(ws, "code", teacher=None))
    assert counts["computed"] >= 20  # every sample ran its tests, not only the latest
    recs = {r["metric"]: r for r in aggregate.aggregate(ws, "code", teacher=None, n_boot=50) if r["task"] == "all"}
    assert recs["pass@1"]["value"] == 0.5  # the latest output of each item, as before
    expect5 = ((1 - comb(7, 5) / comb(10, 5)) + (1 - comb(9, 5) / comb(10, 5))) / 2
    assert recs["pass@5"]["value"] == pytest.approx(expect5) and recs["pass@5"]["n"] == 2
    assert recs["pass@10"]["value"] == 1.0
    again = progress.run(scoring.score_suite(ws, "code", teacher=None))
    assert again["computed"] == 0


def test_generate_samples_stores_one_output_per_seed(ws):
    add_suite(ws, "code", "code", [{"prompt": PROMPT, "tests": TESTS, "entry_point": "add"}])
    srv = FakeOpenAI().start()
    try:
        models.register(ws, "ep", "openai", {"base_url": srv.base_url, "model": "fake-model"})
        with pytest.raises(ModelError, match="--temperature"):
            progress.run(generation.generate(ws, "ep", "code", samples=3))
        s = progress.run(generation.generate(ws, "ep", "code", samples=3, temperature=0.8, seed=7))
        assert s["items"] == 1 and s["samples"] == 3 and s["generated"] == 3
        seeds = sorted(json.loads(r[0])["seed"] for r in ws.db.execute("select decoding from generations"))
        assert seeds == [7, 8, 9]
        assert progress.run(generation.generate(ws, "ep", "code", samples=3, temperature=0.8, seed=7))["generated"] == 0
    finally:
        srv.stop()
