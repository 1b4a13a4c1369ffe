"""One entry for every kind of video source, and a batch loader that reports what failed."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlm_rlaif.video.images import frame_folder, read_images
from vlm_rlaif.video.pyav_decode import check_container, probe_container, read_with_pyav
from vlm_rlaif.video.sampling import sample_fps, sample_uniform
from vlm_rlaif.video.torchcodec_decode import read_with_torchcodec, torchcodec_available
from vlm_rlaif.video.types import IndexPicker, Video, VideoLoadError

OnShort = Literal["repeat", "error"]
Backend = Literal["auto", "pyav", "torchcodec"]
ARRAY_SOURCE = "<array>"


def load_video(
    source: Any,
    num_frames: int | None = None,
    fps: float | None = None,
    on_short: OnShort = "repeat",
    backend: Backend = "auto",
    *,
    max_frames: int | None = None,
    source_fps: float | None = None,
) -> Video:
    """Load frames from a video file, a frame folder, a list of frame images or an in-memory array.

    source: path to a video file (mp4/mov, mkv/webm, avi, gif by content, whatever the extension:
        other formats, HLS playlists and concat lists among them, are refused); a folder of
        jpg/jpeg/png frames (natural order: frame_2 before frame_10); a list of frame image paths;
        or a uint8 (T, H, W, 3) RGB numpy array or torch tensor.
    num_frames: that many frames by the paper's uniform rule (sample_uniform). fps: frames at that
        rate (sample_fps), at most max_frames. Neither: every frame. Setting both is an error.
    on_short: when num_frames exceeds the source's frames, "repeat" repeats frames by the same
        uniform rule (indices repeat) and "error" raises VideoLoadError.
    backend: "auto" uses torchcodec when it loads (not for .avi), else PyAV; PyAV also retries any
        file torchcodec fails on.
    source_fps: the frame rate of sources that carry none (folders, image lists, arrays).
    A frame folder's other entries are skipped and listed in Video.ignored_files.
    Raises VideoLoadError (message starts with the file) for anything wrong with the source.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("set at most one of num_frames and fps")
    if num_frames is not None and num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and fps is None:
        raise ValueError("max_frames applies to fps sampling; with num_frames it is redundant")
    if on_short not in ("repeat", "error"):
        raise ValueError(f"on_short must be 'repeat' or 'error', got {on_short!r}")
    if backend not in ("auto", "pyav", "torchcodec"):
        raise ValueError(f"backend must be 'auto', 'pyav' or 'torchcodec', got {backend!r}")

    if isinstance(source, np.ndarray) or _is_torch_tensor(source):
        return _from_array(source, _picker(ARRAY_SOURCE, num_frames, fps, max_frames, on_short), source_fps)
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        name = str(paths[0].parent) if paths else "<empty image list>"  # errors name the image itself
        return _from_images(name, paths, _picker(name, num_frames, fps, max_frames, on_short), source_fps)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"unsupported video source type {type(source).__name__}")

    path = Path(source)
    name = str(path)
    if not path.exists():
        raise VideoLoadError(name, "does not exist")
    pick = _picker(name, num_frames, fps, max_frames, on_short)
    if path.is_dir():
        images, others = frame_folder(path)
        video = _from_images(name, images, pick, source_fps)
        video.ignored_files = others
        return video
    if backend == "torchcodec" and not torchcodec_available():
        raise VideoLoadError(name, "backend='torchcodec' asked for, but torchcodec is not installed or does not load")
    if backend != "pyav" and torchcodec_available():
        check_container(name)  # torchcodec opens any format FFmpeg knows, playlists included
    if backend == "torchcodec":
        return read_with_torchcodec(name, pick)
    # AVI stamps packets in decode order; with B-frames torchcodec then returns wrong frames
    # (checked with torchcodec 0.17), while PyAV notices and counts frames instead.
    if backend == "auto" and torchcodec_available() and path.suffix.lower() != ".avi":
        try:
            return read_with_torchcodec(name, pick)
        except VideoLoadError:
            pass  # PyAV decides, and words the error if the file really is bad
    return read_with_pyav(name, pick)


