"""`vlm-rlaif dpo --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: direct preference
optimisation of the SFT model on preference pairs, an alternative to rm + ppo (see
vlm_rlaif.train.dpo). Reads the config's `dpo` section; works unchanged under `accelerate launch`;
a re-run on an unfinished output directory resumes from its last checkpoint."""

from __future__ import annotations

import argparse

NAME = "dpo"
HELP = "direct preference optimisation on preference pairs (an alternative to rm + ppo)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.train.dpo import DPOConfig, run_dpo

    config = load_checked_stage_config(DPOConfig, args, "dpo")
    summary = run_dpo(config, overwrite=args.overwrite)
    after = summary.get("eval_after") or {}
    accuracy = after.get("accuracy")
    logging.getLogger("vlm_rlaif.dpo").info(
        "dpo: %d steps on %d pairs; held-out preference accuracy %s; model in %s",
        summary["steps"],
        summary["train_pairs"],
        "n/a" if accuracy is None else f"{accuracy:.3f}",
        summary["model"],
    )
    return 0
