"""Decoding video files with PyAV (FFmpeg bundled in its wheel), seeking instead of decoding it all.

How sampled frames are found:
1. A timeline gives the presentation timestamp (pts) of every frame index and which frames are
   keyframes. It comes from the container's index when that index lists every frame at a constant
   rate (mp4/mov: no file read beyond the header), otherwise from one pass over the packets without
   decoding them (mkv/webm/gif, variable frame rate; about 20 ms for 2 min of 360p). Both give the
   exact frame count, so streams whose frame-count metadata is 0 or wrong are handled.
2. Wanted frames are grouped by the keyframe before them. For each group we seek to its first frame
   (FFmpeg lands on the keyframe at or before it) and decode forward to the group's last frame, so
   each group of pictures (GOP) is decoded at most once, and only up to the last frame needed.
3. A decoded frame's index is the timeline entry nearest its pts. A wanted frame the decoder never
   produced (a dropped or damaged frame) is filled by the frame shown before it.
Files whose frames carry no usable timestamps (none, or not increasing, as with B-frames in AVI)
fall back to decoding from the start and counting frames.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from vlm_rlaif.video.types import IndexPicker, Video, VideoLoadError


@dataclass
class Timeline:
    """Where each frame of a stream sits in time, in display order."""

    pts: list[int]  # presentation timestamp of frame i, stream time_base units, increasing
    keyframes: list[int]  # indices of keyframes, increasing; a seek lands on one of these

    def index_of(self, pts: int) -> int:
        """The frame whose timestamp is nearest `pts` (robust to rounding in either)."""
        i = bisect.bisect_left(self.pts, pts)
        if i == len(self.pts):
            return i - 1
        if i > 0 and pts - self.pts[i - 1] < self.pts[i] - pts:
            return i - 1
        return i

    def keyframe_before(self, index: int) -> int:
        i = bisect.bisect_right(self.keyframes, index)
        return self.keyframes[i - 1] if i else 0


class _SeekMissed(Exception):
    """A seek landed after the frame it was meant to reach."""


class _UnreliableTimestamps(Exception):
    """Decoded frames carry no timestamps, or ones that do not increase: frames can only be counted."""


def read_with_pyav(path: str, pick: IndexPicker | None) -> Video:
    """Decode the frames `pick` chooses (every frame when pick is None) from a video file."""
    try:
        with _open(path) as container:
            try:
                return _read(path, container, pick)
            except _UnreliableTimestamps:
                pass
        with _open(path) as container:  # a fresh decoder for the slow but sure way
            return _read(path, container, pick, count_frames=True)
    except av.error.FFmpegError as err:
        raise VideoLoadError(path, f"decoding failed, the file is corrupt or truncated (FFmpeg: {err})") from None


# FFmpeg demuxers we decode (container.format.name). Others are refused: HLS playlists (.m3u8) and
# concat lists name further files, absolute paths included, which would read outside the video root.
ALLOWED_FORMATS = {
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4/mov",
    "matroska,webm": "mkv/webm",
    "avi": "avi",
    "gif": "gif",
}
# FFmpeg checks the probed demuxer against this list before it reads the header (where HLS would
# open the files it lists); any part of a comma-separated demuxer name matches.
_FORMAT_WHITELIST = "mov,matroska,avi,gif"
# Only the file itself: no other protocol (concat:, subfile:, http:) may be named by the path.
OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": _FORMAT_WHITELIST}
ALLOWED_NAMES = "/".join(ALLOWED_FORMATS.values())


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path, options=dict(OPEN_OPTIONS))
    except av.error.EOFError:
        raise VideoLoadError(path, "ends before its first video frame (empty or truncated file)") from None
    except (av.error.ArgumentError, av.error.PermissionError):  # EINVAL/EPERM: refused by a whitelist
        raise VideoLoadError(
            path,
            f"cannot open as a video: not one of the container formats read here ({ALLOWED_NAMES}); "
            "playlists and concat lists are refused",
        ) from None
    except av.error.FFmpegError as err:
        raise VideoLoadError(path, f"cannot open as a video (FFmpeg: {err})") from None
    if container.format.name not in ALLOWED_FORMATS:  # the whitelist above should already refuse it
        name = container.format.name
        container.close()
        raise VideoLoadError(path, f"cannot open as a video: container format {name!r} is not one of {ALLOWED_NAMES}")
    return container


def check_container(path: str) -> None:
    """Raise VideoLoadError unless `path` is a file of an allowed container format (reads the header
    only); run before a decoder that opens the file without our whitelists (torchcodec)."""
    _open(path).close()


def probe_container(path: str) -> None:
    """Raise VideoLoadError unless `path` opens as an allowed container holding a video stream
    (reads the header only, decodes nothing): the cheap check before a run decodes the file."""
    with _open(path) as container:
        if not container.streams.video:
            raise VideoLoadError(path, "has no video stream")


def _read(path: str, container: av.container.InputContainer, pick: IndexPicker | None, count_frames: bool = False) -> Video:
    if not container.streams.video:
        raise VideoLoadError(path, "has no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "AUTO"

    if pick is None:
        arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        if not arrays:
            raise VideoLoadError(path, "contains no video frames")
        indices = list(range(len(arrays)))
        return _video(path, container, stream, arrays, indices, len(arrays), None)

    timeline, packet_count = _timeline(container, stream)
    total = packet_count if timeline is None or count_frames else len(timeline.pts)
    if total == 0:
        raise VideoLoadError(path, "contains no video frames")
    fps = _frame_rate(stream, timeline)
    indices = pick(total, fps)
    wanted = sorted(set(indices))
    if timeline is None or count_frames:
        decoded = _decode_counting(path, container, stream, wanted)
    else:
        decoded = _decode_seeking(path, container, stream, timeline, wanted)
    return _video(path, container, stream, [decoded[i] for i in indices], indices, total, timeline)


def _timeline(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[Timeline | None, int]:
    """The stream's timeline and its frame count; timeline None when packets carry no timestamps."""
    entries = [e for e in stream.index_entries if not e.is_discard]
    if stream.frames > 0 and len(entries) == stream.frames and stream.start_time is not None:
        timeline = _timeline_from_index(entries, stream.start_time)
        if timeline is not None:
            return timeline, len(entries)
    return _timeline_from_packets(container, stream)


