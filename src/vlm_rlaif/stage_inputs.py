"""One stage run on its own from a recipe (`vlm-rlaif sft --config recipes/toy.yaml`), its inputs
checked before it starts.

A recipe's sections name files that its earlier stages write under ${run_dir}. Run alone, a stage
whose inputs are missing says, for each one, which stage writes it, and how to point the recipe at a
run directory that has them (`--var run_dir=...`) or make them first, instead of a bare "file not
found" from inside the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlm_rlaif.config import config_variables, load_stage_config
from vlm_rlaif.errors import UserError
from vlm_rlaif.pipeline import Recipe, stage_outputs

# What a user who ran the demo has: every stage's output under this directory.
DEMO_RUN_DIR = "demo_runs/seed0"


def load_checked_stage_config(cls: type, args, section: str):
    """load_stage_config, then the check below on the inputs of the config it returns."""
    config = load_stage_config(cls, args, section)
    check_stage_inputs(args.config, section, config, config_variables(args))
    return config


def check_stage_inputs(recipe_path: str | Path | None, section: str, config: Any, variables: dict[str, Any]) -> None:
    """Raise a UserError listing every input of `config` (its `inputs()`) that does not exist, each
    with the recipe's stage that writes it, when `recipe_path` is a recipe (it has a pipeline)."""
    missing = {key: Path(path) for key, path in config.inputs().items() if path is not None and not Path(path).exists()}
    if not missing:
        return
    raw = _raw(recipe_path)
    writers = stage_outputs(Recipe(Path(recipe_path), variables, {})) if "pipeline" in raw else {}
    lines, needed = [], []
    for key, path in missing.items():
        stage = _writer(path, writers, section)
        lines.append(f"  {key} = {path}" + (f"  (written by stage {stage})" if stage else ""))
        if stage and stage not in needed:
            needed.append(stage)
    message = f"{section}: cannot start, input not found:\n" + "\n".join(lines)
    if needed and "run_dir" in raw:
        run_dir = variables.get("run_dir", raw["run_dir"])
        # Every stage before this one, not only those writing the missing files: they need theirs.
        before = list(writers)[: list(writers).index(section)] if section in writers else needed
        message += (
            f"\nThe recipe's run_dir is {run_dir}. Run {section} on a run directory that has these (after "
            f"`vlm-rlaif demo`: vlm-rlaif {section} --config {recipe_path} --var run_dir={DEMO_RUN_DIR} --out DIR), "
            f"or make them first: vlm-rlaif pipeline --recipe {recipe_path} --run-dir {run_dir} --stages {' '.join(before)}"
        )
    raise UserError(message)


def _raw(recipe_path: str | Path | None) -> dict:
    if recipe_path is None:
        return {}
    loaded = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _writer(path: Path, writers: dict[str, Path], section: str) -> str | None:
    """The stage whose output directory holds `path` (the innermost one), other than `section`."""
    path = path.resolve()
    holders = [(len(out.resolve().parts), stage) for stage, out in writers.items()
               if stage != section and path.is_relative_to(out.resolve())]
    return max(holders)[1] if holders else None


__all__ = ["DEMO_RUN_DIR", "check_stage_inputs", "load_checked_stage_config"]
