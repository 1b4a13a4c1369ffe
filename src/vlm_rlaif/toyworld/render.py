"""Drawing a Truth as frames: shapes rasterised on a supersampled grid, then box-filtered down, so
edges are anti-aliased and a 7-pixel circle still looks round next to a square."""

from __future__ import annotations

import numpy as np

from vlm_rlaif.toyworld.lexicon import BACKGROUND, PALETTE
from vlm_rlaif.toyworld.world import Truth


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test for a shape of radius r centred at the origin; dx, dy are pixel offsets.
    Areas at one radius are within 15% of each other (circle 3.14 r^2, square 3.10, diamond 2.88,
    triangle 2.75), and every shape stays within 1.3 r of its centre (what render and the collision
    check in world.py assume)."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.88 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up; area 2.75 r^2, close to the circle's 3.14 r^2
        top, bottom = -1.25 * r, 0.95 * r
        half_width = (dy - top) / (bottom - top) * 1.25 * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.2 * r
    raise ValueError(f"unknown shape {shape!r}")


def render(truth: Truth, supersample: int = 4) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames of the video.

    Each object is rasterised on a supersampled grid only inside its bounding box; the box-filtered
    coverage (0..1 per output pixel) blends its colour over the background. Objects never overlap
    (world.py keeps them apart), so blending them one by one is exact."""
    s = truth.size
    # float64 and integer coverage counts keep every value exact (k / supersample^2 blends of
    # integers), so frames are bit-identical run to run; a float32 mean is not (its SIMD summation
    # order depends on memory alignment, and one rounding flip changes the encoded mp4).
    frames = np.empty((truth.frames, s, s, 3), dtype=np.float64)
    frames[:] = BACKGROUND
    for t in range(truth.frames):
        for o in truth.objects:  # drawn in id order: later objects on top
            st = truth.states[t][o.id]
            if not st.visible:
                continue
            reach = 1.3 * o.radius + 1.0
            x0, x1 = max(int(st.x - reach), 0), min(int(np.ceil(st.x + reach)), s)
            y0, y1 = max(int(st.y - reach), 0), min(int(np.ceil(st.y + reach)), s)
            # Centres of the fine pixels inside output pixels x0..x1-1, y0..y1-1.
            fx = x0 + (np.arange((x1 - x0) * supersample) + 0.5) / supersample
            fy = y0 + (np.arange((y1 - y0) * supersample) + 0.5) / supersample
            mask = shape_mask(o.shape, fx[None, :] - st.x, fy[:, None] - st.y, o.radius)
            count = mask.reshape(y1 - y0, supersample, x1 - x0, supersample).sum(axis=(1, 3))
            cover = (count / supersample**2)[..., None]
            patch = frames[t, y0:y1, x0:x1]
            frames[t, y0:y1, x0:x1] = patch * (1.0 - cover) + np.asarray(PALETTE[st.colour], np.float64) * cover
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
