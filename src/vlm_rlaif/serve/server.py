"""`vlm-rlaif serve`: a VideoLM behind an OpenAI-compatible HTTP endpoint, so one run's model can be
another run's judge (vlm_rlaif.clients.ChatClient, or any OpenAI client).

Endpoints: POST /v1/chat/completions (format: serve.openai_api), GET /v1/models, GET /health, and,
when started with a LoRA root (`--lora-root DIR`), vLLM's runtime LoRA API: POST /v1/load_lora_adapter
{"lora_name", "lora_path"} (the path inside the LoRA root) and POST /v1/unload_lora_adapter
{"lora_name"}. A chat request whose `model` names a loaded adapter is answered with that adapter
(PPO's server rollouts load each iteration's policy this way); `model` naming the served model uses
the model as started. With runtime adapters enabled any other `model` is refused with 404, as vLLM
does (a rollout must never silently sample from the wrong policy); without, any name is accepted.
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
import re
import socket
import threading
import time
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from vlm_rlaif import __version__
from vlm_rlaif.errors import UserError
from vlm_rlaif.models import VideoLM
from vlm_rlaif.serve.generation import complete
from vlm_rlaif.serve.openai_api import BadRequest, completion_response, error_response, models_response, parse_request

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # peft keys modules by it: no dots
MAX_BODY_BYTES = 64 * 1024 * 1024  # 50 base64 frames of 512 px are a few MB; a video data URL ~48 MB


class BodyRefused(BadRequest):
    """A request body refused for its size (413) or for a missing Content-Length (411)."""

    def __init__(self, message: str, status: HTTPStatus):
        super().__init__(message)
        self.status = status


class ModelNotFound(BadRequest):
    """A model or adapter name the server does not have (404, as vLLM answers)."""

    status = HTTPStatus.NOT_FOUND


class LoraUpdatesOff(BadRequest):
    """The LoRA endpoints of a server started without a LoRA root (404: the route is not there)."""

    status = HTTPStatus.NOT_FOUND


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
        lora_root: str | Path | None = None,
    ):
        super().__init__(address, ChatCompletionsHandler)
        self.lm = lm
        self.model_name = model_name
        self.video_root = Path(video_root).resolve() if video_root is not None else None
        self.num_frames = num_frames
        self.max_tokens = max_tokens
        self.lock = threading.Lock()
        # Runtime LoRA adapters (name -> directory); None: the load/unload endpoints are off.
        self.lora_root = Path(lora_root).resolve() if lora_root is not None else None
        self.runtime_adapters: dict[str, Path] = {}
        self.base_adapter = lm.active_adapter  # e.g. --lora's "served": what the served name means
        self._handlers: dict[threading.Thread, socket.socket] = {}  # open keep-alive connections
        self._handlers_lock = threading.Lock()
        self.created = int(time.time())
        digest = hashlib.sha256(f"{__version__}|{lm.family}|{fingerprint_source}".encode()).hexdigest()[:12]
        self.fingerprint = f"fp_vlm_rlaif_{digest}"

    def process_request_thread(self, request, client_address) -> None:
        with self._handlers_lock:
            self._handlers[threading.current_thread()] = request
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._handlers_lock:
                self._handlers.pop(threading.current_thread(), None)

    def server_close(self) -> None:
        """Also end the keep-alive connections and wait for their threads: a handler thread left
        blocked on a socket when the process exits can abort it (threads that ran torch)."""
        super().server_close()
        with self._handlers_lock:
            handlers = list(self._handlers.items())
        for _, connection in handlers:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        for thread, _ in handlers:
            thread.join(timeout=10)

    def model_names(self) -> list[str]:
        return [self.model_name, *self.runtime_adapters]

    @contextmanager
    def serving(self, model: object) -> Iterator[str]:
        """Hold the model lock with the weights `model` names active; yields the name to report."""
        if self.lora_root is not None and model not in self.model_names():
            raise ModelNotFound(f"model {model!r} is not served here; served: {self.model_names()}")
        with self.lock:
            if model in self.runtime_adapters:
                self.lm.set_adapter(model)
                yield model
            elif self.base_adapter is not None:
                self.lm.set_adapter(self.base_adapter)
                yield self.model_name
            elif self.lm.adapter_names:  # only runtime adapters are attached: the bare base
                with self.lm.adapter_disabled():
                    yield self.model_name
            else:
                yield self.model_name

    def load_lora_adapter(self, body: object) -> str:
        if self.lora_root is None:
            raise LoraUpdatesOff("runtime LoRA updates are off: start the server with --lora-root DIR")
        if not isinstance(body, dict) or not isinstance(body.get("lora_name"), str) or not isinstance(body.get("lora_path"), str):
            raise BadRequest('the body must be {"lora_name": str, "lora_path": str}')
        name, path = body["lora_name"], Path(body["lora_path"])
        if not ADAPTER_NAME.fullmatch(name):
            raise BadRequest(f"lora_name {name!r}: use letters, digits, '_' and '-' (at most 64)", "lora_name")
        if name == self.model_name or name in self.runtime_adapters or name in self.lm.adapter_names:
            raise BadRequest(f"the adapter name {name!r} is already in use; unload it first", "lora_name")
        resolved = (self.lora_root / path).resolve()  # an absolute path stays itself
        if not resolved.is_relative_to(self.lora_root):
            raise BadRequest(f"lora_path {path} is outside the server's LoRA root", "lora_path")
        if not (resolved / "adapter_config.json").is_file():
            raise BadRequest(f"lora_path {path} is not a LoRA adapter directory (no adapter_config.json)", "lora_path")
        with self.lock:
            self.lm.load_lora(resolved, name)
            self.runtime_adapters[name] = resolved
        log.info("loaded LoRA adapter %s from %s", name, resolved)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora_adapter(self, body: object) -> str:
        if self.lora_root is None:
            raise LoraUpdatesOff("runtime LoRA updates are off: start the server with --lora-root DIR")
        if not isinstance(body, dict) or not isinstance(body.get("lora_name"), str):
            raise BadRequest('the body must be {"lora_name": str}')
        name = body["lora_name"]
        if name not in self.runtime_adapters:
            raise ModelNotFound(f"no LoRA adapter named {name!r} is loaded; loaded: {sorted(self.runtime_adapters)}")
        with self.lock:
            self.lm.delete_lora(name)
            del self.runtime_adapters[name]
        log.info("unloaded LoRA adapter %s", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

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
            self._send(HTTPStatus.OK, models_response(self.server.model_names(), self.server.created))
        elif path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        else:
            self._send(HTTPStatus.NOT_FOUND, error_response(f"no route GET {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in LORA_ROUTES:
            self._lora_update(LORA_ROUTES[path])
            return
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
            with server.serving(body.get("model")) as served_name:
                completion = complete(
                    server.lm, request.example, request.settings, top_logprobs=request.top_logprobs, stop=request.stop,
                    where="request messages",
                )
        except BadRequest as err:
            self._send_refusal(err)
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
            completion_response(completion, model=served_name, fingerprint=server.fingerprint),
        )

    def _lora_update(self, method_name: str) -> None:
        try:
            body = self._read_json()
            message = getattr(self.server, method_name)(body)
        except BadRequest as err:
            self._send_refusal(err)
            return
        except UserError as err:  # e.g. an adapter whose shapes do not fit the model
            self._send(HTTPStatus.BAD_REQUEST, error_response(str(err)))
            return
        except Exception as err:
            log.exception("%s failed", method_name)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, error_response(f"{method_name} failed: {err}", "server_error"))
            return
        self._send(HTTPStatus.OK, {"object": "lora_adapter_update", "message": message})

    def _send_refusal(self, err: BadRequest) -> None:
        status = HTTPStatus(err.status)
        kind = "not_found_error" if status == HTTPStatus.NOT_FOUND else "invalid_request_error"
        self._send(status, error_response(str(err), kind, param=err.param))

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
        # Logged before the reply leaves: once it has, the client may act on it (and read the log).
        log.info("%s", request_line(self.command, self.path, status, payload, time.perf_counter() - self.started))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def request_line(method: str, path: str, status: int, payload: dict, seconds: float) -> str:
    """One log line per answered request: route, status, tokens, seconds; never the messages or the
    answer (they may be private), nor the query string."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    tokens = f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens" if usage else "no tokens"
    return f"{method} {path.split('?', 1)[0]} {int(status)}, {tokens}, {seconds:.2f} s"


LORA_ROUTES = {
    "/v1/load_lora_adapter": "load_lora_adapter",
    "/v1/unload_lora_adapter": "unload_lora_adapter",
}

__all__ = ["ChatCompletionsHandler", "LORA_ROUTES", "MAX_BODY_BYTES", "ModelNotFound", "VideoLMServer"]
