"""The bench scripts' cheap modes still run and write their results (a bench that has rotted is found
here, not on the day a GPU is lent). Each runs as a subprocess, as a user runs it; the slow
measurements (video seeking on 2-minute videos, SFT throughput, the judge-context and toy-SFT
measurements) are not run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
