"""`vlm-rlaif sft --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: stage 1, supervised
fine-tuning with the answer-length curriculum (see vlm_rlaif.train.sft). Reads the config's `sft`
section; works unchanged under `accelerate launch`. Re-running on an unfinished output directory
resumes from its last checkpoint."""

from __future__ import annotations

import argparse

NAME = "sft"
HELP = "supervised fine-tuning with the answer-length curriculum (stage 1)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.train.sft import SFTConfig, run_sft

    config = load_checked_stage_config(SFTConfig, args, "sft")
    summary = run_sft(config, overwrite=args.overwrite)
    log = logging.getLogger("vlm_rlaif.sft")
    before, after = summary.get("eval_loss_before"), summary.get("eval_loss_after")
    log.info(
        "sft: %d steps, train loss %s, eval loss %s -> %s; model in %s",
        summary["steps"],
        _fmt(summary.get("train_loss")),
        _fmt(before),
        _fmt(after),
        summary["model"],
    )
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
