"""Importers (core.data.ingest), full-text search (core.data.search) and the `mirage import` commands."""

from __future__ import annotations

import hashlib
import json

from core.data.search import fts_query, search_examples, search_items
from core.store.workspace import dumps, now


def _raw_example(ws, dataset_id, idx, user, assistant):
    conv = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    ws.db.execute(
        "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
        " n_tokens, content_hash) values (?, ?, 's', ?, ?, ?, 3, ?)",
        [dataset_id, idx, dumps(conv), user, assistant, f"h{idx}"],
    )


def test_fts_tracks_inserts_updates_and_deletes(ws):
    ws.db.execute("insert into datasets (name, created_at) values ('d', ?)", [now()])
    ws.db.execute("insert into suites (name, kind, created_at) values ('s', 'qa', ?)", [now()])
    _raw_example(ws, 1, 0, "What is photosynthesis?", "Plants turn light into sugar.")
    _raw_example(ws, 1, 1, "Capital of France?", "Paris.")
    ws.db.execute("insert into items (suite_id, idx, prompt, content_hash) values (1, 0, 'who wrote hamlet', 'x')")

    assert [r["idx"] for r in search_examples(ws, "d", "photosyn")] == [0]  # prefix while typing
    assert [r["idx"] for r in search_examples(ws, "d", "paris")] == [1]  # assistant text too
    assert search_examples(ws, "d", "plants light")[0]["assistant"] == "[Plants] turn [light] into sugar."
    assert [r["idx"] for r in search_examples(ws, "d", '"paris: -')] == [1]  # typed syntax is not FTS syntax
    assert search_examples(ws, "d", "  ") == []
    assert [r["key"] for r in search_items(ws, "s", "Hamlet ")] == [None]

    ws.db.execute("update examples set assistant_text = 'Lyon.' where idx = 1")
    assert search_examples(ws, "d", "paris") == []
    assert len(search_examples(ws, "d", "lyon")) == 1
    ws.db.execute("delete from datasets where id = 1")  # cascades to examples and their index rows
    assert ws.db.execute("select count(*) from examples_fts where examples_fts match 'lyon'").fetchone()[0] == 0
    assert fts_query('a "b') == '"a" "b"*'
    assert fts_query("snake_case ") == '"snake" "case"'  # unicode61 splits at "_": words, not a phrase


# -- helpers -------------------------------------------------------------------------------------------
import gzip  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from core.data.datasets import iter_examples, iter_items, list_datasets, list_suites  # noqa: E402
from core.data.ingest import import_data, import_outputs, import_suite  # noqa: E402
from core.data.ingest.staging import cleanup_stale  # noqa: E402
from core.data.ingest.tokens import TokenCounter  # noqa: E402
from core.errors import BadInput, NotFound  # noqa: E402
from core.runtime import progress  # noqa: E402


def sharegpt(user, answer, **extra):
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}], **extra}


def write_jsonl(path, rows, *, gz=False):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


def snapshot(ws):
    """Every row of every ordinary table (FTS shadow tables included): 'exactly as before'."""
    names = [
        r[0]
        for r in ws.db.execute(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name"
        )
    ]
    virtual = {r[0] for r in ws.db.execute("select name from sqlite_master where sql like 'create virtual%'")}
    return {n: sorted(ws.db.execute(f"select * from [{n}]").fetchall(), key=repr) for n in names if n not in virtual}


def fts_ok(ws):
    for t in ("examples_fts", "items_fts"):
        ws.db.execute(f"insert into {t}({t}, rank) values ('integrity-check', 1)")  # raises if out of step
    return True


def run(gen):
    return progress.run(gen)


# -- imitation data ------------------------------------------------------------------------------------
def test_sharegpt_jsonl_normalised_with_source_tokens_hash_and_duplicates(ws, tmp_path):
    f = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Capital of France?"},
                    {"from": "gpt", "value": "Paris."},
                    {"from": "human", "value": "And Spain?"},
                    {"from": "gpt", "value": "Madrid."},
                ],
                "source": "geo-set",
                "id": "c1",
            },
            sharegpt("What is 2+2?", "4"),
            sharegpt("What is 2+2?", "4"),  # exact duplicate
            "",
        ],
    )
    s = run(import_data(ws, [f], "chat"))
    assert (s["read"], s["imported"], s["duplicates"], s["format"]) == (3, 2, 1, "sharegpt")
    ex = list(iter_examples(ws, "chat"))
    assert [e["conversation"] for e in ex] == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And Spain?"},
            {"role": "assistant", "content": "Madrid."},
        ],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    ]
    assert ex[0]["user_text"] == "Capital of France?\n\nAnd Spain?"
    assert ex[0]["assistant_text"] == "Paris.\n\nMadrid."
    assert [e["source"] for e in ex] == ["geo-set", "chat.jsonl"]
    assert ex[0]["meta"] == {"id": "c1"}
    assert ex[1]["content_hash"] == hashlib.sha256(dumps(ex[1]["conversation"]).encode()).hexdigest()
    # turns joined by a newline: What, is, 2, +, 2, ?, newline, 4
    assert ex[1]["n_tokens"] == 8
    (row,) = list_datasets(ws)
    assert (row["examples"], row["duplicates"], row["tokens"]) == (2, 1, sum(e["n_tokens"] for e in ex))
    assert [r["idx"] for r in search_examples(ws, "chat", "madrid")] == [0]
    assert fts_ok(ws)


