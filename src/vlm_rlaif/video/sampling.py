"""Which frames to take: uniform (the paper's rule), by frame rate, and the split into clips.

Every stage that needs frame positions (loaders, the toy world, clip descriptions for the feedback
context) goes through these three functions, so they all agree on which frame is which.
"""

from __future__ import annotations

import math

import numpy as np


def sample_uniform(total: int, n: int) -> list[int]:
    """n indices spread evenly over frames 0..total-1, first and last frame included.

    The paper's rule: np.linspace(0, total - 1, n) TRUNCATED to int (dtype=int floors these
    non-negative values). When n > total the same rule repeats indices (3 frames, 5 wanted:
    0, 0, 1, 1, 2); callers decide whether that is allowed (load_video's on_short).
    """
    if total <= 0:
        raise ValueError(f"cannot sample from {total} frames")
    if n <= 0:
        raise ValueError(f"number of frames to sample must be positive, got {n}")
    return np.linspace(0, total - 1, n).astype(np.int64).tolist()


def sample_fps(total: int, src_fps: float, fps: float, max_frames: int | None = None) -> list[int]:
    """Indices of the frames shown at times 0, 1/fps, 2/fps, ... of a source running at src_fps.

    A frame is the one on screen at that time: index = floor(t * src_fps). Asking for more than the
    source rate returns every frame once (frames are never invented). When more than max_frames
    would result, max_frames of them are kept by the uniform rule, so the sample still spans the
    whole video.
    """
    if total <= 0:
        raise ValueError(f"cannot sample from {total} frames")
    if src_fps <= 0 or fps <= 0:
        raise ValueError(f"frame rates must be positive, got source {src_fps} and wanted {fps}")
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    if fps >= src_fps:
        indices = list(range(total))
    else:
        step = src_fps / fps  # source frames per sampled frame, > 1
        count = math.floor((total - 1) / step + 1e-9) + 1
        # The small epsilon keeps exact multiples (k * step == integer) from flooring one frame early.
        indices = [math.floor(k * step + 1e-9) for k in range(count)]
    if max_frames is not None and len(indices) > max_frames:
        indices = [indices[i] for i in sample_uniform(len(indices), max_frames)]
    return indices


def split_clips(n: int, max_per_clip: int) -> list[list[int]]:
    """Positions 0..n-1 split, in order, into ceil(n / max_per_clip) consecutive near-equal clips.

    Longer clips come first: 50 frames at most 20 a clip -> 17, 17, 16; 24 at most 8 -> 8, 8, 8.
    """
    if max_per_clip <= 0:
        raise ValueError(f"max_per_clip must be positive, got {max_per_clip}")
    if n < 0:
        raise ValueError(f"number of frames must not be negative, got {n}")
    if n == 0:
        return []
    num_clips = math.ceil(n / max_per_clip)
    base, extra = divmod(n, num_clips)
    clips, start = [], 0
    for i in range(num_clips):
        size = base + (1 if i < extra else 0)
        clips.append(list(range(start, start + size)))
        start += size
    return clips
