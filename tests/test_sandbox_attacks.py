"""The code sandbox holds against the whole attack list, in both modes, run by root and by an
unprivileged scorer: each mode either contains every attack or refuses to run, naming the fix."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ATTACKS = Path(__file__).with_name("sandbox_attacks.py")
NOBODY = 65534


@pytest.fixture
def listener():
    """A loopback TCP server that counts every connection it ever accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn.getpeername())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], accepted
    srv.close()


def _scorers():
    """(name, argv prefix, python) for each scorer identity this machine can run."""
    yield "this-user", [], sys.executable
    if os.geteuid() == 0 and shutil.which("setpriv") and Path("/usr/bin/python3").exists():
        # The venv's interpreter may live where `nobody` cannot go (/root/.pyenv): the system one.
        drop = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        yield "nobody", drop, "/usr/bin/python3"


@pytest.mark.parametrize("tools", ["path", "bwrap-only"])
@pytest.mark.parametrize("who", [s[0] for s in _scorers()])
def test_attack_list_is_contained_or_refused_in_both_modes(who, tools, request, listener):
    """tools: the scorer's PATH as it is (unshare preferred), or holding only bubblewrap."""
    _, drop, python = next(s for s in _scorers() if s[0] == who)
    if tools == "bwrap-only" and not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    port, accepted = listener
    # Not under pytest's tmp_path: `nobody` must get in, and each pytest run (any engineer's on this
    # machine) sets pytest-of-USER back to 0700.
    tmp_path = Path(tempfile.mkdtemp(prefix="mirage-attack-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    tmp_path.chmod(0o755)
    secret = f"sk-test-{uuid.uuid4().hex}"
    ws_secret = f"workspace-secret-{uuid.uuid4().hex}"
    # A home and a workspace that an escaped process could both read and write (mode 0777/0644),
    # so that only the sandbox stands between the code and them.
    home, ws, tmpdir = tmp_path / "home", tmp_path / "ws", tmp_path / "tmp"
    for d in (home, ws, tmpdir, home / ".config"):
        d.mkdir()
        d.chmod(0o777)
    (ws / "mirage.db").write_text(ws_secret)
    (home / ".config" / "token").write_text(ws_secret)
    for f in (ws / "mirage.db", home / ".config" / "token"):
        f.chmod(0o644)
    mark = f"mirage-escape-{uuid.uuid4().hex[:12]}"
    outside = [str(home / mark), str(ws / mark), str(tmp_path / mark)]
    outside += [f"/tmp/{mark}", f"/var/tmp/{mark}", f"/dev/shm/{mark}", f"/run/lock/{mark}", f"/run/{mark}"]
    outside.append(os.path.join(os.path.realpath(sys.base_prefix), mark))
    config = {
        "secret": secret,
        "port": port,
        "outside": outside,
        # The workspace's database, a token at home, and what root alone may read.
        "readable": [str(ws / "mirage.db"), str(home / ".config" / "token"), "/etc/shadow"],
        "sleep_token": f"4{uuid.uuid4().int % 10**6:06d}.5",  # `sleep` for days: a unique argv
    }
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if tools == "bwrap-only":
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "bwrap").symlink_to(shutil.which("bwrap"))
        path = str(tmp_path / "bin")
    env = {
        "PATH": path,
        "HOME": str(home),
        "TMPDIR": str(tmpdir),  # every sandbox of this run carries this path in its command line
        "OPENAI_API_KEY": secret,
        "GITHUB_TOKEN": secret,
        "MIRAGE_WORKSPACE": str(ws),
    }
    config_file = tmp_path / "config.json"  # not on the command line: that is readable to all
    config_file.write_text(json.dumps(config))
    config_file.chmod(0o644)
    try:
        proc = subprocess.run(
            [*drop, python, str(ATTACKS), str(REPO), str(config_file)],
            env=env,
            cwd=ws,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # The scorer survived every attack (kill_parent among them) and finished its report.
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        results = report["results"]
        assert len(results) == 20
        ran = {k: v for k, v in results.items() if "refused" not in v}
        for key, res in results.items():
            mode, attack = key.split("/")
            text = json.dumps(res)
            assert secret not in text and ws_secret not in text, key
            assert res["survivors"] == [], key
            if "refused" in res:
                assert "fix:" in res["refused"] and "user namespaces" in res["refused"], key
                continue
            assert mode == "namespaces", f"{key}: rlimits alone cannot confine code, yet it ran"
            assert "can signal the scorer" not in res["stdout"] and "kill(-1) reaches processes" not in res["stdout"], (
                key
            )
            assert "connected" not in res["stdout"], key
            assert res["status"] != "error", f"{key}: {res['stderr']}"
        if ran:  # where the sandbox runs, each attack failed the way its limit says
            assert {r["backend"] for r in ran.values()} == ({"bwrap"} if tools == "bwrap-only" else {"unshare"})
            assert ran["namespaces/loop"]["status"] == "timeout"
            assert ran["namespaces/loop"]["seconds"] < 6
            assert ran["namespaces/fork_bomb"]["status"] != "passed"
            assert ran["namespaces/fork_bomb"]["seconds"] < 8
            assert "MemoryError" in ran["namespaces/memory_10gb"]["stderr"]
            assert "allocated" not in ran["namespaces/memory_10gb"]["stdout"]
            assert ran["namespaces/socket"]["stdout"].count("blocked") == 2
            assert "blocked errno" in ran["namespaces/ctypes_connect"]["stdout"]
            # The host's home and workspace are not in its file system at all; /tmp, /run and the
            # like are its own private tmpfs (checked below: nothing appeared on the host).
            written = ran["namespaces/write_outside"]["stdout"]
            assert all(f"refused {p}" in written for p in outside[:3]), written
            read = ran["namespaces/read_workspace_and_home"]["stdout"]
            assert read.count("unreadable") == 3 and "unreadable /etc/shadow" in read, read
            assert "cannot signal the scorer" in ran["namespaces/kill_parent"]["stdout"]
            assert "kill(-1) reaches nothing" in ran["namespaces/kill_parent"]["stdout"]
        assert all("refused" in results[f"rlimits/{a}"] for a in ("loop", "socket", "kill_parent"))
        if os.geteuid() == 0 and who == "this-user" and tools == "path":
            assert len(ran) == 10  # root with util-linux: the sandbox must run, not just refuse
        if os.geteuid() == 0 and tools == "bwrap-only" and who == "this-user":
            assert ran == {}  # root uses unshare only (bwrap as root would keep uid 0)
    finally:
        for p in outside:
            Path(p).unlink(missing_ok=True)
    assert accepted == []  # the loopback listener never saw a connection
    assert not any(Path(p).exists() for p in outside)


def _with_token(token: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and token in (p / "cmdline").read_bytes().decode("utf-8", "replace"):
                found.append(int(p.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("who", [s[0] for s in _scorers()])
def test_a_killed_scorer_takes_its_sandboxes_along(who):
    """A cancelled job is a scorer killed mid-run: its sleeping sandbox must not live on."""
    _, drop, python = next(s for s in _scorers() if s[0] == who)
    tmpdir = Path(tempfile.mkdtemp(prefix="mirage-killed-"))
    tmpdir.chmod(0o777)
    try:
        script = (
            f"import sys; sys.path.insert(0, {str(REPO)!r}); from core.scores import sandbox; "
            "sandbox.require(); print('probed', flush=True); "
            "sandbox.run_program('import time\\ntime.sleep(120)\\n', timeout=60)"
        )
        scorer = subprocess.Popen(
            [*drop, python, "-c", script],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmpdir)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert scorer.stdout.readline() == "probed\n"
        deadline = time.monotonic() + 10
        while not _with_token(str(tmpdir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # past its setup: the code is asleep
        assert scorer.poll() is None and _with_token(str(tmpdir)), "the sandbox never started"
        scorer.kill()
        scorer.wait()
        deadline = time.monotonic() + 3
        while _with_token(str(tmpdir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _with_token(str(tmpdir)) == []
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
