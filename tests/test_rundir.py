import json
from dataclasses import dataclass, field

import pytest
import yaml

from vlm_rlaif.errors import RunDirError
from vlm_rlaif.rundir import RunDir, read_metrics


@dataclass
class Cfg:
    lr: float = 1e-3
    steps: int = 10


def test_new_run_writes_everything(tmp_path):
    run = RunDir.open(tmp_path / "r", "sft", Cfg(), seed=3)
    assert not run.resumed
    run.log_metrics(1, loss=2.5)
    run.log_metrics(2, loss=2.0)
    summary = run.finish({"final_loss": 2.0})
    p = tmp_path / "r"
    assert yaml.safe_load((p / "config.yaml").read_text()) == {"lr": 1e-3, "steps": 10}
    info = json.loads((p / "run.json").read_text())
    assert info["seed"] == 3 and info["status"] == "finished" and info["started_at"] and info["finished_at"]
    env = json.loads((p / "env.json").read_text())
    for key in ["python", "torch", "transformers", "vlm_rlaif", "git_commit"]:
        assert key in env
    assert [r["loss"] for r in read_metrics(p)] == [2.5, 2.0]
    assert summary["final_loss"] == 2.0 and json.loads((p / "summary.json").read_text())["stage"] == "sft"


def test_finished_run_refuses_unless_overwrite(tmp_path):
    RunDir.open(tmp_path, "rm", Cfg(), seed=0).finish({})
    with pytest.raises(RunDirError, match="finished 'rm' run.*--overwrite"):
        RunDir.open(tmp_path, "rm", Cfg(), seed=0)
    run = RunDir.open(tmp_path, "rm", Cfg(lr=0.5), seed=0, overwrite=True)
    assert not run.resumed and not run.finished
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lr"] == 0.5


def test_unfinished_run_resumes_with_same_config_only(tmp_path):
    RunDir.open(tmp_path, "ppo", Cfg(), seed=0).log_metrics(1, reward=0.1)
    run = RunDir.open(tmp_path, "ppo", Cfg(), seed=0)
    assert run.resumed
    assert json.loads((tmp_path / "run.json").read_text())["resumed_at"]
    assert len(read_metrics(tmp_path)) == 1  # metrics kept
    with pytest.raises(RunDirError, match="changed: steps"):
        RunDir.open(tmp_path, "ppo", Cfg(steps=11), seed=0)
    with pytest.raises(RunDirError, match="holds a 'ppo' run, not a 'sft' run"):
        RunDir.open(tmp_path, "sft", Cfg(), seed=0)


@dataclass
class Inner:
    engine: str = "hf"
    server: dict | None = None


@dataclass
class Grown:
    """Cfg after a later version of the code added options (old behaviour at their defaults)."""

    lr: float = 1e-3
    steps: int = 10
    runtime: Inner = field(default_factory=Inner)


def test_options_added_later_count_as_their_default(tmp_path):
    # A run made before `runtime` existed resumes under the grown config while the new keys keep
    # their defaults; a non-default value is a change. The pipeline's reuse check reads the same way.
    RunDir.open(tmp_path, "ppo", Cfg(), seed=0).log_metrics(1, reward=0.1)
    assert RunDir.open(tmp_path, "ppo", Grown(), seed=0).resumed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"lr": 1e-3, "steps": 10, "runtime": {"engine": "hf"}}))
    assert RunDir.open(tmp_path, "ppo", Grown(), seed=0).resumed  # a sub-key added later, too
    with pytest.raises(RunDirError, match="changed: runtime.engine"):
        RunDir.open(tmp_path, "ppo", Grown(runtime=Inner(engine="openai")), seed=0)
    RunDir.open(tmp_path / "done", "ppo", Cfg(), seed=0).finish({})
    from vlm_rlaif.pipeline import _status

    assert _status(tmp_path / "done", "ppo", Grown(), redo=False) == "reused"
    with pytest.raises(RunDirError, match="changed: runtime.engine"):
        _status(tmp_path / "done", "ppo", Grown(runtime=Inner(engine="openai")), redo=False)


def test_foreign_directory_refused(tmp_path):
    (tmp_path / "something.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a vlm-rlaif run directory"):
        RunDir.open(tmp_path, "sft", Cfg(), seed=0)
