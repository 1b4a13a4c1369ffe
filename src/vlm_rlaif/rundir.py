"""Run directories: what every stage writes, and how a re-run resumes or refuses.

Layout of a stage's directory:
    config.yaml      the resolved config
    run.json         stage, seed, status, start/end times, resume history
    env.json         versions: python, torch, transformers, ..., this package, git commit
    metrics.jsonl    one JSON object per logged step (append-only)
    summary.json     written last; its presence means the stage finished
A re-run on a finished directory refuses unless overwrite=True; on an unfinished one it resumes
(the stage decides what "resume" means: skip finished records, load the last checkpoint, ...).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vlm_rlaif import __version__
from vlm_rlaif.config import to_dict
from vlm_rlaif.errors import RunDirError, UserError

log = logging.getLogger(__name__)

_TRACKED_PACKAGES = ["torch", "transformers", "peft", "accelerate", "tokenizers", "av", "numpy"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def collect_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "vlm_rlaif": __version__,
        "git_commit": _git_commit(),
    }
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def check_inputs(stage: str, inputs: dict[str, str | Path | None]) -> None:
    """Raise a UserError naming every input path that does not exist (`inputs`: config key -> path,
    None for an input this run does not use). Called before the run directory is made, so a stage
    that cannot start leaves no directory behind that says "running"."""
    missing = [f"{key} = {path}" for key, path in inputs.items() if path is not None and not Path(path).exists()]
    if missing:
        raise UserError(f"{stage}: cannot start, input not found: {'; '.join(missing)}")


class RunDir:
    """One stage's output directory. Use `RunDir.open(...)`, then `log_metrics`, then `finish`."""

    def __init__(self, path: Path, stage: str, resumed: bool, tracker: Any = None):
        self.path = path
        self.stage = stage
        self.resumed = resumed
        # Live dashboards (train.tracking.Tracker): every logged row also goes to it; None: metrics.jsonl only.
        self.tracker = tracker
        self._t0 = time.time()

    @classmethod
    def open(
        cls,
        path: str | Path,
        stage: str,
        config: Any,
        seed: int,
        *,
        overwrite: bool = False,
        inputs: dict[str, str | Path | None] | None = None,
        tracker: Any = None,
    ) -> "RunDir":
        """Create a new run directory, resume an unfinished one, or refuse a finished one; first
        check that every path in `inputs` (see check_inputs) exists. `tracker` (train.tracking's
        tracker_for) also receives every row log_metrics writes."""
        check_inputs(stage, inputs or {})
        path = Path(path)
        cfg = to_dict(config)
        resumed = False
        if path.exists() and any(path.iterdir()):
            if overwrite:
                log.warning("overwriting %s", path)
                shutil.rmtree(path)
            elif (path / "summary.json").exists():
                raise RunDirError(
                    f"{path} holds a finished '{stage}' run; choose another output directory or "
                    "pass --overwrite to replace it"
                )
            elif (path / "run.json").exists():
                info = json.loads((path / "run.json").read_text())
                if info.get("stage") != stage:
                    raise RunDirError(
                        f"{path} holds a '{info.get('stage')}' run, not a '{stage}' run"
                    )
                changed = changed_keys(saved_config(path, config), cfg)
                if changed:
                    raise RunDirError(
                        f"{path} holds an unfinished run with a different config "
                        f"(changed: {', '.join(changed)}); resume with the same config or pass "
                        "--overwrite"
                    )
                resumed = True
            else:
                raise RunDirError(f"{path} exists, is not empty and is not a vlm-rlaif run directory")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, stage, resumed, tracker)
        if resumed:
            info = json.loads((path / "run.json").read_text())
            info.setdefault("resumed_at", []).append(_now())
            info["status"] = "running"
            log.info("resuming unfinished %s run in %s", stage, path)
        else:
            (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            info = {"stage": stage, "seed": seed, "status": "running", "started_at": _now()}
        run._write_json("run.json", info)
        run._write_json("env.json", collect_versions())
        seed_everything(seed)
        return run

    @classmethod
    def open_on_main(
        cls,
        accelerator,
        path: str | Path,
        stage: str,
        config: Any,
        seed: int,
        *,
        overwrite: bool = False,
        inputs: dict[str, str | Path | None] | None = None,
        tracker: Any = None,
    ) -> "RunDir":
        """`open` for a run of several processes (an accelerate Accelerator): the main process opens
        or resumes the directory and owns its files (and the tracker: only it logs); the others wait
        for it, then get a handle."""
        # Every process checks, so none is left waiting for a main process that refused to start.
        check_inputs(stage, inputs or {})
        if accelerator.is_main_process:
            run = cls.open(path, stage, config, seed, overwrite=overwrite, tracker=tracker)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            run = cls(Path(path), stage, resumed=True)
        return run

    @property
    def checkpoints(self) -> Path:
        p = self.path / "checkpoints"
        p.mkdir(exist_ok=True)
        return p

    @property
    def finished(self) -> bool:
        return (self.path / "summary.json").exists()

    def log_metrics(self, step: int, **metrics: Any) -> None:
        row = {"step": step, "time": round(time.time() - self._t0, 3), **metrics}
        line = json.dumps(row, default=float)
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(line + "\n")
        if self.tracker is not None:
            self.tracker.log(self.path, json.loads(line))  # exactly the row as metrics.jsonl holds it

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        if self.tracker is not None:
            self.tracker.close(self.path)
        info = json.loads((self.path / "run.json").read_text())
        info["status"] = "finished"
        info["finished_at"] = _now()
        self._write_json("run.json", info)
        summary = {"stage": self.stage, **summary, "finished_at": info["finished_at"]}
        self._write_json("summary.json", summary)
        return summary

    def _write_json(self, name: str, obj: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, self.path / name)


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl (a torn last line is ignored)."""
    p = Path(path)
    p = p / "metrics.jsonl" if p.is_dir() else p
    rows = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def drop_rows_after(path: Path, key: str, value: int) -> None:
    """On resume, drop the JSONL rows whose `key` is past `value`, the step resumed from (that work is
    redone; -1 drops every row); a torn last line from the kill goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get(key, 0) <= value:
            kept.append(line)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


# Top-level config sections that do not change what a run computes: a run may resume, or a pipeline
# reuse a finished stage, with other values (e.g. dashboards turned on after the run started).
NOT_COMPARED = ("logging",)


def saved_config(directory: Path, config: Any) -> dict:
    """A run directory's config.yaml, with the keys it lacks filled in from `config`'s class defaults:
    a key added to the code after the run was made ran as its default (new options default to the
    old behaviour), so it does not count as a change."""
    saved = yaml.safe_load((Path(directory) / "config.yaml").read_text()) or {}
    try:
        defaults = to_dict(type(config)())
    except Exception:  # a config class whose fields have no defaults: compare as saved
        return saved
    return _fill_missing(saved, defaults)


def _fill_missing(saved: Any, defaults: Any) -> Any:
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    return {**defaults, **{k: _fill_missing(v, defaults.get(k)) for k, v in saved.items()}}


def changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (NOT_COMPARED sections aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if not prefix and k in NOT_COMPARED:
                continue
            out += changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
