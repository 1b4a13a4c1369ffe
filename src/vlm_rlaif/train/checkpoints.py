"""Training checkpoints on disk, shared by the supervised loop (train/loop.py) and PPO (train/ppo.py).

A checkpoint is a directory <prefix><N:08d>/ holding:
    trainable.safetensors   the trainable parameters by name
    optimizer.pt, scheduler.pt
    rng_<rank>.pt           every process's RNG state (python, numpy, torch, cuda)
    state.json              the trainer's counters and the layout a resume must match
A sharded checkpoint (FSDP2, train/sharding.py) holds accelerate's save_state folders instead of
trainable.safetensors and optimizer.pt: every process writes its shards of the model and the
optimizer (torch.distributed.checkpoint), and a resume needs the same number of processes.
It is written under <name>.partial and renamed when complete, so a kill mid-write leaves the
previous checkpoint usable; only the newest `keep` complete ones are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlm_rlaif.errors import UserError

PARTIAL_SUFFIX = ".partial"


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch and, when present, every CUDA device)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_number(path: Path, prefix: str) -> int:
    return int(path.name[len(prefix) :])


def complete_checkpoints(directory: Path, prefix: str) -> list[Path]:
    """The complete checkpoints under `directory`, oldest first (partial ones from a kill are ignored)."""
    if not directory.is_dir():
        return []
    complete = [
        p for p in directory.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and not p.name.endswith(PARTIAL_SUFFIX)
        and (p / "state.json").is_file()
    ]
    return sorted(complete, key=lambda p: checkpoint_number(p, prefix))


def latest_checkpoint(directory: Path, prefix: str) -> Path | None:
    """The newest complete checkpoint under `directory`, or None."""
    complete = complete_checkpoints(directory, prefix)
    return complete[-1] if complete else None


def save_checkpoint(
    directory: Path,
    prefix: str,
    number: int,
    parameters: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict,
    keep: int,
    accelerator,
    *,
    sharded: bool = False,
) -> Path:
    """Write checkpoint `number` and prune all but the newest `keep`. Every process calls this (each
    saves its RNG state); the main process writes the rest. sharded: the model and optimizer were
    prepared by accelerate for FSDP2; every process writes its shards through save_state."""
    final = directory / f"{prefix}{number:08d}"
    partial = directory / (final.name + PARTIAL_SUFFIX)
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), partial / f"rng_{accelerator.process_index}.pt")
    if sharded:
        accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if main:
        if not sharded:
            weights = {name: p.detach().cpu().contiguous() for name, p in parameters.items()}
            save_file(weights, partial / "trainable.safetensors")
            torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        (partial / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        older = [p for p in complete_checkpoints(directory, prefix) if p != final]
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: Path,
    parameters: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler,
    expected: dict,
    rank: int,
    *,
    inputs: str,
    accelerator=None,
) -> dict:
    """Restore a checkpoint written by save_checkpoint into `parameters` (by name), the optimizer,
    the scheduler and this process's RNG; returns its state.json. `expected` holds the state keys
    that must match for the same run to continue (`inputs` names what they describe, for the error).
    accelerator: a sharded checkpoint's; every process loads its shards through load_state."""
    state = json.loads((path / "state.json").read_text())
    changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: checkpoint {old}, now {new}" for k, (old, new) in changed.items())
        raise UserError(f"{path}: cannot resume, the {inputs} or process layout changed ({details})")
    if accelerator is not None:
        accelerator.load_state(str(path))
    else:
        weights = load_file(path / "trainable.safetensors")
        missing = sorted(set(parameters) - set(weights))
        if missing:
            raise UserError(f"{path}: the checkpoint lacks trainable parameters, e.g. {missing[:3]}")
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(weights[name].to(p.device, p.dtype))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng_{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


__all__ = [
    "checkpoint_number",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
