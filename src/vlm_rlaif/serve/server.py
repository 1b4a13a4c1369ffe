"""`vlm-rlaif serve`: a VideoLM behind an OpenAI-compatible HTTP endpoint, so one run's model can be
another run's judge (vlm_rlaif.clients.ChatClient, or any OpenAI client).

Endpoints: POST /v1/chat/completions (format: serve.openai_api), GET /v1/models, GET /health.
Any bearer token is accepted (the server is meant for loopback or a trusted network). Requests are
handled on threads and answered one at a time under one model lock; a video sent again is not
re-encoded (the model's feature cache, keyed by the video's content or path).

Limits: a request body must carry a Content-Length of at most MAX_BODY_BYTES (64 MiB; larger: 413,
missing: 411); a prompt that with max_tokens does not fit in the model's positions is answered 400
before generation, and a text far too long for them is refused before it is tokenised (outside the
model lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vlm_rlaif import __version__
from vlm_rlaif.errors import UserError
from vlm_rlaif.models import VideoLM
from vlm_rlaif.serve.generation import complete
from vlm_rlaif.serve.openai_api import BadRequest, completion_response, error_response, models_response, parse_request

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # 50 base64 frames of 512 px are a few MB; a video data URL ~48 MB


class BodyRefused(BadRequest):
    """A request body refused for its size (413) or for a missing Content-Length (411)."""

    def __init__(self, message: str, status: HTTPStatus):
        super().__init__(message)
        self.status = status


class VideoLMServer(ThreadingHTTPServer):
    """The HTTP server and what its handlers share: the model, its lock and the serving settings."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        lm: VideoLM,
        *,
        model_name: str,
        video_root: str | Path | None = None,
        num_frames: int,
        max_tokens: int = 1024,
        fingerprint_source: str = "",
    ):
        super().__init__(address, ChatCompletionsHandler)
        self.lm = lm
        self.model_name = model_name
        self.video_root = Path(video_root).resolve() if video_root is not None else None
        self.num_frames = num_frames
        self.max_tokens = max_tokens
        self.lock = threading.Lock()
        self.created = int(time.time())
        digest = hashlib.sha256(f"{__version__}|{lm.family}|{fingerprint_source}".encode()).hexdigest()[:12]
        self.fingerprint = f"fp_vlm_rlaif_{digest}"

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class ChatCompletionsHandler(BaseHTTPRequestHandler):
    server: VideoLMServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connections
    started = 0.0  # when the request being answered arrived (perf_counter)

    def parse_request(self) -> bool:
        # BaseHTTPRequestHandler's hook once a request line has arrived: the request's own clock starts
        # here, not while a keep-alive connection waits for its next request.
        self.started = time.perf_counter()
        return super().parse_request()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(HTTPStatus.OK, models_response(self.server.model_name, self.server.created))
        elif path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        else:
            self._send(HTTPStatus.NOT_FOUND, error_response(f"no route GET {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._discard_body()
            self._send(HTTPStatus.NOT_FOUND, error_response(f"no route POST {self.path}", "not_found_error"))
            return
        try:
            body = self._read_json()
            server = self.server
            request = parse_request(
                body, video_root=server.video_root, num_frames=server.num_frames, max_tokens=server.max_tokens
            )
            # Cheap, and outside the lock: a huge text must not keep other requests waiting.
            server.lm.check_prompt_length(request.example, request.settings.max_new_tokens, "request messages")
            with server.lock:
                completion = complete(
                    server.lm, request.example, request.settings, top_logprobs=request.top_logprobs, stop=request.stop,
                    where="request messages",
                )
        except BodyRefused as err:
            self._send(err.status, error_response(str(err), param=err.param))
            return
        except BadRequest as err:
            self._send(HTTPStatus.BAD_REQUEST, error_response(str(err), param=err.param))
            return
        except UserError as err:  # e.g. a conversation the model's template cannot take
            self._send(HTTPStatus.BAD_REQUEST, error_response(str(err)))
            return
        except Exception as err:
            log.exception("generation failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_response(f"generation failed: {err}", "server_error"))
            return
        self._send(
            HTTPStatus.OK,
            completion_response(completion, model=server.model_name, fingerprint=server.fingerprint),
        )

    def _read_json(self) -> object:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # the unread body would be taken for the next request
            raise BodyRefused(f"a Content-Length header of at most {MAX_BODY_BYTES} bytes is required", HTTPStatus.LENGTH_REQUIRED)
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise BodyRefused(
                f"the request body has {length} bytes, more than the {MAX_BODY_BYTES} this server takes",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"the request body is not JSON ({err})") from None

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY_BYTES:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log.info("%s", request_line(self.command, self.path, status, payload, time.perf_counter() - self.started))

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def request_line(method: str, path: str, status: int, payload: dict, seconds: float) -> str:
    """One log line per answered request: route, status, tokens, seconds; never the messages or the
    answer (they may be private), nor the query string."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    tokens = f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens" if usage else "no tokens"
    return f"{method} {path.split('?', 1)[0]} {int(status)}, {tokens}, {seconds:.2f} s"


__all__ = ["ChatCompletionsHandler", "MAX_BODY_BYTES", "VideoLMServer"]
