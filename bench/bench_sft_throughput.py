"""Benchmark: SFT training tokens/s on the toy recipe's model, with and without length-grouped batching.

    python bench/bench_sft_throughput.py [--world DIR] [--examples 480] [--chunk 5] [--threads N]

Uses the toy world at --world (or generates 120 videos under bench/out/toyworld), the model that
recipes/toy.yaml's `model` section builds (its tokenizer trained on the SFT texts), and the recipe's
SFT files, batch size and settings. The same examples are cut into micro-batches two ways:
  plain:   shuffled, as they come;
  grouped: length-grouped (train.data.batch_plan with lengths), the recipe's default.
Both train through the real loop (train.loop.train, full fine-tuning as the recipe), alternating
chunks of `chunk` steps between the two so that load on a shared machine hits both alike. Reports
real (non-padding) tokens per second, padding share, and the ratio grouped/plain; appends one JSON
line per run to bench/out/bench_sft_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import random
import time
from pathlib import Path

import torch

from vlm_rlaif.config import load_config
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.models import build_tiny_model, train_tokenizer
from vlm_rlaif.models.tiny import read_corpus
from vlm_rlaif.train.data import InstructionDataset, batch_plan, read_instruction_file
from vlm_rlaif.train.loop import train
from vlm_rlaif.train.sft import SFTConfig, TinyModelSettings, make_sft_loss

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
RECIPE = REPO / "recipes" / "toy.yaml"


def toy_world(path: Path | None) -> Path:
    if path is not None:
        return path
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    path = OUT_DIR / "toyworld"
    generate(ToyWorldConfig(seed=0), path, 120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, help="a toy world directory (default: generate 120 videos)")
    parser.add_argument("--examples", type=int, default=480, help="examples per mode (drawn from all SFT files)")
    parser.add_argument("--chunk", type=int, default=5, help="steps per alternating chunk")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    world = toy_world(args.world)
    sft = load_config(SFTConfig, RECIPE, [f"data.root={world}"], section="sft")
    init = load_config(TinyModelSettings, RECIPE, section="model")
    files = [f for phase in sft.curriculum.phases for f in phase.files]
    tokenizer = train_tokenizer([t for f in files for t in read_corpus(world / f)], vocab_size=init.vocab_size)
    model = build_tiny_model(init.size, tokenizer, frames=init.frames, image_size=init.image_size, patch_size=init.patch_size)
    model.set_trainable(language_model=True, projector=sft.tune.projector, vision_tower=sft.tune.vision_tower)

    records = [r for f in files for r in read_instruction_file(world / f)]
    records = random.Random(0).sample(records, min(args.examples, len(records)))
    store = FrameStore(world, FrameSampling(init.frames, sft.data.clip_max_frames), max_videos=100_000)
    dataset = InstructionDataset(records, store)
    dataset.preload()  # decoding is not what is measured
    batch_size = sft.train.batch_size
    plans = {
        "plain": batch_plan(range(len(dataset)), batch_size, seed=0),
        "grouped": batch_plan(range(len(dataset)), batch_size, seed=0, lengths=dataset.lengths(tokenizer)),
    }
    models = {mode: copy.deepcopy(model) for mode in plans}
    settings = dataclasses.replace(sft.train, max_steps=0, save_every=0, eval_every=0, warmup_steps=0, warmup_ratio=0.0)

    totals = {mode: {"seconds": 0.0, "tokens": 0, "padded": 0, "steps": 0} for mode in plans}
    steps = max(len(plan) for plan in plans.values())
    for start in range(0, steps, args.chunk):
        for mode, plan in plans.items():
            chunk = plan[start : start + args.chunk]
            if not chunk:
                continue
            lm = models[mode]
            batches = [lm.collate([dataset[i] for i in members], max_length=sft.data.max_length) for members in chunk]
            began = time.perf_counter()
            train(lm.model, make_sft_loss(lm), batches, settings)
            totals[mode]["seconds"] += time.perf_counter() - began
            totals[mode]["tokens"] += sum(int(b["attention_mask"].sum()) for b in batches)
            totals[mode]["padded"] += sum(b["attention_mask"].numel() for b in batches)
            totals[mode]["steps"] += len(chunk)

    rows = {}
    for mode, t in totals.items():
        rows[mode] = {
            "tokens_per_s": t["tokens"] / t["seconds"],
            "padding_share": 1 - t["tokens"] / t["padded"],
            "steps": t["steps"],
            "seconds": t["seconds"],
        }
        print(f"{mode:8s} {rows[mode]['tokens_per_s']:9.0f} tokens/s  padding {rows[mode]['padding_share']:6.1%}  "
              f"{t['steps']} steps in {t['seconds']:.1f} s")
    ratio = rows["grouped"]["tokens_per_s"] / rows["plain"]["tokens_per_s"]
    print(f"grouped / plain: {ratio:.2f}x")
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "model": init.size,
        "batch_size": batch_size,
        "examples": len(dataset),
        "results": rows,
        "ratio_grouped_over_plain": ratio,
    }
    with (OUT_DIR / "bench_sft_throughput.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
