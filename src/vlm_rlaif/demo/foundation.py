"""The demo's shipped foundation: the toy SFT model, trained once and shipped inside the package.

A real user of the method starts from a released SFT checkpoint; the demo does the same. The
foundation is what `vlm-rlaif demo --from-scratch` builds first (toy world, vision pretraining,
SFT), shipped in fp16 (a few MB) with `foundation.json` saying how it was made:

    vlm-rlaif demo --from-scratch --out runs/foundation --stages toyworld vision sft
    vlm-rlaif model ship-toy --from runs/foundation

`vlm-rlaif demo` then installs it as its run's SFT stage (upcast to float32, the CPU's dtype) and
runs feedback, reward model, policy initialisation + PPO and evaluation from it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from vlm_rlaif.errors import UserError

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "foundation" / "toy_sft"
INFO_FILE = "foundation.json"


def shipped_foundation() -> Path:
    if not (SHIPPED / INFO_FILE).is_file():
        raise UserError(f"this installation has no shipped toy foundation ({SHIPPED}); run `vlm-rlaif demo --from-scratch`")
    return SHIPPED


def ship_foundation(run_dir: str | Path, dest: str | Path = SHIPPED) -> dict:
    """Write `run_dir`'s SFT model (a from-scratch demo run) to `dest` in fp16, with foundation.json
    (the run's recipe sections, summaries and versions)."""
    import torch
    import yaml

    from vlm_rlaif.models import load_adapter_model

    run_dir, dest = Path(run_dir), Path(dest)
    model_dir = run_dir / "sft" / "model"
    for needed in (model_dir, run_dir / "sft" / "summary.json"):
        if not needed.exists():
            raise UserError(f"{needed}: missing; `vlm-rlaif model ship-toy` ships a finished from-scratch SFT stage")
    lm = load_adapter_model(model_dir)
    lm.unwrapped_model.to(torch.float16)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lm.save(partial)
    info = {
        "made_by": f"vlm-rlaif model ship-toy --from {run_dir}",
        "dtype": "float16",
        "sft_summary": json.loads((run_dir / "sft" / "summary.json").read_text()),
        "sft_config": yaml.safe_load((run_dir / "sft" / "config.yaml").read_text()),
        "env": json.loads((run_dir / "sft" / "env.json").read_text()),
    }
    vision = run_dir / "vision" / "summary.json"
    if vision.exists():
        info["vision_summary"] = json.loads(vision.read_text())
        info["vision_config"] = yaml.safe_load((run_dir / "vision" / "config.yaml").read_text())
    (partial / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    log.info("shipped the toy foundation from %s to %s", model_dir, dest)
    return info


def install_foundation(sft_dir: str | Path, source: str | Path | None = None) -> dict:
    """Make `sft_dir` a finished SFT stage holding the shipped foundation (float32); returns its
    summary. A directory that already holds it is kept."""
    import torch

    from vlm_rlaif.models import load_adapter_model

    sft_dir = Path(sft_dir)
    source = Path(source) if source else shipped_foundation()
    if (sft_dir / "summary.json").exists():
        summary = json.loads((sft_dir / "summary.json").read_text())
        if summary.get("foundation") != str(source):
            raise UserError(f"{sft_dir} holds another SFT run; choose another run directory")
        return summary
    lm = load_adapter_model(source)
    lm.unwrapped_model.to(torch.float32)
    partial = sft_dir / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    lm.save(partial)
    partial.rename(sft_dir / "model")
    info = json.loads((source / INFO_FILE).read_text())
    summary = {"stage": "sft", "foundation": str(source), "model": str(sft_dir / "model"),
               "made_by": info.get("made_by"), **{k: v for k, v in info.get("sft_summary", {}).items()
                                                 if k in ("steps", "train_examples", "eval_loss_after", "train_seconds")}}
    (sft_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["SHIPPED", "install_foundation", "ship_foundation", "shipped_foundation"]
