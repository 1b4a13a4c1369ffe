"""What goes into a `VideoLM` and comes out of it: examples, sampling settings, sampled answers, the
errors that name the example at fault, and the padding of token rows into a batch. Plain data with no
model in it, so clients, engines and trainers can build and read them without loading one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from vlm_rlaif.errors import ConfigError, UserError

IGNORE_INDEX = -100


class ModelInputError(UserError, ValueError):
    """An example, video or request the model cannot take; the message names the example."""


class PromptTooLongError(ModelInputError):
    """A prompt that, with max_new_tokens, does not fit in the model's positions."""


@dataclass
class VideoExample:
    """One conversation about (at most) one video.

    conversation: [{"role": "system"|"user"|"assistant", "content": str}, ...]; an optional first
        system turn replaces the family's default system prompt; then user/assistant alternate. The
        adapter places the video placeholder itself (first in the first user turn).
    video: uint8 RGB frames (T, H, W, 3), numpy or torch; None for text only, or when the features
        are already in the feature cache under video_key.
    video_key: names the video *and its frame sampling* (e.g. "v12@uniform50"; a clip:
        "v12@uniform50/clip1"). Set it to let the frozen visual path run once per video; None turns
        caching off for this example.
    where: names the example's record in errors (default: "example i").
    """

    conversation: list[dict[str, str]]
    video: np.ndarray | torch.Tensor | None = None
    video_key: str | None = None
    where: str = ""  # the record or request it comes from ("file:line (id x)"), named by errors


@dataclass
class GenerationSettings:
    """Sampling settings. temperature 0 = greedy; top_k 0 and top_p 1.0 = off (the paper's PPO rollouts
    use temperature 1.0, top_p 1.0; its evaluation temperature 0.2, 512 new tokens).

    cache_implementation: transformers' KV-cache kind for generate, e.g. "static" (a preallocated
    cache; with torch.compile it is much faster on GPUs); None = the model's default (dynamic)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    batch_size: int = 16
    seed: int | None = None
    cache_implementation: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_samples < 1 or self.batch_size < 1:
            raise ConfigError(
                "max_new_tokens, num_samples and batch_size must be >= 1, got "
                f"{self.max_new_tokens}, {self.num_samples}, {self.batch_size}"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {self.temperature}, {self.top_p}, {self.top_k}"
            )
        if self.cache_implementation is not None:
            from transformers.generation.configuration_utils import (
                ALL_CACHE_IMPLEMENTATIONS,
            )

            if self.cache_implementation not in ALL_CACHE_IMPLEMENTATIONS:
                raise ConfigError(
                    f"unknown cache_implementation {self.cache_implementation!r}; "
                    f"known: {', '.join(ALL_CACHE_IMPLEMENTATIONS)}"
                )


@dataclass
class Generation:
    """One sampled answer. token_ids end with the EOS token when ended_with_eos (PPO scores the EOS
    token too); text is decoded without it."""

    example_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    ended_with_eos: bool


def where_of(index: int, example: VideoExample) -> str:
    if example.where:
        return example.where
    return f"example {index}" + (f" (video_key {example.video_key!r})" if example.video_key else "")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pad_rows(
    rows: list[list[int]], labels: list[list[int]] | None, pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """Token rows -> input_ids, attention_mask, position_ids (and labels), padded on `side`."""
    if not rows:
        raise ModelInputError("no examples to collate")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[r, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, span] = 1
        if labels is not None:
            label_tensor[r, span] = torch.tensor(labels[r], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids(attention_mask)}
    if labels is not None:
        batch["labels"] = label_tensor
    return batch


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Reproducible sampling without disturbing the caller's random state (None: no seeding)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


__all__ = [
    "IGNORE_INDEX",
    "Generation",
    "GenerationSettings",
    "ModelInputError",
    "PromptTooLongError",
    "VideoExample",
    "pad_rows",
    "position_ids",
    "seeded",
    "where_of",
]
