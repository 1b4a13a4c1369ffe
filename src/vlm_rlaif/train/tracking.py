"""Live dashboards: every row a stage writes to metrics.jsonl also goes to accelerate's trackers.

A training stage's config has a `logging` section (LoggingSettings) naming the trackers: TensorBoard
(event files in <run>/tensorboard), Weights & Biases, MLflow, or none. The stage passes
`tracker_for(config)` to RunDir.open / open_on_main, which keeps it on the main process only;
RunDir.log_metrics then hands every row to it, so any loop that logs through its RunDir (the
supervised loop, PPO, GRPO, ...) reaches the dashboards with the same scalars and steps.

metrics.jsonl stays the source of truth. The trackers start at the stage's first logged row and
first replay metrics.jsonl as it stands then: on a resumed run that is the rows kept up to the
checkpoint, so its dashboard continues the same steps without duplicates (TensorBoard's event files
of the interrupted attempt are replaced; W&B and MLflow get a new run holding the whole history, the
interrupted one stays as it was). The resolved config goes in as hyperparameters, flattened to
dotted keys.

accelerate's tracker classes are used directly rather than through `Accelerator(log_with=...)`:
a trainer creates its Accelerator before the run directory that the trackers write into exists,
and `Accelerator.end_training` would also destroy the process group, which stages run one after
another in one process (the demo) share. Credentials (WANDB_API_KEY, MLFLOW_TRACKING_URI, ...) are
read by those libraries from the environment; no config key takes one and nothing here writes one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlm_rlaif.config import to_dict
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.rundir import read_metrics

Reporter = Literal["tensorboard", "wandb", "mlflow", "none"]
TENSORBOARD_DIR = "tensorboard"  # under the run directory
# The module a tracker needs, and the pyproject extra that installs it.
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
# Row keys that are not dashboard scalars: the step is the x axis; `time` counts from this process's
# start (a resumed run restarts it) and every tracker stamps its own wall time anyway.
_NOT_SCALARS = ("step", "time")


@dataclass
class LoggingSettings:
    """A training stage's `logging` section.

    report_to: the trackers, e.g. [tensorboard] or [tensorboard, wandb]; [none]: metrics.jsonl only.
    project: the W&B project / MLflow experiment.
    run_name: the W&B / MLflow run name ("": the run directory's parent and name, e.g. exp1/ppo);
        TensorBoard names a run by its directory (<run>/tensorboard).
    samples_every: RL stages log a table of a few sample rollouts every this many iterations
        (0: never); TensorBoard gets it as text, MLflow not at all (accelerate's tracker has no tables).
    """

    report_to: list[Reporter] = field(default_factory=lambda: ["none"])
    project: str = "vlm-rlaif"
    run_name: str = ""
    samples_every: int = 10

    def __post_init__(self):
        names = list(dict.fromkeys(self.report_to))
        if "none" in names and len(names) > 1:
            raise ConfigError(f"logging.report_to: 'none' cannot be combined with other trackers, got {names}")
        self.report_to = names or ["none"]
        if self.samples_every < 0:
            raise ConfigError(f"logging.samples_every must be >= 0, got {self.samples_every}")

    @property
    def trackers(self) -> list[str]:
        return [name for name in self.report_to if name != "none"]


def tracker_for(config: Any) -> "Tracker | None":
    """The Tracker for a stage config with a `logging` section, or None when it reports to none.
    A missing tracker package fails here, before the stage makes its run directory."""
    settings: LoggingSettings = config.logging
    if not settings.trackers:
        return None
    check_packages(settings.trackers)
    return Tracker(settings, hyperparameters(to_dict(config)))


def check_packages(trackers: list[str]) -> None:
    for name in trackers:
        module, extra = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"logging.report_to includes {name}, but the {module} package is not installed: "
                f"pip install '.[{extra}]' (or set logging.report_to=[none])"
            )


def hyperparameters(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config dict flattened to dotted keys with scalar values, as trackers take hyperparameters:
    a list becomes its JSON text, None the string "null"."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        elif value is None:
            out[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars(row: dict) -> dict[str, float]:
    """The dashboard scalars of a metrics row: its numbers, without the step and time (a None, an
    undefined metric, is left out)."""
    return {k: float(v) for k, v in row.items() if k not in _NOT_SCALARS and isinstance(v, (int, float))}


def log_sample_table(run, step: int, rows: list[dict]) -> None:
    """A table of sample rollouts (dicts with the same keys, e.g. prompt, response, reward) at `step`,
    every logging.samples_every steps; nothing when the run has no tracker."""
    if run.tracker is not None and rows:
        run.tracker.table(run.path, "samples", step, rows)


class Tracker:
    """accelerate trackers fed by RunDir (see the module docstring); made by `tracker_for`."""

    def __init__(self, settings: LoggingSettings, hparams: dict):
        self.settings = settings
        self.hparams = hparams
        self._trackers: list | None = None  # accelerate GeneralTrackers, started at the first row

    def log(self, run_path: Path, row: dict) -> None:
        """Called by RunDir.log_metrics once `row` is in metrics.jsonl."""
        if self._trackers is None:
            self._start(run_path)  # the replay sends this row too
        else:
            self._send(row)

    def table(self, run_path: Path, name: str, step: int, rows: list[dict]) -> None:
        every = self.settings.samples_every
        if not every or step % every:
            return
        if self._trackers is None:
            self._start(run_path)
        columns = list(rows[0])
        data = [[row.get(c) for c in columns] for row in rows]
        for tracker in self._trackers:
            if hasattr(tracker, "log_table"):  # W&B
                tracker.log_table(name, columns=columns, data=data, step=step)
            elif tracker.name == "tensorboard":  # its text plugin renders a markdown table
                tracker.log({name: _markdown_table(columns, data)}, step=step)

    def close(self, run_path: Path) -> None:
        """Called by RunDir.finish. A resumed run that logged nothing new still gets its dashboard
        rebuilt from metrics.jsonl."""
        if self._trackers is None:
            self._start(run_path)
        for tracker in self._trackers:
            tracker.finish()

    def _start(self, run_path: Path) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        run_path = Path(run_path)
        name = self.settings.run_name or f"{run_path.parent.name}/{run_path.name}"
        # The event files hold what metrics.jsonl holds: an interrupted attempt's are replaced by the replay.
        shutil.rmtree(run_path / TENSORBOARD_DIR, ignore_errors=True)
        makers = {
            "tensorboard": lambda: TensorBoardTracker(TENSORBOARD_DIR, run_path),
            "wandb": lambda: WandBTracker(self.settings.project, name=name, dir=str(run_path)),
            "mlflow": lambda: MLflowTracker(self.settings.project, run_name=name),
        }
        self._trackers = [makers[tracker]() for tracker in self.settings.trackers]
        for tracker in self._trackers:
            tracker.start()
            tracker.store_init_configuration(self.hparams)
        for row in read_metrics(run_path):
            self._send(row)

    def _send(self, row: dict) -> None:
        values = scalars(row)
        if values:
            for tracker in self._trackers:
                tracker.log(values, step=int(row["step"]))


def _markdown_table(columns: list[str], data: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float) and math.isfinite(value):
            value = f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
    return "\n".join(lines)


__all__ = [
    "LoggingSettings", "TENSORBOARD_DIR", "Tracker", "check_packages", "hyperparameters", "log_sample_table", "scalars",
    "tracker_for",
]