def test_alpaca_json_array_response_input_and_messages_parquet_csv_gz(ws, tmp_path):
    arr = tmp_path / "alpaca.json"
    arr.write_text(
        json.dumps(
            [
                {"instruction": "Add", "input": "2 and 3", "response": "5"},
                {"instruction": "Greet", "input": "", "output": "Hello", "source": "x"},
            ]
        )
    )
    s = run(import_data(ws, [arr], "mix"))
    assert (s["imported"], s["format"]) == (2, "alpaca")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "messages": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a1"},
                    ]
                },
            ]
        ),
        tmp_path / "chat.parquet",
    )
    (tmp_path / "rows.csv").write_text("instruction,input,output\nName a colour,,Blue\n", encoding="utf-8")
    gz = write_jsonl(tmp_path / "more.jsonl.gz", [sharegpt("gz q", "gz a")], gz=True)
    s = run(import_data(ws, [tmp_path / "chat.parquet", tmp_path / "rows.csv", gz], "mix", source="batch2"))
    assert s["imported"] == 3 and s["format"] == "messages,alpaca,sharegpt"
    convs = [(e["source"], e["conversation"]) for e in iter_examples(ws, "mix")]
    assert convs == [
        ("alpaca.json", [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]),
        ("x", [{"role": "user", "content": "Greet"}, {"role": "assistant", "content": "Hello"}]),
        (
            "batch2",
            [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
            ],
        ),
        ("batch2", [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}]),
        ("batch2", [{"role": "user", "content": "gz q"}, {"role": "assistant", "content": "gz a"}]),
    ]
    assert [e["idx"] for e in iter_examples(ws, "mix")] == [0, 1, 2, 3, 4]
    assert list_datasets(ws)[0]["format"] == "mixed"


def test_datasets_save_to_disk_folder(ws, tmp_path):
    import datasets

    datasets.Dataset.from_list([sharegpt(f"q{i}", f"a{i}") for i in range(5)]).save_to_disk(str(tmp_path / "hf"))
    s = run(import_data(ws, [tmp_path / "hf"], "hf"))
    assert (s["imported"], s["format"]) == (5, "sharegpt")
    assert [e["user_text"] for e in iter_examples(ws, "hf")] == [f"q{i}" for i in range(5)]


def test_format_override(ws, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o", "conversations": "not a list"}])
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "a"))  # auto picks sharegpt from `conversations`
    assert str(e.value) == f"{f}:1: field 'conversations': expected a list of turns, got a string"
    assert run(import_data(ws, [f], "a", fmt="alpaca"))["imported"] == 1


def test_reimport_is_idempotent_and_append_adds_new_rows_only(ws, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [sharegpt("q1", "a1"), sharegpt("q2", "a2")])
    first = run(import_data(ws, [a], "d"))
    before = snapshot(ws)
    again = run(import_data(ws, [a], "d"))
    assert again["unchanged"] and again["imported"] == 0
    assert snapshot(ws) == before
    # the recorded digest is the file's SHA-256 (as `sha256sum` gives it), hashed beside the parser
    files = json.loads(ws.db.execute("select meta from datasets where name = 'd'").fetchone()[0])["files"]
    assert files[0]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    b = write_jsonl(tmp_path / "b.jsonl", [sharegpt("q2", "a2"), sharegpt("q3", "a3")])
    more = run(import_data(ws, [b], "d"))
    assert (first["imported"], more["imported"], more["duplicates"]) == (2, 1, 1)
    assert [e["user_text"] for e in iter_examples(ws, "d")] == ["q1", "q2", "q3"]
    # idx keeps source order; an appended file continues after the rows already there
    assert [e["idx"] for e in iter_examples(ws, "d")] == [0, 1, 3]
    assert list_datasets(ws)[0]["duplicates"] == 1
    assert [r["idx"] for r in search_examples(ws, "d", "a3")] == [3]
    assert fts_ok(ws)
    ws.db.execute("delete from datasets where name = 'd'")  # cascade: the delete trigger unindexes
    assert fts_ok(ws) and ws.db.execute("select count(*) from examples_fts").fetchone()[0] == 0


BAD_LINES = [
    ("malformed", b'{"conversations": [}', "{f}:2: malformed JSON at column 20"),
    (
        "missing_field",
        json.dumps({"conversations": [{"value": "hi"}]}).encode(),
        "{f}:2: field 'conversations[0].from': missing",
    ),
    (
        "mistyped",
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 7}]}).encode(),
        "{f}:2: field 'conversations[1].value': expected a string, got a number",
    ),
    (
        "unknown_speaker",
        json.dumps({"conversations": [{"from": "narrator", "value": "hi"}]}).encode(),
        "{f}:2: field 'conversations[0].from': unknown speaker 'narrator' (expected human, gpt or system)",
    ),
    ("empty", json.dumps({"conversations": []}).encode(), "{f}:2: field 'conversations': empty conversation"),
    (
        "no_answer",
        json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode(),
        "{f}:2: field 'conversations': no assistant turn",
    ),
    (
        "not_utf8",
        b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}',
        "{f}:2: not valid UTF-8 (byte 0xe9 at column 51)",
    ),
    (
        "huge",
        b'{"conversations": [{"from": "human", "value": "' + b"x" * (50 * 1024 * 1024) + b'"}]}',
        "{f}:2: 50 MB is over the 16 MB limit for one record",
    ),
]


