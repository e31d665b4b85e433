"""The code sandbox: escape attempts are contained; HumanEval canonical solutions pass, stubs fail."""

import gzip
import http.server
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from core.errors import SandboxUnavailable
from core.scores import sandbox


def test_plain_program_runs_in_clean_env_and_folder_is_removed(monkeypatch):
    sandbox.require()  # the one-off probe makes a folder of its own
    made = []
    real = sandbox.tempfile.mkdtemp
    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda **kw: made.append(real(**kw)) or made[-1])
    r = sandbox.run_program("import os\nprint(sorted(os.environ))\nopen('scratch.txt', 'w').write('x')")
    assert r.passed and r.status == "passed", r.stderr
    env = eval(r.stdout.splitlines()[0])
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
    assert len(made) == 1 and not Path(made[0]).exists()


def test_reports_isolation_in_use():
    mode = sandbox.isolation()
    assert mode in ("namespaces", "unavailable")
    if os.geteuid() == 0 and shutil.which("unshare"):
        assert mode == "namespaces"


@pytest.fixture
def fresh_probe():
    sandbox._backend.cache_clear()
    yield
    sandbox._backend.cache_clear()


def test_rlimits_mode_is_refused_naming_the_fix(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match="fix: allow unprivileged user namespaces"):
        sandbox.run_program(f"open({str(marker)!r}, 'w').write('x')\n", mode="rlimits")
    assert not marker.exists()
    with pytest.raises(ValueError):
        sandbox.run_program("pass\n", mode="chroot")


def test_without_unshare_code_is_refused_not_run_unconfined(tmp_path, monkeypatch, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))  # no util-linux here
    marker = tmp_path / "ran"
    prog = f"open({str(marker)!r}, 'w').write('x')\n"
    with pytest.raises(SandboxUnavailable, match="`unshare` is not on PATH.*fix:"):
        sandbox.run_program(prog)
    with pytest.raises(SandboxUnavailable):
        list(sandbox.check_many([("k", prog)]))
    assert sandbox.isolation() == "unavailable" and not marker.exists()


def test_a_kernel_that_refuses_namespaces_is_named_in_the_error(tmp_path, monkeypatch, fresh_probe):
    # An `unshare` that fails as util-linux's does where user namespaces are off (Ubuntu's AppArmor
    # restriction, user.max_user_namespaces = 0): the kernel's answer reaches the message.
    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing else: not bwrap either
    with pytest.raises(SandboxUnavailable, match="Operation not permitted.*fix:"):
        sandbox.run_program("print('never')\n")


def test_secret_in_parent_env_is_not_visible(monkeypatch):
    monkeypatch.setenv("MIRAGE_FAKE_SECRET", "hunter2-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-secret")
    code = (
        "import os\n"
        "print(os.environ.get('MIRAGE_FAKE_SECRET'), os.environ.get('OPENAI_API_KEY'))\n"
        "try:\n    print(open('/proc/%d/environ' % os.getppid(), 'rb').read())\n"
        "except OSError as e:\n    print('denied')\n"
    )
    r = sandbox.run_program(code)
    assert r.passed
    assert "hunter2" not in r.stdout and "sk-fake" not in r.stdout
    assert r.stdout.startswith("None None")


def test_infinite_loop_is_killed():
    start = time.monotonic()
    r = sandbox.run_program("while True:\n    pass\n", timeout=1.5)
    assert not r.passed and r.status == "timeout"
    assert time.monotonic() - start < 6


def test_sleeping_process_that_leaves_its_group_is_killed():
    start = time.monotonic()
    r = sandbox.run_program("import os, time\nos.setsid()\ntime.sleep(60)\n", timeout=1.5)
    assert r.status == "timeout" and time.monotonic() - start < 6


def test_fork_bomb_is_contained(tmp_path, monkeypatch):
    sandbox.require()
    # Its folder (in every sandbox process's command line) under tmp_path: other engineers' runs
    # on this machine have sandboxes of their own.
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    r = sandbox.run_program(code, timeout=2)
    assert not r.passed and time.monotonic() - start < 8
    # Nothing it forked survives `run_program`: not even for a moment after it returns.
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(tmp_path) in _cmdline(p)]
    assert left == []


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def test_allocating_10_gb_fails():
    r = sandbox.run_program("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n")
    assert not r.passed and "allocated" not in r.stdout and "MemoryError" in r.stderr


