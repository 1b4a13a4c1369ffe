"""A real HTTP server that speaks the OpenAI chat-completions protocol, for tests.

It listens on 127.0.0.1 with an ephemeral port and answers POST /v1/chat/completions. Behaviour is
scriptable per request:

- `reply`: a function (request json -> str | FakeReply) that writes the answer; it may sleep to
  simulate a slow judge (the server is threaded, so requests overlap).
- faults: `fail_next("429", times=2, retry_after=0.05)` makes the next two requests fail that way;
  `fault_for`: a function (request json -> fault name | None) for faults tied to a request's content.
  Fault names: an HTTP status ("400", "401", "404", "429", "500", "503", ...), "hang" (never answer
  until the client gives up), "garbage" (200 with a non-JSON body), "drop" (close the connection
  without a response).
- `requests`: every request body received, faulted or not, in arrival order; `headers` the matching
  request headers (names lower-cased); `max_in_flight`: the most requests handled at the same moment.

Use it as a context manager or through the `fake_openai_server` pytest fixture.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

FAULTS_WITHOUT_STATUS = ("hang", "garbage", "drop")


@dataclass
class FakeReply:
    """What the fake judge answers. top_logprobs: one dict token -> logprob per generated position."""

    text: str
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str = "stop"


@dataclass
class _Fault:
    kind: str
    retry_after: float | None = None


def default_reply(request: dict) -> FakeReply:
    """Echo the last user text, so tests can tell replies apart."""
    content = request["messages"][-1]["content"]
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return FakeReply(text=f"echo: {content}")


class FakeOpenAIServer:
    def __init__(
        self,
        reply: Callable[[dict], str | FakeReply] = default_reply,
        *,
        api_key: str | None = None,
        served_model: str | None = None,
        system_fingerprint: str | None = "fp_fake_0001",
        hang_s: float = 10.0,
    ) -> None:
        self.reply = reply
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get 401
        self.served_model = served_model  # the model name the server reports; default: the asked one
        self.system_fingerprint = system_fingerprint
        self.hang_s = hang_s
        self.fault_for: Callable[[dict], str | None] | None = None
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting --------------------------------------------------------------------------------
    def fail_next(self, kind: str, times: int = 1, retry_after: float | None = None) -> None:
        """Make the next `times` requests fail with `kind` (see the module docstring)."""
        if kind not in FAULTS_WITHOUT_STATUS and not kind.isdigit():
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._faults.extend(_Fault(kind, retry_after) for _ in range(times))

    @property
    def url(self) -> str:
        """The base_url an OpenAI client takes (ends with /v1)."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() fast: shutdown() waits for the serve loop's next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that hang
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ----------------------------------------------------------------------
    def _admit(self, body: dict, headers: dict[str, str]) -> _Fault | None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            if self._faults:
                return self._faults.popleft()
        kind = self.fault_for(body) if self.fault_for is not None else None
        return _Fault(kind) if kind else None

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _completion(self, body: dict) -> dict:
        reply = self.reply(body)
        if isinstance(reply, str):
            reply = FakeReply(text=reply)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "finish_reason": reply.finish_reason,
            "logprobs": None,
        }
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 1)
            positions = reply.top_logprobs or [{token: 0.0} for token in reply.text.split()]
            content = []
            for position in positions:
                ranked = sorted(position.items(), key=lambda item: -item[1])[:k]
                token, logprob = ranked[0]
                content.append(
                    {
                        "token": token,
                        "logprob": logprob,
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked
                        ],
                    }
                )
            choice["logprobs"] = {"content": content}
        prompt_tokens = len(json.dumps(body["messages"]).split())
        completion_tokens = len(reply.text.split())
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_model or body.get("model", ""),
            "system_fingerprint": self.system_fingerprint,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do: drops then hit pooled connections

    def log_message(self, format: str, *args: Any) -> None:  # silence the stdlib access log
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request"}})
            return
        fault = self.fake._admit(body, {name.lower(): value for name, value in self.headers.items()})
        try:
            self._answer(body, fault)
        finally:
            self.fake._leave()

    def _answer(self, body: dict, fault: _Fault | None) -> None:
        fake = self.fake
        if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._send_json(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
            return
        if fault is None:
            self._send_json(200, fake._completion(body))
        elif fault.kind == "hang":
            fake._stopping.wait(fake.hang_s)
            self.close_connection = True
        elif fault.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "garbage":
            self._send_raw(200, b"<html>502 upstream hiccup</html>", "application/json")
        else:
            status = int(fault.kind)
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            message = {"error": {"message": f"injected fault {status}", "type": "fake_fault"}}
            self._send_json(status, message, headers)

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A started FakeOpenAIServer (default reply: echo), stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server
