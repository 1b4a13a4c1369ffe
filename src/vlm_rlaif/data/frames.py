"""Sampled frames for records: the one place that turns a record's video reference into pixels.

Every stage reads videos the same way: resolve the record's path under the video root, sample
`num_frames` uniformly (the paper's 50), and for a clip record keep the clip's positions of the
standard split (video.split_clips, at most `clip_max_frames` per clip) of `clip_frames` frames
sampled uniformly (default: the same `num_frames`, as the paper; more makes clips denser than the
whole-video view, which is how the context can carry what that view misses). Each result comes with a
`video_key` that names the video *and* its sampling, which is what the model's feature cache keys on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vlm_rlaif.data.paths import find_video, resolve_under, resolve_video_source
from vlm_rlaif.data.records import ClipSpec
from vlm_rlaif.errors import ConfigError, RecordError
from vlm_rlaif.video import VideoLoadError, load_video, probe_video, split_clips

log = logging.getLogger(__name__)

OnBadVideo = Literal["fail", "skip"]
ON_BAD_VIDEO = ("fail", "skip")
# FrameStore.warnings keys: a video with one frame (repeated to num_frames), a frame folder with
# entries that are not frame images (skipped).
SINGLE_FRAME = "single_frame"
NON_IMAGE_FILES = "non_image_files"


def check_on_bad_video(value: str, where: str) -> None:
    if value not in ON_BAD_VIDEO:
        raise ConfigError(f"{where}: on_bad_video must be 'fail' or 'skip', got {value!r}")


class BadVideoError(RecordError):
    """A record's video that is missing or cannot be decoded; the message names the record and the
    video. With on_bad_video 'skip' a stage records the item as skipped with `reason` and goes on."""

    def __init__(self, where: str, video: str, reason: str):
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}video {video}: {reason}")
        self.video = video
        self.reason = reason


def source_name(source: str | list[str]) -> str:
    """How errors and keys name a record's video: its path, or "<first image>..<count>" for a list."""
    return source if isinstance(source, str) else f"{source[0]}..{len(source)}"


def probe_record_video(root: str | Path, source: str | list[str], *, where: str = "") -> None:
    """The cheap check of a record's video, before anything knows how to sample it: it exists and
    opens (video.probe_video; nothing is decoded). Raises BadVideoError naming `where` and the video;
    a path escaping the root is a bad record (RecordError), not a bad video."""
    path = resolve_video_source(root, source, where=where)
    try:
        probe_video([str(p) for p in path] if isinstance(path, list) else str(path))
    except VideoLoadError as err:
        raise BadVideoError(where, source_name(source), str(err)) from None


@dataclass(frozen=True)
class FrameSampling:
    num_frames: int = 50
    clip_max_frames: int = 20
    on_short: str = "repeat"  # "repeat" | "error": a video with fewer frames than num_frames
    clip_frames: int | None = None  # frames the clip split is made of (None: num_frames)

    def __post_init__(self) -> None:
        if self.clip_frames is not None and self.clip_frames < 1:
            raise ConfigError(f"clip_frames must be >= 1 (or unset), got {self.clip_frames}")

    @property
    def clip_source_frames(self) -> int:
        return self.clip_frames or self.num_frames

    def clip_positions(self, clip: ClipSpec, *, where: str = "") -> list[int]:
        clips = split_clips(self.clip_source_frames, self.clip_max_frames)
        if clip.count != len(clips):
            raise RecordError(
                f"{where}: record asks for clip {clip.index} of {clip.count}, but {self.clip_source_frames} "
                f"frames with at most {self.clip_max_frames} per clip make {len(clips)} clips"
            )
        return clips[clip.index]

    @property
    def tag(self) -> str:
        return f"u{self.num_frames}"

    @property
    def clip_sampling(self) -> "FrameSampling":
        """The whole-video sampling the clips are cut from."""
        if self.clip_source_frames == self.num_frames:
            return self
        return FrameSampling(self.clip_source_frames, self.clip_max_frames, self.on_short)


