"""Proof that the video reaches the loss forward with gradients on.

TRL's trainers run without error on video data yet never pass the video into the loss forward
(docs/platform.md). Every trainer we ship has a test that wraps one training step in
`count_visual_calls(lm)` and asserts the visual path ran with grad enabled; a trainer that drops the
video leaves every count at 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vlm_rlaif.models.adapter import VideoLM


@dataclass
class VisualCallCounts:
    """Calls of the visual path while the context was open.

    calls_with_grad / calls_without_grad: per probe module ("vision_tower", "projector" when frames
        were given; "splice" whenever a video entered the language model, frames or cached features),
        split by torch.is_grad_enabled() at call time.
    forwards_with_grad: model forwards (top level) run with grad enabled.
    video_forwards_with_grad: those of them in which a video was spliced in.
    """

    calls_with_grad: Counter = field(default_factory=Counter)
    calls_without_grad: Counter = field(default_factory=Counter)
    forwards_with_grad: int = 0
    video_forwards_with_grad: int = 0

    @property
    def with_grad(self) -> int:
        """All visual-path calls made with grad enabled (0 if the video never reached a grad forward)."""
        return sum(self.calls_with_grad.values())


@contextmanager
def count_visual_calls(lm: VideoLM) -> Iterator[VisualCallCounts]:
    """Count visual-path calls (see VisualCallCounts) made through `lm`'s model inside the block."""
    counts = VisualCallCounts()
    spliced_in_forward = [False]

    def on_visual_call(name: str):
        def hook(module, args, output):
            if torch.is_grad_enabled():
                counts.calls_with_grad[name] += 1
            else:
                counts.calls_without_grad[name] += 1
            if name == "splice":
                spliced_in_forward[0] = True

        return hook

    def on_forward_start(module, args):
        spliced_in_forward[0] = False

    def on_forward_end(module, args, output):
        if torch.is_grad_enabled():
            counts.forwards_with_grad += 1
            counts.video_forwards_with_grad += int(spliced_in_forward[0])

    handles = [module.register_forward_hook(on_visual_call(name)) for name, module in lm.visual_probe_modules().items()]
    handles.append(lm.base_model.register_forward_pre_hook(on_forward_start))
    handles.append(lm.base_model.register_forward_hook(on_forward_end))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["VisualCallCounts", "count_visual_calls"]
