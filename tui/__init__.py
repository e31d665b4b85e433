"""mirage's Textual app: screens and widgets that call `core` and hold no logic of their own."""

import time as _time

# Recorded at first import so start-up can be measured from inside (see benchmarks/bench_tui_start.py).
IMPORTED_AT = _time.perf_counter()