def _timeline_from_index(entries: list, start_pts: int) -> Timeline | None:
    """A constant-rate timeline from a full container index (mp4/mov); None for variable rate.

    The index is in decode order with decode timestamps. At a constant rate the presentation
    timestamps are the same evenly spaced grid, starting at the stream's start time. A keyframe's
    decode position equals its display position in closed GOPs; if it does not (open GOPs), only
    the grouping gets less tight: seeking by timestamp still finds the right frames.
    """
    dts = np.array([e.timestamp for e in entries], dtype=np.int64)
    if len(dts) > 1:
        steps = np.diff(dts)
        if steps.max() - steps.min() > 1:  # one tick of slack for rounded time bases
            return None
        step = (dts[-1] - dts[0]) / (len(dts) - 1)
    else:
        step = 0.0
    pts = [start_pts + round(i * step) for i in range(len(dts))]
    keyframes = [i for i, e in enumerate(entries) if e.is_keyframe]
    return Timeline(pts=pts, keyframes=keyframes or [0])


def _timeline_from_packets(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[Timeline | None, int]:
    """Read every packet of the stream (no decoding) to collect timestamps and keyframes."""
    pts: list[int] = []
    keyframe_pts: list[int] = []
    count, missing_pts = 0, False
    for packet in container.demux(stream):
        if packet.size == 0:  # the empty packet that flushes the decoder at the end
            continue
        count += 1
        if packet.pts is None:
            missing_pts = True
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframe_pts.append(packet.pts)
    if missing_pts or count == 0:
        return None, count
    pts.sort()
    keyframes = sorted({bisect.bisect_left(pts, k) for k in keyframe_pts}) or [0]
    return Timeline(pts=pts, keyframes=keyframes), count


def _frame_rate(stream: av.VideoStream, timeline: Timeline | None) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    if timeline is not None and len(timeline.pts) > 1 and stream.time_base:
        span = (timeline.pts[-1] - timeline.pts[0]) * stream.time_base
        return float((len(timeline.pts) - 1) / span) if span > 0 else 0.0
    return 0.0


def _decode_seeking(
    path: str, container: av.container.InputContainer, stream: av.VideoStream, timeline: Timeline, wanted: list[int]
) -> dict[int, np.ndarray]:
    """Decode the `wanted` frames (sorted, unique), one seek per group of frames sharing a keyframe."""
    decoded: dict[int, np.ndarray] = {}
    run = None
    for group in _group_by_keyframe(wanted, timeline):
        # Keep decoding instead of seeking when the run already stands in (or right before) this
        # group's GOP: a seek would throw away the decoder's buffered frames for nothing.
        keyframe = timeline.keyframe_before(group[0])
        if run is None or not (keyframe <= run.position + 1 <= group[0]):
            run = _Run.seek(container, stream, timeline.pts[group[0]])
        try:
            run.collect(group, timeline, decoded, path, len(timeline.pts))
        except _SeekMissed:
            run = _Run.seek(container, stream, timeline.pts[0])  # rare: retry from the very start
            try:
                run.collect(group, timeline, decoded, path, len(timeline.pts))
            except _SeekMissed:
                raise _UnreliableTimestamps from None
    return decoded


def _group_by_keyframe(wanted: list[int], timeline: Timeline) -> list[list[int]]:
    groups: list[list[int]] = []
    last_keyframe = None
    for index in wanted:
        keyframe = timeline.keyframe_before(index)
        if keyframe != last_keyframe:
            groups.append([])
            last_keyframe = keyframe
        groups[-1].append(index)
    return groups


class _Run:
    """Decoding forward from one seek; remembers where it stands and the last frame it produced."""

    def __init__(self, frames: Iterator[av.VideoFrame]):
        self.frames = frames
        self.position = -1  # index of the last decoded frame; -1 before the first
        self.previous: av.VideoFrame | None = None

    @classmethod
    def seek(cls, container: av.container.InputContainer, stream: av.VideoStream, pts: int) -> _Run:
        container.seek(pts, backward=True, any_frame=False, stream=stream)
        return cls(container.decode(stream))

    def collect(self, group: list[int], timeline: Timeline, out: dict[int, np.ndarray], path: str, total: int) -> None:
        pending = list(reversed(group))  # pop() gives the smallest
        for frame in self.frames:
            if frame.pts is None:
                raise _UnreliableTimestamps
            index = timeline.index_of(frame.pts)
            if index <= self.position:  # e.g. h264 in AVI: packets stamped in decode order
                raise _UnreliableTimestamps
            if self.previous is None and index > pending[-1]:
                raise _SeekMissed
            while pending and pending[-1] < index:  # never produced: show the frame before it
                out[pending.pop()] = self.previous.to_ndarray(format="rgb24")
            if pending and pending[-1] == index:
                out[pending.pop()] = frame.to_ndarray(format="rgb24")
            self.previous, self.position = frame, index
            if not pending:
                return
        raise VideoLoadError(
            path,
            f"frame {pending[-1]} of the {total} frames the stream lists could not be decoded: "
            "the file is truncated or corrupt",
        )


def _decode_counting(
    path: str, container: av.container.InputContainer, stream: av.VideoStream, wanted: list[int]
) -> dict[int, np.ndarray]:
    """Decode from the start, numbering frames as they come (for files without timestamps)."""
    container.seek(0)
    wanted_set, last = set(wanted), wanted[-1]
    decoded: dict[int, np.ndarray] = {}
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted_set:
            decoded[index] = frame.to_ndarray(format="rgb24")
        if index == last:
            return decoded
    raise VideoLoadError(path, f"only {len(decoded)} of the wanted frames could be decoded (frame {last} wanted)")


def _video(
    path: str,
    container: av.container.InputContainer,
    stream: av.VideoStream,
    arrays: list[np.ndarray],
    indices: list[int],
    total: int,
    timeline: Timeline | None,
) -> Video:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise VideoLoadError(path, f"frame size changes inside the video ({sorted(shapes)})")
    fps = _frame_rate(stream, timeline)
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = total / fps if fps else 0.0
    return Video(frames=np.stack(arrays), fps=fps, duration=duration, indices=list(indices), total_frames=total, source=path)