@pytest.mark.parametrize("case,line,message", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_line_fails_whole_import_and_leaves_workspace_unchanged(ws, tmp_path, case, line, message):
    run(import_data(ws, [write_jsonl(tmp_path / "ok.jsonl", [sharegpt("keep", "me")])], "d"))
    f = tmp_path / f"{case}.jsonl"
    good = json.dumps(sharegpt("good", "row")).encode()
    f.write_bytes(good + b"\n" + line + b"\n" + json.dumps(sharegpt("after", "bad")).encode() + b"\n")
    before = snapshot(ws)
    for name in ("d", "new"):  # appending to an existing dataset, and creating one
        with pytest.raises(BadInput) as e:
            run(import_data(ws, [f], name))
        assert str(e.value) == message.format(f=f)
        assert snapshot(ws) == before
    assert not (ws.artifacts / "import-reports").exists()

    s = run(import_data(ws, [f], "d", skip_bad=True))
    assert (s["imported"], s["skipped_bad"]) == (2, 1)
    report = [json.loads(x) for x in open(s["report"], encoding="utf-8")]
    assert [(r["line"], r["error"]) for r in report] == [(2, message.format(f=f))]
    assert [e["user_text"] for e in iter_examples(ws, "d")] == ["keep", "good", "after"]
    assert fts_ok(ws)


def test_unknown_format_missing_file_and_bad_json_array(ws, tmp_path):
    f = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "d"))
    assert str(e.value) == (
        f"{f}:1: unknown format: first record has text, label; expected conversations"
        " (ShareGPT), messages (OpenAI) or instruction + output/response (Alpaca); or pass --format"
    )
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [tmp_path / "nope.jsonl"], "d"))
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'}: no such file"
    arr = tmp_path / "broken.json"
    arr.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ]')
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [arr], "d", skip_bad=True))  # inside one array nothing can be skipped
    assert str(e.value).startswith(f"{arr}: item 2: malformed JSON (")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01binary")
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [tmp_path / "x.bin"], "d"))
    assert "unknown file type" in str(e.value)
    assert list_datasets(ws) == [] and ws.db.execute("select count(*) from examples").fetchone()[0] == 0


def test_alpaca_without_output_or_response(ws, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "input": "", "output": "o"}, {"instruction": "x"}])
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "d"))
    assert str(e.value) == f"{f}:2: field 'output': missing (expected output or response)"


def test_csv_bad_bytes_name_line_and_field(ws, tmp_path):
    f = tmp_path / "rows.csv"
    f.write_bytes(b"instruction,output\nfine,yes\nbad \xff here,no\n")
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "d"))
    assert str(e.value) == f"{f}:3: field 'instruction': not valid UTF-8 (byte 0xff)"
    f.write_text('instruction,output\nok,fine\n"' + "x" * (17 * 1024 * 1024) + '",y\n')
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "d"))
    assert str(e.value) == f"{f}:3: over the 16 MB limit for one record"
    assert list_datasets(ws) == []


def test_unterminated_csv_quote_names_the_line_and_field_where_it_opens(ws, tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text('instruction,output\nok,fine\nnext,"never closed\nmore,rows\nand,more\n')
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [f], "d"))
    assert str(e.value) == f"{f}:3: field 'output': quoted field never closed"
    f.write_text('question,answer\n"a ""quoted"", multi\nline",["x"]\n"open,y\n')
    with pytest.raises(BadInput) as e:
        run(import_suite(ws, f, "s"))
    assert str(e.value) == f"{f}:4: field 'question': quoted field never closed"
    assert list_datasets(ws) == [] and list_suites(ws) == []


def test_truncated_gz_is_a_one_line_error(ws, tmp_path):
    whole = write_jsonl(
        tmp_path / "a.jsonl.gz", [sharegpt(f"q{i} " + os.urandom(64).hex(), "a") for i in range(400)], gz=True
    )
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [cut], "d"))
    assert str(e.value) == f"{cut}: truncated .gz file (the compressed data ends early)"
    assert list_datasets(ws) == []
    r = mirage("import", "suite", cut, "--name", "s", "-w", ws.root)
    assert (r.returncode, r.stderr) == (1, f"error: {cut}: truncated .gz file (the compressed data ends early)\n")


def test_stale_staging_row_from_a_killed_import_is_removed(ws, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [sharegpt(f"q{i}", "a") for i in range(5)])
    gen = import_data(ws, [f], "d")
    next(gen, None)  # the staging row exists now
    assert ws.db.execute("select count(*) from datasets where status = 'importing'").fetchone()[0] == 1
    # pretend its process died: a pid that is not running
    ws.db.execute("update datasets set meta = json_set(meta, '$.import.pid', 999999999) where status = 'importing'")
    from core.data.ingest import staging

    staging._live_imports.clear()
    assert cleanup_stale(ws) == 1
    assert ws.db.execute("select count(*) from datasets").fetchone()[0] == 0
    assert ws.db.execute("select count(*) from examples").fetchone()[0] == 0
    gen.close()
    assert run(import_data(ws, [f], "d"))["imported"] == 5
    assert fts_ok(ws)


