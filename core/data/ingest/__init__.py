"""Importers: imitation data, evaluation suites and recorded outputs, streamed into the workspace.

Every importer is a generator that yields `Progress` and returns a summary dict. Files are read
record by record (`sources`: JSONL lines, JSON-array items through ijson, CSV rows, Parquet /
`datasets` batches) and written in batches, so memory does not grow with the file.

All-or-nothing without holding the write lock for the whole import (`staging`): rows are written
in short transactions under a *staging* row (a `datasets` / `suites` row with status 'importing'
and a private name) that every reader ignores. At the end one short transaction makes them
visible (renames the staging row, or for an append moves its rows onto the existing one). On any
failure the staging row and its rows are deleted. A crash leaves a staging row whose process is
gone; the next import removes it. Readers never see a half-imported file.

Full-text index: the FTS triggers skip staged rows (a trigger per row makes FTS5 flush per row,
many times slower; m011_ingest_fts_bulk). A suite's items are indexed chunk by chunk by one bulk
`insert ... select` in the chunk's own transaction. A dataset's examples are published with their
ids in `fts_backlog` and indexed by core.data.search after the import (m060_ingest_fts_backlog):
tokenising the text is the import's largest cost, and nothing needs the index until a search,
which finishes the backlog first.

Pipeline of a data import (`pipeline`), each stage a chunk apart: the main thread reads (hashing
the file as it goes), parses and normalises (`normalise`); a second thread counts tokens
(`tokens`: numpy, mostly without the GIL) and hashes the rows; a third writes them, one multi-row
statement per chunk (SQLite runs without the GIL). On 2 cores the parser is the critical path and
every stage's time under the GIL is its time too. `python benchmarks/bench_import.py --ablations
...` times the import with one of these measures undone; `staging.bulk_writes` lists the settings
an import changes while it runs.
"""

from core.data.ingest.outputs import import_outputs
from core.data.ingest.pipeline import import_data
from core.data.ingest.suites import import_suite
from core.data.ingest.tokens import token_counter

__all__ = ["import_data", "import_outputs", "import_suite", "token_counter"]
