"""Run a recipe end to end: each stage reads the previous stage's directory and writes its own.

A recipe is one YAML file with a section per stage (the same sections `vlm-rlaif <stage> --config`
reads) plus:

    run_dir: runs/toy            # ${run_dir} in any string of the file refers to it
    seed: 0                      # ${seed} likewise
    pipeline:
      stages: [toyworld, sft, feedback, judge_context, rm, ppo, eval]
      toyworld: {out: ${run_dir}/world, videos: 2000}
    quick:                       # extra overrides per stage for `--quick` (CI smoke runs)
      sft: [train.max_steps=20]

Stages chain through paths written in the recipe (feedback.model_dir: ${run_dir}/sft/model, ...).
A stage whose directory holds a finished run is reused; an unfinished one resumes (each stage's own
RunDir logic: skip finished records, continue from the last checkpoint). Nothing here branches on
model family or knows a stage's internals beyond its config class and entry function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm_rlaif.config import load_config
from vlm_rlaif.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("toyworld", "vision", "sft", "feedback", "judge_context", "rm", "ppo", "grpo", "eval")
# GRPO is the alternative to PPO, run when named. Eval compares the policy of the recipe's
# ${policy_stage} (ppo unless set); a run whose stages include grpo but not ppo sets it to grpo, so
# `--stages feedback rm grpo eval` evaluates the GRPO policy.
DEFAULT_STAGES = tuple(s for s in STAGES if s != "grpo")


@dataclass
class ToyWorldStage:
    out: str = "runs/toy/world"
    videos: int = 2000
    workers: int | None = None


@dataclass
class PipelineSettings:
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    toyworld: ToyWorldStage = field(default_factory=ToyWorldStage)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"pipeline.stages: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")


@dataclass
class StageResult:
    name: str
    directory: Path
    status: str  # "ran", "resumed", "reused" or "redone"
    seconds: float
    summary: dict[str, Any]


@dataclass
class Recipe:
    """A recipe file plus the variables and overrides one run applies to it."""

    path: Path
    variables: dict[str, Any]
    overrides: dict[str, list[str]]

    def load(self, cls: type, section: str, extra: list[str] | None = None):
        return load_config(
            cls, self.path, self.overrides.get(section, []) + list(extra or []), section=section, variables=self.variables,
            overrides_from=f"{section} overrides (command line or the recipe's quick section)",
        )

    def raw(self) -> dict:
        return yaml.safe_load(self.path.read_text()) or {}


def quick_overrides(recipe_path: Path) -> dict[str, list[str]]:
    """The recipe's `quick` section: stage -> overrides for a fast smoke run."""
    quick = (yaml.safe_load(Path(recipe_path).read_text()) or {}).get("quick") or {}
    if not isinstance(quick, dict):
        raise ConfigError(f"{recipe_path}: 'quick' must map stage names to lists of KEY=VALUE overrides")
    out = {}
    for stage, items in quick.items():
        if stage not in STAGES and stage != "pipeline":
            raise ConfigError(f"{recipe_path}: quick.{stage}: unknown stage; known: {', '.join(STAGES)}")
        out[stage] = [str(i) for i in items]
    return out


