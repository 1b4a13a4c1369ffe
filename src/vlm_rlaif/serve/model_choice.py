"""What `chat --model X` and `serve --model X` load: a base model and, maybe, a LoRA adapter on it.

X may be
- a model directory (vlm_rlaif_model.json or a transformers config.json): that model, plus --lora;
- a LoRA adapter directory (adapter_config.json): the adapter on the base its config names;
- a stage's run directory (summary.json): the model it trained (`sft`, `dpo`: <run>/model; `ppo`:
  the policy adapter on its base), e.g. `--model demo_runs/seed0/ppo`.
A folder holding stage run directories (a demo's run directory) is answered with the ones to choose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import MODEL_INFO_FILE

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ModelChoice:
    base: Path
    adapter: Path | None = None

    def describe(self) -> str:
        """ "base B, adapter A" (or "base B"), for a banner or a log line."""
        return f"base {self.base}" + (f", adapter {self.adapter}" if self.adapter else "")


def resolve_model(model: str | Path, lora: str | Path | None = None) -> ModelChoice:
    """The base model and adapter that `--model model [--lora lora]` mean (see the module docstring)."""
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"--model {model}: no such directory")
    if _is_model(path):
        return ModelChoice(path, Path(lora) if lora else None)
    if (path / ADAPTER_CONFIG).is_file():
        if lora:
            raise UserError(f"--model {model} is itself a LoRA adapter; give its base as --model to use --lora {lora}")
        return _adapter_on_its_base(path)
    if (path / "summary.json").is_file():
        if lora:
            raise UserError(f"--model {model} is a stage's run directory, which chooses its own adapter; "
                            f"give a model directory as --model to use --lora {lora}")
        return _stage_model(path)
    runs = [p for p in sorted(path.iterdir()) if (p / "summary.json").is_file() and _chat_model_or_none(p)]
    hint = f"; it holds stage runs with a model to chat with: {', '.join(f'--model {p}' for p in runs)}" if runs else ""
    raise UserError(
        f"--model {model} is not a model directory ({MODEL_INFO_FILE} or config.json), a LoRA adapter "
        f"({ADAPTER_CONFIG}) or a stage's run directory (summary.json){hint}"
    )


def _is_model(path: Path) -> bool:
    return (path / MODEL_INFO_FILE).is_file() or (path / "config.json").is_file()


def _chat_model_or_none(run: Path) -> ModelChoice | None:
    try:
        return _stage_model(run)
    except UserError:
        return None


def _adapter_on_its_base(adapter: Path) -> ModelChoice:
    config = _read_json(adapter / ADAPTER_CONFIG)
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter / ADAPTER_CONFIG} names no base model; give it: --model BASE --lora {adapter}")
    found = next((c for c in _recorded(base, adapter) if _is_model(c)), None)
    if found is None:
        raise UserError(f"the adapter {adapter} was trained on {base}, which is not a model directory from here; "
                        f"give the base: --model BASE --lora {adapter}")
    return ModelChoice(found, adapter)


def _stage_model(run: Path) -> ModelChoice:
    summary = _read_json(run / "summary.json")
    stage = summary.get("stage", run.name)
    if summary.get("policy_adapter"):  # ppo: the RLAIF policy
        return _adapter_on_its_base(_inside(run, summary["policy_adapter"]))
    if stage == "rm":
        raise UserError(f"{run} is the reward model's run: it scores answers (`vlm-rlaif rm score`), it does not "
                        "write them; chat with the SFT model or the PPO policy (--model <run>/sft, --model <run>/ppo)")
    if summary.get("model"):  # sft, dpo, vision aside: the trained model, full or an adapter
        found = _inside(run, summary["model"])
        return ModelChoice(found) if _is_model(found) else resolve_model(found)
    raise UserError(f"{run} is the run directory of stage {stage}, which trains no model to chat with")


def _inside(run: Path, recorded: str) -> Path:
    """A directory a summary recorded, else the one of the same name in the run directory."""
    for candidate in (*_recorded(recorded, run), run / Path(recorded).name):
        if candidate.is_dir():
            return candidate
    raise UserError(f"{run}/summary.json names {recorded}, which is not here (nor {run / Path(recorded).name})")


def _recorded(recorded: str, near: Path) -> list[Path]:
    """Where a path recorded by a run may be now. Runs record paths as they were given, relative to
    the directory the run was started in, which held the run's output: so from here, or from an
    ancestor of `near` (something that run wrote)."""
    path = Path(recorded)
    if path.is_absolute():
        return [path]
    return [path, *(ancestor / path for ancestor in near.resolve().parents)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


__all__ = ["ModelChoice", "resolve_model"]
