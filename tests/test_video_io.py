"""Video I/O: sampling rules, decoding by seeking, frame folders, arrays, errors, batch loading.

Every video is made here with write_video. Each frame carries its own index as a row of black/white
blocks (one bit each), which survives lossy h264/vp9/gif coding, so a loaded frame tells which
source frame it is.
"""

import os
import types
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import vlm_rlaif.video.load as load_module
import vlm_rlaif.video.pyav_decode as pyav_decode
from vlm_rlaif.errors import UserError
from vlm_rlaif.video import (
    LoadReport,
    VideoLoadError,
    load_video,
    load_videos,
    sample_fps,
    sample_uniform,
    split_clips,
    write_video,
)

BITS, BLOCK, HEIGHT = 10, 8, 16


def pattern_frame(index: int) -> np.ndarray:
    """A (16, 80, 3) frame whose 10 blocks spell `index` in binary, least significant bit first."""
    frame = np.zeros((HEIGHT, BITS * BLOCK, 3), np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            frame[:, bit * BLOCK : (bit + 1) * BLOCK] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    blocks = frame[:HEIGHT, : BITS * BLOCK].reshape(HEIGHT, BITS, BLOCK, 3).mean(axis=(0, 2, 3))
    return sum(1 << bit for bit in range(BITS) if blocks[bit] > 128)


def read_indices(frames: np.ndarray) -> list[int]:
    return [read_index(f) for f in frames]


def pattern_frames(n: int) -> np.ndarray:
    return np.stack([pattern_frame(i) for i in range(n)])


def write_with_pyav(path, frames, codec="libx264", rate=8, gop=10, container_options=None, times=None):
    """Write with PyAV directly, for files write_video does not make (AVI, faststart, irregular times)."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        if times is not None:
            stream.codec_context.time_base = Fraction(1, rate)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = times[i], Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------- sampling rules


def test_sample_uniform_is_the_paper_linspace_truncated():
    # 0, 1.67, 3.33, 5: truncation gives 1 and 3 where rounding would give 2 and 3.
    assert sample_uniform(6, 4) == [0, 1, 3, 5]
    for total, n in [(100, 8), (1000, 50), (51, 50), (50, 50), (7, 1)]:
        assert sample_uniform(total, n) == np.linspace(0, total - 1, n, dtype=int).tolist()
    assert sample_uniform(50, 50) == list(range(50))


def test_sample_uniform_repeats_frames_of_a_short_video():
    assert sample_uniform(3, 5) == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError):
        sample_uniform(0, 4)
    with pytest.raises(ValueError):
        sample_uniform(10, 0)


def test_sample_fps():
    assert sample_fps(90, 30.0, 1.0) == [0, 30, 60]
    assert sample_fps(91, 30.0, 1.0) == [0, 30, 60, 90]
    assert sample_fps(40, 8.0, 2.0) == list(range(0, 40, 4))
    assert sample_fps(10, 8.0, 8.0) == list(range(10))
    assert sample_fps(10, 8.0, 60.0) == list(range(10))  # never invents frames
    ntsc = Fraction(30000, 1001)
    expected = [int(k * ntsc) for k in range(10)]  # frame on screen at t = k seconds
    assert sample_fps(300, float(ntsc), 1.0) == expected
    capped = sample_fps(300, 30.0, 10.0, max_frames=8)
    assert len(capped) == 8 and capped[0] == 0 and capped[-1] == 297
    with pytest.raises(ValueError):
        sample_fps(10, 0.0, 1.0)


def test_split_clips():
    clips = split_clips(50, 20)
    assert [len(c) for c in clips] == [17, 17, 16]
    assert sum(clips, []) == list(range(50))
    assert [len(c) for c in split_clips(24, 8)] == [8, 8, 8]
    assert [len(c) for c in split_clips(21, 20)] == [11, 10]
    assert split_clips(20, 20) == [list(range(20))]
    assert split_clips(0, 20) == []
    with pytest.raises(ValueError):
        split_clips(10, 0)


# ---------------------------------------------------------------- video files


@pytest.mark.parametrize("extension", ["mp4", "mov", "mkv", "webm", "gif"])
def test_file_round_trip_identifies_every_sampled_frame(tmp_path, extension):
    path = write_video(pattern_frames(40), tmp_path / f"v.{extension}", fps=8, gop=10)

    video = load_video(path, num_frames=7)
    assert video.indices == sample_uniform(40, 7)
    assert read_indices(video.frames) == video.indices
    assert video.frames.dtype == np.uint8 and video.frames.shape == (7, HEIGHT, BITS * BLOCK, 3)
    assert video.total_frames == 40 and video.source == str(path)

    everything = load_video(path)
    assert read_indices(everything.frames) == list(range(40))
    # GIF stores delays in 1/100 s, so 8 fps comes back as 12-13 cs per frame.
    tolerance = 0.5 if extension == "gif" else 1e-6
    assert everything.fps == pytest.approx(8.0, abs=tolerance)
    assert everything.duration == pytest.approx(5.0, abs=0.05)


def x264_settings(path) -> dict[str, str]:
    """The encoder settings x264 writes into its stream ("options: threads=1 ... mbtree=0 ...")."""
    line = path.read_bytes().split(b"options: ", 1)[1].split(b"\x00", 1)[0].decode()
    return dict(item.split("=", 1) for item in line.split())


def test_mp4_is_deterministic_by_default(tmp_path):
    # Frames big enough that x264 would pick several threads by itself.
    base = np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 4 * i, axis=1) for i in range(12)])
    first = write_video(frames, tmp_path / "a.mp4")
    second = write_video(frames, tmp_path / "b.mp4")
    assert first.read_bytes() == second.read_bytes()
    settings = x264_settings(first)
    assert settings["threads"] == "1" and settings["mbtree"] == "0" and settings["crf"].startswith("18")
    assert x264_settings(write_video(frames, tmp_path / "c.mkv"))["mbtree"] == "0"  # libx264 in any container

    # The caller's options win; x264-params add to ours (scenecut=0 keeps mbtree=0).
    settings = x264_settings(write_video(frames, tmp_path / "d.mp4", options={"x264-params": "scenecut=0"}))
    assert settings["mbtree"] == "0" and settings["scenecut"] == "0" and settings["threads"] == "1"
    settings = x264_settings(write_video(frames, tmp_path / "e.mp4", options={"x264-params": "mbtree=1", "threads": "2"}))
    assert settings["mbtree"] == "1" and settings["threads"] == "2"


def test_frame_count_comes_from_packets_when_metadata_lacks_it(tmp_path):
    path = write_video(pattern_frames(37), tmp_path / "v.mkv", fps=8, gop=5)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # matroska stores no frame count
    video = load_video(path, num_frames=5)
    assert video.total_frames == 37
    assert read_indices(video.frames) == sample_uniform(37, 5)


def test_seeking_returns_the_same_pixels_as_decoding_everything(tmp_path):
    frames = pattern_frames(120) // 2 + np.random.default_rng(0).integers(0, 60, (120, HEIGHT, 80, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "v.mp4", fps=24, gop=12)  # x264 with B-frames
    everything = load_video(path).frames
    rng = np.random.default_rng(1)
    for _ in range(3):
        indices = sorted(rng.choice(120, size=9, replace=False).tolist())
        picked = pyav_decode.read_with_pyav(str(path), lambda total, fps, ix=indices: ix)
        np.testing.assert_array_equal(picked.frames, everything[indices])


class CountingContainer:
    """Wraps a PyAV container to count seeks and decoded frames."""

    def __init__(self, inner):
        self.inner = inner
        self.seeks = 0
        self.decoded = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()

    def seek(self, *args, **kwargs):
        self.seeks += 1
        return self.inner.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.inner.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


@pytest.fixture
def counting(monkeypatch):
    opened = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(CountingContainer(real_open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(pyav_decode.av, "open", counting_open)
    return opened


def test_sampling_seeks_and_decodes_each_gop_at_most_once(tmp_path, counting):
    gop = 48
    path = write_video(pattern_frames(480), tmp_path / "v.mp4", fps=24, gop=gop, options={"x264-params": "scenecut=0"})

    video = load_video(path, num_frames=5, backend="pyav")  # 0, 119, 239, 359, 479: five GOPs touched
    assert read_indices(video.frames) == [0, 119, 239, 359, 479]
    container = counting[-1]
    assert container.seeks == 5
    needed = sum(i % gop + 1 for i in video.indices)  # from each GOP's keyframe to the frame: 145
    assert container.decoded <= needed + 5 * 8, container.decoded  # plus decoder look-ahead
    assert container.decoded < 480 / 2

    dense = load_video(path, num_frames=30, backend="pyav")  # 3 frames in each of the 10 GOPs
    assert read_indices(dense.frames) == dense.indices
    container = counting[-1]
    assert container.seeks <= 10
    assert container.decoded <= 480


def test_fps_sampling_from_a_file(tmp_path):
    path = write_video(pattern_frames(40), tmp_path / "v.mp4", fps=8)
    video = load_video(path, fps=2)
    assert video.indices == list(range(0, 40, 4))
    assert read_indices(video.frames) == video.indices
    capped = load_video(path, fps=4, max_frames=5)
    assert capped.indices == [0, 8, 18, 28, 38]  # 20 frames at 4 fps, 5 kept uniformly
    assert read_indices(capped.frames) == capped.indices


def test_variable_frame_rate_files_index_frames_by_position(tmp_path):
    """Frames at irregular times: index i is still the i-th frame shown (timeline from packets)."""
    times = [0, 1, 2, 5, 6, 7, 12, 13, 20, 21, 22, 23, 30]
    for extension in ["mkv", "mp4"]:
        path = write_with_pyav(tmp_path / f"vfr.{extension}", pattern_frames(len(times)), rate=10, times=times)
        video = load_video(path, num_frames=6)
        assert video.total_frames == len(times)
        assert read_indices(video.frames) == video.indices == sample_uniform(len(times), 6)


def test_b_frames_in_avi_fall_back_to_counting_frames(tmp_path, counting):
    """AVI stamps h264 packets in decode order, so B-frames break timestamps: frames are counted."""
    path = write_with_pyav(tmp_path / "v.avi", pattern_frames(30), gop=7)
    opened_before = len(counting)
    video = load_video(path, num_frames=7, backend="pyav")
    assert read_indices(video.frames) == video.indices == sample_uniform(30, 7)
    assert len(counting) - opened_before == 2  # the seeking attempt noticed, a fresh decoder counted
    mpeg4 = write_with_pyav(tmp_path / "mpeg4.avi", pattern_frames(30), codec="mpeg4")
    assert read_indices(load_video(mpeg4, num_frames=7, backend="pyav").frames) == sample_uniform(30, 7)
    # torchcodec trusts those timestamps and returns wrong frames, so "auto" reads AVI with PyAV.
    assert read_indices(load_video(path, num_frames=7, backend="auto").frames) == sample_uniform(30, 7)


def test_short_video_repeats_or_errors(tmp_path):
    path = write_video(pattern_frames(5), tmp_path / "short.mp4", fps=8)
    video = load_video(path, num_frames=8)
    assert video.indices == sample_uniform(5, 8) == [0, 0, 1, 1, 2, 2, 3, 4]
    assert read_indices(video.frames) == video.indices
    with pytest.raises(VideoLoadError) as caught:
        load_video(path, num_frames=8, on_short="error")
    message = str(caught.value)
    assert str(path) in message and "5 frames" in message and "8 requested" in message


def test_missing_file(tmp_path):
    with pytest.raises(VideoLoadError, match="does not exist") as caught:
        load_video(tmp_path / "nope.mp4", num_frames=4)
    assert str(tmp_path / "nope.mp4") in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for kwargs in [{}, {"num_frames": 4}]:
        with pytest.raises(VideoLoadError, match="cannot open") as caught:
            load_video(path, **kwargs)
        assert str(caught.value).startswith(str(path))


def noisy_frames(n: int) -> np.ndarray:
    """Pattern frames with noise so each frame costs real bytes (truncation then cuts frames)."""
    noise = np.random.default_rng(0).integers(0, 80, (n, HEIGHT, BITS * BLOCK, 3), dtype=np.uint8)
    return pattern_frames(n) // 2 + noise


def test_truncated_mp4(tmp_path):
    # Default mp4: the index is written last, so a cut file has no index and does not open.
    path = write_video(noisy_frames(40), tmp_path / "v.mp4", fps=8, crf=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoLoadError) as caught:
        load_video(cut, num_frames=4)
    assert str(caught.value).startswith(str(cut))

    # "faststart" mp4: the index comes first and lists frames whose data was cut off.
    faststart = write_with_pyav(tmp_path / "faststart.mp4", noisy_frames(40), container_options={"movflags": "faststart"})
    data = faststart.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoLoadError, match="truncated") as caught:
        load_video(cut, num_frames=4)
    assert str(caught.value).startswith(str(cut))


def test_file_without_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoLoadError, match="no video stream") as caught:
        load_video(path, num_frames=4)
    assert str(caught.value).startswith(str(path))


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for packet in stream.encode():
            container.mux(packet)
    for kwargs in [{}, {"num_frames": 4}]:
        with pytest.raises(VideoLoadError) as caught:
            load_video(path, **kwargs)
        assert str(caught.value).startswith(str(path))


# ---------------------------------------------------------------- frame folders, lists, arrays


def write_frame_folder(folder, count, names=lambda i: f"frame_{i + 1}.png"):
    folder.mkdir()
    for i in reversed(range(count)):  # created out of order on purpose
        Image.fromarray(pattern_frame(i)).save(folder / names(i))
    return folder


def test_frame_folder_in_natural_order(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", 12)  # frame_1 .. frame_12: frame_10 after frame_9
    (folder / "notes.txt").write_text("not a frame")
    video = load_video(folder)
    assert read_indices(video.frames) == list(range(12))
    sampled = load_video(folder, num_frames=4)
    assert sampled.indices == [0, 3, 7, 11] and read_indices(sampled.frames) == [0, 3, 7, 11]
    assert sampled.total_frames == 12 and sampled.fps == 0.0 and sampled.source == str(folder)

    with pytest.raises(VideoLoadError, match="no known frame rate"):
        load_video(folder, fps=2)
    timed = load_video(folder, fps=2, source_fps=4)
    assert timed.indices == list(range(0, 12, 2)) and timed.duration == 3.0


def test_frame_folder_jpg_upper_case_and_padding(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", 11, names=lambda i: f"{i:05d}.JPG")
    video = load_video(folder, num_frames=3)
    assert read_indices(video.frames) == [0, 5, 10]


def test_frame_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(VideoLoadError, match="no frame images") as caught:
        load_video(empty, num_frames=4)
    assert str(caught.value).startswith(str(empty))

    mixed = write_frame_folder(tmp_path / "mixed", 4)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(mixed / "frame_3.png")
    with pytest.raises(VideoLoadError, match="mixed frame sizes") as caught:
        load_video(mixed)
    assert str(mixed / "frame_3.png") in str(caught.value)

    broken = write_frame_folder(tmp_path / "broken", 4)
    (broken / "frame_2.png").write_bytes(b"not a png")
    with pytest.raises(VideoLoadError, match="cannot read frame image") as caught:
        load_video(broken)
    assert str(broken / "frame_2.png") in str(caught.value)


def test_list_of_images_keeps_the_given_order(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", 6)
    paths = [folder / f"frame_{i}.png" for i in [6, 1, 5, 2, 4, 3]]
    video = load_video(paths, num_frames=3)
    assert video.indices == [0, 2, 5]
    assert read_indices(video.frames) == [5, 4, 2]
    with pytest.raises(VideoLoadError, match="does not exist") as caught:
        load_video([folder / "frame_1.png", folder / "frame_99.png"])
    assert str(folder / "frame_99.png") in str(caught.value)


def test_in_memory_arrays():
    import torch

    frames = pattern_frames(10)
    video = load_video(frames, num_frames=4, source_fps=5)
    assert video.indices == [0, 3, 6, 9] and read_indices(video.frames) == [0, 3, 6, 9]
    assert video.fps == 5 and video.duration == 2.0 and video.source == "<array>"
    np.testing.assert_array_equal(load_video(torch.from_numpy(frames)).frames, frames)
    with pytest.raises(VideoLoadError, match="uint8"):
        load_video(frames.astype(np.float32))
    with pytest.raises(VideoLoadError, match=r"\(T, H, W, 3\)"):
        load_video(frames[0])


def test_bad_arguments():
    frames = pattern_frames(4)
    with pytest.raises(ValueError, match="at most one"):
        load_video(frames, num_frames=2, fps=1.0)
    with pytest.raises(ValueError):
        load_video(frames, num_frames=0)
    with pytest.raises(ValueError):
        load_video(frames, on_short="pad")
    with pytest.raises(TypeError):
        load_video(42)


# ---------------------------------------------------------------- writing


def test_write_pads_odd_sizes_and_reads_back(tmp_path):
    frames = np.stack([np.full((15, 21, 3), 40 * i, np.uint8) for i in range(5)])
    video = load_video(write_video(frames, tmp_path / "odd.mp4"))
    assert video.frames.shape == (5, 16, 22, 3)
    levels = video.frames[:, :15, :21].reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 40 * np.arange(5), atol=3)
    # The padding repeats the last row and column.
    np.testing.assert_allclose(video.frames[:, 15].mean(axis=(1, 2)), levels, atol=3)


def test_write_accepts_an_iterable_and_leaves_nothing_on_failure(tmp_path):
    path = write_video((pattern_frame(i) for i in range(6)), tmp_path / "gen.webm", fps=3)
    assert read_indices(load_video(path).frames) == list(range(6))

    def bad_frames():
        yield pattern_frame(0)
        yield np.zeros((8, 8, 3), np.uint8)

    target = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="differs from the first frame"):
        write_video(bad_frames(), target)
    assert os.listdir(tmp_path) == ["gen.webm"]  # no half-written file, no temporary left
    with pytest.raises(ValueError, match="extension"):
        write_video(pattern_frames(2), tmp_path / "v.flv")
    with pytest.raises(ValueError, match="no frames"):
        write_video(iter([]), tmp_path / "v.mp4")


# ---------------------------------------------------------------- batch loading


def test_load_videos_skip_and_fail(tmp_path):
    good = write_video(pattern_frames(12), tmp_path / "good.mp4", fps=8)
    missing = tmp_path / "missing.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 1000)
    sources = [good, missing, good, corrupt]

    for workers in [0, 2]:
        videos, report = load_videos(sources, num_frames=3, on_error="skip", num_workers=workers)
        assert [v is None for v in videos] == [False, True, False, True]
        assert read_indices(videos[2].frames) == [0, 5, 11]
        assert isinstance(report, LoadReport)
        assert (report.total, report.loaded, report.failed) == (4, 2, 2)
        assert [(f.position, f.source) for f in report.failures] == [(1, str(missing)), (3, str(corrupt))]
        assert "does not exist" in report.failures[0].reason
        assert str(corrupt) in report.summary()

        with pytest.raises(VideoLoadError) as caught:
            load_videos(sources, num_frames=3, on_error="fail", num_workers=workers)
        assert caught.value.source == str(missing)  # the first failure in source order


# ---------------------------------------------------------------- backends


def test_torchcodec_backend_absent(tmp_path, monkeypatch):
    path = write_video(pattern_frames(8), tmp_path / "v.mp4")
    monkeypatch.setattr(load_module, "torchcodec_available", lambda: False)
    with pytest.raises(VideoLoadError, match="torchcodec"):
        load_video(path, num_frames=2, backend="torchcodec")
    assert read_indices(load_video(path, num_frames=2, backend="auto").frames) == [0, 7]


def fake_torchcodec(monkeypatch, fail: bool = False):
    """Install a stand-in torchcodec whose decoder follows torchcodec's documented interface."""
    calls = []

    class VideoDecoder:
        def __init__(self, path, dimension_order, num_ffmpeg_threads, seek_mode):
            if fail:
                raise RuntimeError("could not open input")
            assert dimension_order == "NHWC"
            self.frames = load_video(path, backend="pyav").frames
            self.metadata = types.SimpleNamespace(average_fps=8.0, duration_seconds=len(self.frames) / 8.0)

        def __len__(self):
            return len(self.frames)

        def get_frames_at(self, indices):
            calls.append(list(indices))
            data = self.frames[list(indices)]
            return types.SimpleNamespace(data=types.SimpleNamespace(numpy=lambda: data))

    package = types.ModuleType("torchcodec")
    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = VideoDecoder
    package.decoders = decoders
    monkeypatch.setitem(__import__("sys").modules, "torchcodec", package)
    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", decoders)
    monkeypatch.setattr(load_module, "torchcodec_available", lambda: True)
    return calls


def test_torchcodec_backend_maps_repeated_indices(tmp_path, monkeypatch):
    path = write_video(pattern_frames(5), tmp_path / "v.mp4", fps=8)
    calls = fake_torchcodec(monkeypatch)
    video = load_video(path, num_frames=8, backend="torchcodec")
    assert calls == [[0, 1, 2, 3, 4]]  # each frame asked for once
    assert read_indices(video.frames) == video.indices == [0, 0, 1, 1, 2, 2, 3, 4]
    assert video.fps == 8.0 and video.total_frames == 5


def test_auto_backend_falls_back_to_pyav_when_torchcodec_fails(tmp_path, monkeypatch):
    path = write_video(pattern_frames(6), tmp_path / "v.mp4", fps=8)
    fake_torchcodec(monkeypatch, fail=True)
    assert read_indices(load_video(path, num_frames=3).frames) == [0, 2, 5]
    with pytest.raises(VideoLoadError, match="torchcodec") as caught:
        load_video(path, num_frames=3, backend="torchcodec")
    assert str(caught.value).startswith(str(path))


# ---------------------------------------------------------------- container allowlist


def playlists_to(target, folder):
    """Files inside `folder` that make FFmpeg read `target` (outside it): an HLS playlist, the same
    playlist named .mp4, and a concat list."""
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n"
    (folder / "list.m3u8").write_text(hls)
    (folder / "fake.mp4").write_text(hls)
    (folder / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile {target}\n")
    return [folder / "list.m3u8", folder / "fake.mp4", folder / "list.ffconcat"]


def test_playlists_and_concat_lists_are_refused_whether_or_not_their_target_exists(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_video(pattern_frames(6), outside / "secret.mp4")
    messages = {}
    for target in (secret, outside / "missing.mp4"):
        root = tmp_path / f"root_{target.stem}"
        root.mkdir()
        for playlist in playlists_to(target, root):
            for kwargs in [{}, {"num_frames": 4}]:
                with pytest.raises(VideoLoadError, match="cannot open as a video") as caught:
                    load_video(playlist, **kwargs)
                assert caught.value.source == str(playlist)
                messages.setdefault((playlist.name, str(kwargs)), set()).add(caught.value.reason.replace(str(root), "ROOT"))
    # The same answer for an existing and a missing target: the error tells nothing about the file.
    assert all(len(reasons) == 1 for reasons in messages.values()), messages


def test_allowed_formats_still_open_by_content_not_extension(tmp_path):
    mkv_named_mp4 = write_video(pattern_frames(6), tmp_path / "v.mkv").rename(tmp_path / "v.mp4")
    assert read_indices(load_video(mkv_named_mp4, num_frames=3).frames) == [0, 2, 5]
    image = tmp_path / "still.mp4"
    Image.fromarray(pattern_frame(3)).save(image, format="PNG")  # a PNG is not a video container
    with pytest.raises(VideoLoadError, match="not one of the container formats"):
        load_video(image, num_frames=2)


def test_torchcodec_is_not_handed_a_playlist(tmp_path, monkeypatch):
    secret = write_video(pattern_frames(6), tmp_path / "secret.mp4")
    root = tmp_path / "root"
    root.mkdir()
    opened = []
    fake_torchcodec(monkeypatch)
    import torchcodec.decoders

    real = torchcodec.decoders.VideoDecoder
    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", lambda path, **kw: opened.append(path) or real(path, **kw))
    for playlist in playlists_to(secret, root):
        with pytest.raises(VideoLoadError, match="cannot open as a video"):
            load_video(playlist, num_frames=2, backend="torchcodec")
    assert opened == []
