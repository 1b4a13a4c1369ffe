"""`vlm-rlaif demo`: the whole RLAIF loop on the built-in toy world, on a CPU, then report.md.

No arguments needed. Interrupt it anywhere and run the same command again: it continues from the
last finished stage or checkpoint."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole RLAIF loop on the toy world (CPU, minutes) and write a report of what it changed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="run directory (default: demo_runs/seed<SEED>, or demo_runs/quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the toy world, the models and every stage")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every stage (a few minutes; numbers meaningless)")
    parser.add_argument("--recipe", default=None, help="another toy-world recipe (default: the shipped recipes/toy.yaml)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="also build the foundation (vision pretraining and SFT) instead of starting from the shipped one")
    parser.add_argument("--stages", nargs="+", help="run only these stages (e.g. toyworld vision sft: make a foundation)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    # Tiny models: one intra-op thread per process is fastest on a small CPU (measured: many times
    # faster than torch's default on a loaded 2-core machine). Set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    from transformers.utils import logging as transformers_logging

    from vlm_rlaif.demo import run_demo

    # Loading or saving a 2 MB model takes no time: transformers' bars for it only bury the demo's own.
    transformers_logging.disable_progress_bar()
    out = Path(args.out or ("demo_runs/quick" if args.quick else f"demo_runs/seed{args.seed}"))

    def show(line: str) -> None:
        print(f"[demo] {line}", flush=True)

    report = run_demo(out, quick=args.quick, seed=args.seed, recipe=args.recipe, progress=show,
                      from_scratch=args.from_scratch, stages=args.stages)
    print(f"[demo] report: {report}")
    print(report.read_text())
    return 0