def _reference_count(text: str) -> int:
    """The built-in counter's rule, byte by byte: a run of letters/digits/_/UTF-8 bytes costs one
    token per 8 bytes (rounded up); punctuation, newlines and each 3-4 byte character's lead one."""
    n, run = 0, 0
    for byte in text.encode("utf-8", "surrogatepass") + b" ":
        c = chr(byte)
        word = not 0xE0 <= byte < 0xF8 and (byte >= 0x80 or c.isalnum() or c == "_")
        if word:
            run += 1
            continue
        n += (run + 7) // 8
        run = 0
        if c not in " \t\r\x00\x0b\x0c":
            n += 1
    return n


def test_token_counter_builtin_matches_its_rule_on_runs_of_every_length():
    # The vectorised scan packs bytes 64 to a word and handles runs up to 8*LEVELS bytes by
    # shifted ANDs, longer ones from their spans: both paths, runs and texts across word edges,
    # texts shorter than a run, non-ASCII chunks and ASCII-only ones, and mixed chunks.
    import random

    rng = random.Random(7)
    pieces = list("ab_Z09 \t\n.,!?:;()[]{}\"'") + ["é", "日", "😀", "\x00", "ß", "ÿ", "\ud800"]
    texts = ["", "a", "a" * 8, "a" * 9]
    texts += ["a" * n for n in range(140)] + [" x" + "b" * n + "." for n in range(140)] + ["q" * 500 + " 日"]
    for _ in range(1500):
        texts.append(
            "".join(
                rng.choice(pieces) if rng.random() < 0.5 else "w" * rng.randint(1, 45)
                for _ in range(rng.randint(0, 40))
            )
        )
    c = TokenCounter("")
    ascii_only = [t for t in texts if t.isascii()]
    assert c.count(ascii_only) == [_reference_count(t) for t in ascii_only]
    for size in (1, 3, 97, len(texts)):
        for i in range(0, len(texts), size):
            chunk = texts[i : i + size]
            counts = c.count(chunk)
            assert counts == [_reference_count(t) for t in chunk], chunk[:3]
            assert all(type(n) is int for n in counts)  # sqlite3 cannot bind numpy integers


def test_token_counter_builtin_and_tokenizers_file(tmp_path):
    c = TokenCounter("")
    assert c.count(["Hello, world!", "", "supercalifragilistic", "日本語"]) == [4, 0, 3, 6]
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    assert TokenCounter(str(tmp_path)).count(["hello hello there", "x"]) == [3, 1]
    from core.errors import ConfigError

    with pytest.raises(ConfigError):
        TokenCounter(str(tmp_path / "missing"))


# -- suites ----------------------------------------------------------------------------------------------
def test_qa_mc_code_and_prompt_suites(ws, tmp_path):
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "who wrote hamlet", "answer": ["Shakespeare", "W. S."]},
            {"question": "capital of peru", "answer": "Lima", "id": "q2"},
        ],
    )
    s = run(import_suite(ws, qa, "qa"))
    assert (s["kind"], s["imported"]) == ("qa", 2)
    items = list(iter_items(ws, "qa"))
    assert [(i["prompt"], i["gold"], i["task"], i["key"]) for i in items] == [
        ("who wrote hamlet", ["Shakespeare", "W. S."], "qa", None),
        ("capital of peru", ["Lima"], "qa", "q2"),
    ]

    (tmp_path / "mmlu.csv").write_text('What is 2+2?,3,4,5,6,B\n"Sky colour, by day?",red,blue,green,black,B\n')
    (tmp_path / "mmlu_h.csv").write_text("question,A,B,C,D,answer,subject\nPick one,x,y,z,w,D,logic\n")
    s = run(import_suite(ws, tmp_path / "mmlu.csv", "mc", task="arith"))
    assert (s["kind"], s["imported"]) == ("mc", 2)
    run(import_suite(ws, tmp_path / "mmlu_h.csv", "mc"))
    assert [(i["prompt"], i["choices"], i["gold"], i["task"]) for i in iter_items(ws, "mc")] == [
        ("What is 2+2?", ["3", "4", "5", "6"], ["B"], "arith"),
        ("Sky colour, by day?", ["red", "blue", "green", "black"], ["B"], "arith"),
        ("Pick one", ["x", "y", "z", "w"], ["D"], "logic"),
    ]

    code = write_jsonl(
        tmp_path / "he.jsonl.gz",
        [
            {
                "task_id": "T/0",
                "prompt": "def f():\n",
                "canonical_solution": "  return 1\n",
                "test": "assert f() == 1",
                "entry_point": "f",
            }
        ],
        gz=True,
    )
    run(import_suite(ws, code, "code"))
    (item,) = iter_items(ws, "code")
    assert (item["key"], item["tests"], item["entry_point"], item["meta"]) == (
        "T/0",
        "assert f() == 1",
        "f",
        {"canonical_solution": "  return 1\n"},
    )

    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert run(import_suite(ws, tmp_path / "p.txt", "p"))["imported"] == 2
    assert [i["prompt"] for i in iter_items(ws, "p")] == ["first prompt", "second prompt"]
    assert {r["name"]: (r["kind"], r["items"]) for r in list_suites(ws)} == {
        "qa": ("qa", 2),
        "mc": ("mc", 3),
        "code": ("code", 1),
        "p": ("prompts", 2),
    }
    assert [r["key"] for r in search_items(ws, "qa", "peru")] == ["q2"]
    assert fts_ok(ws)


