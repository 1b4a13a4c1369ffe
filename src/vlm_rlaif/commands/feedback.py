"""`vlm-rlaif feedback --config FILE [KEY=VALUE ...]`: AI preference data with clip context.

With --measure-context it instead judges the same pairs with and without context and reports each
condition's agreement with the toy world's oracle (the paper's central claim, measured).
"""

from __future__ import annotations

import argparse

NAME = "feedback"
HELP = "sample answer pairs, describe clips, judge both orders, write preference records"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_rlaif.config import add_run_arguments

    add_run_arguments(parser, required=False)
    parser.add_argument(
        "--measure-context",
        action="store_true",
        help="judge the same pairs with and without clip context and compare both with the toy oracle",
    )


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    from vlm_rlaif.stage_inputs import load_checked_stage_config
    from vlm_rlaif.feedback import FeedbackConfig, measure_context, run_feedback
    from vlm_rlaif.feedback.measure import format_report

    config = load_checked_stage_config(FeedbackConfig, args, "feedback")
    log = logging.getLogger("vlm_rlaif.feedback")
    if args.measure_context:
        summary = measure_context(config, overwrite=args.overwrite)
        print(format_report(summary))
    else:
        summary = run_feedback(config, overwrite=args.overwrite)
        keys = ("prompts", "pairs_judged", "pairs_kept", "pairs_inconsistent", "pairs_tie", "pairs_invalid")
        print(json.dumps({key: summary[key] for key in keys} | {"oracle": summary["oracle"]}, indent=2))
    log.info("wrote %s", config.out)
    return 0
