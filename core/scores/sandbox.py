"""Running untrusted model-written code against tests: a limited, isolated, disposable subprocess.

Every program runs in a fresh `python -I -S` child with:
  * resource limits set before the code runs: RLIMIT_CPU (SIGXCPU then SIGKILL), RLIMIT_AS
    (memory), RLIMIT_FSIZE (largest file), RLIMIT_NPROC (processes), RLIMIT_CORE = 0;
  * a clean environment (PATH, HOME, TMPDIR, LANG only: no secrets, no PYTHON* variables);
  * a temporary working folder, removed afterwards;
  * a wall-clock timeout after which its whole process group is killed.

Isolation depends on what the machine allows, and `isolation()` says which applies:
  * "namespaces" (root and `unshare` works): new network, PID, mount and IPC namespaces. The
    network namespace has only a down loopback, so no socket reaches anything, even 127.0.0.1.
    The PID namespace means every process the code forks dies with it. A private tmpfs is
    mounted over /tmp, /var/tmp and /dev/shm and the code runs in it, as user `nobody` (so
    RLIMIT_NPROC is enforced, which the kernel skips for root, and the host's files are
    read-only to it).
  * "rlimits" (otherwise): the same limits, privileges dropped to `nobody` if we are root and the
    interpreter is readable to it, and `socket` disabled in the child's Python before the code
    runs. That guard stops ordinary code (socket, urllib, http.client), not code that calls libc
    through ctypes; and code running as
    an ordinary user can write that user's files. Run as root (or in a container) for real
    network and file-system isolation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

TIMEOUT_S = 10.0
MEMORY_MB = 1024
FILE_MB = 16
NPROC = 32
OUTPUT_CHARS = 4000
NOBODY = 65534
_UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--"]

# Runs inside the child (as `python -I -S -c RUNNER CONFIG`): read the program, isolate, limit, run.
RUNNER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
with open(cfg["program"], encoding="utf-8") as f:
    src = f.read()
def setup_failed(what):
    sys.stderr.write("mirage sandbox setup failed: " + what + "\n")
    os._exit(1)
if cfg["tmpfs"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for where in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(where) and libc.mount(b"tmpfs", where.encode(), b"tmpfs", 0, b"size=64m,mode=1777") != 0:
            setup_failed("tmpfs on " + where)
    if cfg["uid"] is not None and cfg["closed_parent"]:
        # The interpreter lives under a folder `nobody` cannot enter (e.g. /root/.pyenv). In this
        # private mount namespace: hide that folder under an empty tmpfs and bind the interpreter
        # back at its own path, so imports work unchanged and the rest of the folder stays unseen.
        base, closed = sys.base_prefix, cfg["closed_parent"]
        os.makedirs("/tmp/.python", exist_ok=True)
        if (libc.mount(base.encode(), b"/tmp/.python", None, 4096 | 16384, None) != 0  # MS_BIND | MS_REC
                or libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 0, b"size=1m,mode=0755") != 0):
            setup_failed("interpreter bind mount")
        os.makedirs(base, exist_ok=True)
        if libc.mount(b"/tmp/.python", base.encode(), None, 4096 | 16384, None) != 0:
            setup_failed("interpreter bind mount")
        libc.umount2(b"/tmp/.python", 2)  # MNT_DETACH
        os.rmdir("/tmp/.python")
    os.makedirs("/tmp/work", exist_ok=True)
    os.chdir("/tmp/work")
    os.environ["HOME"] = os.environ["TMPDIR"] = "/tmp/work"
    if cfg["uid"] is not None:
        os.chown("/tmp/work", cfg["uid"], cfg["uid"])
if cfg["uid"] is not None and (cfg["tmpfs"] or not cfg["closed_parent"]):
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
    # Changing credentials clears the parent-death signal unshare set: set it again so the code
    # dies with its supervisor even if it leaves the process group.
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
cpu = int(cfg["cpu"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
mem = cfg["memory"]
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if cfg["socket_guard"]:
    import socket, _socket
    def _no_network(*a, **k):
        raise OSError("network disabled in the mirage sandbox")
    class _NoSocket:
        def __init__(self, *a, **k):
            _no_network()
    socket.socket = _socket.socket = _NoSocket
    socket.create_connection = socket.socketpair = socket.fromfd = _no_network
    socket.getaddrinfo = _socket.getaddrinfo = _no_network
# Isolation is in place: tell the parent, and close the pipe so the code cannot speak on it. From
# here on any failure (a syntax error included) is the code's own.
os.write(cfg["ready_fd"], b"ok")
os.close(cfg["ready_fd"])
del cfg
sys.argv = ["program.py"]
code = compile(src, "program.py", "exec")
del src
exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # passed | failed | timeout | error (the sandbox itself failed)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str

    def as_meta(self) -> dict:
        return {
            "status": self.status,
            "returncode": self.returncode,
            "seconds": round(self.seconds, 3),
            "isolation": self.isolation,
            "stderr": self.stderr[-800:],
        }


@lru_cache(maxsize=1)
def _closed_parent() -> str | None:
    """The outermost folder above the interpreter that others cannot enter (no o+x), if any:
    an unprivileged child could not import the standard library through it."""
    closed = None
    path = os.path.realpath(sys.base_prefix)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                closed = path
        except OSError:
            closed = path
        parent = os.path.dirname(path)
        if parent == path:
            return closed
        path = parent


@lru_cache(maxsize=1)
def isolation() -> str:
    """ "namespaces" when we can unshare network/PID/mount namespaces (root), else "rlimits"."""
    if os.geteuid() != 0 or not shutil.which("unshare") or sys.platform != "linux":
        return "rlimits"
    try:
        r = subprocess.run(_UNSHARE + ["true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "rlimits"
    return "namespaces" if r.returncode == 0 else "rlimits"


def _clean_env(workdir: str) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _read_capped(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(OUTPUT_CHARS * 4).decode("utf-8", "replace")[-OUTPUT_CHARS:]
    except OSError:
        return ""


def run_program(
    program: str,
    *,
    timeout: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    file_mb: int = FILE_MB,
    nproc: int = NPROC,
    mode: str | None = None,
) -> SandboxResult:
    """Run a Python program in the sandbox; `passed` means it exited 0 within its limits.

    `mode` forces "namespaces" or "rlimits" (tests exercise both); default: the best available.
    """
    mode = mode or isolation()
    root = os.geteuid() == 0
    uid = NOBODY if root else None
    workdir = tempfile.mkdtemp(prefix="mirage-sandbox-")
    start = time.monotonic()
    try:
        prog_path = os.path.join(workdir, "program.py")
        with open(prog_path, "w", encoding="utf-8") as f:
            f.write(program)
        if uid is not None:
            # The dropped-privilege child must read the program and (without tmpfs) write its cwd.
            os.chown(workdir, uid, uid)
            os.chmod(prog_path, 0o644)
        cfg = {
            "program": prog_path,
            "tmpfs": mode == "namespaces",
            "uid": uid,
            "cpu": max(1, int(timeout + 0.999)),
            "memory": memory_mb << 20,
            "fsize": file_mb << 20,
            "nproc": nproc,
            "socket_guard": mode != "namespaces",
            "closed_parent": _closed_parent(),
        }
        cmd = [sys.executable, "-I", "-S", "-c", RUNNER, json.dumps(cfg)]
        if mode == "namespaces":
            cmd = _UNSHARE + cmd
        out_path = os.path.join(workdir, ".stdout")
        err_path = os.path.join(workdir, ".stderr")
        ready_r, ready_w = os.pipe()
        cmd[cmd.index(RUNNER) + 1] = json.dumps({**cfg, "ready_fd": ready_w})
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=_clean_env(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(ready_w,),
                )
            finally:
                os.close(ready_w)
            status = None
            try:
                rc = proc.wait(timeout=timeout + 1.0)
            except subprocess.TimeoutExpired:
                status = "timeout"
                rc = None
            finally:
                # Whatever is left of the group (children the code forked) goes too.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                if rc is None:
                    proc.wait()
        seconds = time.monotonic() - start
        with os.fdopen(ready_r, "rb") as f:
            ready = f.read(2) == b"ok"
        stderr = _read_capped(err_path)
        if not ready and status is None:
            status = "error"  # the sandbox never got as far as running the code
        if status is None:
            if rc == 0:
                status = "passed"
            elif rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
                status = "timeout"
            else:
                status = "failed"
        return SandboxResult(status == "passed", status, rc, _read_capped(out_path), stderr, seconds, mode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- HumanEval-style checks ----------------------------------------------------------------------
def extract_code(output: str, entry_point: str | None = None) -> str:
    """The code in a model output: the fenced block defining the entry point (else the first fenced
    block), or the output itself when it has no fences."""
    if "```" not in output:
        return output
    blocks = []
    parts = output.split("```")
    for i in range(1, len(parts), 2):
        block = parts[i]
        first, _, rest = block.partition("\n")
        blocks.append(rest if first.strip().isidentifier() or not first.strip() else block)
    if entry_point:
        for b in blocks:
            if f"def {entry_point}(" in b:
                return b
    return blocks[0] if blocks else output


def _compiles(src: str) -> bool:
    try:
        compile(src, "prompt", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def build_program(prompt: str, output: str, tests: str, entry_point: str) -> tuple[str, str]:
    """The program to run, and how it was put together ("whole_function" or "prompt+completion").

    HumanEval's convention: the completion continues the prompt. A chat model often writes the
    whole function instead; then it is used alone, after the prompt's own code when the prompt
    compiles by itself (its imports and helper functions; the prompt's stub, a signature with a
    docstring, is valid Python and is simply redefined by the output's function).
    """
    code = extract_code(output, entry_point)
    if f"def {entry_point}(" in code:
        head = (
            prompt
            if _compiles(prompt)
            else "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))
        )
        program, how = head + "\n" + code, "whole_function"
    else:
        program, how = prompt + code, "prompt+completion"
    return f"{program}\n\n{tests}\n\ncheck({entry_point})\n", how


def check_many(jobs: Iterable[tuple], *, workers: int = 2, timeout: float = TIMEOUT_S) -> Iterator[tuple]:
    """Run (key, program) pairs in parallel; yield (key, SandboxResult) as each finishes, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(key, pool.submit(run_program, program, timeout=timeout)) for key, program in jobs]
        for key, fut in futures:
            yield key, fut.result()
