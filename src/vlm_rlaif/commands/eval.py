"""`vlm-rlaif eval --config FILE [--out DIR] [--overwrite] [KEY=VALUE ...]`: score models on
VCG-Bench, zero-shot video QA and multiple-choice QA with a judge (see vlm_rlaif.eval)."""

from __future__ import annotations

import argparse

NAME = "eval"
HELP = "evaluate models on VCG-Bench, zero-shot video QA and multiple choice, with a judge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.eval import EvalConfig, run_eval

    config = load_checked_stage_config(EvalConfig, args, "eval")
    summary = run_eval(config, overwrite=args.overwrite)
    log = logging.getLogger("vlm_rlaif.eval")
    for model, benchmarks in summary["results"].items():
        for bench, result in benchmarks.items():
            shown = ", ".join(
                f"{name} {m['value']:.3f}" for name, m in result["metrics"].items() if m["value"] is not None
            )
            log.info("%s / %s: %s", model, bench, shown or "no valid judgements")
    log.info("results: %s", f"{config.out}/results.md")
    return 0
