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
from vlm_rlaif.pipeline import STAGES, PipelineSettings, Recipe, StageResult, quick_overrides, run_pipeline, stage_outputs
from vlm_rlaif.progress import StageClock

log = logging.getLogger(__name__)


def toy_recipe_path() -> Path:
    """The toy recipe shipped inside the package (the checkout's `recipes/` links to the same folder)."""
    path = Path(__file__).resolve().parent.parent / "recipes" / "toy.yaml"
    if not path.exists():
        raise FileNotFoundError(f"the toy recipe is missing from this installation: {path}")
    return path


# Stages the shipped foundation stands for (demo/foundation.py).
FOUNDATION_STAGES = ("vision", "sft")

# Seconds per stage of `vlm-rlaif demo [--quick]` as measured on a 2-core machine shared with other
# work (vision, sft: --from-scratch, README): the time-left estimate's prior, which StageClock
# rescales by how fast this machine runs the stages done so far.
STAGE_SECONDS = {"toyworld": 49, "vision": 191, "sft": 654, "feedback": 152, "judge_context": 64, "rm": 202, "ppo": 136,
                 "eval": 157}
QUICK_STAGE_SECONDS = {"toyworld": 1, "vision": 5, "sft": 10, "feedback": 2, "judge_context": 2, "rm": 3, "ppo": 4, "eval": 6}


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    recipe: str | Path | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    from_scratch: bool = False,
    stages: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run the toy loop into `out` and write `out/report.md`; returns the report's path.

    By default the run starts from the shipped foundation (the toy SFT model) as a real user starts
    from a released SFT checkpoint; from_scratch also builds it (vision pretraining and SFT).
    `stages` runs only those (e.g. toyworld, vision, sft: making a foundation). `progress` receives
    a line as each stage starts and ends: its number, the time elapsed and an estimate of the time left."""
    out = Path(out)
    recipe_path = Path(recipe) if recipe else toy_recipe_path()
    overrides = quick_overrides(recipe_path) if quick else {}
    run = Recipe(recipe_path, {"run_dir": str(out), "seed": seed}, overrides)
    started = time.perf_counter()
    results = []
    only = stages or run.load(PipelineSettings, "pipeline").stages
    if not from_scratch:
        only = [s for s in only if s not in FOUNDATION_STAGES]
    names = ([] if from_scratch else ["sft"]) + [s for s in STAGES if s in only]  # the order they run in
    clock = StageClock(names, _expected_seconds(run, names, quick, from_scratch))

    def starting(name: str) -> None:
        if progress:
            progress(clock.starting(name))

    def finished(result: StageResult) -> None:
        line = clock.finished(result.name, result.status, result.seconds)
        if progress:
            progress(f"{result.name:<14} {result.status:<8} {result.seconds:>7.1f} s   {result.directory}   ({line})")
        if on_stage:
            on_stage(result)

    if not from_scratch:
        starting("sft")
        results.append(_install_foundation(run, out))
        finished(results[-1])
    results += run_pipeline(run, on_stage=finished, only=only, on_start=starting)
    seconds = time.perf_counter() - started
    _append_history(out, results, seconds, quick=quick, seed=seed)
    return write_report(out, results, quick=quick, seed=seed, seconds=seconds)


def _expected_seconds(run: Recipe, names: list[str], quick: bool, from_scratch: bool) -> dict[str, float]:
    """Each stage's expected seconds; none for a stage whose output is already there (it is
    reused), nor for sft when it is the shipped foundation (copied in a second)."""
    table = QUICK_STAGE_SECONDS if quick else STAGE_SECONDS
    outputs = stage_outputs(run)
    done = {name for name, out in outputs.items() if (out / ("manifest.json" if name == "toyworld" else "summary.json")).exists()}
    if not from_scratch:
        done.add("sft")
    return {name: 0.0 if name in done else float(table.get(name, 0)) for name in names}


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
