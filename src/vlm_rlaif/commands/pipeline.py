"""`vlm-rlaif pipeline --recipe FILE`: run a recipe's stages in order, each reading the previous
stage's directory. A finished stage is reused and an unfinished one resumes, so rerunning after an
interruption continues where it stopped."""

from __future__ import annotations

import argparse

NAME = "pipeline"
HELP = "run a recipe's stages end to end (toyworld, sft, feedback, rm, ppo, eval)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (e.g. recipes/toy.yaml)")
    parser.add_argument("--run-dir", help="where the stages write (default: the recipe's run_dir)")
    parser.add_argument("--seed", type=int, help="the recipe's ${seed} (default: the recipe's seed)")
    parser.add_argument("--quick", action="store_true", help="apply the recipe's `quick` overrides (smoke run)")
    parser.add_argument("--stages", nargs="+", help="run only these stages (their inputs must exist)")
    parser.add_argument("--redo", nargs="+", default=[], help="run these finished stages again (later ones follow)")
    parser.add_argument(
        "overrides", nargs="*", metavar="STAGE.KEY=VALUE", help="override a stage's key, e.g. sft.train.lr=5e-4"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlm_rlaif.pipeline import PipelineSettings, Recipe, quick_overrides, run_pipeline, stage_overrides
    from vlm_rlaif.progress import StageClock

    recipe_path = Path(args.recipe)
    overrides = quick_overrides(recipe_path) if args.quick else {}
    for stage, items in stage_overrides(args.overrides).items():
        overrides.setdefault(stage, []).extend(items)
    variables = {}
    if args.run_dir:
        variables["run_dir"] = args.run_dir
    if args.seed is not None:
        variables["seed"] = args.seed
    recipe = Recipe(recipe_path, variables, overrides)
    # A recipe's stages take what its models and data make them take: no estimate of the time left.
    clock = StageClock([s for s in recipe.load(PipelineSettings, "pipeline").stages if not args.stages or s in args.stages])

    def done(result) -> None:
        line = clock.finished(result.name, result.status, result.seconds)
        print(f"{result.name:<14} {result.status:<8} {result.seconds:>7.1f} s  {result.directory}  ({line})", flush=True)

    run_pipeline(recipe, only=args.stages, redo=args.redo, on_stage=done, on_start=lambda name: print(clock.starting(name), flush=True))
    return 0
