"""Running untrusted model-written code against tests: a limited, isolated, disposable subprocess.

Every program runs in a fresh `python -I -S` child, in new user (unless we are root), network, PID,
mount, IPC and UTS namespaces made by util-linux `unshare`, which works without root wherever the
kernel allows unprivileged user namespaces. Inside, before the code runs, the child:
  * builds a new root on a private, size-capped tmpfs and `pivot_root`s into it: read-only binds of
    /usr, /bin, /lib*, the interpreter and two files of /etc; fresh /proc (only the sandbox's own
    processes), a minimal /dev; /tmp, /var/tmp, /run, /dev/shm and the working folder /tmp/work
    are writable folders of that tmpfs. Nothing else of the host exists in it: not the workspace,
    not home, not /root, not /run/lock. Writes cannot reach the host and die with the sandbox;
  * has no network: the new network namespace holds only a loopback that is down, so no socket
    (ctypes and raw syscalls included) reaches anything, 127.0.0.1 neither;
  * drops every privilege: all capabilities (the bounding set too, so no `execve` regains one),
    `no_new_privs`, and as root the user becomes `nobody`;
  * sets resource limits: RLIMIT_CPU (SIGKILL), RLIMIT_AS (memory), RLIMIT_FSIZE (largest file),
    RLIMIT_NPROC (counted per user namespace on kernels from 5.14, so a fork bomb stops at the
    limit however many processes the user runs elsewhere), RLIMIT_CORE = 0.
It gets a clean environment (PATH, HOME, TMPDIR, LANG and two PYTHON* settings only: no keys, no
tokens), and a new session. A small supervisor, PID 1 of the namespace (under bwrap, its child),
waits for the code, but no longer than the wall clock or the scorer (a pipe whose other end closes
if the scorer is killed, e.g. a cancelled job); when it exits, the kernel kills every process the
code forked, wherever it moved itself, and `run_program` returns only after, so none outlives it. `kill(-1)` and the parent's /proc are out of its reach.

Where `unshare` cannot make them for an unprivileged user, bubblewrap (`bwrap`, when installed)
builds the same sandbox. Where neither can, `run_program` raises `SandboxUnavailable` with the fix
rather than run the code unconfined. Resource limits alone ("rlimits", the old fallback) cannot
stop code reading the user's secrets, signalling the user's processes, or calling a loopback
server through ctypes, so that mode is refused too: it exists only to say so.
"""

from __future__ import annotations

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

from core.errors import SandboxUnavailable

TIMEOUT_S = 10.0
MEMORY_MB = 1024
FILE_MB = 16
NPROC = 32
ROOT_MB = 64  # the sandbox's whole writable file system (a tmpfs: memory, freed when it ends)
OUTPUT_CHARS = 4000
NOBODY = 65534
MODES = ("namespaces", "rlimits")
FIX = (
    "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
    "user.max_user_namespaces=15000, and on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), "
    "or install bubblewrap (bwrap), or run mirage as root; util-linux `unshare` or bwrap must be on PATH"
)
# Host paths the code may read (read-only). /etc is not among them: only the loader's cache and the
# time zone, so no host configuration, passwd or shadow file is in view.
READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")


