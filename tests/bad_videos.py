"""Bad videos for the on_bad_video tests of the training stages: one that does not open (random bytes
named .mp4, found before the run directory is made) and one that opens but does not decode (a frame
folder whose image is not an image, found when the frames are decoded)."""

from pathlib import Path

import numpy as np

CORRUPT = "corrupt.mp4"
BROKEN_FRAMES = "broken_frames"


def write_bad_videos(directory: Path) -> tuple[str, str]:
    """Write both under `directory`; returns their names (relative to it)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    (directory / CORRUPT).write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (directory / BROKEN_FRAMES).mkdir()
    (directory / BROKEN_FRAMES / "0001.png").write_bytes(b"not a png")
    return CORRUPT, BROKEN_FRAMES
