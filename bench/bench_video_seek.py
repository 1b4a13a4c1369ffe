"""Benchmark: sampling frames by seeking (load_video) vs decoding every frame, on a 2-minute 360p video.

    python bench/bench_video_seek.py [--repeats 5] [--frames 8 50]

Generates once, under bench/out/, two 2-minute 640x360 30 fps h264 videos (a moving gradient with
noise, so it does not compress to nothing) with a keyframe every 60 frames (2 s, typical of
streaming encodes) and every 250 frames (x264's default). For each it times, alternating, with
`repeats` runs and the median:
  seek: load_video(path, num_frames=N, backend="pyav")  (or --backend torchcodec)
  full: decode every frame with PyAV (same threading), converting only the N wanted frames to RGB
and checks both return the same pixels. Prints a table and the ratio full/seek; appends one JSON
line per run to bench/out/bench_video_seek.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from vlm_rlaif.video import load_video, sample_uniform, write_video

OUT_DIR = Path(__file__).resolve().parent / "out"
WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 30, 120


def synthetic_frames(count: int) -> Iterator[np.ndarray]:
    """A gradient drifting right and down, with a little per-frame noise."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 12, size=(16, HEIGHT, WIDTH, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(count):
        red = (xs + 3 * i) % 256
        green = (ys + 2 * i) % 256
        blue = (xs + ys + i) // 4 % 256
        yield np.stack([red, green, blue], axis=-1).astype(np.uint8) + noise[i % len(noise)]


def make_video(gop: int) -> Path:
    path = OUT_DIR / f"seek_{HEIGHT}p_{FPS}fps_{SECONDS}s_gop{gop}.mp4"
    if not path.exists():
        start = time.perf_counter()
        options = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        write_video(synthetic_frames(FPS * SECONDS), path, fps=FPS, crf=23, gop=gop, options=options)
        print(f"generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return path


def decode_everything(path: Path, wanted: list[int]) -> np.ndarray:
    """The naive loader: decode all frames in order, keep the wanted ones."""
    keep = set(wanted)
    kept = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in keep:
                kept[index] = frame.to_ndarray(format="rgb24")
    return np.stack([kept[i] for i in wanted])


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 50])
    parser.add_argument("--gops", type=int, nargs="+", default=[60, 250])
    parser.add_argument("--backend", choices=["pyav", "torchcodec"], default="pyav", help="load_video's decoder")
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    total = FPS * SECONDS
    rows = []
    for gop in args.gops:
        path = make_video(gop)
        for num_frames in args.frames:
            wanted = sample_uniform(total, num_frames)
            seek_times, full_times = [], []
            for _ in range(args.repeats):  # alternate so drift in machine load hits both alike
                seconds, video = timed(load_video, path, num_frames, None, "repeat", args.backend)
                seek_times.append(seconds)
                seconds, reference = timed(decode_everything, path, wanted)
                full_times.append(seconds)
            if video.indices != wanted or not np.array_equal(video.frames, reference):
                raise SystemExit(f"seeking returned different frames than full decoding for {path}")
            seek, full = statistics.median(seek_times), statistics.median(full_times)
            rows.append({"gop": gop, "num_frames": num_frames, "seek_s": round(seek, 4), "full_s": round(full, 4), "ratio": round(full / seek, 1)})

    print(f"\n{WIDTH}x{HEIGHT} {FPS} fps h264, {SECONDS} s ({total} frames), median of {args.repeats}")
    print(f"{'GOP':>5} {'frames':>6} {'seek (s)':>9} {'decode all (s)':>15} {'ratio':>6}")
    for row in rows:
        print(f"{row['gop']:>5} {row['num_frames']:>6} {row['seek_s']:>9.3f} {row['full_s']:>15.3f} {row['ratio']:>5.1f}x")

    record = {
        "bench": "video_seek",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "video": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "seconds": SECONDS, "codec": "h264"},
        "repeats": args.repeats,
        "backend": args.backend,
        "pyav": av.__version__,
        "machine": platform.machine(),
        "results": rows,
    }
    line = json.dumps(record)
    with open(OUT_DIR / "bench_video_seek.jsonl", "a") as f:
        f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
