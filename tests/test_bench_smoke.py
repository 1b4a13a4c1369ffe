"""The bench scripts' cheap modes still run and write their results (a bench that has rotted is found
here, not on the day a GPU is lent). Each runs as a subprocess, as a user runs it; the slow
measurements (video seeking on 2-minute videos, SFT throughput, the judge-context and toy-SFT
measurements) are not run."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# bench_ppo_iteration.py has no --out: this runs its main() with OUT_DIR pointed at the test's folder,
# so the repository's bench/out is left alone.
RUN_PPO_BENCH = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("bench_ppo_iteration", "bench/bench_ppo_iteration.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.OUT_DIR = Path(sys.argv[1])
sys.argv = [spec.origin, "--rollouts", "4", "--max-new-tokens", "4", "--repeats", "1", "--threads", "1"]
bench.main()
"""


def run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gpu_llava_video_7b_tiny_mode(tmp_path):
    out = tmp_path / "gpu_llava_video_7b.jsonl"
    result = run(["bench/gpu_llava_video_7b.py", "--tiny", "--out", str(out)])
    rows = read_jsonl(out)
    phases = {(row["phase"], row["mode"]) for row in rows}
    assert phases == {
        ("encode", "frames"),
        *((phase, mode) for phase in ("forward", "generate", "lora") for mode in ("frames", "cached")),
    }
    assert len(rows) == len(phases)
    for row in rows:
        assert row["tiny"] is True and row["device"] == "cpu"
        assert row["seconds"] > 0 and row["rate"] > 0, row
    assert "feature cache speed-up" in result.stdout
    run(["bench/gpu_llava_video_7b.py", "--tiny", "--out", str(out)])
    assert len(read_jsonl(out)) == 2 * len(rows)  # appends, never overwrites earlier runs


def test_ppo_iteration_bench_small(tmp_path):
    run(["-c", RUN_PPO_BENCH, str(tmp_path)])
    (row,) = read_jsonl(tmp_path / "bench_ppo_iteration.jsonl")
    assert row["rollouts"] == 4 and row["repeats"] == 1
    assert row["seconds"]["cache"] > 0 and row["seconds"]["none"] > 0
    # The shared feature cache is the point of the bench: the vision tower runs once per video with it.
    assert row["vision_tower_calls"]["cache"] == 4 < row["vision_tower_calls"]["none"]


RUN_GRPO_BENCH = RUN_PPO_BENCH.replace("bench_ppo_iteration", "bench_grpo_vs_ppo").replace(
    '"--rollouts", "4"', '"--rollouts", "4", "--group-size", "2"'
)


def test_bench_grpo_vs_ppo_cheap_mode(tmp_path):
    run(["-c", RUN_GRPO_BENCH, str(tmp_path)])
    (row,) = read_jsonl(tmp_path / "bench_grpo_vs_ppo.jsonl")
    assert row["rollouts"] == 4 and row["group_size"] == 2
    for algorithm in ("ppo", "grpo"):  # both iterations ran and generated tokens in the same run
        assert row["summary"][algorithm]["tokens"] > 0 and row["summary"][algorithm]["tokens_per_s"] > 0
    assert row["ratio_grpo_over_ppo_tokens_per_s"] > 0


def gpu_check(tmp_path: Path, *flags: str) -> tuple[dict, subprocess.CompletedProcess]:
    """bench/gpu_check.py --tiny with `flags`; returns its one JSON line (also appended to --out)."""
    out = tmp_path / "gpu_check.jsonl"
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(out), *flags],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    line = json.loads(lines[0])
    assert read_jsonl(out) == [line]
    return line, result


def test_gpu_check_tiny_mode(tmp_path):
    # The GPU check's own code path (two bases, one PPO iteration, plain generation, scoring with and
    # without the cache) on tiny shapes: the check cannot rot before a GPU is lent.
    line, result = gpu_check(tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert line["ok"] is True and line["tiny"] is True and line["device"] != "cuda"
    for family in ("llava-video", "qwen2.5-vl"):
        section = line["sections"][f"{family}/bf16"]
        assert section["status"] == "ok", section
        for phase in ("plain_generate", "rollout", "scoring", "update", "scoring_cached", "scoring_frames"):
            assert section[phase]["tokens_per_s"] > 0 and section[phase]["tokens"] > 0, (family, phase)
        assert section["rollout"]["tokens"] <= 4 * 6  # 4 rollouts of at most 6 new tokens
        assert section["ratios"]["rollout_over_plain_generate"] > 0
        assert section["ratios"]["scoring_frames_over_cached_seconds"] > 0
        # Without the cache every scoring pass runs the vision tower; with it (where this transformers
        # lets cached features in) none does: the rollout already encoded each video.
        assert section["scoring_frames"]["vision_tower_calls"] > 0
        if section["features_input_supported"]:
            assert section["scoring_cached"]["vision_tower_calls"] == 0
        assert section["video_tokens"] > 0 and section["prompt_tokens"] > section["video_tokens"]
    for family in ("llava-video", "qwen2.5-vl"):  # 4-bit needs CUDA: reported, not silently absent
        assert line["sections"][f"{family}/qlora"]["status"] == "skipped"


def test_gpu_check_reports_a_failing_section(tmp_path):
    # A section that fails (here PPOSettings refuses the micro-batch) or runs out of time is that
    # section's error in the one JSON line; the run exits non-zero.
    line, result = gpu_check(tmp_path, "--sections", "llava-video/bf16", "--micro-batch", "-1")
    assert result.returncode == 1
    section = line["sections"]["llava-video/bf16"]
    assert section["status"] == "error" and "micro_batch_size" in section["error"], section
    assert section["phase"] == "ppo_iteration" and section["plain_generate"]["tokens_per_s"] > 0  # kept
    assert line["ok"] is False and list(line["sections"]) == ["llava-video/bf16"]

    line, result = gpu_check(tmp_path / "timeout", "--sections", "qwen2.5-vl/bf16", "--section-limit-s", "2")
    assert result.returncode == 1
    section = line["sections"]["qwen2.5-vl/bf16"]
    assert section["status"] == "timeout" and "timed out after 2 s" in section["error"], section