def _unshare_cmd(root: bool) -> list[str]:
    # Resolved here: the child's clean PATH is not the one the user set up.
    unshare = shutil.which("unshare") or "unshare"
    # As root the child must not stay root in a user namespace that maps to the host's root (that
    # root owns the host's files and /proc/sys): it sets up as real root, then becomes `nobody`.
    user = [] if root else ["--user", "--map-root-user"]
    return [unshare, *user, "--net", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts", "--"]


def _bwrap_cmd(prog_path: str) -> list[str]:
    """The same sandbox built by bubblewrap, for kernels that allow user namespaces only to it (e.g.
    Ubuntu's AppArmor profile for bwrap): it makes the root, /proc, /dev and drops capabilities."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    for path in _binds():
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for where in ("/tmp", "/var/tmp", "/run", "/dev/shm"):
        cmd += ["--size", str(ROOT_MB << 20), "--tmpfs", where]
    return [*cmd, "--dir", "/tmp/work", "--ro-bind", prog_path, "/run/program.py", "--remount-ro", "/", "--"]


# Runs inside the child (as `python -I -S -c RUNNER CONFIG`): read the program, isolate, limit, run.
RUNNER = r"""
import ctypes, os, resource, sys
# The parent wrote this literal (repr of a dict of str, int, None, tuples); json would import re,
# enum and collections: 8 ms of a ~35 ms run.
cfg = eval(sys.argv[1], {"__builtins__": {}})
with open(cfg["program"], encoding="utf-8") as f:
    src = f.read()
libc = ctypes.CDLL(None, use_errno=True)
def setup_failed(what):
    e = ctypes.get_errno()
    sys.stderr.write("mirage sandbox setup failed: " + what + (": " + os.strerror(e) if e else "") + "\n")
    os._exit(1)
def mount(source, target, fstype, flags, data, what):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        setup_failed(what)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
class MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]
def read_only(target):
    # mount_setattr(AT_FDCWD, target, AT_RECURSIVE, {RDONLY|NOSUID|NODEV}): the bind and every mount
    # under it, and it only adds flags (a remount must repeat flags the kernel locks, or fail).
    attr = MountAttr(1 | 2 | 4, 0, 0, 0)
    if libc.syscall(442, -100, target.encode(), 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return
    st = os.statvfs(target)  # before Linux 5.12: remount the top mount, keeping its locked flags
    keep = st.f_flag & (MS_NOEXEC | 1024 | 2048) | ((1 << 21) if st.f_flag & 4096 else 0)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep, None, "read-only " + target)
def isolate():
    # unshare gave bare namespaces: build the new root and drop privileges here (bwrap did both).
    mount(None, "/", None, MS_REC | MS_PRIVATE, None, "private mounts")  # nothing propagates to the host
    new = cfg["root"]
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=0755" % cfg["root_mb"], "tmpfs root")
    for path in cfg["binds"]:
        if not os.path.lexists(path):
            continue
        target = new + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "w").close()
        mount(path, target, None, MS_BIND | MS_REC, None, "bind " + path)
        read_only(target)
    os.mkdir(new + "/proc")
    if libc.mount(b"proc", (new + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        pass  # a container that masks parts of /proc forbids a fresh one: then the code has no /proc at all
    os.makedirs(new + "/dev", exist_ok=True)
    for dev in cfg["devices"]:
        open(new + "/dev/" + dev, "w").close()
        mount("/dev/" + dev, new + "/dev/" + dev, None, MS_BIND, None, "bind /dev/" + dev)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink("/proc/self/fd/%d" % i, new + "/dev/" + name)
    os.symlink("/proc/self/fd", new + "/dev/fd")
    for where in ("/tmp", "/var/tmp", "/run", "/dev/shm", "/tmp/work"):
        os.makedirs(new + where, exist_ok=True)
        os.chmod(new + where, 0o1777)
    # pivot_root(".", "."), then detach the old root stacked on top: the host's tree leaves this mount
    # namespace altogether (a chroot would keep it reachable to anything that regains privileges).
    os.chdir(new)
    nr = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)
    if nr is None or libc.syscall(nr, b".", b".") != 0 or libc.umount2(b".", 2) != 0:  # MNT_DETACH
        setup_failed("pivot_root")
    os.chdir("/tmp/work")
    # Drop every capability from the bounding set first, so that no execve (as uid 0 of a user
    # namespace, or of a setuid file) can regain one.
    last = 40
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # PR_CAPBSET_DROP; EINVAL: no such cap
            setup_failed("drop capability %d" % cap)
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    if cfg["uid"] is not None:
        os.chown("/tmp/work", cfg["uid"], cfg["uid"])
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])  # from real root: every capability goes with it
        # Changing credentials clears the parent-death signal unshare set: set it again.
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    else:
        # Root of its user namespace, it could still remount the read-only binds: clear the rest.
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
            setup_failed("capset")
