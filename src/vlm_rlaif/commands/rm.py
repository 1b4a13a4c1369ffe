"""`vlm-rlaif rm`: the reward model (stage 2b, see vlm_rlaif.train.rm and vlm_rlaif.reward).

  vlm-rlaif rm --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]
      train on preference pairs (the config's `rm` section); works unchanged under
      `accelerate launch`; a re-run on an unfinished output directory resumes.
  vlm-rlaif rm score --rm DIR --records FILE [--out FILE] [--video-root DIR] ...
      score preference records (both outputs, accuracy against the labels) or instruction records
      (their last answer) with a trained reward model; --out is resumed if it exists.
"""

from __future__ import annotations

import argparse

NAME = "rm"
HELP = "train the reward model on preference pairs (stage 2b), or score records with one ('rm score')"
SCORE_ACTION = "score"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_config_arguments

    parser.usage = (
        "vlm-rlaif rm --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]\n"
        "       vlm-rlaif rm score --rm DIR --records FILE [--out FILE] [--video-root DIR] [--base-model DIR] "
        "[--batch-size N] [--device DEV] [--dtype DTYPE]"
    )
    add_config_arguments(parser)
    parser.add_argument("--out", help="training: output directory (overrides 'out'); score: the JSONL results file")
    parser.add_argument(
        "--overwrite", action="store_true", help="training: replace a finished run in the output directory"
    )
    score = parser.add_argument_group("score (vlm-rlaif rm score ...)")
    score.add_argument("--rm", help="a trained reward model: its directory or the rm run directory")
    score.add_argument("--records", help="preference or instruction records (JSON array or JSONL)")
    score.add_argument("--video-root", help="record video paths are relative to this (default: the records' folder)")
    score.add_argument("--base-model", help="the reward model's base model directory, if it moved")
    score.add_argument("--batch-size", type=int, default=16, help="records per forward pass (default 16)")
    score.add_argument("--device", default="cpu", help="e.g. cuda, cuda:1 (default cpu)")
    score.add_argument("--dtype", help="e.g. bfloat16 (default: as saved)")


def run(args: argparse.Namespace) -> int:
    from vlm_rlaif.errors import ConfigError

    if args.overrides[:1] == [SCORE_ACTION]:
        if args.overrides[1:]:
            raise ConfigError(f"rm score takes no KEY=VALUE overrides, got {args.overrides[1:]}")
        return run_score(args)
    if args.rm or args.records:
        raise ConfigError("--rm and --records belong to 'vlm-rlaif rm score'")
    if args.config is None:
        raise ConfigError("rm: training needs --config FILE (or use 'vlm-rlaif rm score --rm DIR --records FILE')")
    return run_train(args)


def run_train(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.train.rm import HELDOUT_SET, RMConfig, run_rm

    config = load_checked_stage_config(RMConfig, args, "rm")
    summary = run_rm(config, overwrite=args.overwrite)
    log = logging.getLogger("vlm_rlaif.rm")
    log.info("rm: %d steps on %d pairs; reward model in %s", summary["steps"], summary["train_pairs"], summary["model"])
    for name, metrics in summary.get("eval", {}).items():
        label = "held-out" if name == HELDOUT_SET else name
        log.info("rm: %s accuracy %s on %d pairs", label, _fmt(metrics["accuracy"]), metrics["pairs"])
    return 0


def run_score(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.errors import ConfigError
    from vlm_rlaif.reward import RewardModel
    from vlm_rlaif.train.rm import score_file

    if not args.rm or not args.records:
        raise ConfigError("rm score needs --rm DIR and --records FILE")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    rm = RewardModel.load(args.rm, base_model=args.base_model, device=args.device, dtype=args.dtype)
    metrics = score_file(rm, args.records, video_root=args.video_root, out=args.out, batch_size=args.batch_size)
    log = logging.getLogger("vlm_rlaif.rm")
    log.info(
        "rm score: %d records, reward mean %s std %s%s%s",
        metrics["records"],
        _fmt(metrics["reward_mean"]),
        _fmt(metrics["reward_std"]),
        f", pairwise accuracy {_fmt(metrics['accuracy'])} on {metrics['pairs']} pairs" if metrics["pairs"] else "",
        f"; results in {args.out}" if args.out else "",
    )
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
