"""The one client every judge uses to call an OpenAI-compatible chat endpoint.

It speaks to our own `vlm-rlaif serve`, a vLLM server or a hosted API through the official `openai`
package (its own retries switched off: ours add jitter, a configurable base delay and endpoint-level
failure). Requests run concurrently on a bounded thread pool; results come back in input order
(`complete`) or as they finish (`iter_complete`), so a caller can append each to disk at once.

Failures, by kind:
- 429, 408, 409, 5xx, timeouts, dropped connections, non-JSON bodies: retried with exponential backoff
  and jitter, honouring Retry-After; after max_retries the endpoint is declared dead and
  JudgeUnavailableError is raised (results that finished before are kept: yielded, or attached to
  the error as `.results`).
- 401, 403, 404 (bad key, URL or model): every request would fail alike, so JudgeUnavailableError at
  once.
- other 4xx (400: e.g. a prompt too long): that request's result carries `error`; the rest go on.
- a reply that `validate` rejects: asked again up to max_invalid_retries times, then returned with
  invalid=True and never cached.
The API key is read from the environment variable named by api_key_env and never appears in the
cache key, repr, logs or error messages.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import openai
from openai.types.chat import ChatCompletion

from vlm_rlaif.clients.cache import ReplyCache, request_key
from vlm_rlaif.clients.parsing import InvalidReply
from vlm_rlaif.errors import UserError

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx
MAX_RETRY_AFTER_S = 600.0  # honour a server's Retry-After up to this; beyond it is a dead endpoint
NO_API_KEY = "EMPTY"  # what local servers (vLLM, ours) accept when no key is configured
RESERVED_FIELDS = frozenset(
    {"model", "messages", "temperature", "max_tokens", "logprobs", "top_logprobs", "seed"}
)
UNSUPPORTED_FIELDS = frozenset({"n", "stream"})  # one non-streamed choice per request

# validate(result) returns the parsed value (stored in result.parsed) or raises InvalidReply.
Validator = Callable[["ChatResult"], Any]


class JudgeUnavailableError(UserError):
    """The judge endpoint cannot answer: down after all retries, or refusing every request."""

    def __init__(self, base_url: str, last_error: str) -> None:
        self.base_url = base_url
        self.last_error = last_error
        # complete() attaches the results that did finish (None where a request never finished).
        self.results: list[ChatResult | None] = []
        super().__init__(f"judge endpoint {base_url} is unavailable: {last_error}")


@dataclass
class ChatRequest:
    """One chat completion request. messages use the OpenAI chat format; content may be a string
    or a list of {"type": "text"} / {"type": "image_url"} parts (see clients.images)."""

    messages: list[dict]
    temperature: float = 0.0
    max_tokens: int | None = 512
    top_logprobs: int | None = None  # ask for the k most likely tokens at each generated position
    seed: int | None = None  # also the way to ask for distinct samples of one prompt (cache key)
    extra: dict = field(default_factory=dict)  # any other request field, e.g. {"stop": ["\n"]}

    def __post_init__(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        for i, message in enumerate(self.messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(
                    f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.200}"
                )
        clash = (RESERVED_FIELDS | UNSUPPORTED_FIELDS) & set(self.extra)
        if clash:
            raise ValueError(
                f"extra must not set {sorted(clash)}: use the ChatRequest fields (n, stream unsupported)"
            )
        if self.top_logprobs is not None and self.top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1 or None, got {self.top_logprobs}")

    def payload(self, model: str) -> dict:
        """The JSON body sent to /chat/completions; also what the cache key is computed from."""
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages,
            "temperature": float(self.temperature),
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if self.seed is not None:
            body["seed"] = self.seed
        body.update(self.extra)
        return body


@dataclass
class ChatResult:
    text: str | None = None
    finish_reason: str | None = None
    tokens: list[str] | None = None  # the generated tokens, when logprobs were asked for
    top_logprobs: list[dict[str, float]] | None = None  # per generated position: token -> logprob
    usage: dict | None = None
    model: str | None = None  # as the server reports it (hosted aliases resolve to a dated name)
    system_fingerprint: str | None = None  # the server's backend version, when it reports one
    cached: bool = False
    error: str | None = None
    invalid: bool = False  # the reply came but `validate` rejected every try (error says why)
    parsed: Any = None  # what `validate` returned
    attempts: int = 0  # HTTP requests spent on this result (0 when served from the cache)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "tokens": self.tokens,
            "top_logprobs": self.top_logprobs,
            "usage": self.usage,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }

    @classmethod
    def from_cache(cls, value: dict) -> ChatResult:
        return cls(**{name: value.get(name) for name in cls().to_cache()}, cached=True)


@dataclass
class ClientStats:
    """Counters over the client's life, for run summaries and tests."""

    http_requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    invalid_replies: int = 0
    failed_requests: int = 0  # rejected by the server (400, ...) or without text
    prompt_tokens: int = 0  # as the server counts them, over the replies it sent (not cache hits)
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: value for name, value in vars(self).items() if not name.startswith("_")}


