"""Live dashboards (train/tracking.py): the `logging` section, TensorBoard event files that hold exactly
the rows of metrics.jsonl (SFT and PPO, also after a resume), the sample table, the resolved config
as hyperparameters, and the error for a missing tracker package."""

import dataclasses
import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_grpo import grpo_config, reward_module  # noqa: F401  (reward_module: a fixture)
from test_ppo import ppo_config, says_red, world  # noqa: F401  (world: the PPO test world fixture)
from test_sft import sft_config, write_world

from vlm_rlaif.config import from_dict, load_config
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.rundir import RunDir, read_metrics
from vlm_rlaif.train.dpo import DPOConfig
from vlm_rlaif.train.grpo import GRPOConfig, run_grpo
from vlm_rlaif.train.ppo import PPOConfig, run_ppo
from vlm_rlaif.train.rm import RMConfig
from vlm_rlaif.train.sft import SFTConfig, run_sft
from vlm_rlaif.train.tracking import TENSORBOARD_DIR, LoggingSettings, hyperparameters, scalars, tracker_for
from vlm_rlaif.train.vision_pretrain import VisionPretrainConfig

REPO = Path(__file__).resolve().parents[1]
TRAINING_STAGES = {
    "vision": VisionPretrainConfig, "sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
}
# What the issue asks every RL dashboard to show, by metrics.jsonl key.
RL_SCALARS = {"reward_score", "reward_shaped", "kl", "entropy", "clip_fraction", "approx_kl", "value_loss",
              "explained_variance", "response_length", "lr", "grad_norm", "tokens_per_s", "policy_loss"}


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard directory, read back with tensorboard's reader."""
    reader = event_accumulator.EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def metrics_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run):
        for key, value in scalars(row).items():
            series.setdefault(key, []).append((row["step"], value))
    return series


def assert_dashboard_equals_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    board, expected = tensorboard_scalars(run), metrics_series(run)
    assert board.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in board[tag]] == [step for step, _ in points], tag
        assert [value for _, value in board[tag]] == pytest.approx([value for _, value in points], rel=1e-6, nan_ok=True), tag
    return board


def raw_points(run: Path) -> Counter:
    """(tag, step) of every scalar in the event files themselves: no reader's purging of a restart."""
    points: Counter = Counter()
    for path in (run / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    points[(value.tag, event.step)] += 1
    return points


def as_if_killed_after_checkpoint(run: Path, kept: str) -> None:
    """The state a kill leaves when it comes after the last rows were logged but the newest complete
    checkpoint is `kept`: no summary, no later checkpoints, metrics.jsonl and event files past it."""
    (run / "summary.json").unlink()
    for checkpoint in (run / "checkpoints").iterdir():
        if checkpoint.name != kept:
            shutil.rmtree(checkpoint)


# ---------------------------------------------------------------------------- settings


def test_logging_settings():
    assert LoggingSettings().report_to == ["none"] and LoggingSettings().trackers == []
    assert LoggingSettings(report_to=["tensorboard", "wandb", "tensorboard"]).trackers == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        LoggingSettings(report_to=["none", "tensorboard"])
    with pytest.raises(ConfigError, match="must be one of"):
        from_dict(LoggingSettings, {"report_to": ["tensorbord"]})
    with pytest.raises(ConfigError, match="samples_every"):
        LoggingSettings(samples_every=-1)


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_every_training_stage_has_a_logging_section(stage):
    logging = {f.name: f for f in dataclasses.fields(TRAINING_STAGES[stage])}["logging"]
    assert logging.default_factory() == LoggingSettings()


class OneOfTwoProcesses:
    """Stands in for an Accelerator in a 2-process run (RunDir.open_on_main reads these two)."""

    def __init__(self, main: bool):
        self.is_main_process = main

    def wait_for_everyone(self):
        pass


def test_only_the_main_process_gets_the_tracker(tmp_path):
    tracker = object()
    main = RunDir.open_on_main(OneOfTwoProcesses(True), tmp_path / "run", "stage", {}, 0, tracker=tracker)
    other = RunDir.open_on_main(OneOfTwoProcesses(False), tmp_path / "run", "stage", {}, 0, tracker=tracker)
    assert main.tracker is tracker and other.tracker is None


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [("toy.yaml", ["none"]), ("paper-7b.yaml", ["tensorboard"]), ("qwen2.5-vl-7b.yaml", ["tensorboard"])],
)
def test_recipes_report_to(recipe, expected):
    path = REPO / "src" / "vlm_rlaif" / "recipes" / recipe  # recipes/ links to this folder
    raw = yaml.safe_load(path.read_text())
    stages = [stage for stage in TRAINING_STAGES if stage in raw]
    assert stages
    for stage in stages:
        config = load_config(TRAINING_STAGES[stage], path, section=stage, variables={"run_dir": "/r", "data_dir": "/d"})
        assert config.logging.report_to == expected, stage


def test_hyperparameters_are_flat_scalars():
    flat = hyperparameters({"train": {"lr": 1e-4, "cpu": False}, "files": ["a", "b"], "init": None, "out": "runs/x"})
    assert flat == {"train.lr": 1e-4, "train.cpu": False, "files": '["a", "b"]', "init": "null", "out": "runs/x"}


