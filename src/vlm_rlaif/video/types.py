"""The decoded video every loader returns, the one error every loader raises, and the sampling hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlm_rlaif.errors import UserError


@dataclass
class Video:
    """Frames sampled from one source, with enough metadata to say where they came from.

    fps and duration describe the source, not the sample. Sources that carry no frame rate (frame
    folders, image lists, arrays loaded without `source_fps`) report fps = 0.0 and duration = 0.0.
    """

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    fps: float
    duration: float  # seconds
    indices: list[int]  # source frame index of each returned frame (repeats when the source is short)
    total_frames: int  # frames in the source
    source: str
    ignored_files: list[str] = field(default_factory=list)  # frame folder entries that are not frame images


# Chooses source frame indices given (total_frames, source_fps), once the source is opened.
IndexPicker = Callable[[int, float], list[int]]


class VideoLoadError(UserError):
    """A video that cannot be read as asked; the message always starts with the file it concerns."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
