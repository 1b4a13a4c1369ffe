"""The one `vlm-rlaif` entry point: parse, then hand over to a command module.

Each subcommand lives in `vlm_rlaif.commands.<module>` and defines NAME, HELP, add_arguments(parser)
and run(args) -> int. Command modules import heavy libraries (torch, transformers) only inside run(),
so `vlm-rlaif --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from vlm_rlaif import __version__

# Order is the order shown in --help (the pipeline's order). A module that does not exist yet is
# simply not offered: no command pretends to work before its stage is built.
COMMAND_MODULES = [
    "toyworld",
    "model",
    "vision",
    "sft",
    "feedback",
    "rm",
    "ppo",
    "grpo",
    "dpo",
    "eval",
    "demo",
    "pipeline",
    "chat",
    "serve",
]


def _available_commands() -> list:
    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(f"vlm_rlaif.commands.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"vlm_rlaif.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-rlaif",
        description="Align video LMMs with reinforcement learning from AI feedback (VLM-RLAIF).",
    )
    parser.add_argument("--version", action="version", version=f"vlm-rlaif {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _available_commands():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Progress bars estimate the time left from the average rate since they started. tqdm's default
    # weighs the last few updates, and SFT's length-grouped batches and evaluation pauses then made
    # its ETA swing between 6 and 48 minutes. tqdm reads TQDM_* defaults when it is first imported,
    # which no command has done before this point.
    os.environ.setdefault("TQDM_SMOOTHING", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    from vlm_rlaif.errors import UserError

    try:
        return int(args._run(args) or 0)
    except UserError as err:
        # Expected, explainable failures (bad config, bad record, missing file): one clear line.
        logging.getLogger("vlm_rlaif").error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