def test_a_logging_change_does_not_block_a_resume(tmp_path):
    @dataclass
    class Config:
        lr: float = 0.1
        logging: LoggingSettings = field(default_factory=LoggingSettings)

    RunDir.open(tmp_path / "run", "stage", Config(), 0)
    turned_on = Config(logging=LoggingSettings(report_to=["tensorboard"]))
    assert RunDir.open(tmp_path / "run", "stage", turned_on, 0).resumed  # dashboards do not change the run
    with pytest.raises(Exception, match="changed: lr"):
        RunDir.open(tmp_path / "run", "stage", Config(lr=0.2), 0)


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_package_names_the_extra(tracker, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # import (and find_spec) now fail as if not installed
    config = from_dict(VisionPretrainConfig, {"logging": {"report_to": [tracker]}})
    with pytest.raises(UserError, match=rf"pip install '\.\[{tracker}\]'"):
        tracker_for(config)


# ---------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def sft_world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("sft_world"))


def test_sft_dashboard_equals_metrics_jsonl_and_a_resume_adds_no_duplicates(sft_world, tmp_path):
    out = tmp_path / "sft"
    config = sft_config(sft_world, out, ["logging.report_to=[tensorboard]"], max_steps=6, save_every=2, keep_checkpoints=5)
    run_sft(config)
    board = assert_dashboard_equals_metrics(out)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "answer_tokens", "eval_loss"} <= board.keys()
    assert [step for step, _ in board["loss"]] == [1, 2, 3, 4, 5, 6]
    for row in read_metrics(out):
        if "loss" in row:  # one micro-batch a step, logged every step: tokens_per_s x step_seconds is its tokens
            tokens = row["tokens_per_s"] * row["step_seconds"]
            assert tokens == pytest.approx(round(tokens), abs=1e-6) and tokens > row["answer_tokens"]
    hparams = yaml.safe_load(next((out / TENSORBOARD_DIR).glob("*/hparams.yml")).read_text())
    assert hparams["train.max_steps"] == 6 and hparams["logging.report_to"] == '["tensorboard"]'

    as_if_killed_after_checkpoint(out, "step_00000002")
    summary = run_sft(config)
    assert summary["resumed_from_step"] == 2
    board = assert_dashboard_equals_metrics(out)
    assert [step for step, _ in board["loss"]] == [1, 2, 3, 4, 5, 6]
    points = raw_points(out)
    assert points[("loss", 3)] == 1 and max(points.values()) == 1  # not even a purged duplicate in the files


def test_a_missing_package_fails_before_the_run_directory_exists(sft_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "sft"
    with pytest.raises(UserError, match=r"pip install '\.\[tensorboard\]'"):
        run_sft(sft_config(sft_world, out, ["logging.report_to=[tensorboard]"], max_steps=1))
    assert not out.exists()


# ---------------------------------------------------------------------------- PPO


def sample_tables(run: Path) -> dict[int, str]:
    """The samples table (TensorBoard text) by step."""
    from tensorboard.util import tensor_util

    reader = event_accumulator.EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={event_accumulator.TENSORS: 0})
    reader.Reload()
    return {e.step: tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in reader.Tensors("samples/text_summary")}


def test_ppo_dashboard_equals_metrics_jsonl_with_samples_and_a_resume_adds_no_duplicates(world, tmp_path):  # noqa: F811
    out = tmp_path / "ppo"
    config = ppo_config(  # 16 prompts, 8 a iteration: 2 iterations
        world, out, ppo={"epochs": 1, "save_every": 1, "keep_checkpoints": 5},
        logging={"report_to": ["tensorboard"], "samples_every": 2},
    )
    run_ppo(config, reward_fn=says_red)
    board = assert_dashboard_equals_metrics(out)
    assert RL_SCALARS <= board.keys()
    assert [step for step, _ in board["kl"]] == [1, 2]
    tables = sample_tables(out)
    assert list(tables) == [2]  # every samples_every iterations
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    shown = [row for row in samples if row["iteration"] == 2]
    assert tables[2].startswith("| iteration | id | question | response | score | reward |")
    assert tables[2].count("\n") == 1 + len(shown) and shown[0]["id"] in tables[2]

    as_if_killed_after_checkpoint(out, "iter_00000001")
    summary = run_ppo(config, reward_fn=says_red)
    assert summary["resumed_from_iteration"] == 1
    board = assert_dashboard_equals_metrics(out)
    assert [step for step, _ in board["reward_score"]] == [1, 2]
    assert max(raw_points(out).values()) == 1
    assert list(sample_tables(out)) == [2]


def test_grpo_gets_the_dashboard_the_same_way(world, tmp_path, reward_module):  # noqa: F811
    out = tmp_path / "grpo"
    config = grpo_config(world, out, grpo={"max_iterations": 2}, logging={"report_to": ["tensorboard"], "samples_every": 1})
    run_grpo(config)
    board = assert_dashboard_equals_metrics(out)
    assert {"reward_score", "kl", "entropy", "clip_fraction", "approx_kl", "response_length", "lr", "grad_norm",
            "tokens_per_s"} <= board.keys()
    assert list(sample_tables(out)) == [1, 2]
