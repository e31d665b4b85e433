"""The attack list for the code sandbox, run by a scorer process (tests/test_sandbox_attacks.py).

`python tests/sandbox_attacks.py REPO CONFIG_FILE` runs every attack through `run_program` in each
mode and prints one JSON object: per mode and attack, the sandbox's verdict and the code's output,
or the refusal; plus the processes that outlived `run_program`. Only the standard library and
core.scores.sandbox are imported, so an unprivileged user's system Python can run it.
"""

import json
import os
import sys
import time


def attacks(c: dict) -> dict:
    secret, port, scorer = c["secret"], c["port"], c["scorer_pid"]
    half = len(secret) // 2  # the program's text holds the secret only in halves: output can't echo it
    outside = c["outside"]
    return {
        # Secrets: the environment, every /proc/*/environ and cmdline it can see, the scorer's above all.
        "env_and_proc_secrets": f"""
import os, glob
needle = ({secret[:half]!r} + {secret[half:]!r}).encode()
print(dict(os.environ))
for p in [f"/proc/{scorer}/environ", f"/proc/{{os.getppid()}}/environ"] + glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        data = open(p, "rb").read()
        if needle in data:
            print("FOUND in", p, data)
    except OSError as e:
        pass
""",
        "read_workspace_and_home": f"""
import os
for p in {c["readable"]!r}:
    try:
        print(p, open(p, "rb").read())
    except OSError as e:
        print("unreadable", p, e)
for d in {[os.path.dirname(p) for p in c["readable"]] + ["/root", "/home"]!r}:
    try:
        print(d, os.listdir(d))
    except OSError as e:
        print("unlistable", d, e)
""",
        "write_outside": f"""
for p in {outside!r}:
    try:
        open(p, "w").write("escaped")
        print("wrote", p)
    except OSError as e:
        print("refused", p, e)
""",
        "kill_parent": f"""
import os, signal
print("parent", os.getppid())  # 0 under unshare (the code is PID 1), bwrap's init under bwrap
try:
    os.kill({scorer}, 0)
    print("can signal the scorer")
except OSError as e:
    print("cannot signal the scorer", e)
try:
    os.kill(-1, 0)  # signal 0: proves reach without harm should the sandbox fail
    print("kill(-1) reaches processes")
except OSError as e:
    print("kill(-1) reaches nothing", e)
os.kill({scorer}, signal.SIGKILL)
os.kill(os.getppid(), signal.SIGKILL)
print("parent still there")
""",
        "orphan": f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", {c["sleep_token"]!r}])
    time.sleep(60)
time.sleep(0.3)
print("left children behind")
""",
        "socket": f"""
import socket, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=2).read())
except Exception as e:
    print("blocked", type(e).__name__)
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as e:
    print("blocked", type(e).__name__)
""",
        "ctypes_connect": f"""
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM: libc directly, past any Python-level guard
addr = struct.pack("=HH4s8x", 2, socket.htons({port}), bytes([127, 0, 0, 1]))
rc = libc.connect(fd, addr, len(addr))
print("connected" if rc == 0 else "blocked errno %d" % ctypes.get_errno())
""",
        "memory_10gb": "x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n",
        "loop": "while True:\n    pass\n",
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    }


def survivors(tokens) -> list:
    """Processes (anyone's) whose command line carries a token only this run's sandboxes carry."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode("utf-8", "replace")
        except OSError:
            continue
        if any(t in cmd for t in tokens):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from core.scores import sandbox

    with open(sys.argv[2], encoding="utf-8") as f:
        c = json.load(f)
    c["scorer_pid"] = os.getpid()
    tokens = [os.environ["TMPDIR"], c["sleep_token"]]
    report = {"scorer_pid": os.getpid(), "uid": os.getuid(), "results": {}}
    for mode in sandbox.MODES:
        for name, program in attacks(c).items():
            timeout = 2.0 if name in ("loop", "fork_bomb", "orphan") else 5.0
            start = time.monotonic()
            try:
                r = sandbox.run_program(program, timeout=timeout, mode=mode, memory_mb=256, nproc=16)
                res = {"status": r.status, "stdout": r.stdout, "stderr": r.stderr, "backend": r.backend}
            except sandbox.SandboxUnavailable as e:
                res = {"refused": str(e)}
            res["seconds"] = time.monotonic() - start
            res["survivors"] = survivors(tokens)  # right after return: nothing may be left running
            report["results"][f"{mode}/{name}"] = res
    print(json.dumps(report))


if __name__ == "__main__":
    main()
