"""The line every benchmark prints per measurement, which `benchmarks/run.py` passes on:
{"name", "value", "unit", "baseline", "baseline_value", "ratio", ...extra keys}, one JSON object.

Imported as `from lines import emit`: a benchmark runs as a script, so this folder is on its path.
"""

from __future__ import annotations

import json

_AUTO = object()


def emit(name, value, unit, baseline=None, baseline_value=None, ratio=_AUTO, *, digits=4, **extra) -> None:
    """Print one measurement; `ratio` defaults to value / baseline_value (None without a baseline)."""
    if ratio is _AUTO:
        ratio = value / baseline_value if baseline_value else None
    print(
        json.dumps(
            {
                "name": name,
                "value": round(value, digits),
                "unit": unit,
                "baseline": baseline,
                "baseline_value": None if baseline_value is None else round(baseline_value, digits),
                "ratio": None if ratio is None else round(ratio, 4),
                **extra,
            }
        ),
        flush=True,
    )
