"""The OpenAI chat-completions wire format of `vlm-rlaif serve`: requests in, responses out.

Requests follow POST /v1/chat/completions (model, messages, temperature, top_p, max_tokens or
max_completion_tokens, logprobs, top_logprobs, seed, stop; n must be 1, stream false; any other
field is refused). `model` may be any name: the reply carries the served model's name. Message
content is a string or a list of parts:
- {"type": "text", "text": ...}
- {"type": "image_url", "image_url": {"url": ...}}: the image parts of one message are the frames
  of one video, in order (what clients.images sends); data: URLs (base64 JPEG/PNG) or paths under
  the server's video root. All frames of a video must have the same size.
- {"type": "video_url", "video_url": {"url": ...}} (our extension): a video file, sampled to the
  server's frame count: a path relative to the video root, a file:// URL or absolute path inside
  it, or a data:video/...;base64 URL (types in VIDEO_MEDIA_TYPES). Files are decoded only as
  mp4/mov, mkv/webm, avi or gif (by content): playlists and concat lists are refused.
One video per conversation; the model sees it first in the first user turn wherever it was sent.
Paths outside the video root, or any path when the server has none, are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from vlm_rlaif.models import GenerationSettings, VideoExample
from vlm_rlaif.serve.generation import Completion, TokenText

MAX_TOP_LOGPROBS = 20
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SAMPLING_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "logprobs",
                   "top_logprobs", "seed", "stop", "n", "stream", "user"}  # fmt: skip
NEUTRAL_FIELDS = {"frequency_penalty": 0, "presence_penalty": 0}  # accepted only at their neutral value


class BadRequest(ValueError):
    """A request the server refuses, with HTTP `status` (400 here; subclasses refine it); `param`
    names the offending field."""

    status = 400

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class ChatCompletionRequest:
    example: VideoExample
    settings: GenerationSettings
    top_logprobs: int | None  # None: no logprobs asked
    stop: list[str] = field(default_factory=list)


def parse_request(body: object, *, video_root: Path | None, num_frames: int, max_tokens: int) -> ChatCompletionRequest:
    """A request body (parsed JSON) -> what to generate; BadRequest says what is wrong and where."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - SAMPLING_FIELDS - set(NEUTRAL_FIELDS))
    if unknown:
        raise BadRequest(f"unsupported field(s) {unknown}", unknown[0])
    for name, neutral in NEUTRAL_FIELDS.items():
        if body.get(name, neutral) != neutral:
            raise BadRequest(f"{name} is not supported (only {neutral})", name)
    if body.get("n", 1) != 1:
        raise BadRequest("n must be 1 (one choice per request)", "n")
    if body.get("stream", False):
        raise BadRequest("streaming responses are not supported; send stream=false", "stream")

    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise BadRequest("top_p must be > 0", "top_p")
    limit = body.get("max_completion_tokens", body.get("max_tokens", max_tokens))
    if not _is_int(limit) or not 1 <= limit <= max_tokens:
        raise BadRequest(f"max_tokens must be an integer from 1 to {max_tokens}, got {limit!r}", "max_tokens")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest(f"seed must be an integer, got {seed!r}", "seed")
    top_logprobs = None
    if body.get("logprobs", False):
        top_logprobs = body.get("top_logprobs", 0)
        if not _is_int(top_logprobs) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    elif body.get("top_logprobs") is not None:
        raise BadRequest("top_logprobs needs logprobs=true", "top_logprobs")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest("stop must be a string or a list of at most 4 non-empty strings", "stop")

    conversation, frames, video_key = _conversation(body.get("messages"), video_root, num_frames)
    settings = GenerationSettings(max_new_tokens=limit, temperature=temperature, top_p=top_p, seed=seed)
    return ChatCompletionRequest(VideoExample(conversation, frames, video_key), settings, top_logprobs, stop)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}, got {value!r}", name)
    return float(value)


