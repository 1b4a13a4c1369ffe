"""`vlm-rlaif vision --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: pretrain the toy
model's vision tower contrastively on frame / caption pairs of a pretraining split of the toy
world (see vlm_rlaif.train.vision_pretrain), before SFT. Reads the config's `vision` section."""

from __future__ import annotations

import argparse

NAME = "vision"
HELP = "pretrain the toy model's vision tower the way CLIP is (frame / caption pairs of the toy world)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.train.vision_pretrain import VisionPretrainConfig, run_vision_pretrain

    config = load_checked_stage_config(VisionPretrainConfig, args, "vision")
    summary = run_vision_pretrain(config, overwrite=args.overwrite)
    print(f"vision: held-out caption retrieval {summary['heldout_accuracy']:.3f} "
          f"(random tower {summary['heldout_accuracy_before']:.3f}); tower in {summary['tower']}")
    return 0