def test_writing_outside_the_folder_is_contained(tmp_path):
    target = tmp_path / "escape.txt"
    tmp_target = Path("/tmp") / f"mirage-escape-{os.getpid()}.txt"
    code = (
        f"for p in [{str(target)!r}, {str(tmp_target)!r}]:\n"
        "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
        "    except OSError as e:\n        print('refused', p)\n"
        "open('inside.txt', 'w').write('fine')\n"
    )
    r = sandbox.run_program(code)
    assert r.passed, r.stderr
    assert "refused" in r.stdout and not target.exists()
    assert not tmp_target.exists()  # /tmp is a private tmpfs in the sandbox
    tmp_target.unlink(missing_ok=True)


def test_large_file_write_is_capped():
    r = sandbox.run_program("open('big', 'wb').write(b'x' * (64 << 20))\n", file_mb=1)
    assert not r.passed


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"reached")

    def log_message(self, *a):
        pass


@pytest.fixture
def local_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def _net_probe(port: int) -> str:
    return (
        f"import socket, urllib.request\n"
        f"try:\n    print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read())\n"
        f"except Exception as e:\n    print('blocked', type(e).__name__)\n"
        f"try:\n    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        f"    s.connect(('127.0.0.1', {port}))\n    print('connected')\n"
        f"except Exception as e:\n    print('blocked', type(e).__name__)\n"
    )


def test_network_is_unreachable_in_default_mode(local_server):
    # The server is reachable from here, so a "blocked" below is the sandbox, not the machine.
    with socket.create_connection(("127.0.0.1", local_server), timeout=3):
        pass
    r = sandbox.run_program(_net_probe(local_server))
    assert r.passed, r.stderr
    assert "reached" not in r.stdout and "connected" not in r.stdout
    assert r.stdout.count("blocked") == 2


def test_build_program_whole_function_or_completion():
    prompt = 'from typing import List\n\ndef add(a: List[int]) -> int:\n    """Sum."""\n'
    tests = "def check(candidate):\n    assert candidate([1, 2]) == 3\n"
    prog, how = sandbox.build_program(prompt, "    return sum(a)\n", tests, "add")
    assert how == "prompt+completion" and sandbox.run_program(prog).passed
    chat = "Here you go:\n```python\ndef add(a: List[int]) -> int:\n    return sum(a)\n```\nHope this helps!"
    prog, how = sandbox.build_program(prompt, chat, tests, "add")
    assert how == "whole_function" and sandbox.run_program(prog).passed
    prog, _ = sandbox.build_program(prompt, "    pass\n", tests, "add")
    assert not sandbox.run_program(prog).passed


def test_humaneval_canonical_all_pass_and_stubs_fail(shared_data):
    rows = [json.loads(line) for line in gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz")]
    assert len(rows) == 164
    jobs = [
        (r["task_id"], sandbox.build_program(r["prompt"], r["canonical_solution"], r["test"], r["entry_point"])[0])
        for r in rows
    ]
    results = dict(sandbox.check_many(jobs, workers=2))
    failed = {k: v.stderr[-300:] for k, v in results.items() if not v.passed}
    assert failed == {}
    stubs = [
        (r["task_id"], sandbox.build_program(r["prompt"], "    pass\n", r["test"], r["entry_point"])[0])
        for r in rows[:20]
    ]
    assert not any(v.passed for _, v in sandbox.check_many(stubs, workers=2))


def test_only_the_sandbox_itself_can_report_a_setup_error():
    # The code cannot pass its own failure off as the sandbox's (which scores null, not 0).
    r = sandbox.run_program("import os, sys\nsys.stderr.write('mirage sandbox setup failed: x\\n')\nos._exit(97)\n")
    assert r.status == "failed" and not r.passed
    r = sandbox.run_program("def broken(:\n")
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_a_sandbox_that_cannot_set_up_reports_error(monkeypatch):
    sandbox.require()
    monkeypatch.setattr(sandbox, "DEVICES", ("mirage-no-such-device",))
    r = sandbox.run_program("print('never')")
    assert r.status == "error" and "setup failed" in r.stderr and "never" not in r.stdout


def test_code_holds_no_capability_and_cannot_remount():
    code = (
        "import ctypes\n"
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print([status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')])\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.mount(None, b'/usr', None, 32 | 4096, None), libc.mount(b'tmpfs', b'/usr', b'tmpfs', 0, None))\n"
    )
    r = sandbox.run_program(code)
    assert r.passed, r.stderr
    caps, mounts = r.stdout.splitlines()
    assert eval(caps) == ["0000000000000000"] * 5 + ["1"]
    assert mounts == "-1 -1"