def _conversation(messages: object, video_root: Path | None, num_frames: int):
    """(conversation with string contents, frames or None, video_key or None)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    conversation: list[dict[str, str]] = []
    video: tuple[np.ndarray, str] | None = None
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"{where} must be an object with role one of {sorted(ROLES)}", "messages")
        content = message.get("content")
        texts, frames, message_video = [], [], None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for number, part in enumerate(content):
                part_where = f"{where}.content[{number}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    frames.append(_image(_url(part, "image_url", part_where), video_root, part_where))
                elif kind == "video_url":
                    if message_video is not None:
                        raise BadRequest(f"{part_where}: one video per conversation", "messages")
                    message_video = _video(_url(part, "video_url", part_where), video_root, num_frames, part_where)
                else:
                    raise BadRequest(f"{part_where}: expected a text, image_url or video_url part", "messages")
        else:
            raise BadRequest(f"{where}: content must be a string or a list of parts", "messages")
        if frames:
            if message_video is not None:
                raise BadRequest(f"{where}: send a video as image frames or as a video_url, not both", "messages")
            message_video = _frames_video(frames, where)
        if message_video is not None:
            if video is not None or ROLES[message["role"]] != "user":
                raise BadRequest(f"{where}: one video per conversation, in a user message", "messages")
            video = message_video
        conversation.append({"role": ROLES[message["role"]], "content": "\n".join(texts)})
    _check_order(conversation)
    frames, key = video if video is not None else (None, None)
    return conversation, frames, key


def _check_order(conversation: list[dict]) -> None:
    turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise BadRequest(
                "messages: after an optional system message, user and assistant must alternate, starting and "
                f"ending with user (found {message['role']!r} where {expected!r} was expected)",
                "messages",
            )
    if not turns or turns[-1]["role"] != "user":
        raise BadRequest("messages: the last message must be a user message", "messages")


def _url(part: dict, kind: str, where: str) -> str:
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}: {kind} needs a url", "messages")
    return url


def _local_path(url: str, video_root: Path | None, where: str) -> Path:
    """A file:// URL or a path, which must lie inside the video root."""
    if video_root is None:
        raise BadRequest(f"{where}: the server reads no local files; start it with --video-root", "messages")
    path = Path(unquote(urlparse(url).path)) if url.startswith("file://") else Path(url)
    resolved = (video_root / path).resolve()  # an absolute path stays itself
    if not resolved.is_relative_to(video_root.resolve()):
        raise BadRequest(f"{where}: {url} is outside the video root", "messages")
    if not resolved.is_file():
        raise BadRequest(f"{where}: no such file {url}", "messages")
    return resolved


def _data(url: str, where: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise BadRequest(f"{where}: data URLs must be base64 encoded", "messages")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{where}: invalid base64 data ({err})", "messages") from None


def _image(url: str, video_root: Path | None, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(_data(url, where)) if url.startswith("data:") else _local_path(url, video_root, where)
    try:
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise BadRequest(f"{where}: not a readable image ({err})", "messages") from None


def _frames_video(frames: list[np.ndarray], where: str) -> tuple[np.ndarray, str]:
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise BadRequest(f"{where}: the frames of a video must all have the same size, got {sorted(sizes)}", "messages")
    stacked = np.stack(frames)
    # Keyed by content: the same frames sent again (a judge asking about pairs) are not re-encoded.
    return stacked, f"serve:frames:{hashlib.sha256(stacked.tobytes()).hexdigest()[:24]}"


def _video(url: str, video_root: Path | None, num_frames: int, where: str) -> tuple[np.ndarray, str]:
    from vlm_rlaif.video import VideoLoadError, load_video

    try:
        if url.startswith("data:"):
            suffix = _suffix(url, where)
            data = _data(url, where)
            with tempfile.NamedTemporaryFile(suffix=suffix) as file:
                file.write(data)
                file.flush()
                try:
                    frames = load_video(file.name, num_frames=num_frames).frames
                except VideoLoadError as err:  # the temp file's name means nothing to the client
                    raise BadRequest(f"{where}: the data URL's video {err.reason.replace(file.name, '(data)')}", "messages") from None
            return frames, f"serve:data:{hashlib.sha256(data).hexdigest()[:24]}@{num_frames}"
        path = _local_path(url, video_root, where)
        frames = load_video(str(path), num_frames=num_frames).frames
        return frames, f"serve:{path}:{os.stat(path).st_mtime_ns}@{num_frames}"
    except VideoLoadError as err:
        raise BadRequest(f"{where}: {err}", "messages") from None


# The temp file's suffix comes from this list, never from the client's text (".m3u8" would be
# read as an HLS playlist); the decoder still checks the content's container format.
VIDEO_MEDIA_TYPES = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "image/gif": ".gif",
}


def _suffix(data_url: str, where: str) -> str:
    media_type = data_url[5:].split(";", 1)[0].strip().lower()  # "video/mp4"
    if media_type not in VIDEO_MEDIA_TYPES:
        raise BadRequest(
            f"{where}: video data URLs must be of type {', '.join(sorted(VIDEO_MEDIA_TYPES))}; got {media_type!r}",
            "messages",
        )
    return VIDEO_MEDIA_TYPES[media_type]


# ---------------------------------------------------------------- responses


def completion_response(completion: Completion, *, model: str, fingerprint: str) -> dict:
    """The chat.completion object for one generated answer."""
    logprobs = None
    if completion.logprobs is not None:
        logprobs = {
            "content": [
                {
                    **_token_entry(entry.token, entry.logprob),
                    "top_logprobs": [_token_entry(token, value) for token, value in entry.top],
                }
                for entry in completion.logprobs
            ]
        }
    completion_tokens = len(completion.token_ids)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": completion.prompt_tokens + completion_tokens,
        },
    }


def _token_entry(token: TokenText, logprob: float) -> dict:
    return {"token": token.text, "logprob": logprob, "bytes": list(token.utf8)}


def models_response(models: list[str], created: int) -> dict:
    """GET /v1/models: the served model first, then any runtime LoRA adapters."""
    data = [{"id": model, "object": "model", "created": created, "owned_by": "vlm-rlaif"} for model in models]
    return {"object": "list", "data": data}


def error_response(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


__all__ = [
    "BadRequest",
    "ChatCompletionRequest",
    "completion_response",
    "error_response",
    "models_response",
    "parse_request",
]