def stage_overrides(items: list[str]) -> dict[str, list[str]]:
    """Command-line overrides "stage.key=value" -> {stage: ["key=value"]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        stage, _, rest = item.partition(".")
        if stage not in STAGES and stage != "pipeline" or not rest:
            raise ConfigError(f"override {item!r} must start with a stage name ({', '.join(STAGES)}) and a dot")
        out.setdefault(stage, []).append(rest)
    return out


def run_pipeline(
    recipe: Recipe,
    *,
    on_stage: Callable[[StageResult], None] | None = None,
    only: list[str] | None = None,
    redo: list[str] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> list[StageResult]:
    """Run the recipe's stages in order (or only those named, in pipeline order, also one the
    recipe's list leaves out, such as grpo); returns one result per stage.

    A finished stage is reused only if its config is unchanged; `redo` names stages to run again
    from scratch, and every stage after the first redone one is redone too (its inputs changed).
    on_start(name) is called as a stage starts, on_stage(result) when it is done.
    """
    settings = recipe.load(PipelineSettings, "pipeline")
    unknown = [s for s in (redo or []) + (only or []) if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    running = [s for s in STAGES if s in only] if only else settings.stages
    if "policy_stage" not in recipe.variables and "grpo" in running and "ppo" not in running:
        recipe.variables["policy_stage"] = "grpo"
    check_stage_inputs(recipe, settings, running, redo or [])
    results = []
    redoing = False
    for name in running:
        redoing = redoing or name in (redo or [])
        if on_start:
            on_start(name)
        started = time.perf_counter()
        directory, status, summary = _RUNNERS[name](recipe, settings, redoing)
        result = StageResult(name, Path(directory), status, round(time.perf_counter() - started, 1), summary)
        log.info("stage %s: %s in %.1f s (%s)", name, status, result.seconds, directory)
        results.append(result)
        if on_stage:
            on_stage(result)
    return results


def check_stage_inputs(recipe: Recipe, settings: PipelineSettings, stages: list[str], redo: list[str]) -> None:
    """Before any stage runs, check every stage's inputs (its config's `inputs()`, as its RunDir
    does) except those an earlier stage of this run writes (they lie under its directory), so a
    missing input fails now instead of after the stages before it. A finished stage that is kept
    reads nothing."""
    from vlm_rlaif.rundir import check_inputs

    written: list[Path] = []
    redoing = False
    for name in stages:
        redoing = redoing or name in redo
        if name == "toyworld":
            written.append(Path(settings.toyworld.out).resolve())
            continue
        config = _stage_config(recipe, name)
        out = Path(config.out).resolve()
        if redoing or not (out / "summary.json").exists():
            inputs = config.inputs()
            check_inputs(name, {
                key: path for key, path in inputs.items()
                if path is not None and not any(Path(path).resolve().is_relative_to(d) for d in written)
            })
        written.append(out)


def stage_outputs(recipe: Recipe) -> dict[str, Path]:
    """stage -> the directory it writes, for the recipe's stages whose section loads (a missing
    input under one of them is that stage's to make)."""
    settings = recipe.load(PipelineSettings, "pipeline")
    raw = recipe.raw()
    outputs = {}
    for name in settings.stages:
        if name == "toyworld":
            outputs[name] = Path(settings.toyworld.out)
        elif (name if name != "judge_context" else "feedback") in raw:
            try:
                outputs[name] = Path(_stage_config(recipe, name).out)
            except ConfigError:  # that stage's section is broken: not this stage's problem
                continue
    return outputs


def _stage_config(recipe: Recipe, name: str):
    if name == "judge_context":
        from vlm_rlaif.feedback.config import FeedbackConfig

        feedback = recipe.load(FeedbackConfig, "feedback")
        return recipe.load(FeedbackConfig, "feedback", [f"out={_judge_context_dir(feedback)}"])
    cls, _ = _LOADERS[name]()
    return recipe.load(cls, name)


def _status(directory: Path, stage: str, config: Any, redo: bool) -> str:
    """What running a stage in `directory` will do: "reused" (finished, same config), "redone"
    (asked to), "resumed" (unfinished) or "ran" (new). A finished run with another config is an
    error: silently reusing it would mix two experiments."""
    from vlm_rlaif.config import to_dict
    from vlm_rlaif.errors import RunDirError
    from vlm_rlaif.rundir import changed_keys, saved_config

    if redo and directory.exists():
        return "redone"
    if (directory / "summary.json").exists():
        changed = changed_keys(saved_config(directory, config), to_dict(config))
        if changed:
            raise RunDirError(
                f"stage {stage} in {directory} finished with a different config (changed: "
                f"{', '.join(changed)}); pass --redo {stage} to run it again (later stages follow), "
                "or choose another run directory"
            )
        return "reused"
    return "resumed" if (directory / "run.json").exists() else "ran"


