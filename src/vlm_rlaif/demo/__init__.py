"""`vlm-rlaif demo`: the whole RLAIF loop on the toy world, then a report of what it changed.

    run_demo("demo_runs/seed0")            # from the shipped foundation; --quick: a smoke run
    run_demo("runs/x", from_scratch=True)  # also vision pretraining and SFT

It is the toy recipe (recipes/toy.yaml) run through vlm_rlaif.pipeline, plus report.md with plots.
Rerunning on the same directory continues where an interrupted run stopped, and the report says
which stages were reused or resumed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from vlm_rlaif.demo.foundation import install_foundation
from vlm_rlaif.demo.report import write_report
from vlm_rlaif.pipeline import PipelineSettings, Recipe, StageResult, quick_overrides, run_pipeline

log = logging.getLogger(__name__)


def toy_recipe_path() -> Path:
    """The toy recipe shipped inside the package (the checkout's `recipes/` links to the same folder)."""
    path = Path(__file__).resolve().parent.parent / "recipes" / "toy.yaml"
    if not path.exists():
        raise FileNotFoundError(f"the toy recipe is missing from this installation: {path}")
    return path


# Stages the shipped foundation stands for (demo/foundation.py).
FOUNDATION_STAGES = ("vision", "sft")


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    recipe: str | Path | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    from_scratch: bool = False,
    stages: list[str] | None = None,
) -> Path:
    """Run the toy loop into `out` and write `out/report.md`; returns the report's path.

    By default the run starts from the shipped foundation (the toy SFT model) as a real user starts
    from a released SFT checkpoint; from_scratch also builds it (vision pretraining and SFT).
    `stages` runs only those (e.g. toyworld, vision, sft: making a foundation)."""
    out = Path(out)
    recipe_path = Path(recipe) if recipe else toy_recipe_path()
    overrides = quick_overrides(recipe_path) if quick else {}
    run = Recipe(recipe_path, {"run_dir": str(out), "seed": seed}, overrides)
    started = time.perf_counter()
    results = []
    only = stages
    if not from_scratch:
        results.append(_install_foundation(run, out))
        if on_stage:
            on_stage(results[-1])
        only = [s for s in (stages or run.load(PipelineSettings, "pipeline").stages) if s not in FOUNDATION_STAGES]
    results += run_pipeline(run, on_stage=on_stage, only=only)
    seconds = time.perf_counter() - started
    _append_history(out, results, seconds, quick=quick, seed=seed)
    return write_report(out, results, quick=quick, seed=seed, seconds=seconds)


def _install_foundation(run: Recipe, out: Path) -> StageResult:
    from vlm_rlaif.train.sft import SFTConfig

    started = time.perf_counter()
    sft_dir = Path(run.load(SFTConfig, "sft").out)
    status = "reused" if (sft_dir / "summary.json").exists() else "shipped"
    summary = install_foundation(sft_dir)
    return StageResult("sft", sft_dir, status, round(time.perf_counter() - started, 1), summary)


def _append_history(out: Path, results: list[StageResult], seconds: float, *, quick: bool, seed: int) -> None:
    """One line per demo invocation, so the report can tell a fresh run from a continued one."""
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        "quick": quick,
        "seed": seed,
        "stages": {r.name: {"status": r.status, "seconds": r.seconds} for r in results},
    }
    with (out / "demo_history.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
