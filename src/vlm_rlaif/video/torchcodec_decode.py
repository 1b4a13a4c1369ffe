"""Decoding video files with torchcodec, used when it is installed and loads (optional).

torchcodec needs the system's FFmpeg libraries and a matching torch build, so on many machines it
is absent or fails to import; `torchcodec_available()` says which, and PyAV is the fallback.
"""

from __future__ import annotations

import functools

import numpy as np

from vlm_rlaif.video.types import IndexPicker, Video, VideoLoadError


@functools.cache
def torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # not installed, or installed but its FFmpeg/torch libraries do not load
        return False
    return True


def read_with_torchcodec(path: str, pick: IndexPicker | None) -> Video:
    """Decode the frames `pick` chooses (every frame when pick is None) with torchcodec's exact seeking."""
    from torchcodec.decoders import VideoDecoder

    try:
        # seek_mode="exact" scans the file once for exact frame positions; 0 threads = FFmpeg decides.
        decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=0, seek_mode="exact")
        total = len(decoder)
        if total == 0:
            raise VideoLoadError(path, "contains no video frames")
        metadata = decoder.metadata
        fps = float(metadata.average_fps or 0.0)
        indices = list(range(total)) if pick is None else pick(total, fps)
        wanted = sorted(set(indices))
        batch = decoder.get_frames_at(wanted).data.numpy()
    except VideoLoadError:
        raise
    except Exception as err:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
        raise VideoLoadError(path, f"cannot decode as a video with torchcodec ({err})") from None
    position = {index: k for k, index in enumerate(wanted)}
    frames = np.ascontiguousarray(batch[[position[i] for i in indices]])
    duration = float(metadata.duration_seconds or (total / fps if fps else 0.0))
    return Video(frames=frames, fps=fps, duration=duration, indices=indices, total_frames=total, source=path)