def test_bad_suite_rows(ws, tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": ["a"]}, {"question": "q2", "answer": 5}])
    with pytest.raises(BadInput) as e:
        run(import_suite(ws, f, "qa"))
    assert str(e.value) == f"{f}:2: field 'answer': expected a list of answers, got a number"
    (tmp_path / "mc.csv").write_text("question,A,B,C,D,answer\nq,a,b,c,d,Z\n")
    with pytest.raises(BadInput) as e:
        run(import_suite(ws, tmp_path / "mc.csv", "mc"))
    assert str(e.value) == f"{tmp_path / 'mc.csv'}:2: field 'answer': expected one of A, B, C, D, got 'Z'"
    assert list_suites(ws) == [] and ws.db.execute("select count(*) from items").fetchone()[0] == 0
    s = run(import_suite(ws, f, "qa", skip_bad=True))
    assert (s["imported"], s["skipped_bad"]) == (1, 1)


def test_empty_files_and_all_bad_rows_create_nothing(ws, tmp_path):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_bytes(b"")
    blank.write_text("\n  \n\t\n")
    for f in (empty, blank):
        with pytest.raises(BadInput) as e:
            run(import_suite(ws, f, "s"))
        assert str(e.value) == f"{f}: no records"
    bad_data = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x"}, {"instruction": "y"}])
    with pytest.raises(BadInput) as e:
        run(import_data(ws, [bad_data], "d", fmt="alpaca", skip_bad=True))
    assert str(e.value) == f"{bad_data}: no good records"
    bad_suite = write_jsonl(tmp_path / "bad-qa.jsonl", [{"question": "q?", "answer": []}, {"question": "r?"}])
    with pytest.raises(BadInput) as e:
        run(import_suite(ws, bad_suite, "s", fmt="qa", skip_bad=True))
    assert str(e.value) == f"{bad_suite}: no good records"
    r = mirage("import", "suite", blank, "--name", "s", "-w", ws.root)
    assert (r.returncode, r.stderr) == (1, f"error: {blank}: no records\n")
    assert list_datasets(ws) == [] and list_suites(ws) == []
    assert ws.db.execute("select count(*) from suites").fetchone()[0] == 0
    assert ws.db.execute("select count(*) from datasets").fetchone()[0] == 0


# -- recorded outputs --------------------------------------------------------------------------------------
def test_outputs_attach_by_exact_prompt(ws, tmp_path):
    run(
        import_suite(
            ws, write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi"}, {"instruction": "Say bye"}]), "s"
        )
    )
    out = tmp_path / "out.json"
    out.write_text(
        json.dumps(
            [
                {"instruction": "Say hi", "output": "hi!", "generator": "gpt-x"},
                {"instruction": "Say bye", "output": "bye!", "generator": "gpt-x"},
                {"instruction": "Not in suite", "output": "?", "generator": "gpt-x"},
            ]
        )
    )
    before = snapshot(ws)
    with pytest.raises(BadInput) as e:  # a row that matches nothing stops the import without --skip-bad
        run(import_outputs(ws, out, "s", "teacher"))
    assert str(e.value) == (
        f"{out}: item 3: field 'instruction': no item of suite 's' has this prompt"
        " (1 rows match none; --skip-bad attaches the rest)"
    )
    assert snapshot(ws) == before
    s = run(import_outputs(ws, out, "s", "teacher", skip_bad=True))
    assert (s["matched"], s["imported"], s["unmatched"], s["skipped_bad"]) == (2, 2, 1, 0)
    assert [json.loads(x)["record"]["prompt"] for x in open(s["report"])] == ["Not in suite"]
    model = ws.db.execute("select kind, spec from models where name = 'teacher'").fetchone()
    assert model[0] == "recorded" and json.loads(model[1]) == {"source": str(out.resolve()), "generator": "gpt-x"}
    import hashlib

    rows = ws.db.execute(
        "select model, fingerprint, prompt, decoding, cache_key, output, meta from generations order by id"
    ).fetchall()
    (rows_item,) = ws.db.execute("select id from items where prompt = 'Say hi'").fetchone()
    assert rows[0] == (
        "teacher",
        "recorded:teacher",
        "Say hi",
        "{}",
        hashlib.sha256(dumps(["recorded:teacher", "Say hi", {}, rows_item]).encode()).hexdigest(),
        "hi!",
        '{"generator":"gpt-x"}',
    )
    before = snapshot(ws)
    assert run(import_outputs(ws, out, "s", "teacher", skip_bad=True))["imported"] == 0
    assert snapshot(ws) == before
    with pytest.raises(NotFound):
        run(import_outputs(ws, out, "nosuch", "teacher"))
    run(import_suite(ws, write_jsonl(tmp_path / "other.jsonl", [{"instruction": "Unrelated"}]), "other"))
    before = snapshot(ws)
    with pytest.raises(BadInput) as e:
        run(import_outputs(ws, out, "other", "someone"))
    assert str(e.value) == (
        f"{out}: none of its 3 prompts is an item of suite 'other' (outputs attach by prompt: is it the right suite?)"
    )
    assert snapshot(ws) == before  # no model row either


def test_outputs_match_prompts_across_line_endings_blanks_and_unicode_form(ws, tmp_path):
    suite = write_jsonl(
        tmp_path / "p.jsonl",
        [{"instruction": "Line one\nline two"}, {"instruction": "Caf\u00e9?"}, {"instruction": "  padded  "}],
    )
    run(import_suite(ws, suite, "s"))
    out = tmp_path / "out.jsonl"  # CRLF line endings, CRLF inside prompts, a trailing blank, NFD
    out.write_bytes(
        (
            json.dumps({"instruction": "Line one\r\nline two", "output": "1"})
            + "\r\n"
            + json.dumps({"instruction": "Cafe\u0301?\n", "output": "2"})
            + "\r\n"
            + json.dumps({"instruction": "padded", "output": "3"})
            + "\r\n\r\n"
        ).encode()
    )
    s = run(import_outputs(ws, out, "s", "m"))
    assert (s["matched"], s["imported"], s["unmatched"]) == (3, 3, 0)
    stored = ws.db.execute("select prompt, output from generations order by output").fetchall()
    assert stored == [("Line one\nline two", "1"), ("Caf\u00e9?", "2"), ("  padded  ", "3")]
    # A second suite with the same prompts gets the same outputs attached to its own items.
    run(import_suite(ws, suite, "s2"))
    s = run(import_outputs(ws, out, "s2", "m"))
    assert (s["matched"], s["imported"], s["already_present"]) == (3, 3, 0)
    assert {r["name"]: (r["outputs"], r["model_count"]) for r in list_suites(ws)} == {"s": (3, 1), "s2": (3, 1)}
    per_suite = ws.db.execute(
        "select s.name, count(*) from generations g join items i on i.id = g.item_id"
        " join suites s on s.id = i.suite_id group by s.name order by s.name"
    ).fetchall()
    assert per_suite == [("s", 3), ("s2", 3)]
    assert run(import_outputs(ws, out, "s2", "m"))["already_present"] == 3


def test_a_record_over_16_mb_is_refused_in_outputs_and_suites_too(ws, tmp_path):
    run(import_suite(ws, write_jsonl(tmp_path / "p.jsonl", [{"instruction": "a"}, {"instruction": "b"}]), "s"))
    out = tmp_path / "out.json"
    huge = "x" * (17 * 1024 * 1024)
    out.write_text(json.dumps([{"instruction": "a", "output": "fine"}, {"instruction": "b", "output": huge}]))
    before = snapshot(ws)
    with pytest.raises(BadInput) as e:
        run(import_outputs(ws, out, "s", "m"))
    assert str(e.value) == f"{out}: item 2: 17 MB is over the 16 MB limit for one record"
    assert snapshot(ws) == before
    s = run(import_outputs(ws, out, "s", "m", skip_bad=True))
    assert (s["imported"], s["skipped_bad"]) == (1, 1)
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"question": "q?", "answer": ["a"]}, {"question": huge, "answer": ["b"]}]))
    with pytest.raises(BadInput) as e:
        run(import_suite(ws, items, "big"))
    assert str(e.value) == f"{items}: item 2: 17 MB is over the 16 MB limit for one record"
    assert [r["name"] for r in list_suites(ws)] == ["s"]


