"""Writing frames as a video file with PyAV: h264 mp4 by default, also mov/mkv/webm/gif by extension.

The toy world writes its videos with this, and every test makes its own videos with it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

# extension -> (FFmpeg container format, default codec)
_CONTAINERS = {
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
# x264 with several threads, or with its macroblock-tree rate control (float math), can write different
# bytes for the same frames from run to run (the toy world saw both); one thread and mbtree=0 made
# 240/240 files identical. Small videos lose nothing by it.
DETERMINISTIC_X264 = {"threads": "1", "x264-params": "mbtree=0"}


def write_video(
    frames: np.ndarray | Iterable[np.ndarray],
    path: str | os.PathLike,
    fps: float = 8.0,
    codec: str | None = None,
    crf: int = 18,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write uint8 RGB frames to `path`; the container comes from the extension.

    frames: a (T, H, W, 3) array (or torch tensor), or an iterable of (H, W, 3) frames written as they
        come, so long videos need not fit in memory.
    codec: None picks the extension's default (libx264 for mp4/mov/mkv, libvpx-vp9 for webm, gif).
    crf: constant quality for x264/x265/vpx (lower is better; 18 is visually lossless for x264).
    gop: keyframe interval in frames (None: the encoder's default, 250 for x264).
    options: extra encoder options, e.g. {"preset": "veryfast"}. libx264 output is deterministic by
        default (DETERMINISTIC_X264: one thread, mbtree=0): an option given here replaces the default
        of the same name, except "x264-params", which is appended to ours (so it wins where it repeats
        a parameter, and "scenecut=0" alone keeps mbtree=0).
    Video codecs store yuv420p, which needs even sizes: an odd height or width is padded by one
    repeated row or column at the bottom/right, so such a video reads back one pixel larger. The
    file appears only when complete (written under a temporary name, then renamed).
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _CONTAINERS:
        raise ValueError(f"{path}: cannot write video with extension '{path.suffix}' (use one of {sorted(_CONTAINERS)})")
    if fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    container_format, default_codec = _CONTAINERS[extension]
    codec = codec or default_codec

    frame_iter = iter(_as_frames(frames))
    first = next(frame_iter, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    height, width = _check_frame(first, path).shape[:2]
    is_gif = codec == "gif"
    padded_height, padded_width = (height, width) if is_gif else (height + height % 2, width + width % 2)

    partial = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(partial), "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = padded_width, padded_height
            stream.pix_fmt = "pal8" if is_gif else "yuv420p"
            if gop is not None:
                stream.codec_context.gop_size = gop
            stream.options = _encoder_options(codec, crf, options or {})
            for frame in itertools.chain([first], frame_iter):
                frame = _check_frame(frame, path)
                if frame.shape[:2] != (height, width):
                    raise ValueError(f"{path}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's {width}x{height}")
                if is_gif:
                    video_frame = _palette_frame(frame)
                else:
                    if (padded_height, padded_width) != (height, width):
                        frame = np.pad(frame, ((0, padded_height - height), (0, padded_width - width), (0, 0)), mode="edge")
                    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _as_frames(frames: Any) -> Iterable[np.ndarray]:
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    return frames


def _check_frame(frame: Any, path: Path) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{path}: each frame must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
    return frame


def _encoder_options(codec: str, crf: int, options: dict[str, str]) -> dict[str, str]:
    defaults = {**_quality_options(codec, crf), **(DETERMINISTIC_X264 if codec == "libx264" else {})}
    merged = {**defaults, **options}
    if codec == "libx264" and "x264-params" in options:
        merged["x264-params"] = f"{DETERMINISTIC_X264['x264-params']}:{options['x264-params']}"
    return merged


def _quality_options(codec: str, crf: int) -> dict[str, str]:
    if codec in ("libx264", "libx265"):
        return {"crf": str(crf)}
    if codec in ("libvpx", "libvpx-vp9"):
        return {"crf": str(crf), "b": "0"}  # b=0 makes vpx use pure constant quality
    return {}


def _palette_frame(frame: np.ndarray) -> av.VideoFrame:
    """GIF stores 256-colour palette images: quantise each frame to its own palette, no dithering."""
    quantised = Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE)
    colours = np.array(quantised.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)  # ARGB, opaque
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(quantised), palette), format="pal8")
