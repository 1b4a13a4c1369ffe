"""Frame / caption pairs for pretraining a vision tower the way CLIP is, from a split of the toy world
that no later stage sees.

A caption names every visible object of one frame by size, colour, shape and coarse place, left to
right: "big red circle top left , small blue square middle right". Those are exactly the
attributes the later texts ask about; the place (a 3 x 3 grid, or finer) is what a frame must carry
for its pooled features to tell a motion's direction. Videos come from indices at PRETRAIN_OFFSET and up,
which the world's generator never uses (it numbers videos from 0), so pretraining never sees an SFT,
feedback, RL or evaluation video.
"""

from __future__ import annotations

import numpy as np

from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.render import render
from vlm_rlaif.toyworld.world import Truth, sample_truth

PRETRAIN_OFFSET = 10_000_000
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def place_of(x: float, y: float, size: int, grid: int = 3) -> str:
    """The cell of a grid x grid split of the frame: words on a 3 x 3 grid ("top left"), else column
    and row numbers ("x1 y4")."""
    row, column = min(int(grid * y / size), grid - 1), min(int(grid * x / size), grid - 1)
    return f"{ROWS[row]} {COLUMNS[column]}" if grid == 3 else f"x{column} y{row}"


def frame_caption(truth: Truth, t: int, grid: int = 3) -> str:
    """The caption of frame t (an empty frame is "nothing")."""
    seen = [(truth.states[t][o.id], o) for o in truth.objects if truth.states[t][o.id].visible]
    seen.sort(key=lambda so: (so[0].x, so[0].y))
    parts = [f"{o.size} {st.colour} {o.shape} {place_of(st.x, st.y, truth.size, grid)}" for st, o in seen]
    return " , ".join(parts) or "nothing"


def frame_caption_pairs(
    cfg: ToyWorldConfig, videos: int, frames_per_video: int, *, start: int = 0, grid: int = 3
) -> tuple[np.ndarray, list[str]]:
    """uint8 frames (N, H, W, 3) and their captions, `frames_per_video` evenly spread frames from each
    of `videos` pretraining videos (indices PRETRAIN_OFFSET + start ...); places on a grid x grid split."""
    frames, captions = [], []
    for i in range(videos):
        truth = sample_truth(cfg, PRETRAIN_OFFSET + start + i)
        picks = np.linspace(0, truth.frames - 1, frames_per_video).round().astype(int)
        pixels = render(truth, cfg.supersample)
        for t in picks:
            frames.append(pixels[t])
            captions.append(frame_caption(truth, int(t), grid))
    return np.stack(frames), captions


__all__ = ["PRETRAIN_OFFSET", "frame_caption", "frame_caption_pairs", "place_of"]
