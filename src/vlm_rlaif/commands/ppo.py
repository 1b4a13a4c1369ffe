"""`vlm-rlaif ppo --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: initialise the policy
from the SFT model and tune it with PPO against the reward model (see vlm_rlaif.train.ppo).

Runs under `accelerate launch` unchanged (rollouts are split across the processes)."""

from __future__ import annotations

import argparse

NAME = "ppo"
HELP = "policy initialisation and PPO against the video reward model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.train.ppo import PPOConfig, run_ppo

    config = load_checked_stage_config(PPOConfig, args, "ppo")
    summary = run_ppo(config, overwrite=args.overwrite)
    log = logging.getLogger("vlm_rlaif.ppo")
    first, last = summary.get("first") or {}, summary.get("last") or {}
    log.info(
        "%d iterations; reward %s -> %s, KL %s -> %s; policy: %s",
        summary["iterations"], first.get("reward_score"), last.get("reward_score"), first.get("kl"), last.get("kl"),
        summary["policy_adapter"] or summary["policy_model"],
    )
    return 0