def _read_summary(directory: Path) -> dict:
    import json

    return json.loads((directory / "summary.json").read_text())


def _toyworld(recipe: Recipe, settings: PipelineSettings, redo: bool):
    import json

    from vlm_rlaif.config import to_dict
    from vlm_rlaif.errors import RunDirError
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    out = Path(settings.toyworld.out)
    cfg = recipe.load(ToyWorldConfig, "toyworld")
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not redo:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == to_dict(cfg) and manifest.get("videos") == settings.toyworld.videos:
            return out, "reused", manifest
        raise RunDirError(
            f"{out} holds a toy world made with another config or video count; pass --redo toyworld "
            "to replace it (later stages follow), or choose another run directory"
        )
    status = "redone" if redo and out.exists() else "resumed" if out.exists() else "ran"
    manifest = generate(cfg, out, settings.toyworld.videos, workers=settings.toyworld.workers, overwrite=redo)
    return out, status, manifest


def _stage(section: str, load: Callable[[], tuple[type, Callable]]):
    """A runner for a stage whose config has `out` and whose entry is run(config) -> summary."""

    def runner(recipe: Recipe, settings: PipelineSettings, redo: bool):
        cls, run = load()
        config = recipe.load(cls, section)
        out = Path(config.out)
        status = _status(out, section, config, redo)
        if status == "reused":
            return out, status, _read_summary(out)
        return out, status, run(config, overwrite=status == "redone")

    return runner


def _sft():
    from vlm_rlaif.train.sft import SFTConfig, run_sft

    return SFTConfig, run_sft


def _vision():
    from vlm_rlaif.train.vision_pretrain import VisionPretrainConfig, run_vision_pretrain

    return VisionPretrainConfig, run_vision_pretrain


def _feedback():
    from vlm_rlaif.feedback import run_feedback
    from vlm_rlaif.feedback.config import FeedbackConfig

    return FeedbackConfig, run_feedback


def _rm():
    from vlm_rlaif.train.rm import RMConfig, run_rm

    return RMConfig, run_rm


def _ppo():
    from vlm_rlaif.train.ppo import PPOConfig, run_ppo

    return PPOConfig, run_ppo


def _grpo():
    from vlm_rlaif.train.grpo import GRPOConfig, run_grpo

    return GRPOConfig, run_grpo


def _eval():
    from vlm_rlaif.eval import run_eval
    from vlm_rlaif.eval.config import EvalConfig

    return EvalConfig, run_eval


def _judge_context(recipe: Recipe, settings: PipelineSettings, redo: bool):
    """The paper's central claim in miniature: the feedback stage's own pairs, judged with and
    without the clip context, each compared with the toy world's oracle."""
    from vlm_rlaif.feedback import measure_context
    from vlm_rlaif.feedback.config import FeedbackConfig

    feedback = recipe.load(FeedbackConfig, "feedback")
    out = _judge_context_dir(feedback)
    config = recipe.load(FeedbackConfig, "feedback", [f"out={out}"])
    status = _status(out, "judge_context", config, redo)
    if status == "reused":
        return out, status, _read_summary(out)
    return out, status, measure_context(config, reuse_from=feedback.out, overwrite=status == "redone")


def _judge_context_dir(feedback) -> Path:
    return Path(feedback.out).parent / "judge_context"


_LOADERS = {"vision": _vision, "sft": _sft, "feedback": _feedback, "rm": _rm, "ppo": _ppo, "grpo": _grpo, "eval": _eval}
_RUNNERS = {
    "toyworld": _toyworld,
    **{name: _stage(name, load) for name, load in _LOADERS.items()},
    "judge_context": _judge_context,
}