# -- the real shared files --------------------------------------------------------------------------------------
def test_real_files(ws, shared_data):
    s = run(import_suite(ws, shared_data / "nq-open" / "NQ-open.dev.jsonl", "nq"))
    assert (s["kind"], s["imported"], s["duplicates"]) == ("qa", 3610, 0)
    s = run(import_suite(ws, shared_data / "humaneval" / "HumanEval.jsonl.gz", "humaneval"))
    assert (s["kind"], s["imported"]) == ("code", 164)
    he = next(iter_items(ws, "humaneval"))
    assert he["key"] == "HumanEval/0" and he["entry_point"] == "has_close_elements"
    assert "canonical_solution" in he["meta"]
    s = run(import_data(ws, [shared_data / "gpteacher" / "codegen-instruct.json"], "gpteacher"))
    assert (s["format"], s["read"], s["imported"], s["duplicates"]) == ("alpaca", 4535, 4535, 0)
    assert list_datasets(ws)[0]["tokens"] > 400_000
    ae = shared_data / "alpaca-eval-outputs"
    s = run(import_suite(ws, ae / "gpt-3.5-turbo-0301.json", "alpacaeval"))
    assert (s["kind"], s["imported"], s["tasks"]) == ("prompts", 805, 5)
    s = run(import_outputs(ws, ae / "vicuna-13b.json", "alpacaeval", "vicuna-13b"))
    assert (s["matched"], s["unmatched"]) == (805, 0)
    suites = {r["name"]: r for r in list_suites(ws)}
    assert (suites["alpacaeval"]["outputs"], suites["alpacaeval"]["model_count"]) == (805, 1)
    assert fts_ok(ws)


