"""`vlm-rlaif demo`: the whole RLAIF loop on the toy world, then a report of what it changed.

    run_demo("demo_runs/seed0")            # ~15 min on 2 cores; --quick: ~1-3 min (a smoke run)

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

from vlm_rlaif.demo.report import write_report
from vlm_rlaif.pipeline import Recipe, StageResult, quick_overrides, run_pipeline

log = logging.getLogger(__name__)


def toy_recipe_path() -> Path:
    """The toy recipe shipped inside the package (the checkout's `recipes/` links to the same folder)."""
    path = Path(__file__).resolve().parent.parent / "recipes" / "toy.yaml"
    if not path.exists():
        raise FileNotFoundError(f"the toy recipe is missing from this installation: {path}")
    return path


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    recipe: str | Path | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> Path:
    """Run the toy loop into `out` and write `out/report.md`; returns the report's path."""
    out = Path(out)
    recipe_path = Path(recipe) if recipe else toy_recipe_path()
    overrides = quick_overrides(recipe_path) if quick else {}
    started = time.perf_counter()
    results = run_pipeline(Recipe(recipe_path, {"run_dir": str(out), "seed": seed}, overrides), on_stage=on_stage)
    seconds = time.perf_counter() - started
    _append_history(out, results, seconds, quick=quick, seed=seed)
    return write_report(out, results, quick=quick, seed=seed, seconds=seconds)


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
