"""A local teacher (a server mirage started on loopback) under load: a generous timeout that is not
part of the cache key, no retries stacking on a busy server, progress that counts successes.

The server is a real HTTP server on 127.0.0.1 that answers one request at a time and keeps working
on a request its client gave up on, as `transformers serve` does on a loaded CPU.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_generation import qa_suite
from tiny_lm import build_tiny_llama

from core.errors import EndpointError
from core.models import endpoints, generation, serving
from core.models import registry as models
from core.runtime import progress


class SlowServer:
    """One request at a time, `work_s` each; counts every request it is sent."""

    def __init__(self, work_s: float):
        self.work_s = work_s
        self.posts = 0
        self._busy = threading.Lock()
        self._count = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with owner._count:
                    owner.posts += 1
                with owner._busy:  # the work happens whether or not the client still waits
                    time.sleep(owner.work_s)
                text = "Answer to: " + body["messages"][-1]["content"]
                out = json.dumps(
                    {
                        "id": "c",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                    }
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_teacher(ws, tmp_path):
    folder = build_tiny_llama(tmp_path / "t")
    models.register(ws, "t", "hf", {"path": str(folder)})
    srv = SlowServer(work_s=0.4)
    record = serving.Server(
        model="t",
        port=srv.port,
        pid=0,
        base_url=f"http://127.0.0.1:{srv.port}/v1",
        model_id="t",
        log="",
        started_at="",
        concurrency=4,
    )
    yield serving.register_endpoint(ws, record), srv
    srv.close()


def test_local_teacher_gets_a_generous_timeout_outside_the_cache_key(ws, slow_teacher):
    name, _ = slow_teacher
    rm = models.resolve(ws, name)
    assert generation.local_server(rm.spec)
    client, _ = rm.client(timeout=None)
    assert client.timeout >= 10 * endpoints.DEFAULT_TIMEOUT_S
    fp = rm.fingerprint
    spec = {k: v for k, v in rm.spec.items() if k != "timeout_s"}
    models.register(ws, name, "openai", spec, replace=True)
    assert models.resolve(ws, name).fingerprint == fp  # outputs cached before the change stay valid
    # A remote endpoint keeps the default.
    models.register(ws, "remote", "openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert not generation.local_server(models.resolve(ws, "remote").spec)
    assert models.resolve(ws, "remote").client(timeout=None)[0].timeout == endpoints.DEFAULT_TIMEOUT_S


def test_timed_out_requests_are_not_retried_onto_a_busy_local_server(ws, slow_teacher):
    name, srv = slow_teacher
    qa_suite(ws, n=6)
    seen = []
    # 4 in flight on a server doing one at a time in 0.4 s: the third and later wait past 1 s.
    with pytest.raises(EndpointError, match="failed") as e:
        progress.run(generation.generate(ws, name, "qa", timeout=1.0), seen.append)
    ok = len(generation.outputs(ws, name, "qa"))
    assert 1 <= ok < 6
    assert srv.posts == 6, "each prompt is sent once: a retry would queue behind the abandoned request"
    assert "not retried" in str(e.value)
    last = seen[-1]
    assert last.done == ok and last.detail.endswith(f"{ok}/6, {6 - ok} failed"), last
    # The server is idle again: a rerun with the generous default finishes the rest.
    time.sleep(0.4 * 6)
    summary = progress.run(generation.generate(ws, name, "qa"))
    assert summary["cached"] == ok and summary["generated"] == 6 - ok and summary["failed"] == 0
