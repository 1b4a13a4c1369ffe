"""Benchmark: one GRPO iteration vs one PPO iteration, side by side in one run, in tokens per second.

    python bench/bench_grpo_vs_ppo.py [--rollouts 16] [--group-size 4] [--repeats 3] [--threads 2]

The toy recipe's model with random weights (bench/bench_ppo_iteration.py builds it), both trainers on
the same rollout budget and the same reward (a reward model on its own base, sharing the feature
cache): PPO samples one answer to each of `rollouts` prompts and runs policy, reference, value and
reward passes, GAE and two epochs over policy and value; GRPO samples `group_size` answers to each of
rollouts / group_size prompts and runs policy, reference and reward passes and two passes over the
policy alone. Alternates the two `repeats` times; reports the median iteration seconds, generated
tokens, tokens/s over the whole iteration and over generation alone, and the ratio GRPO/PPO.
Appends one JSON line to bench/out/bench_grpo_vs_ppo.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo_iteration import build, make_trainer, prompts, toy_model_settings  # noqa: E402

from vlm_rlaif.models import FeatureCache, LoraSettings  # noqa: E402
from vlm_rlaif.models.registry import load_adapter_model  # noqa: E402
from vlm_rlaif.reward import RewardModel  # noqa: E402
from vlm_rlaif.train.grpo import GRPOSettings, GRPOTrainer  # noqa: E402
from vlm_rlaif.train.ppo import POLICY, REFERENCE  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"


def make_grpo(model_dir: Path, adapters_dir: Path, rollouts: int, group_size: int, max_new_tokens: int) -> GRPOTrainer:
    cache = FeatureCache()
    policy = load_adapter_model(model_dir)
    policy.feature_cache = cache
    torch.manual_seed(0)
    policy.add_lora(POLICY, LoraSettings(r=16, alpha=16))
    policy.save_lora(adapters_dir / "policy", POLICY)
    policy.load_lora(adapters_dir / "policy", REFERENCE)
    policy.set_adapter(POLICY)
    reward_lm = load_adapter_model(model_dir)
    reward = RewardModel.create(reward_lm, LoraSettings(r=16, alpha=16))
    reward_lm.feature_cache = cache  # after create: a RewardModel gives a cache-less model its own

    def rewards(prompts_, examples, texts):
        return [float(x) for x in reward.score(examples, texts, batch_size=8)], {}

    settings = GRPOSettings(
        prompts_per_iteration=rollouts // group_size, group_size=group_size, minibatch_size=rollouts // 2,
        micro_batch_size=4, forward_batch_size=8, generation_batch_size=rollouts, max_new_tokens=max_new_tokens,
        updates_per_batch=2,  # PPO's two epochs: the same optimizer steps per iteration
    )
    return GRPOTrainer(policy, rewards, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = toy_model_settings()
    runs: dict[str, list[dict]] = {"ppo": [], "grpo": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = build(workdir, settings)
        examples = prompts(args.rollouts, settings["frames"], settings["image_size"])
        for repeat in range(args.repeats):
            for algorithm in ("ppo", "grpo") if repeat % 2 == 0 else ("grpo", "ppo"):
                adapters = workdir / f"adapters_{algorithm}_{repeat}"
                started = time.perf_counter()
                if algorithm == "ppo":
                    trainer = make_trainer(model_dir, adapters, FeatureCache(), args.rollouts, args.max_new_tokens)
                    built = time.perf_counter()
                    _, metrics = trainer.iteration(examples, 0)
                else:
                    trainer = make_grpo(model_dir, adapters, args.rollouts, args.group_size, args.max_new_tokens)
                    prompt_count = args.rollouts // args.group_size
                    built = time.perf_counter()
                    _, metrics = trainer.iteration([None] * prompt_count, examples[:prompt_count], 0)
                seconds = time.perf_counter() - built
                tokens = metrics["tokens_per_s"] * metrics["generation_s"]
                runs[algorithm].append({"seconds": seconds, "tokens": tokens, "generation_s": metrics["generation_s"],
                                        "update_s": metrics["update_s"], "setup_s": built - started})

    def median(algorithm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[algorithm])

    summary = {}
    for algorithm in ("ppo", "grpo"):
        tokens, seconds, generation = median(algorithm, "tokens"), median(algorithm, "seconds"), median(algorithm, "generation_s")
        summary[algorithm] = {"iteration_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                              "generation_tokens_per_s": tokens / generation, "update_s": median(algorithm, "update_s")}
    ratio = summary["grpo"]["tokens_per_s"] / summary["ppo"]["tokens_per_s"]
    print(f"toy model {settings['size']}, {settings['frames']} frames of {settings['image_size']} px; {args.rollouts} rollouts "
          f"(GRPO: {args.rollouts // args.group_size} prompts x {args.group_size}) of up to {args.max_new_tokens} tokens; "
          f"{args.threads} threads; median of {args.repeats}")
    print(f"{'':<5} {'iteration s':>11} {'tokens':>7} {'tokens/s':>9} {'generation tokens/s':>20} {'update s':>9}")
    for algorithm, s in summary.items():
        print(f"{algorithm:<5} {s['iteration_s']:>11.2f} {s['tokens']:>7.0f} {s['tokens_per_s']:>9.1f} "
              f"{s['generation_tokens_per_s']:>20.1f} {s['update_s']:>9.2f}")
    print(f"ratio GRPO/PPO tokens per iteration second: {ratio:.2f}x")
    OUT_DIR.mkdir(exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.processor() or platform.machine(),
           "threads": args.threads, "rollouts": args.rollouts, "group_size": args.group_size,
           "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "summary": summary,
           "ratio_grpo_over_ppo_tokens_per_s": ratio}
    with (OUT_DIR / "bench_grpo_vs_ppo.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