# -- the command line -------------------------------------------------------------------------------------------
def mirage(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_cli_import_json_summary_and_one_line_errors(ws, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [sharegpt("q", "a"), "{oops"])
    r = mirage("import", "data", f, "--name", "d", "-w", ws.root)
    assert r.returncode == 1 and r.stderr == f"error: {f}:2: malformed JSON at column 2\n"
    r = mirage("import", "data", f, "--name", "d", "--skip-bad", "--json", "-w", ws.root)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["imported"], summary["skipped_bad"]) == (1, 1)
    assert summary["report"] in r.stderr
    r = mirage("ls", "datasets", "--json", "-w", ws.root)
    assert [(d["name"], d["examples"]) for d in json.loads(r.stdout)] == [("d", 1)]
    r = mirage("import", "suite", tmp_path / "missing.jsonl", "--name", "s", "-w", ws.root)
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'missing.jsonl'}: no such file\n"


# -- the full-text index after an import (core.data.search backlog, m060_ingest_fts_backlog) ----------------
def test_large_import_is_indexed_in_the_background_and_searches_wait_for_it(ws, tmp_path, monkeypatch):
    from core.data import search

    monkeypatch.setattr(search, "BACKGROUND_MIN", 50)
    monkeypatch.setattr(search, "INDEX_CHUNK", 7)  # many short transactions
    rows = [sharegpt(f"question {i} about topic{i}", f"answer {i}") for i in range(120)]
    rows[77] = sharegpt("Where is the Eiffel tower?", "In Paris, on the Champ de Mars.")
    summary = run(import_data(ws, [write_jsonl(tmp_path / "big.jsonl", rows)], "big"))
    assert summary["search_index"] == "background"
    # A search does not miss rows the background indexer has not reached: it finishes them first.
    assert [r["idx"] for r in search_examples(ws, "big", "champ mars")] == [77]
    assert search.index_pending(ws) == 0 and fts_ok(ws)
    log = ws.artifacts / "logs" / "search-index.log"
    assert log.exists()


def test_rows_waiting_for_the_index_can_be_deleted_and_a_second_indexer_steps_aside(ws, tmp_path, monkeypatch):
    import fcntl

    from core.data import search

    monkeypatch.setattr(search, "BACKGROUND_MIN", 10**9)
    monkeypatch.setattr(search, "index_after_import", lambda ws: "none")  # leave the backlog as published
    run(import_data(ws, [write_jsonl(tmp_path / "a.jsonl", [sharegpt(f"q{i}", f"a{i}") for i in range(30)])], "a"))
    assert search.index_pending(ws) == 30
    ws.db.execute("delete from examples where idx < 5")  # not indexed yet: no FTS 'delete' may be sent
    ws.db.execute("update examples set assistant_text = 'changed' where idx = 6")
    assert search.index_pending(ws) == 25
    assert ws.db.execute("select count(*) from examples_fts where examples_fts match 'q10'").fetchone()[0] == 0
    with open(ws.artifacts / "search-index.lock", "a") as held:  # an indexer is running elsewhere
        fcntl.flock(held, fcntl.LOCK_EX)
        assert search.index_backlog(ws, wait=False) == 0 and search.index_pending(ws) == 25
    assert search.index_backlog(ws) == 25 and fts_ok(ws)
    assert [r["idx"] for r in search_examples(ws, "a", "changed")] == [6]
    ws.db.execute("delete from datasets where name = 'a'")
    assert fts_ok(ws) and ws.db.execute("select count(*) from examples_fts").fetchone()[0] == 0


