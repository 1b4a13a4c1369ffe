"""`vlm-rlaif grpo --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: initialise the policy
from the SFT model and tune it with GRPO against weighted rewards: the video reward model, a
verifiable reward, a Python function or an OpenAI-compatible judge (see vlm_rlaif.train.grpo).

Reads the config's `grpo` section; runs under `accelerate launch` unchanged (prompts are split
across the processes); a re-run on an unfinished output directory resumes from its last checkpoint."""

from __future__ import annotations

import argparse

NAME = "grpo"
HELP = "policy initialisation and GRPO against the reward model, a verifiable reward or a judge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.config import load_stage_config
    from vlm_rlaif.train.grpo import GRPOConfig, run_grpo

    config = load_stage_config(GRPOConfig, args, "grpo")
    summary = run_grpo(config, overwrite=args.overwrite)
    first, last = summary.get("first") or {}, summary.get("last") or {}
    logging.getLogger("vlm_rlaif.grpo").info(
        "%d iterations; reward %s -> %s; %d rewards were None; policy: %s",
        summary["iterations"], first.get("reward_score"), last.get("reward_score"), summary["rewards_none"],
        summary["policy_adapter"] or summary["policy_model"],
    )
    return 0
