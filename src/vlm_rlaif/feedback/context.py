"""Clip context: the describing model's detailed descriptions of a video's clips, in temporal order
(docs/method.md, stage 2a step 2; the paper's contribution).

The sampled frames are split into the standard clips (FrameStore.clips: at most clip_max_frames a
clip), each clip is described with the describe_clip prompt, and the descriptions are joined by
format_context, the exact format the judge was trained to read. A video's context is made once: it
is kept in memory and appended to contexts.jsonl, so a resumed run never describes a video again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vlm_rlaif.clients.generator import OpenAIGenerator
from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.clients.openai_compat import ChatClient, ChatRequest, ChatResult
from vlm_rlaif.clients.parsing import InvalidReply
from vlm_rlaif.data import JsonlWriter, iter_raw
from vlm_rlaif.data.frames import FrameStore
from vlm_rlaif.feedback.config import ContextSettings, OpenAISettings
from vlm_rlaif.models import GenerationSettings, VideoExample, VideoLM
from vlm_rlaif.prompts import format_context, load_prompt

log = logging.getLogger(__name__)

Clip = tuple[np.ndarray, str]  # (frames (T, H, W, 3) uint8, clip video_key)


class Describer(Protocol):
    id: str  # names the describing model; stored with every context

    def describe(self, clips: Sequence[Clip]) -> list[str | None]:
        """One description per clip, in order; None where the describer gave no usable text."""
        ...


@dataclass
class VideoContext:
    video_key: str
    descriptions: list[str | None]
    describer: str
    prompt: str  # the describe prompt's template id

    @property
    def text(self) -> str | None:
        """The judge's context, or None when a clip has no description."""
        if any(d is None for d in self.descriptions):
            return None
        return format_context(self.descriptions)


class LocalDescriber:
    """A model directory (usually the policy itself) describes each clip; greedy by default. lm: a
    VideoLM, or an OpenAIGenerator serving the policy (anything with VideoLM.generate's signature)."""

    def __init__(self, lm: VideoLM | OpenAIGenerator, settings: ContextSettings, describer_id: str):
        self.lm = lm
        self.settings = settings
        self.id = describer_id

    def describe(self, clips: Sequence[Clip]) -> list[str | None]:
        prompt = load_prompt("describe_clip").text
        examples = [VideoExample([{"role": "user", "content": prompt}], frames, key) for frames, key in clips]
        settings = GenerationSettings(
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
            batch_size=self.settings.batch_size,
            seed=0,
        )
        return [output.text for output in self.lm.generate(examples, settings)]


class OpenAIDescriber:
    """An OpenAI-compatible endpoint describes each clip from its frames, sent as images."""

    def __init__(self, client: ChatClient, settings: OpenAISettings, max_new_tokens: int, temperature: float):
        self.client = client
        self.settings = settings
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.id = f"openai:{settings.model}"

    def describe(self, clips: Sequence[Clip]) -> list[str | None]:
        prompt = load_prompt("describe_clip").text
        requests = []
        for frames, _ in clips:
            shown = frames[subsample(len(frames), self.settings.max_frames)]
            parts = frames_to_image_parts(shown, max_side=self.settings.image_max_side)
            content = [*parts, {"type": "text", "text": prompt}]
            requests.append(
                ChatRequest([{"role": "user", "content": content}], temperature=self.temperature, max_tokens=self.max_new_tokens)
            )

        def validate(result: ChatResult) -> str:
            if not result.text or not result.text.strip():
                raise InvalidReply("empty description", result.text)
            return result.text.strip()

        results = self.client.complete(requests, validate=validate)
        descriptions = []
        for (_, key), result in zip(clips, results):
            if not result.ok:
                log.warning("no description for %s: %s", key, result.error)
            descriptions.append(result.parsed if result.ok else None)
        return descriptions


def subsample(n: int, at_most: int) -> list[int]:
    """At most `at_most` positions of n, spread uniformly, first and last included."""
    if n <= at_most:
        return list(range(n))
    return [round(i * (n - 1) / (at_most - 1)) for i in range(at_most)] if at_most > 1 else [0]


class ClipContexts:
    """Context per video, described once: in memory and in an append-only JSONL file."""

    def __init__(self, describer: Describer, frame_store: FrameStore, path: Path | None = None):
        self.describer = describer
        self.frame_store = frame_store
        self.path = path
        self.prompt_id = load_prompt("describe_clip").id
        self._memory: dict[str, VideoContext] = {}
        self.described_videos = 0  # videos described by this object (not read back from disk)
        if path is not None and path.exists():
            for _, obj in iter_raw(path, repair=True):
                entry = VideoContext(**obj)
                # Contexts of another describer or prompt are not this run's: describe again.
                if entry.describer == describer.id and entry.prompt == self.prompt_id:
                    self._memory[entry.video_key] = entry

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, video_key: str) -> VideoContext | None:
        return self._memory.get(video_key)

    def ensure(self, sources: Sequence[tuple[str | list[str], str]]) -> None:
        """Describe every (video source, where) not described yet, all their clips in one batch."""
        todo: dict[str, tuple[str | list[str], str]] = {}
        for source, where in sources:
            _, key = self.frame_store.video(source, where=where)
            if key not in self._memory and key not in todo:
                todo[key] = (source, where)
        if not todo:
            return
        clips_of = {key: self.frame_store.clips(source, where=where) for key, (source, where) in todo.items()}
        flat = [clip for clips in clips_of.values() for clip in clips]
        descriptions = iter(self.describer.describe(flat))
        writer = JsonlWriter(self.path) if self.path is not None else None
        try:
            for key, clips in clips_of.items():
                entry = VideoContext(key, [next(descriptions) for _ in clips], self.describer.id, self.prompt_id)
                self._memory[key] = entry
                self.described_videos += 1
                # A failed description is not stored, so a rerun asks for it again.
                if writer is not None and entry.text is not None:
                    writer.write(asdict(entry))
        finally:
            if writer is not None:
                writer.close()


__all__ = ["ClipContexts", "Describer", "LocalDescriber", "OpenAIDescriber", "VideoContext", "subsample"]
