"""Benchmark: one PPO iteration with and without the shared visual-feature cache.

    python bench/bench_ppo_iteration.py [--rollouts 16] [--repeats 3] [--threads 2]

Builds the toy recipe's model (recipes/toy.yaml `model`: a tiny llava-video model, 24 frames of
32 px) with random weights, writes toy-sized videos, and runs the PPO loop's iteration (rollout
generation, policy / reference / value / reward passes, two PPO epochs) on the same prompts and seed:
  cache: both bases share one FeatureCache (each video through the frozen visual path once);
  none:  no cache (every pass runs the vision tower and projector again).
Alternates the two `repeats` times and reports the median seconds, the vision-tower calls and the
ratio none/cache. Appends one JSON line per run to bench/out/bench_ppo_iteration.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from vlm_rlaif.models import FeatureCache, LoraSettings, ScalarHead, ScalarModel, VideoExample, VideoLM, count_visual_calls
from vlm_rlaif.models.registry import load_adapter_model
from vlm_rlaif.models.tiny import build_tiny_model, train_tokenizer
from vlm_rlaif.reward import RewardModel, prompt_example
from vlm_rlaif.train.ppo import POLICY, REFERENCE, VALUE, PPOSettings, PPOTrainer

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "out"
QUESTIONS = ["What colour is the circle?", "Which way does the square move?", "Describe the video in detail."]


def toy_model_settings() -> dict:
    """The toy recipe's model section, its ${variables} resolved as the stages resolve them."""
    from dataclasses import asdict

    from vlm_rlaif.config import load_config
    from vlm_rlaif.train.sft import TinyModelSettings

    recipe = ROOT / "recipes" / "toy.yaml"
    if not recipe.is_file():
        return asdict(TinyModelSettings(vocab_size=1024))
    return asdict(load_config(TinyModelSettings, recipe, section="model"))


def build(workdir: Path, settings: dict) -> Path:
    """The toy model with random weights, saved (both bases load it, as PPO loads the SFT model)."""
    texts = QUESTIONS + ["The circle is red.", "The square moves to the left.", "A blue circle appears, then turns green."]
    tokenizer = train_tokenizer(texts * 20, vocab_size=settings["vocab_size"])
    lm = build_tiny_model(
        settings["size"], tokenizer, frames=settings["frames"], image_size=settings["image_size"],
        patch_size=settings["patch_size"], seed=settings["seed"],
    )
    lm.save(workdir / "model")
    return workdir / "model"


def make_trainer(model_dir: Path, adapters_dir: Path, cache: FeatureCache | None, rollouts: int, max_new_tokens: int) -> PPOTrainer:
    settings = PPOSettings(
        rollout_batch_size=rollouts, minibatch_size=rollouts // 2, micro_batch_size=4, forward_batch_size=8,
        generation_batch_size=rollouts, max_new_tokens=max_new_tokens, warmup_iterations=0,
    )
    lora = LoraSettings(r=16, alpha=16)
    return trainer_on(load_adapter_model(model_dir), load_adapter_model(model_dir), adapters_dir, cache, settings, lora)


def trainer_on(
    policy: VideoLM, value_lm: VideoLM, adapters_dir: Path, cache: FeatureCache | None, settings: PPOSettings,
    lora: LoraSettings,
) -> PPOTrainer:
    """A PPOTrainer over two already built bases, the roles as run_ppo sets them up: the policy LoRA and
    a frozen copy of it as the reference on one base; the reward model's LoRA and head, and a value LoRA
    with a zero-initialised head, on the other; both bases share `cache`."""
    policy.feature_cache = cache
    torch.manual_seed(0)
    policy.add_lora(POLICY, lora)
    policy.save_lora(adapters_dir / "policy", POLICY)
    policy.load_lora(adapters_dir / "policy", REFERENCE)
    policy.set_adapter(POLICY)
    reward = RewardModel.create(value_lm, lora)
    value_lm.feature_cache = cache  # after create: a RewardModel gives a cache-less model its own
    value_lm.add_lora(VALUE, lora)
    value = ScalarModel(value_lm, ScalarHead(value_lm.hidden_size, zero_init=True), lora_name=VALUE)
    batch = settings.forward_batch_size
    return PPOTrainer(policy, value, lambda examples, texts: reward.score(examples, texts, batch_size=batch), settings)


def prompts(count: int, frames: int, size: int) -> list[VideoExample]:
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for _ in range(count)]
    return [prompt_example(QUESTIONS[i % len(QUESTIONS)], videos[i], f"video{i}@u{frames}") for i in range(count)]


def one_iteration(trainer: PPOTrainer, examples: list[VideoExample]) -> tuple[float, int]:
    towers = 0
    started = time.perf_counter()
    with count_visual_calls(trainer.policy) as policy_calls, count_visual_calls(trainer.value.lm) as value_calls:
        trainer.iteration(examples, 0)
    seconds = time.perf_counter() - started
    for counts in (policy_calls, value_calls):
        towers += counts.calls_with_grad["vision_tower"] + counts.calls_without_grad["vision_tower"]
    return seconds, towers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = toy_model_settings()
    results: dict[str, list[tuple[float, int]]] = {"cache": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = build(workdir, settings)
        examples = prompts(args.rollouts, settings["frames"], settings["image_size"])
        for repeat in range(args.repeats):
            for mode in ("cache", "none") if repeat % 2 == 0 else ("none", "cache"):
                cache = FeatureCache() if mode == "cache" else None
                trainer = make_trainer(model_dir, workdir / f"adapters_{mode}", cache, args.rollouts, args.max_new_tokens)
                results[mode].append(one_iteration(trainer, examples))

    median = {mode: statistics.median(s for s, _ in runs) for mode, runs in results.items()}
    towers = {mode: runs[0][1] for mode, runs in results.items()}
    print(f"toy model {settings['size']}, {settings['frames']} frames of {settings['image_size']} px; "
          f"{args.rollouts} rollouts of up to {args.max_new_tokens} tokens; {args.threads} threads; median of {args.repeats}")
    print(f"{'mode':<6} {'seconds':>8} {'vision tower calls':>19}")
    for mode in ("cache", "none"):
        print(f"{mode:<6} {median[mode]:>8.2f} {towers[mode]:>19}")
    ratio = median["none"] / median["cache"]
    print(f"ratio none/cache: {ratio:.2f}x")
    OUT_DIR.mkdir(exist_ok=True)
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "model": settings,
        "rollouts": args.rollouts,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "seconds": median,
        "vision_tower_calls": towers,
        "ratio_none_over_cache": ratio,
    }
    with (OUT_DIR / "bench_ppo_iteration.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