if cfg["setup"]:
    isolate()
else:
    os.chdir("/tmp/work")
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid binary gives anything back
    setup_failed("no_new_privs")
# Under bwrap, its own PID 1 and --die-with-parent do this job (and the scorer keeps the clock).
code_pid = os.fork() if cfg["setup"] else 0
if code_pid:
    # The supervisor (PID 1 of the namespace under unshare): wait for the code, but no longer than
    # the wall clock or the scorer, whose end of `alive` closes if it dies or is killed (a cancelled
    # job): exiting here makes the kernel kill every process in the namespace.
    import select, time
    os.close(cfg["ready_fd"])
    try:
        pidfd = [os.pidfd_open(code_pid)]
    except (AttributeError, OSError):
        pidfd = []  # Linux < 5.3: poll instead
    deadline = time.monotonic() + cfg["wall"]
    while True:
        left = max(0.0, deadline - time.monotonic())
        woke = select.select([cfg["alive_fd"], *pidfd], [], [], left if pidfd else min(left, 0.02))[0]
        done, status = os.waitpid(code_pid, os.WNOHANG)
        if done or cfg["alive_fd"] in woke or left == 0:
            break
    rc = os.waitstatus_to_exitcode(status) if done else -9
    os._exit(rc if rc >= 0 else 128 - rc)