def probe_video(source: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
    """Check, without decoding a frame, that `source` would open: a video file exists and is an
    allowed container (mp4/mov, mkv/webm, avi, gif) with a video stream; a frame folder holds frame
    images; every image of a list exists. Raises VideoLoadError (message starts with the file).
    A file that opens may still fail to decode (a truncated stream): load_video finds that."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise VideoLoadError("<empty image list>", "no frame images given")
        for image in source:
            if not Path(image).is_file():
                raise VideoLoadError(str(image), "frame image does not exist")
        return
    path = Path(source)
    if not path.exists():
        raise VideoLoadError(str(path), "does not exist")
    if path.is_dir():
        frame_folder(path)
        return
    probe_container(str(path))


def _picker(name: str, num_frames: int | None, fps: float | None, max_frames: int | None, on_short: OnShort) -> IndexPicker | None:
    """The sampling rule as a function of what the source turns out to hold; None = every frame."""
    if num_frames is None and fps is None:
        return None

    def pick(total: int, source_fps: float) -> list[int]:
        if num_frames is not None:
            if num_frames > total and on_short == "error":
                raise VideoLoadError(name, f"has {total} frames, {num_frames} requested (on_short='error')")
            return sample_uniform(total, num_frames)
        if source_fps <= 0:
            raise VideoLoadError(name, f"has no known frame rate, cannot sample at fps={fps} (pass source_fps)")
        return sample_fps(total, source_fps, fps, max_frames)

    return pick


def _from_images(name: str, paths: list[Path], pick: IndexPicker | None, source_fps: float | None) -> Video:
    if not paths:
        raise VideoLoadError(name, "no frame images given")
    total = len(paths)
    rate = source_fps or 0.0
    indices = list(range(total)) if pick is None else pick(total, rate)
    frames = read_images(paths, indices)
    return Video(frames=frames, fps=rate, duration=total / rate if rate else 0.0, indices=indices, total_frames=total, source=name)


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    return torch is not None and isinstance(obj, torch.Tensor)


def _from_array(array: Any, pick: IndexPicker | None, source_fps: float | None) -> Video:
    if _is_torch_tensor(array):
        array = array.detach().cpu().numpy()
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise VideoLoadError(ARRAY_SOURCE, f"expected a uint8 (T, H, W, 3) array, got {array.dtype} {tuple(array.shape)}")
    total = array.shape[0]
    if total == 0:
        raise VideoLoadError(ARRAY_SOURCE, "contains no video frames")
    rate = source_fps or 0.0
    indices = list(range(total)) if pick is None else pick(total, rate)
    frames = np.ascontiguousarray(array[indices])
    return Video(frames=frames, fps=rate, duration=total / rate if rate else 0.0, indices=indices, total_frames=total, source=ARRAY_SOURCE)


@dataclass
class LoadFailure:
    position: int  # index of the source in the batch
    source: str
    reason: str


@dataclass
class LoadReport:
    total: int
    failures: list[LoadFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def loaded(self) -> int:
        return self.total - self.failed

    def summary(self) -> str:
        lines = [f"loaded {self.loaded} of {self.total} videos, {self.failed} failed"]
        lines += [f"  [{f.position}] {f.source}: {f.reason}" for f in self.failures]
        return "\n".join(lines)


def load_videos(
    sources: Sequence[Any],
    num_frames: int | None = None,
    fps: float | None = None,
    on_short: OnShort = "repeat",
    backend: Backend = "auto",
    *,
    max_frames: int | None = None,
    source_fps: float | None = None,
    on_error: Literal["skip", "fail"] = "fail",
    num_workers: int = 0,
) -> tuple[list[Video | None], LoadReport]:
    """load_video over many sources. on_error="skip" puts None for a source that fails and lists it in
    the report; "fail" raises the first failure in source order. num_workers > 0 decodes in a thread
    pool (FFmpeg decodes outside Python's lock)."""
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")

    def attempt(source: Any) -> Video | VideoLoadError:
        try:
            return load_video(source, num_frames, fps, on_short, backend, max_frames=max_frames, source_fps=source_fps)
        except VideoLoadError as err:
            return err

    videos: list[Video | None] = []
    report = LoadReport(total=len(sources))
    pool = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 else None
    try:
        # Results arrive in source order either way; the serial map is lazy, so "fail" stops early.
        outcomes = pool.map(attempt, sources) if pool else map(attempt, sources)
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, VideoLoadError):
                if on_error == "fail":
                    raise outcome
                videos.append(None)
                report.failures.append(LoadFailure(position=position, source=outcome.source, reason=outcome.reason))
            else:
                videos.append(outcome)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return videos, report
