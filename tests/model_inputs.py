"""Inputs the model tests share: random uint8 video frames and one-turn VideoExamples."""

import numpy as np

from vlm_rlaif.models import VideoExample


def frames(num_frames: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """Random RGB frames (num_frames, height, width, 3), uint8, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def ask(question: str, video=None, key: str | None = None) -> VideoExample:
    """A question (a generation prompt), optionally about a video."""
    return VideoExample([{"role": "user", "content": question}], video=video, video_key=key)


def chat(question: str, answer: str, video=None, key: str | None = None) -> VideoExample:
    """A question and its answer (a training or scoring conversation), optionally about a video."""
    return VideoExample(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], video=video, video_key=key
    )
