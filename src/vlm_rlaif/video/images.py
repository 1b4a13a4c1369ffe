"""Videos stored as frame images: a folder of jpg/png files (the paper's pre-extracted frames) or a
list of image paths. Only the sampled frames are opened."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlm_rlaif.video.types import VideoLoadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: frame_2 before frame_10."""
    parts = re.split(r"(\d+)", name)
    # re.split with a group alternates text (even positions) and digits (odd), so keys compare.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def frame_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """(the jpg/jpeg/png files of a folder in natural order, the names of its other entries)."""
    entries = os.listdir(folder)
    names = [n for n in entries if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise VideoLoadError(str(folder), f"frame folder has no frame images ({'/'.join(IMAGE_EXTENSIONS)})")
    others = sorted(n for n in entries if not n.lower().endswith(IMAGE_EXTENSIONS))
    return [folder / n for n in sorted(names, key=natural_key)], others


def read_images(paths: Sequence[Path], indices: Sequence[int]) -> np.ndarray:
    """Stack the images at `indices` (repeats allowed, each file opened once) as uint8 (T,H,W,3) RGB."""
    loaded: dict[int, np.ndarray] = {}
    for i in sorted(set(indices)):
        loaded[i] = _read_rgb(paths[i])
    first = loaded[min(loaded)]
    for i, image in loaded.items():
        if image.shape != first.shape:
            raise VideoLoadError(
                str(paths[i]),
                f"frame size {image.shape[1]}x{image.shape[0]} differs from "
                f"{first.shape[1]}x{first.shape[0]} of {paths[min(loaded)]} (mixed frame sizes)",
            )
    return np.stack([loaded[i] for i in indices])


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise VideoLoadError(str(path), "frame image does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoLoadError(str(path), f"cannot read frame image ({err})") from None
