"""A real HTTP server on 127.0.0.1 speaking OpenAI chat/completions JSON, with injectable faults.

Not a mock of the client: the `openai` package talks to it over TCP exactly as to a real API.
Faults: a storm of 429s, 5xx errors, malformed JSON, well-formed JSON of the wrong shape, hanging,
wrong API key (401), a 400 that echoes the key it was sent (as hosted APIs do), and dying after a
number of answers (the socket closes; later connections are refused).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    rate_limit: int = 0  # the next N requests get 429 (Retry-After: 0)
    server_error: int = 0  # the next N requests get 503
    malformed: int = 0  # the next N requests get a 200 with a body that is not JSON
    hang: int = 0  # the next N requests hang for `hang_s`
    hang_s: float = 5.0
    replies: list = field(default_factory=list)  # the next requests get these JSON bodies with a 200
    echo_key_400: int = 0  # the next N requests get a 400 whose message quotes the Authorization header
    die_after: int | None = None  # answer this many requests, then stop listening
    api_key: str | None = None  # required bearer key, if set
    delay_s: float = 0.0


@dataclass
class FakeOpenAI:
    faults: Faults = field(default_factory=Faults)
    requests: list = field(default_factory=list)  # every body that got a real answer
    attempts: int = 0
    port: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._answered = 0
        self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- answers ---------------------------------------------------------------------------------
    @staticmethod
    def answer_for(body: dict) -> str:
        msgs = body.get("messages") or [{"content": body.get("prompt", "")}]
        last = msgs[-1]["content"]
        if "Write one new question" in last:
            # A new pair per sampling seed; seeds 3k+1 repeat an earlier pair, to exercise dedupe.
            s = int(body.get("seed") or 0)
            n = s - 1 if s % 3 == 1 and s > 0 else s
            if s % 7 == 5:
                return "I cannot think of one."
            return f"Sure!\nQuestion: What is fact number {n}?\nAnswer: Fact {n}"
        return f"Answer to: {last}"

    # -- server --------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeOpenAI:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(
                        200, json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
                    )
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                f = owner.faults
                with owner._lock:
                    owner.attempts += 1
                    if f.api_key and self.headers.get("Authorization") != f"Bearer {f.api_key}":
                        kind = "auth"
                    elif f.rate_limit > 0:
                        f.rate_limit -= 1
                        kind = "429"
                    elif f.server_error > 0:
                        f.server_error -= 1
                        kind = "503"
                    elif f.malformed > 0:
                        f.malformed -= 1
                        kind = "malformed"
                    elif f.replies:
                        kind, reply = "reply", f.replies.pop(0)
                    elif f.echo_key_400 > 0:
                        f.echo_key_400 -= 1
                        kind = "echo_key"
                    elif f.hang > 0:
                        f.hang -= 1
                        kind = "hang"
                    elif f.die_after is not None and owner._answered >= f.die_after:
                        kind = "dead"
                    else:
                        owner._answered += 1
                        owner.requests.append(body)
                        kind = "ok"
                if kind == "auth":
                    return self._send(
                        401,
                        json.dumps(
                            {
                                "error": {
                                    "message": "Incorrect API key provided",
                                    "type": "invalid_request_error",
                                    "code": "invalid_api_key",
                                }
                            }
                        ).encode(),
                    )
                if kind == "429":
                    return self._send(
                        429, b'{"error": {"message": "Rate limit reached", "type": "rate_limit"}}', {"Retry-After": "0"}
                    )
                if kind == "503":
                    return self._send(503, b'{"error": {"message": "overloaded"}}')
                if kind == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ this is not json')
                if kind == "reply":
                    return self._send(200, json.dumps(reply).encode())
                if kind == "echo_key":
                    auth = self.headers.get("Authorization") or ""
                    key = auth.removeprefix("Bearer ")
                    msg = f"Incorrect API key provided: {key}. You sent the header 'Authorization: {auth}'."
                    return self._send(
                        400, json.dumps({"error": {"message": msg, "type": "invalid_request_error"}}).encode()
                    )
                if kind == "hang":
                    time.sleep(f.hang_s)
                    return self._send(200, b"{}")
                if kind == "dead":
                    threading.Thread(target=owner.stop, daemon=True).start()
                    self.close_connection = True
                    return
                if f.delay_s:
                    time.sleep(f.delay_s)
                text = owner.answer_for(body)
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop"}
                    obj = "text_completion"
                resp = {
                    "id": "cmpl-1",
                    "object": obj,
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": len(re.findall(r"\w+", json.dumps(body))),
                        "completion_tokens": len(text.split()),
                        "total_tokens": 0,
                    },
                }
                self._send(200, json.dumps(resp).encode())

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up on a hanging request is expected here

        self._server = Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            srv, self._server = self._server, None
            srv.shutdown()
            srv.server_close()

    def prompts(self) -> list[str]:
        return [b["messages"][-1]["content"] if "messages" in b else b["prompt"] for b in self.requests]