class _TransientError(Exception):
    """A failure worth retrying; retry_after is the server's requested wait in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Stopped(Exception):
    """This request was abandoned because another one found the endpoint dead."""


class ChatClient:
    """Calls one model at one OpenAI-compatible base_url (e.g. "http://127.0.0.1:8000/v1").

    api_key_env: the environment variable holding the key (None: send no key). timeout_s: seconds
    to wait to connect and between bytes of a reply. Backoff before retry n (from 0) is
    min(backoff_max_s, backoff_base_s * 2**n) times a random factor in [0.5, 1], or the server's
    Retry-After if longer. cache_dir: where replies are cached (None: no cache). At temperature 0
    a server tends to repeat an invalid reply, so max_invalid_retries helps most when sampling.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        cache_dir: Path | str | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_invalid_retries: int = 2,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0 or max_invalid_retries < 0:
            raise ValueError("max_concurrency must be >= 1, max_retries and max_invalid_retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_invalid_retries = max_invalid_retries
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.stats = ClientStats()
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            logger.info(
                "environment variable %s is not set: calling %s without an API key",
                api_key_env, self.base_url,
            )
        # api_key is always passed explicitly so the openai package never falls back to
        # OPENAI_API_KEY when another variable was named. The key lives only inside this object.
        self._openai = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or NO_API_KEY, max_retries=0, timeout=timeout_s
        )

    def __repr__(self) -> str:
        return (
            f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -------------------------------------------------------------------------------
    def complete(
        self, requests: Sequence[ChatRequest], validate: Validator | None = None
    ) -> list[ChatResult]:
        """All results in input order. On JudgeUnavailableError the results that finished are
        attached to the error as `.results` (None where a request did not finish)."""
        results: list[ChatResult | None] = [None] * len(requests)
        try:
            for index, result in self.iter_complete(requests, validate):
                results[index] = result
        except JudgeUnavailableError as err:
            err.results = results
            raise
        return results  # type: ignore[return-value]  # every slot is filled when no error is raised

    def iter_complete(
        self, requests: Sequence[ChatRequest], validate: Validator | None = None
    ) -> Iterator[tuple[int, ChatResult]]:
        """(index, result) pairs as they finish: cache hits first, then replies as they arrive.

        If the endpoint dies, the results that already finished are still yielded, then
        JudgeUnavailableError is raised and the requests not yet sent are dropped.
        """
        pending: list[tuple[int, dict, str]] = []
        for index, request in enumerate(requests):
            payload = request.payload(self.model)
            key = request_key(payload)
            hit = self._from_cache(key, validate)
            if hit is not None:
                self.stats.add("cache_hits")
                yield index, hit
            else:
                pending.append((index, payload, key))
        if not pending:
            return

        stop = threading.Event()  # set when giving up, so workers stop retrying at once
        workers = min(self.max_concurrency, len(pending))
        executor = ThreadPoolExecutor(workers, thread_name_prefix="chat-client")
        futures: dict[Future, int] = {
            executor.submit(self._complete_one, payload, key, validate, stop): index
            for index, payload, key in pending
        }
        handed_over: set[Future] = set()
        try:
            for future in as_completed(futures):
                error = future.exception()
                if error is None:
                    handed_over.add(future)
                    yield futures[future], future.result()
                    continue
                if isinstance(error, _Stopped):
                    continue  # the error that stopped it is on its way
                stop.set()
                for other in futures:
                    other.cancel()  # only those not started yet
                # Hand over whatever else finished before giving up: finished work is never lost.
                for other in futures:
                    finished = other.done() and not other.cancelled() and other.exception() is None
                    if finished and other not in handed_over:
                        handed_over.add(other)
                        yield futures[other], other.result()
                raise error
        finally:
            stop.set()
            executor.shutdown(wait=False, cancel_futures=True)

    # -- one request ------------------------------------------------------------------------------
    def _from_cache(self, key: str, validate: Validator | None) -> ChatResult | None:
        if self.cache is None:
            return None
        value = self.cache.get(key)
        if value is None:
            return None
        result = ChatResult.from_cache(value)
        if validate is not None:
            try:
                result.parsed = validate(result)
            except InvalidReply as err:
                # The validator changed since the reply was cached: ask again.
                logger.debug("cached reply %s fails validation now (%s); asking again", key[:12], err)
                return None
        return result

    def _complete_one(
        self, payload: dict, key: str, validate: Validator | None, stop: threading.Event
    ) -> ChatResult:
        try:
            return self._complete_validated(payload, key, validate, stop)
        except JudgeUnavailableError:
            stop.set()  # here, not in the consumer: no queued request may start after this
            raise

    def _complete_validated(
        self, payload: dict, key: str, validate: Validator | None, stop: threading.Event
    ) -> ChatResult:
        attempts = 0
        reason: InvalidReply | None = None
        for _ in range(self.max_invalid_retries + 1):
            result = self._request_with_retries(payload, stop)
            attempts += result.attempts
            if not result.ok:
                self.stats.add("failed_requests")
                logger.warning("judge %s: request failed: %s", self.base_url, result.error)
                break
            if validate is not None:
                try:
                    result.parsed = validate(result)
                except InvalidReply as err:
                    reason = err
                    self.stats.add("invalid_replies")
                    logger.info("judge %s: invalid reply (%s); asking again", self.base_url, err.reason)
                    continue
            if self.cache is not None:
                self.cache.put(key, result.to_cache())
            break
        else:
            result.invalid = True
            result.error = f"invalid reply after {self.max_invalid_retries + 1} tries: {reason}"
        result.attempts = attempts
        return result

    def _request_with_retries(self, payload: dict, stop: threading.Event) -> ChatResult:
        last_error = "no request made"
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                raise _Stopped()
            self.stats.add("http_requests")
            try:
                result = self._request_once(payload)
                result.attempts = attempt + 1
                if result.usage:
                    self.stats.add("prompt_tokens", int(result.usage.get("prompt_tokens", 0)))
                    self.stats.add("completion_tokens", int(result.usage.get("completion_tokens", 0)))
                return result
            except _TransientError as err:
                last_error = str(err)
                if attempt == self.max_retries:
                    break
                delay = self._backoff_s(attempt, err.retry_after)
                self.stats.add("retries")
                logger.warning(
                    "judge %s: %s; retry %d of %d in %.2f s",
                    self.base_url, last_error, attempt + 1, self.max_retries, delay,
                )
                if stop.wait(delay):
                    raise _Stopped()
        attempts = self.max_retries + 1
        raise JudgeUnavailableError(self.base_url, f"{last_error} (after {attempts} attempts)")

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        # Full exponential backoff with jitter, so concurrent workers do not retry in lockstep.
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            if retry_after > MAX_RETRY_AFTER_S:
                raise JudgeUnavailableError(
                    self.base_url, f"server asks to wait {retry_after:.0f} s before retrying"
                )
            delay = max(delay, retry_after)
        return delay

    def _request_once(self, payload: dict) -> ChatResult:
        """One HTTP request: a result (error set for a rejected request), _TransientError, or
        JudgeUnavailableError for failures that every request would share."""
        fields = {name: value for name, value in payload.items() if name not in ("model", "messages")}
        try:
            completion = self._openai.chat.completions.create(
                model=payload["model"], messages=payload["messages"], extra_body=fields
            )
        except openai.APITimeoutError:
            raise _TransientError(f"no reply within {self.timeout_s:g} s") from None
        except openai.APIConnectionError as err:
            raise _TransientError(f"connection failed ({type(err.__cause__ or err).__name__})") from None
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRYABLE_STATUS or status >= 500:
                retry_after = _retry_after_s(err.response.headers)
                message = f"HTTP {status}: {self._redact(err.message)}"
                raise _TransientError(message, retry_after) from None
            if status in (401, 403):
                # The server's message may quote part of the key: leave it out.
                where = f"the key in ${self.api_key_env}" if self.api_key_env else "api_key_env (unset)"
                raise JudgeUnavailableError(
                    self.base_url, f"HTTP {status}: authentication refused; check {where}"
                ) from None
            if status == 404:
                raise JudgeUnavailableError(
                    self.base_url,
                    f"HTTP 404: {self._redact(err.message)}; check base_url (usually ending in /v1) "
                    f"and the model name {self.model!r}",
                ) from None
            return ChatResult(error=f"HTTP {status}: {self._redact(err.message)}")
        except json.JSONDecodeError:
            raise _TransientError("the reply body is not JSON") from None
        if not isinstance(completion, ChatCompletion):
            raise _TransientError("the reply body is not a chat completion")
        return _result_from(completion)

    def _redact(self, text: str) -> str:
        key = self._openai.api_key
        return text.replace(key, "***") if key and key != NO_API_KEY else text


def _result_from(completion: ChatCompletion) -> ChatResult:
    if not completion.choices:
        return ChatResult(error="the reply has no choices")
    choice = completion.choices[0]
    if choice.message.content is None:
        return ChatResult(error=f"the reply has no text (finish_reason={choice.finish_reason})")
    tokens = top_logprobs = None
    positions = choice.logprobs.content if choice.logprobs is not None else None
    if positions:
        tokens = [position.token for position in positions]
        top_logprobs = []
        for position in positions:
            ranked: dict[str, float] = {}
            for candidate in position.top_logprobs:
                # Two candidates may decode to the same string: keep the higher-ranked one.
                ranked.setdefault(candidate.token, candidate.logprob)
            top_logprobs.append(ranked)
    return ChatResult(
        text=choice.message.content,
        finish_reason=choice.finish_reason,
        tokens=tokens,
        top_logprobs=top_logprobs,
        usage=completion.usage.model_dump(exclude_none=True) if completion.usage is not None else None,
        model=completion.model,
        system_fingerprint=completion.system_fingerprint,
    )


def _retry_after_s(headers: Any) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, or Retry-After as seconds or an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
