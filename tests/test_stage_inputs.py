"""A stage whose inputs are missing fails with an error naming the path, before its run directory
exists (no directory left behind that says "running"); the pipeline checks every stage's inputs
before running the first."""

import json
import re
from pathlib import Path

import pytest
from colour_pairs import pair_record

from vlm_rlaif.config import from_dict
from vlm_rlaif.errors import UserError
from vlm_rlaif.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
TOY_RECIPE = REPO / "src" / "vlm_rlaif" / "recipes" / "toy.yaml"
QUESTION = {"from": "human", "value": "<video>\nWhat colour is the video?"}


@pytest.fixture
def data(tmp_path) -> Path:
    """One (empty) video file, an SFT record, a preference pair and a prompt about it."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "v0.mp4").write_bytes(b"")
    answer = {"from": "gpt", "value": "It is red."}
    (root / "sft.json").write_text(json.dumps([{"id": "a", "video": "v0.mp4", "conversations": [QUESTION, answer]}]))
    (root / "prefs.jsonl").write_text(json.dumps(pair_record(0, "red", 1, "v0.mp4")) + "\n")
    (root / "prompts.json").write_text(json.dumps([{"id": "a", "video": "v0.mp4", "conversations": [QUESTION]}]))
    return root


def fails_naming(missing: Path, out: Path, run, *args, **kwargs) -> None:
    with pytest.raises(UserError, match=re.escape(str(missing))):
        run(*args, **kwargs)
    assert not out.exists()


def test_run_dir_is_not_made_when_an_input_is_missing(tmp_path):
    present = tmp_path / "present"
    present.mkdir()
    missing = tmp_path / "missing" / "model"
    inputs = {"model.path": missing, "data.root": present, "reward.model": None}  # None: not used
    with pytest.raises(UserError, match=rf"sft: .*model\.path = {re.escape(str(missing))}") as err:
        RunDir.open(tmp_path / "run", "sft", {}, seed=0, inputs=inputs)
    assert "data.root" not in str(err.value)
    assert not (tmp_path / "run").exists()
    assert not RunDir.open(tmp_path / "run", "sft", {}, seed=0, inputs={"data.root": present}).resumed


def test_sft_without_its_base_model(data, tmp_path):
    from vlm_rlaif.train.sft import SFTConfig, run_sft

    config = from_dict(SFTConfig, {
        "out": str(tmp_path / "sft"),
        "model": {"path": str(tmp_path / "no_model")},
        "data": {"root": str(data), "eval_fraction": 0.0},
        "curriculum": {"phases": [{"name": "only", "files": ["sft.json"]}]},
        "train": {"cpu": True},
    })
    fails_naming(tmp_path / "no_model", tmp_path / "sft", run_sft, config)


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_preference_stages_without_the_sft_model(stage, data, tmp_path):
    if stage == "rm":
        from vlm_rlaif.train.rm import RMConfig as Config
        from vlm_rlaif.train.rm import run_rm as run
    else:
        from vlm_rlaif.train.dpo import DPOConfig as Config
        from vlm_rlaif.train.dpo import run_dpo as run
    config = from_dict(Config, {
        "out": str(tmp_path / stage),
        "model": {"path": str(tmp_path / "no_sft")},
        "data": {"files": ["prefs.jsonl"], "root": str(data)},
        "train": {"cpu": True},
    })
    fails_naming(tmp_path / "no_sft", tmp_path / stage, run, config)


def test_ppo_without_the_sft_model(data, tmp_path):
    from vlm_rlaif.train.ppo import PPOConfig, run_ppo

    config = from_dict(PPOConfig, {
        "out": str(tmp_path / "ppo"),
        "policy": {"model": str(tmp_path / "no_sft")},
        "data": {"root": str(data), "prompts": "prompts.json", "init_data": "prompts.json"},
        "runtime": {"cpu": True},
    })
    fails_naming(tmp_path / "no_sft", tmp_path / "ppo", run_ppo, config, reward_fn=lambda examples, texts: None)


def test_eval_without_its_benchmark_file(data, tmp_path):
    from vlm_rlaif.eval import run_eval
    from vlm_rlaif.eval.config import EvalConfig

    config = from_dict(EvalConfig, {
        "out": str(tmp_path / "eval"),
        "models": [{"name": "sft", "path": str(data)}],
        "benchmarks": [{"name": "mcq", "kind": "mcq", "file": str(data / "no_mcq.json"), "video_root": str(data)}],
    })
    fails_naming(data / "no_mcq.json", tmp_path / "eval", run_eval, config)


def test_feedback_without_its_policy(data, tmp_path):
    from vlm_rlaif.feedback import measure_context, run_feedback
    from vlm_rlaif.feedback.config import FeedbackConfig

    config = from_dict(FeedbackConfig, {
        "model_dir": str(tmp_path / "no_sft"),
        "prompts": str(data / "prompts.json"),
        "video_root": str(data),
        "out": str(tmp_path / "feedback"),
    })
    fails_naming(tmp_path / "no_sft", tmp_path / "feedback", run_feedback, config)
    fails_naming(tmp_path / "no_sft", tmp_path / "feedback", measure_context, config)


def test_pipeline_checks_every_stage_before_running_the_first(tmp_path):
    from vlm_rlaif.pipeline import PipelineSettings, Recipe, check_stage_inputs, run_pipeline

    run_dir = tmp_path / "runs"
    recipe = Recipe(TOY_RECIPE, {"run_dir": str(run_dir)}, {})
    # The SFT model would come from the sft stage, which is not part of these runs.
    with pytest.raises(UserError, match=re.escape(str(run_dir / "sft" / "model"))):
        run_pipeline(recipe, only=["ppo"])
    assert not run_dir.exists()
    with pytest.raises(UserError, match=r"^rm: .*model\.path"):
        run_pipeline(recipe, only=["rm", "ppo"])
    assert not run_dir.exists()
    # Run in full, every input is written by an earlier stage.
    check_stage_inputs(recipe, recipe.load(PipelineSettings, "pipeline"), list(PipelineSettings().stages), [])


def test_a_stage_run_alone_from_a_recipe_names_the_stage_that_writes_each_missing_input(tmp_path, caplog):
    """`vlm-rlaif feedback --config recipes/toy.yaml`: each missing file with the stage that writes
    it, and the two ways on: --var run_dir=<a run that has them>, or the stages before it."""
    from vlm_rlaif.cli import main

    run_dir = tmp_path / "runs"
    code = main(["feedback", "--config", str(TOY_RECIPE), "--var", f"run_dir={run_dir}"])
    assert code == 2 and not run_dir.exists()
    message = caplog.records[-1].getMessage()
    assert message.startswith("feedback: cannot start, input not found:")
    assert f"model_dir = {run_dir / 'sft' / 'model'}  (written by stage sft)" in message
    assert f"prompts = {run_dir / 'world' / 'feedback' / 'prompts.json'}  (written by stage toyworld)" in message
    assert f"--config {TOY_RECIPE} --var run_dir=demo_runs/seed0 --out DIR" in message
    assert f"--run-dir {run_dir} --stages toyworld vision sft" in message


def test_a_stage_whose_inputs_exist_is_not_stopped_and_a_flat_config_names_no_stage(tmp_path):
    from types import SimpleNamespace

    from vlm_rlaif.stage_inputs import check_stage_inputs

    present = tmp_path / "present"
    present.mkdir()
    config = SimpleNamespace(inputs=lambda: {"data.root": present, "unused": None})
    check_stage_inputs(TOY_RECIPE, "sft", config, {"run_dir": str(tmp_path)})  # nothing missing: no error
    flat = tmp_path / "sft.yaml"
    flat.write_text("out: x\n")
    config = SimpleNamespace(inputs=lambda: {"data.root": tmp_path / "gone"})
    with pytest.raises(UserError) as err:
        check_stage_inputs(flat, "sft", config, {})
    assert str(err.value) == f"sft: cannot start, input not found:\n  data.root = {tmp_path / 'gone'}"
