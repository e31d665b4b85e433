"""Importing sqlite-utils without the pandas (and, for the TUI, numpy) it pulls in.

sqlite-utils imports pandas and numpy whenever they are installed (`datasets` installs both) only
to map their scalar types to column types; mirage never hands it such values. Those two imports
were ~0.22 s (pandas) of every CLI command and ~0.5 s (both) of a ~1 s TUI start-up
(`python -X importtime`). This module has no imports of its own beyond the standard library.
"""

from __future__ import annotations

import sys
import threading

# Held while modules are hidden. The TUI also holds it around the imports it makes on its own
# (screen modules, the restore), so no thread ever sees a module hidden.
IMPORT_LOCK = threading.RLock()


def import_sqlite_utils(hide: tuple[str, ...] = ("pandas",)) -> None:
    """Import sqlite-utils with the modules in `hide` (not yet imported) made unimportable meanwhile."""
    with IMPORT_LOCK:
        if "sqlite_utils" in sys.modules:
            return
        hidden = [m for m in hide if m not in sys.modules]
        for m in hidden:
            sys.modules[m] = None  # type: ignore[assignment]  # makes `import m` raise ImportError
        try:
            import sqlite_utils  # noqa: F401
        finally:
            for m in hidden:
                if sys.modules.get(m, 0) is None:
                    del sys.modules[m]


def restore_sqlite_utils_types() -> None:
    """Give sqlite-utils the numpy/pandas column-type mappings that a hidden import skipped."""
    import_sqlite_utils()  # once it has returned, nothing is ever hidden again: no lock needed
    import sqlite_utils.db as sdb

    if sdb.np is None:
        try:
            import numpy as np
        except ImportError:
            return
        sdb.np = np
        sdb.COLUMN_TYPE_MAPPING.update(
            {
                np.int8: "INTEGER",
                np.int16: "INTEGER",
                np.int32: "INTEGER",
                np.int64: "INTEGER",
                np.uint8: "INTEGER",
                np.uint16: "INTEGER",
                np.uint32: "INTEGER",
                np.uint64: "INTEGER",
                np.float16: "REAL",
                np.float32: "REAL",
                np.float64: "REAL",
            }
        )
    if sdb.pd is None:
        try:
            import pandas as pd
        except ImportError:
            return
        sdb.pd = pd
        sdb.COLUMN_TYPE_MAPPING.update({pd.Timestamp: "TEXT"})