def test_index_command_runs_as_a_process(ws, tmp_path, monkeypatch):
    from core.data import search

    monkeypatch.setattr(search, "index_after_import", lambda ws: "none")
    run(
        import_data(
            ws, [write_jsonl(tmp_path / "a.jsonl", [sharegpt("alpha", "beta"), sharegpt("gamma", "delta")])], "a"
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "core.data.search", "index", str(ws.root)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "indexed 2 examples" in proc.stdout
    assert search.index_pending(ws) == 0 and fts_ok(ws)


def test_conversation_layout_round_trips_any_text():
    from core.data.datasets import pack_conversation, unpack_conversation

    conv = [
        {"role": "system", "content": "Be brief.\n\nReally."},
        {"role": "user", "content": "two\n\nparagraphs, é, 日本, 🙂"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "\n\n"},
        {"role": "assistant", "content": "last\n\n"},
    ]
    layout, user, assistant = pack_conversation(conv)
    assert user == "two\n\nparagraphs, é, 日本, 🙂\n\n\n\n" and assistant == "\n\nlast\n\n"
    assert "content" not in layout[1] and layout[0]["content"] == "Be brief.\n\nReally."  # text stored once
    assert unpack_conversation(dumps(layout), user, assistant) == conv
    old = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]  # rows from before the layout
    assert unpack_conversation(dumps(old), "q", "a") == old


def test_conversation_counts_equal_the_joined_texts_counts(tmp_path):
    # The import counts each turn and adds one token per joining newline (built-in), instead of
    # building "\n".join(turns): the two must agree on every kind of text, turn edges included.
    convs = [
        [{"content": "Hello, world!", "role": "user"}, {"content": "Hi.", "role": "assistant"}],
        [
            {"content": "", "role": "system"},
            {"content": "q" * 70, "role": "user"},
            {"content": "", "role": "assistant"},
        ],
        [
            {"content": "é日😀\n", "role": "user"},
            {"content": "\n\nwordy" * 9, "role": "assistant"},
            {"content": "x_1", "role": "user"},
        ],
        [{"content": "a", "role": "user"}],
    ]
    joined = ["\n".join(t["content"] for t in conv) for conv in convs]
    c = TokenCounter("")
    assert c.count_conversations(convs) == c.count(joined) == [_reference_count(t) for t in joined]
    assert c.count_conversations([]) == []
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    exact = TokenCounter(str(tmp_path))  # a tokenizer may merge across newlines: it gets the joins
    assert exact.count_conversations(convs) == exact.count(joined)


def test_stored_json_is_the_key_sorted_dumps_in_every_format(ws, tmp_path):
    # The importer writes orjson without sorting keys (the dicts are built sorted): the content
    # hash and the stored layout must still be those of the key-sorted `dumps`, or appends to
    # datasets imported earlier would miss their duplicates.
    sg = write_jsonl(
        tmp_path / "sg.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "q1"},
                    {"from": "gpt", "value": "a1"},
                ]
            }
        ],
    )
    msgs = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "q2"},
                    {"role": "assistant", "content": [{"type": "text", "text": "a2"}]},
                ]
            }
        ],
    )
    alp = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q3", "input": "ctx", "output": "a3", "system": "S"}])
    for f in (sg, msgs, alp):
        run(import_data(ws, [f], f.stem))
        (raw,) = ws.db.execute(
            "select e.conversation, e.content_hash from examples e join datasets d on d.id = e.dataset_id where d.name = ?",
            [f.stem],
        ).fetchall()
        (ex,) = list(iter_examples(ws, f.stem))
        assert raw[0] == dumps(json.loads(raw[0]))
        assert raw[1] == hashlib.sha256(dumps(ex["conversation"]).encode()).hexdigest()
        assert ex["conversation"][0] == {"role": "system", "content": "S"}


def test_a_data_import_writes_several_parse_chunks_a_transaction_and_the_rest_at_the_end(ws, tmp_path, monkeypatch):
    from core.data.ingest import pipeline

    monkeypatch.setattr(pipeline, "BATCH", 2)  # parse chunks of 2 rows
    monkeypatch.setattr(pipeline, "WRITE_ROWS", 5)  # written once 5 or more are counted
    sizes = []
    real = pipeline._flush_examples
    monkeypatch.setattr(
        pipeline, "_flush_examples", lambda ws, sid, rows, *a: (sizes.append(len(rows)), real(ws, sid, rows, *a))
    )
    f = write_jsonl(tmp_path / "d.jsonl", [sharegpt(f"q{i}", f"a{i}") for i in range(21)] + [sharegpt("q0", "a0")])
    s = run(import_data(ws, [f], "d"))
    assert sizes == [6, 6, 6, 4]  # 3 chunks a transaction; the last 4 (one a duplicate) at the end
    assert (s["imported"], s["duplicates"]) == (21, 1)
    assert [e["idx"] for e in iter_examples(ws, "d")] == list(range(21))


def test_the_cyclic_collector_is_off_while_an_import_parses_and_back_on_after_it_even_on_failure(
    ws, tmp_path, monkeypatch
):
    import gc

    from core.data.ingest import pipeline

    seen = []
    real = pipeline.normalise_conversation
    monkeypatch.setattr(
        pipeline, "normalise_conversation", lambda rec, fmt: (seen.append(gc.isenabled()), real(rec, fmt))[1]
    )
    good = write_jsonl(tmp_path / "good.jsonl", [sharegpt("q", "a")])
    run(import_data(ws, [good], "d"))
    assert seen == [False] and gc.isenabled()
    bad = write_jsonl(tmp_path / "bad.jsonl", [sharegpt("q2", "a2"), {"conversations": 3}])
    with pytest.raises(BadInput):
        run(import_data(ws, [bad], "e"))
    assert gc.isenabled()


def test_every_import_benchmark_ablation_patches_a_name_the_import_has():
    """An ablation assigns `module.name = ...`; after a rename the assignment would only add a
    new attribute and the benchmark would time the full import under the ablation's name."""
    import ast
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        bench_import = importlib.import_module("bench_import")
    finally:
        sys.path.pop(0)
    modules = {
        m: importlib.import_module(f"core.data.ingest.{m}")
        for m in ("outputs", "pipeline", "sources", "staging", "suites")
    }
    checked = 0
    for name, code in bench_import.ABLATIONS.items():
        for node in ast.walk(ast.parse(code)):
            for t in node.targets if isinstance(node, ast.Assign) else []:
                root = t
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(t, ast.Attribute) and isinstance(root, ast.Name) and root.id in modules:
                    owner = eval(ast.unparse(t.value), dict(modules))  # e.g. pipeline.TokenCounter
                    assert hasattr(owner, t.attr), f"ablation {name}: {ast.unparse(t)} does not exist"
                    checked += 1
    assert checked >= len(bench_import.ABLATIONS) - 1  # batch_2000 assigns through a loop variable
