"""`vlm-rlaif toyworld`: generate the synthetic toy world (videos, ground truth, texts)."""

from __future__ import annotations

import argparse

NAME = "toyworld"
HELP = "generate the toy world: synthetic videos with exact ground truth, their texts, benchmark sets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--videos", type=int, default=2000, help="number of videos (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (overrides the config's)")
    parser.add_argument("--config", "-c", default=None, help="YAML config (a 'toyworld' section of a recipe works)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace a toy world made with another config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any ToyWorldConfig field, e.g. frames=32 size=48 brief_object_prob=0.3")


def run(args: argparse.Namespace) -> int:
    import json

    from vlm_rlaif.config import load_config
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(ToyWorldConfig, args.config, overrides, section="toyworld")
    manifest = generate(cfg, args.out, args.videos, workers=args.workers, overwrite=args.overwrite)
    summary = {k: manifest[k] for k in ("videos", "videos_per_split", "records_per_file", "generation_seconds")}
    print(json.dumps(summary, indent=2))
    return 0
