"""Teacher collection and endpoint faults, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import pytest
from fake_openai import FakeOpenAI, Faults
from test_generation import qa_suite

from core.cli import main
from core.data.datasets import decode_example
from core.errors import BadInput, EndpointError
from core.models import collect, generation
from core.models import registry as models
from core.runtime import progress


@pytest.fixture
def teacher(ws):
    srv = FakeOpenAI().start()
    models.register(ws, "teacher", "openai", {"base_url": srv.base_url, "model": "fake-model"})
    yield srv
    srv.stop()


def write_prompts(tmp_path, n=12):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(n)))
    return p


def examples(ws, name):
    return [
        decode_example(r)
        for r in ws.db.query(
            "select e.* from examples e join datasets d on d.id = e.dataset_id where d.name = ? order by e.idx", [name]
        )
    ]


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_collect_from_prompts_file_with_provenance(ws, teacher, tmp_path):
    p = write_prompts(tmp_path)
    s = progress.run(collect.collect(ws, "teacher", prompts_file=str(p), name="imit", concurrency=3, command="test"))
    assert (s["examples"], s["asked"], s["cached"]) == (12, 12, 0)
    rows = examples(ws, "imit")
    conv = rows[3]["conversation"]
    assert conv == [
        {"role": "user", "content": "Tell me about topic 3."},
        {"role": "assistant", "content": "Answer to: Tell me about topic 3."},
    ]
    assert rows[3]["source"] == "teacher"
    ds = ws.db.execute("select status, meta from datasets where name = 'imit'").fetchone()
    meta = json.loads(ds[1])
    assert ds[0] == "ready"
    assert meta["teacher"] == "teacher" and meta["decoding"]["temperature"] == 0.0
    assert meta["command"] == "test" and meta["collected_at"] and meta["recipe"]["prompts"] == 12
    # Rerun: nothing asked again, nothing duplicated.
    before = len(teacher.requests)
    s2 = progress.run(collect.collect(ws, "teacher", prompts_file=str(p), name="imit"))
    assert (s2["asked"], s2["cached"], s2["examples"]) == (0, 12, 12)
    assert len(teacher.requests) == before


def test_teacher_dying_mid_collection_then_rerun(ws, tmp_path):
    srv = FakeOpenAI(faults=Faults(die_after=5)).start()
    port = srv.port
    models.register(ws, "teacher", "openai", {"base_url": srv.base_url, "model": "fake-model"})
    p = write_prompts(tmp_path, 12)
    with pytest.raises(EndpointError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        progress.run(collect.collect(ws, "teacher", prompts_file=str(p), name="imit", concurrency=1))
    saved = examples(ws, "imit")
    assert len(saved) == 5  # every answer that arrived is kept
    asked_first = set(srv.prompts())
    srv2 = FakeOpenAI().start(port)  # the teacher comes back on the same address
    try:
        s = progress.run(collect.collect(ws, "teacher", prompts_file=str(p), name="imit", concurrency=2))
        assert s["examples"] == 12 and s["cached"] == 5 and s["asked"] == 7
        assert not asked_first & set(srv2.prompts())  # no finished prompt asked again
        rows = examples(ws, "imit")
        assert len(rows) == 12 and len({r["content_hash"] for r in rows}) == 12
        assert sorted(r["idx"] for r in rows) == list(range(12))
    finally:
        srv2.stop()


def test_synthetic_recipe_dedupes_and_reaches_n(ws, teacher):
    qa_suite(ws, "seed")
    s = progress.run(collect.collect(ws, "teacher", synthetic_from="seed", n=8, k=3, seed=0, name="nq-synth"))
    assert s["examples"] == 8
    assert s["duplicates"] > 0 and s["unparsable"] > 0  # the stub repeats itself and sometimes refuses
    rows = examples(ws, "nq-synth")
    qs = [r["conversation"][0]["content"] for r in rows]
    assert len(set(qs)) == 8 and all(q.startswith("What is fact number") for q in qs)
    first = teacher.requests[0]["messages"][0]["content"]
    assert first.count("Question:") == 4 and "Answer: " in first  # 3 seed pairs + the format line
    assert rows[0]["meta"]["seed_items"]
    # A rerun asks nothing: every request index is cached.
    n_req = len(teacher.requests)
    s2 = progress.run(collect.collect(ws, "teacher", synthetic_from="seed", n=8, k=3, seed=0, name="nq-synth"))
    assert s2["asked"] == 0 and s2["examples"] == 8 and len(teacher.requests) == n_req


def test_parse_qa():
    assert collect.parse_qa("Sure!\nQuestion: Who? \nAnswer: Me\nmore") == ("Who?", "Me")
    assert collect.parse_qa("**Question:** Where?\n**Answer:** Here") == ("Where?", "Here")
    assert collect.parse_qa("no pair here") is None
    # Seen from SmolLM2: a repeated "Question:" line, and a run-on "TheAnswer:".
    assert collect.parse_qa("Question: Which lake?\n\nQuestion:\nAnswer: Superior") == ("Which lake?", "Superior")
    assert collect.parse_qa("Question: Who?\nTheAnswer: Bob") == ("Who?", "Bob")
    assert collect.parse_qa("Question: x?\nAnswer:") is None


def test_bad_prompts_file_names_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    with pytest.raises(BadInput, match=r"bad.jsonl:2: field 'prompt': no non-empty prompt"):
        collect.read_prompts(p)
    p.write_text('{"prompt": "ok"}\n{broken\n')
    with pytest.raises(BadInput, match=r"bad.jsonl:2: invalid JSON"):
        collect.read_prompts(p)


def test_429_storm_and_5xx_and_malformed_are_retried(ws, teacher):
    qa_suite(ws, n=4)
    # Fewer faults in all than MAX_ATTEMPTS: even if one request draws every fault it gets through.
    teacher.faults.rate_limit = 2
    teacher.faults.server_error = 2
    teacher.faults.malformed = 1
    s = progress.run(generation.generate(ws, "teacher", "qa", concurrency=2))
    assert (s["generated"], s["failed"]) == (4, 0)
    assert teacher.attempts == 4 + 2 + 2 + 1
    row = ws.db.execute("select meta from generations limit 1").fetchone()
    meta = json.loads(row[0])
    assert meta["usage"]["prompt_tokens"] > 0 and meta["latency_s"] >= 0 and meta["attempts"] >= 1


def test_endless_storm_fails_cleanly_and_keeps_what_finished(ws, teacher, monkeypatch):
    monkeypatch.setattr(generation, "MAX_ATTEMPTS", 3)
    qa_suite(ws, n=3)
    progress.run(generation.generate(ws, "teacher", "qa", limit=1))
    teacher.faults.rate_limit = 1000
    with pytest.raises(
        EndpointError,
        match=r"2 of 2 requests to 'teacher' failed \(rate limited \(429\) after 3"
        r" attempts\); 1 outputs are saved: rerun",
    ):
        progress.run(generation.generate(ws, "teacher", "qa"))
    teacher.faults.rate_limit = 0
    s = progress.run(generation.generate(ws, "teacher", "qa"))
    assert (s["cached"], s["generated"]) == (1, 2)


def test_hanging_request_times_out_and_is_retried(ws, teacher):
    qa_suite(ws, n=1)
    teacher.faults.hang, teacher.faults.hang_s = 1, 3.0
    models.register(
        ws, "teacher", "openai", {"base_url": teacher.base_url, "model": "fake-model", "timeout_s": 0.5}, replace=True
    )
    s = progress.run(generation.generate(ws, "teacher", "qa"))
    assert s["generated"] == 1
    assert json.loads(ws.db.execute("select meta from generations").fetchone()[0])["attempts"] == 2


def test_wrong_key_names_the_env_var_and_never_echoes_it(ws, capsys, monkeypatch):
    srv = FakeOpenAI(faults=Faults(api_key="right-key")).start()
    try:
        monkeypatch.setenv("TEACHER_KEY", "sk-wrong-secret-123")
        models.register(
            ws, "t", "openai", {"base_url": srv.base_url, "model": "fake-model", "api_key_env": "TEACHER_KEY"}
        )
        qa_suite(ws, n=2)
        code, out, err = run_cli(capsys, "generate", "--model", "t", "--suite", "qa", "-w", str(ws.root))
        assert code == 1
        assert err.strip() == f"error: {srv.base_url}: the API key was rejected (401); check the key in $TEACHER_KEY"
        assert "sk-wrong" not in out + err
        assert "sk-wrong" not in json.dumps([dict(r) for r in ws.db.query("select * from models")])
        monkeypatch.delenv("TEACHER_KEY")
        code, out, err = run_cli(capsys, "generate", "--model", "t", "--suite", "qa", "-w", str(ws.root))
        assert (
            err.strip() == "error: model 't': environment variable TEACHER_KEY is not set (it should hold the API key)"
        )
        monkeypatch.setenv("TEACHER_KEY", "right-key")
        code, out, err = run_cli(capsys, "generate", "--model", "t", "--suite", "qa", "-w", str(ws.root), "--json")
        assert code == 0 and json.loads(out)["generated"] == 2
    finally:
        srv.stop()


def test_unreachable_endpoint_is_one_line_naming_the_url(ws, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models.register(ws, "gone", "openai", {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m"})
    qa_suite(ws, n=2)
    code, out, err = run_cli(capsys, "generate", "--model", "gone", "--suite", "qa", "-w", str(ws.root))
    assert code == 1
    assert err.strip() == f"error: cannot reach http://127.0.0.1:{port}/v1 (connection failed)"


def test_cli_collect_and_dataset_listing(ws, teacher, tmp_path, capsys):
    p = write_prompts(tmp_path, 3)
    code, out, err = run_cli(
        capsys, "collect", "--teacher", "teacher", "--prompts", str(p), "--name", "imit", "--json", "-w", str(ws.root)
    )
    assert code == 0, err
    assert json.loads(out)["examples"] == 3
    code, out, err = run_cli(
        capsys, "collect", "--teacher", "nobody", "--prompts", str(p), "--name", "x", "-w", str(ws.root)
    )
    assert code == 1 and err.startswith("error: no model 'nobody' (known: gemma3-270m, smollm2-135m-instruct, teacher;")


def test_collect_job_runs(ws, teacher, tmp_path):
    from core.runtime import jobs

    p = write_prompts(tmp_path, 4)
    jid = jobs.submit(
        ws, "collect", "collect imit", {"teacher": "teacher", "name": "imit", "prompts_file": str(p)}, detach=False
    )
    job = jobs.get_job(ws, jid)
    assert job["status"] == "done", job["error"]
    assert len(examples(ws, "imit")) == 4


def chat_reply(content) -> dict:
    return {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": content}}]}


def test_malformed_teacher_replies_are_retried_then_counted_failed(ws, teacher, tmp_path, capsys, monkeypatch):
    # A number for the text, no choices, a null body: each is retried like any malformed reply.
    teacher.faults.replies = [chat_reply(42), {"id": "c", "object": "chat.completion"}, None]
    p = write_prompts(tmp_path, 2)
    s = progress.run(collect.collect(ws, "teacher", prompts_file=str(p), name="imit", concurrency=1))
    assert (s["examples"], s["asked"], s["failed"]) == (2, 2, 0)
    assert teacher.attempts == 2 + 3
    # A teacher that never answers properly: the request fails, counted, with a one-line error.
    monkeypatch.setattr(generation, "MAX_ATTEMPTS", 2)
    teacher.faults.replies = [chat_reply(7), {"choices": []}]
    other = tmp_path / "other.txt"
    other.write_text("A prompt never asked before\n")
    code, out, err = run_cli(
        capsys, "collect", "--teacher", "teacher", "--prompts", str(other), "--name", "bad", "-w", str(ws.root)
    )
    assert code == 1
    assert err.startswith("error: 1 requests to 'teacher' failed (malformed response (") and "after 2 attempts" in err
    assert "unexpected" not in err and len(err.strip().splitlines()) == 1


def test_timeout_option_ends_a_slow_endpoint_with_one_line(ws, teacher, tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setattr(generation, "MAX_ATTEMPTS", 2)
    teacher.faults.delay_s = 5.0  # the model's own timeout (120 s) would wait it out
    qa_suite(ws, n=1)
    p = write_prompts(tmp_path, 1)
    for args, failed in [
        (["generate", "--model", "teacher", "--suite", "qa"], "1 of 1 requests to 'teacher' failed"),
        (["collect", "--teacher", "teacher", "--prompts", str(p), "--name", "slow"], "1 requests to 'teacher' failed"),
    ]:
        t0 = time.monotonic()
        code, out, err = run_cli(capsys, *args, "--timeout", "0.3", "-w", str(ws.root))
        assert time.monotonic() - t0 < 4.5
        assert code == 1 and err.startswith(f"error: {failed} (timed out after 2 attempts)")
        assert len(err.strip().splitlines()) == 1
    from core.runtime import jobs

    jid = jobs.submit(ws, "generate", "g", {"model": "teacher", "suite": "qa", "timeout": 0.3}, detach=False)
    assert "(timed out after 2 attempts)" in jobs.get_job(ws, jid)["error"]
    code, out, err = run_cli(
        capsys, "collect", "--teacher", "teacher", "--prompts", str(p), "--name", "x", "--timeout", "0"
    )
    assert code == 2 and "--timeout" in err