class FrameStore:
    """Loads sampled frames by record, with a small in-memory LRU (videos are reread across passes)."""

    def __init__(self, root: str | Path, sampling: FrameSampling, max_videos: int = 512):
        self.root = Path(root)
        self.sampling = sampling
        self._max = max_videos
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        # video_key -> what is odd about that video (SINGLE_FRAME, NON_IMAGE_FILES): each video is
        # warned about once, however often it is decoded again.
        self.warnings: dict[str, list[str]] = {}

    @property
    def capacity(self) -> int:
        """How many decoded videos the LRU keeps."""
        return self._max

    def video(self, source: str | list[str], *, where: str = "", sampling: FrameSampling | None = None
              ) -> tuple[np.ndarray, str]:
        """(frames uint8 (T, H, W, 3), video_key) of a record's `video` path or `images` list.
        A video that is missing or does not decode raises BadVideoError (naming `where` and the video)."""
        sampling = sampling or self.sampling
        key_base = source_name(source)
        key = f"{key_base}@{sampling.tag}"
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key], key
        path = resolve_video_source(self.root, source, where=where)
        try:
            video = load_video(
                [str(p) for p in path] if isinstance(path, list) else str(path),
                num_frames=sampling.num_frames,
                on_short=sampling.on_short,
            )
        except VideoLoadError as err:
            raise BadVideoError(where, key_base, str(err)) from None
        if key not in self.warnings:
            self.warnings[key] = self._check(video, where, sampling.num_frames)
        self._lru[key] = video.frames
        if len(self._lru) > self._max:
            self._lru.popitem(last=False)
        return video.frames, key

    def _check(self, video, where: str, num_frames: int) -> list[str]:
        prefix = f"{where}: " if where else ""
        found = []
        if video.total_frames == 1 and num_frames > 1:
            found.append(SINGLE_FRAME)
            log.warning("%s%s has a single frame, repeated to %d frames", prefix, video.source, num_frames)
        if video.ignored_files:
            found.append(NON_IMAGE_FILES)
            shown = ", ".join(video.ignored_files[:5]) + (", ..." if len(video.ignored_files) > 5 else "")
            log.warning("%sframe folder %s: %d entries that are not jpg/jpeg/png frames were ignored (%s)",
                        prefix, video.source, len(video.ignored_files), shown)
        return found

    def warning_counts(self) -> dict[str, int]:
        """Videos decoded so far with each warning: {"single_frame": n, "non_image_files": n}."""
        return {kind: sum(kind in found for found in self.warnings.values()) for kind in (SINGLE_FRAME, NON_IMAGE_FILES)}

    def by_name(self, video_name: str, *, where: str = "") -> tuple[np.ndarray, str]:
        """Frames of a benchmark video named without extension (VCG-Bench, zero-shot QA layouts)."""
        resolve_under(self.root, video_name, where=where)  # a path escaping the root is a bad record, not a bad video
        try:
            path = find_video(self.root, video_name, where="")
        except RecordError as err:  # not there under any known extension: a bad video, too
            raise BadVideoError(where, video_name, str(err)) from None
        return self.video(str(path.relative_to(self.root.resolve())), where=where)

    def clip(self, source: str | list[str], clip: ClipSpec, *, where: str = "") -> tuple[np.ndarray, str]:
        """Frames and key of one clip of the sampled video (the feedback stage's context clips)."""
        frames, key = self.video(source, where=where, sampling=self.sampling.clip_sampling)
        positions = self.sampling.clip_positions(clip, where=where)
        return frames[positions], f"{key}/clip{clip.index}of{clip.count}"

    def for_record(self, record, *, where: str = "") -> tuple[np.ndarray, str]:
        """Frames and key for an instruction/preference record (its clip if it names one)."""
        clip = getattr(record, "clip", None)
        if clip is not None:
            return self.clip(record.video_source, clip, where=where)
        return self.video(record.video_source, where=where)

    def clips(self, source: str | list[str], *, where: str = "") -> list[tuple[np.ndarray, str]]:
        """All clips of a video, in temporal order."""
        n = len(split_clips(self.sampling.clip_source_frames, self.sampling.clip_max_frames))
        return [self.clip(source, ClipSpec(index=i, count=n), where=where) for i in range(n)]