os.close(cfg["alive_fd"])
cpu = int(cfg["cpu"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
mem = cfg["memory"]
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
# Isolation is in place: tell the parent, and close the pipe so the code cannot speak on it. From
# here on any failure (a syntax error included) is the code's own.
os.write(cfg["ready_fd"], b"ok")
os.close(cfg["ready_fd"])
del cfg, libc
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
    backend: str = ""  # unshare | bwrap

    def as_meta(self) -> dict:
        return {
            "status": self.status,
            "returncode": self.returncode,
            "seconds": round(self.seconds, 3),
            "isolation": self.isolation,
            "backend": self.backend,
            "stderr": self.stderr[-800:],
        }


def _binds() -> list[str]:
    """What the code may read: the system folders, and the interpreter's own prefix (which may sit
    where the code's user could not otherwise reach, e.g. /root/.pyenv: the new root has no /root)."""
    binds = list(READ_ONLY)
    for extra in (sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        extra = os.path.abspath(extra)
        if not any(extra == b or extra.startswith(b.rstrip("/") + "/") for b in binds):
            binds.append(extra)
    return binds


@lru_cache(maxsize=1)
def _backend() -> tuple[str | None, str | None]:
    """(backend, None) for the first that runs a trivial program here, else (None, why not)."""
    if sys.platform != "linux":
        return None, f"the sandbox needs Linux namespaces (this is {sys.platform})"
    why = []
    for name in ("unshare", "bwrap"):
        if name == "bwrap" and os.geteuid() == 0:
            continue  # root always gets unshare, which then drops to `nobody`
        if not shutil.which(name):
            why.append(f"`{name}` is not on PATH")
            continue
        r = _run("pass\n", backend=name, timeout=10, memory_mb=MEMORY_MB, file_mb=FILE_MB, nproc=NPROC)
        if r.status == "passed":
            return name, None
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
        why.append(f"a trivial program did not run under {name} ({last})")
    return None, "; ".join(why)


def _unavailable() -> str | None:
    return _backend()[1]


def backend() -> str | None:
    """The program that builds the sandbox here ("unshare" or "bwrap"), None where none can."""
    return _backend()[0]


def isolation() -> str:
    """ "namespaces" when the sandbox works on this machine, else "unavailable" (see `require`)."""
    return "unavailable" if _unavailable() else "namespaces"


def require(mode: str | None = None) -> str:
    """The mode code will run in; raises SandboxUnavailable (naming the fix) where it cannot."""
    mode = mode or "namespaces"
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "rlimits":
        raise SandboxUnavailable(
            "code sandbox: resource limits alone do not confine code (it could read this user's "
            f"secrets, signal this user's processes and reach loopback servers); fix: {FIX}"
        )
    why = _unavailable()
    if why:
        raise SandboxUnavailable(
            f"code sandbox unavailable: {why}; model-written code is not run unconfined; fix: {FIX}"
        )
    return mode


def _clean_env() -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp/work",
        "TMPDIR": "/tmp/work",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _kill(proc: subprocess.Popen) -> None:
    """Kill the namespace's PID 1 and wait for `unshare`: the kernel kills every process the code
    forked, wherever it moved itself, and unshare returns only once PID 1 is gone, so the whole
    namespace is (killing unshare first would return while a fork bomb is still being reaped)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            for pid in f.read().split():
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare itself, and anything still in its group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


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

    `mode`: "namespaces" (the default and the only one that runs code) or "rlimits" (refused).
    Raises SandboxUnavailable, naming the fix, where the code cannot be confined.
    """
    require(mode)
    return _run(program, backend=backend(), timeout=timeout, memory_mb=memory_mb, file_mb=file_mb, nproc=nproc)


def _run(program: str, *, backend: str, timeout: float, memory_mb: int, file_mb: int, nproc: int) -> SandboxResult:
    root = os.geteuid() == 0
    workdir = tempfile.mkdtemp(prefix="mirage-sandbox-")
    start = time.monotonic()
    try:
        prog_path = os.path.join(workdir, "program.py")
        with open(prog_path, "w", encoding="utf-8") as f:
            f.write(program)
        os.mkdir(os.path.join(workdir, "root"))  # where the child mounts its new root
        out_path = os.path.join(workdir, ".stdout")
        err_path = os.path.join(workdir, ".stderr")
        ready_r, ready_w = os.pipe()
        alive_r, alive_w = os.pipe()  # we hold the write end: it closes when we end, however
        cfg = {
            "setup": backend == "unshare",
            "program": prog_path if backend == "unshare" else "/run/program.py",
            "root": os.path.join(workdir, "root"),
            "root_mb": ROOT_MB,
            "binds": _binds(),
            "devices": DEVICES,
            "uid": NOBODY if root else None,
            "cpu": max(1, int(timeout + 0.999)),
            "memory": memory_mb << 20,
            "fsize": file_mb << 20,
            "nproc": nproc,
            "ready_fd": ready_w,
            "alive_fd": alive_r,
            "wall": timeout + 0.5,  # ends it itself, before we would have to kill it
        }
        wrap = _unshare_cmd(root) if backend == "unshare" else _bwrap_cmd(prog_path)
        cmd = [*wrap, os.path.realpath(sys.executable), "-I", "-S", "-c", RUNNER, repr(cfg)]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=_clean_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(ready_w, alive_r),
                )
            finally:
                os.close(ready_w)
                os.close(alive_r)
            status = None
            try:
                rc = proc.wait(timeout=timeout + 1.0)
            except subprocess.TimeoutExpired:
                status = "timeout"
                rc = None
            finally:
                if rc is None:
                    _kill(proc)
                os.close(alive_w)
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
        return SandboxResult(
            status == "passed", status, rc, _read_capped(out_path), stderr, seconds, "namespaces", backend
        )
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
    """Run (key, program) pairs in parallel; yield (key, SandboxResult) as each finishes, in order.

    Raises SandboxUnavailable before running anything where the code cannot be confined."""
    require()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(key, pool.submit(run_program, program, timeout=timeout)) for key, program in jobs]
        for key, fut in futures:
            yield key, fut.result()
