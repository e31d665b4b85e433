"""Serve a local model on 127.0.0.1 with `transformers serve` (OpenAI-compatible), offline.

This is how the offline teacher is reached: through the `openai` client, the same code path as a
real API. For scale, point an "openai" model at `vllm serve` instead; nothing else changes.
Running servers are recorded in `artifacts/servers/` so the CLI and the TUI can show and stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import ModelError, NotFound
from core.models.kinds import ResolvedModel
from core.models.registry import register, resolve
from core.runtime.processes import free_port, process_alive
from core.runtime.progress import Progress, Work, drive, run
from core.store.paths import model_cache
from core.store.workspace import Workspace, now

START_TIMEOUT_S = 300.0
# With continuous batching (paged attention) `transformers serve` answers concurrent requests in
# one batch, several times faster than one at a time (benchmarks/bench_serve.py). Without it,
# concurrent requests compete in threads and each gets slower, so a plain server gets one at a time.
BATCHED_CONCURRENCY = 16
# The paged KV cache, sized explicitly: left to itself `transformers serve` sizes it from the
# machine's memory (many GB for a 135M model, and a slow first answer). 512 blocks of 32 tokens
# hold 16 requests of ~1,000 tokens, BATCHED_CONCURRENCY's worth.
CB_BLOCK_SIZE = 32
CB_NUM_BLOCKS = 512
# A request's timeout on a server mirage started itself. On a loaded CPU a batch of long answers
# takes minutes, and a client that gives up does not stop the server working (the request is only
# abandoned), so the remote default (endpoints.DEFAULT_TIMEOUT_S) failed most of the demo's teacher
# requests. Not part of the cache key: a served model is fingerprinted by its weights alone.
LOCAL_TIMEOUT_S = 1800


@dataclass
class Server:
    model: str  # registry name of the served model
    port: int
    pid: int
    base_url: str  # http://127.0.0.1:PORT/v1
    model_id: str  # the id the server answers to (its pinned model)
    log: str
    started_at: str
    concurrency: int = 1  # requests worth sending at once (BATCHED_CONCURRENCY with continuous batching)

    @property
    def url(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]


def _servers_dir(ws: Workspace) -> Path:
    return ws.artifact_dir("servers")


def _record_path(ws: Workspace, port: int) -> Path:
    return _servers_dir(ws) / f"{port}.json"


def list_servers(ws: Workspace) -> list[Server]:
    """Servers started from this workspace that are still running (stale records are removed)."""
    out = []
    for p in sorted(_servers_dir(ws).glob("*.json")):
        try:
            s = Server(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError):
            p.unlink(missing_ok=True)
            continue
        if process_alive(s.pid):
            out.append(s)
        else:
            p.unlink(missing_ok=True)
    return out


def _serve_folder(rm: ResolvedModel) -> Work[Path]:
    if rm.kind.on_base:
        return (yield from _merged_folder(rm))
    return (yield from rm.ensure_local())


def _merged_folder(rm: ResolvedModel) -> Work[Path]:
    """An adapter merged into its base, saved once in the cache (a server takes one folder)."""
    out = model_cache() / f"merged-{rm.fingerprint}"
    if (out / "config.json").is_file():
        return out
    yield Progress(0, None, f"merging {rm.name} into its base (once)")
    model_obj, tok = rm.load(device="cpu")
    merged = model_obj.merge_and_unload()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    merged.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


def start(
    ws: Workspace,
    model: str,
    *,
    port: int | None = None,
    timeout: float = START_TIMEOUT_S,
    continuous_batching: bool = True,
) -> Work[Server]:
    """Start `transformers serve` for a local model and wait until /v1/models answers."""
    folder = yield from _serve_folder(resolve(ws, model))
    port = int(port or free_port())
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise ModelError(f"port {port} on 127.0.0.1 is already in use; pick another with --port")
    hf_home = model_cache() / "hf-home"
    # /v1/models scans the HF cache and answers 500 when the cache folder does not exist.
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    log = ws.logs / f"serve-{model.replace('/', '_')}-{port}.log"
    cli = Path(sys.executable).parent / "transformers"
    cmd = (
        [str(cli)]
        if cli.exists()
        else [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]
    )
    cmd += [
        "serve",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
        "--device",
        "cpu" if not _cuda() else "auto",
        # bf16 on a GPU (half the memory, tensor cores); the CPU keeps the weights' own dtype.
        "--dtype",
        "bfloat16" if _cuda() else "auto",
    ]
    if continuous_batching:
        cmd += ["--continuous-batching", "--cb-block-size", str(CB_BLOCK_SIZE), "--cb-num-blocks", str(CB_NUM_BLOCKS)]
    with open(log, "ab") as logf:
        logf.write(f"\n# {now()} {' '.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(
        model=model,
        port=port,
        pid=proc.pid,
        base_url=f"http://127.0.0.1:{port}/v1",
        model_id=str(folder),
        log=str(log),
        started_at=now(),
        concurrency=BATCHED_CONCURRENCY if continuous_batching else 1,
    )
    _record_path(ws, port).write_text(json.dumps(asdict(server)))
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise ModelError(
                    f"transformers serve exited ({proc.returncode}) before answering; log {log}: {_tail(log)}"
                )
            try:
                _get_json(server.base_url + "/models")
                break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            waited = time.monotonic() - t0
            if waited > timeout:
                raise ModelError(f"transformers serve on port {port} did not answer in {timeout:.0f} s; log {log}")
            yield Progress(0, None, f"starting server for {model} ({waited:.0f} s)")
            time.sleep(0.5)
    except BaseException:
        _terminate(proc.pid)
        _record_path(ws, port).unlink(missing_ok=True)
        raise
    return server


def _cuda() -> bool:
    """A usable CUDA GPU, as torch sees it (CUDA_VISIBLE_DEVICES="" hides them all)."""
    import torch

    return torch.cuda.is_available()


def _terminate(pid: int, wait: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # its own session: uvicorn and any children
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(ws: Workspace, server: Server | int) -> None:
    """Stop a server (by record or port) and forget it."""
    if isinstance(server, int):
        match = [s for s in list_servers(ws) if s.port == server]
        if not match:
            raise NotFound(
                f"no running server on port {server} (running: "
                f"{', '.join(str(s.port) for s in list_servers(ws)) or 'none'})"
            )
        server = match[0]
    _terminate(server.pid)
    _record_path(ws, server.port).unlink(missing_ok=True)


def register_endpoint(ws: Workspace, server: Server, name: str | None = None) -> str:
    """Register a running server as an "openai" model (default name `MODEL@local`)."""
    name = name or f"{server.model}@local"
    # As many requests at once as the server batches (see BATCHED_CONCURRENCY; --concurrency on
    # `generate`/`collect` overrides it, e.g. against a GPU server).
    register(
        ws,
        name,
        "openai",
        {
            "base_url": server.base_url,
            "model": server.model_id,
            "served_from": server.model,
            "max_concurrency": server.concurrency,
            "timeout_s": LOCAL_TIMEOUT_S,
        },
        replace=True,
    )
    return name


def serve(
    ws: Workspace,
    model: str,
    port: int | None = None,
    *,
    on_ready=None,
    quiet: bool = False,
    continuous_batching: bool = True,
) -> None:
    """Foreground: start, report, and block until Ctrl-C (or the server exits); then stop cleanly."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and `kill` both stop the server cleanly, even when started from a script that
        # left SIGINT ignored (background jobs of a non-interactive shell).
        def _interrupt(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
    server = drive(
        start(ws, model, port=port, continuous_batching=continuous_batching), f"starting {model}", quiet=quiet
    )
    try:
        if on_ready:
            on_ready(server)
        while process_alive(server.pid):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(server.pid, os.WNOHANG)[0]:
                    break
            time.sleep(0.5)
        if not process_alive(server.pid):
            raise ModelError(f"the server for {model} stopped; log {server.log}: {_tail(Path(server.log))}")
    finally:
        stop(ws, server)


@contextlib.contextmanager
def ensure_server(ws: Workspace, model: str, *, port: int | None = None, name: str | None = None, progress=None):
    """Serve `model` for the length of a block and register it as an "openai" model.

    Yields (registered_name, Server). Reuses a server this workspace already runs for the model.
    `progress`: optional callable taking each Progress while the server starts.
    """
    running = [s for s in list_servers(ws) if s.model == model]
    owned = not running
    if running:
        server = running[0]
    else:
        server = run(start(ws, model, port=port), progress)
    try:
        yield register_endpoint(ws, server, name), server
    finally:
        if owned:
            stop(ws, server)
