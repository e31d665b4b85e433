"""Three writer processes (two importers, a job-event writer) and a reader share one workspace for
30 s: nobody may see "database is locked", and every one of them must get work done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECONDS = 30

CHILD = r"""
import json, sys, time, traceback
from core.store.workspace import Workspace
from core.runtime import progress

role, root, seconds, data = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ws = Workspace.open(root)
done, errors = 0, []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        if role == "import-data":
            from core.data.ingest import import_data
            progress.run(import_data(ws, [data], f"data-{done % 4}"))
            if done % 4 == 3:  # delete one again so the importer keeps writing new rows
                with ws.transaction():
                    ws.db.execute("delete from datasets where name = ?", [f"data-{(done + 1) % 4}"])
        elif role == "import-suite":
            from core.data.ingest import import_suite
            progress.run(import_suite(ws, data, f"suite-{done}"))
        elif role == "job-events":
            from core.store.workspace import now
            with ws.transaction():
                if done == 0:
                    ws.db.execute("insert into jobs (name, kind, status, created_at) values ('busy', 'test', 'running', ?)", [now()])
                ws.db.execute("insert into job_events (job_id, time, step, loss, message) values "
                              "((select max(id) from jobs), ?, ?, ?, 'tick')", [now(), done, 1.0 / (done + 1)])
                ws.db.execute("update jobs set step = ?, updated_at = ? where id = (select max(id) from jobs)", [done, now()])
            time.sleep(0.01)
        elif role == "reader":
            from core.data.datasets import list_datasets, list_suites
            from core.data.search import search_examples
            names = [d["name"] for d in list_datasets(ws)]
            list_suites(ws)
            for n in names[:2]:
                search_examples(ws, n, "question", limit=5)
            ws.db.execute("select count(*) from job_events").fetchone()
        done += 1
    except Exception as e:  # NotFound when the reader races a delete is fine; "locked" is not
        msg = f"{type(e).__name__}: {e}"
        if "locked" in msg or "busy" in msg.lower() or not type(e).__name__ == "NotFound":
            errors.append(msg + "\n" + traceback.format_exc()[-800:])
            break
print(json.dumps({"role": role, "done": done, "errors": errors}))
"""


def test_three_writers_and_a_reader_never_see_a_locked_database(ws, tmp_path):
    data = tmp_path / "chat.jsonl"
    with open(data, "w") as f:
        for i in range(3000):
            f.write(
                json.dumps(
                    {
                        "conversations": [
                            {"from": "human", "value": f"question {i} " + "lorem ipsum dolor " * 20},
                            {"from": "gpt", "value": f"answer {i} " + "sit amet consectetur " * 40},
                        ]
                    }
                )
                + "\n"
            )
    suite = tmp_path / "qa.jsonl"
    suite.write_text("".join(json.dumps({"question": f"q {i}?", "answer": [str(i)]}) + "\n" for i in range(500)))
    roles = [("import-data", data), ("import-suite", suite), ("job-events", data), ("reader", data)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, role, str(ws.root), str(SECONDS), str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, path in roles
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=SECONDS + 120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["errors"] == [], r
        assert r["done"] > 0, r
    by_role = {r["role"]: r["done"] for r in results}
    assert by_role["job-events"] > 100 and by_role["reader"] > 10, by_role
    assert ws.db.execute("select count(*) from job_events").fetchone()[0] == by_role["job-events"]
    # every import finished whole: no staging rows left, and the index agrees with the rows
    assert ws.db.execute("select count(*) from datasets where status = 'importing'").fetchone()[0] == 0
    assert ws.db.execute("select count(*) from suites where status = 'importing'").fetchone()[0] == 0
    ws.db.execute("insert into examples_fts(examples_fts, rank) values ('integrity-check', 1)")
    ws.db.execute("insert into items_fts(items_fts, rank) values ('integrity-check', 1)")


def _overlapping_imports(ws, start_first, run_second):
    """Run the first import up to its first written chunk, the second one whole, then the first
    to its end: both publish into one name, the second first."""
    from core.runtime import progress
    from core.store.workspace import Workspace

    first = start_first(ws)
    next(first)  # a chunk is staged; the name does not exist yet
    other = Workspace.open(ws.root)
    second = progress.run(run_second(other))
    return progress.run(first), second


def test_concurrent_appends_into_one_dataset_both_land_duplicates_skipped(ws, tmp_path):
    from core.data.datasets import iter_examples, list_datasets
    from core.data.ingest import import_data

    def conv(i):
        return {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(conv(i)) + "\n" for i in range(0, 2500)))
    b.write_text("".join(json.dumps(conv(i)) + "\n" for i in range(2000, 3000)))
    first, second = _overlapping_imports(ws, lambda w: import_data(w, [a], "d"), lambda w: import_data(w, [b], "d"))
    assert (second["imported"], second["duplicates"]) == (1000, 0)
    assert (first["imported"], first["duplicates"]) == (2000, 500)
    texts = [e["user_text"] for e in iter_examples(ws, "d")]
    assert sorted(texts) == sorted(f"q{i}" for i in range(3000))
    (d,) = list_datasets(ws)
    assert d["examples"] == 3000 and d["tokens"] == first["total_tokens"]
    assert ws.db.execute("select count(*) from datasets").fetchone()[0] == 1
    from core.data.search import search_examples

    assert [r["user"] for r in search_examples(ws, "d", "q2400")] == ["[q2400]"]


def test_concurrent_appends_into_one_suite_both_land_duplicates_skipped(ws, tmp_path):
    from core.data.datasets import iter_items, list_suites
    from core.data.ingest import import_suite
    from core.data.search import search_items

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"question": f"q{i}?", "answer": [str(i)]}) + "\n" for i in range(1500)))
    b.write_text("".join(json.dumps({"question": f"q{i}?", "answer": [str(i)]}) + "\n" for i in range(1200, 1800)))
    first, second = _overlapping_imports(ws, lambda w: import_suite(w, a, "s"), lambda w: import_suite(w, b, "s"))
    assert (second["imported"], first["imported"], first["duplicates"]) == (600, 1200, 300)
    assert sorted(i["prompt"] for i in iter_items(ws, "s")) == sorted(f"q{i}?" for i in range(1800))
    assert [r["name"] for r in list_suites(ws)] == ["s"] and first["items"] == 1800
    ws.db.execute("insert into items_fts(items_fts, rank) values ('integrity-check', 1)")
    assert [r["prompt"] for r in search_items(ws, "s", "q1300")] == ["[q1300]?"]
