"""The shared training loop: schedules, accumulation, evaluation, checkpoints, resume after a kill,
and data parallelism under `accelerate launch` on the tiny llava-video model."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlm_rlaif.errors import UserError
from vlm_rlaif.rundir import RunDir, read_metrics
from vlm_rlaif.train.loop import TrainSettings, latest_checkpoint, train, trainable_state

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]


def regression_data(num_batches: int, batch_size: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 4, generator=generator), torch.randn(batch_size, 1, generator=generator)) for _ in range(num_batches)]


def small_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def mse_loss_of(model):
    def loss_fn(batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {"examples": float(len(x))}

    return loss_fn


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_with_warmup(tmp_path, schedule):
    model = small_net()
    settings = TrainSettings(lr=0.1, max_steps=6, warmup_steps=2, schedule=schedule, cpu=True)
    run = RunDir.open(tmp_path / schedule, "loop-test", {"schedule": schedule}, seed=0)
    result = train(model, mse_loss_of(model), regression_data(4), settings, run=run)
    lrs = [row["lr"] for row in read_metrics(run.path) if "lr" in row]
    after_warmup = {
        "constant": [0.1] * 4,
        "linear": [0.1 * (1 - k / 4) for k in range(4)],
        "cosine": [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)],
    }[schedule]
    assert lrs == pytest.approx([0.0, 0.05] + after_warmup)
    assert result.steps == 6  # max_steps cycles through the 4 batches


def test_accumulation_equals_one_merged_batch():
    data = regression_data(4)
    accumulated = small_net()
    train(accumulated, mse_loss_of(accumulated), data, TrainSettings(grad_accum=2, lr=0.05, schedule="constant", cpu=True))
    merged_data = [(torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]])) for i in (0, 2)]
    merged = small_net()
    train(merged, mse_loss_of(merged), merged_data, TrainSettings(lr=0.05, schedule="constant", cpu=True))
    untrained = small_net()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, untrained.state_dict()[name])


def test_only_trainable_parameters_move_and_eval_is_logged(tmp_path):
    model = small_net()
    model[0].requires_grad_(False)
    frozen_before = model[0].weight.clone()
    settings = TrainSettings(lr=0.05, max_steps=6, eval_every=2, cpu=True)
    run = RunDir.open(tmp_path / "run", "loop-test", {}, seed=0)
    result = train(model, mse_loss_of(model), regression_data(3), settings, eval_batches=regression_data(2, seed=9), run=run)
    assert torch.equal(model[0].weight, frozen_before)
    assert [step for step, _ in result.eval_history] == [0, 2, 4, 6]
    assert result.final_eval["loss"] < result.eval_history[0][1]["loss"]
    assert result.final_eval["examples"] == 3.0  # loss_fn metrics are averaged per batch
    eval_rows = [row for row in read_metrics(run.path) if "eval_loss" in row]
    assert [row["step"] for row in eval_rows] == [0, 2, 4, 6]
    assert set(trainable_state(model)) == {"2.weight", "2.bias"}


def test_errors_are_clear():
    model = small_net()
    with pytest.raises(UserError, match="no training batches"):
        train(model, mse_loss_of(model), [], TrainSettings(cpu=True))
    model.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        train(model, mse_loss_of(model), regression_data(1), TrainSettings(cpu=True))
    with pytest.raises(UserError, match="grad_accum"):
        TrainSettings(grad_accum=0)


KILLABLE_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from vlm_rlaif.rundir import RunDir
    from vlm_rlaif.train.loop import TrainSettings, train, trainable_state

    out, kill_at_call, num_batches = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    # Dropout makes the result depend on the random state, which the checkpoint must restore.
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(3, 4, generator=generator), torch.randn(3, 1, generator=generator)) for _ in range(num_batches)]
    calls = [0]

    def loss_fn(batch):
        calls[0] += 1
        if calls[0] == kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    settings = TrainSettings(grad_accum=2, lr=0.02, warmup_steps=1, save_every=2, keep_checkpoints=2, cpu=True)
    run = RunDir.open(out, "loop-test", {"demo": 1}, seed=0)
    result = train(model, loss_fn, data, settings, run=run)
    save_file(trainable_state(model), out / "final.safetensors")
    print("resumed_from", result.resumed_from_step)
    """
)


def run_script(script: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_resume_after_kill_gives_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE_RUN)
    # 12 micro-batches, 2 per step: 6 steps, checkpoints after steps 2, 4, 6.
    reference = run_script(script, tmp_path / "reference", 0, 12)
    assert reference.returncode == 0, reference.stderr
    assert "resumed_from None" in reference.stdout

    # Killed (SIGKILL) inside step 4's first micro-batch: the newest checkpoint is step 2.
    out = tmp_path / "killed"
    killed = run_script(script, out, 7, 12)
    assert killed.returncode == -9
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"
    assert not (out / "final.safetensors").exists()
    # A checkpoint torn by a kill mid-write is ignored.
    (out / "checkpoints" / "step_00000004.partial").mkdir()

    resumed = run_script(script, out, 0, 12)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed_from 2" in resumed.stdout
    final, expected = load_file(out / "final.safetensors"), load_file(tmp_path / "reference" / "final.safetensors")
    for name in expected:
        assert torch.equal(final[name], expected[name]), name  # bitwise, on CPU
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".partial")) == [
        "step_00000004",
        "step_00000006",
    ]
    steps = [row["step"] for row in read_metrics(out)]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows the killed run logged after its checkpoint were dropped


def test_restart_before_the_first_checkpoint_logs_each_step_once(tmp_path):
    class Killed(Exception):
        pass

    model = small_net()
    data, eval_data = regression_data(4), regression_data(1, seed=9)
    settings = TrainSettings(lr=0.05, save_every=3, cpu=True)
    calls = [0]

    def dies_in_step_2(batch):
        calls[0] += 1
        if calls[0] == 3:  # the eval at step 0, step 1, then step 2's batch
            raise Killed
        return mse_loss_of(model)(batch)

    run = RunDir.open(tmp_path / "run", "loop-test", {}, seed=0)
    with pytest.raises(Killed):
        train(model, dies_in_step_2, data, settings, eval_batches=eval_data, run=run)
    assert latest_checkpoint(run.path / "checkpoints") is None
    assert [row["step"] for row in read_metrics(run.path)] == [0, 1]

    run = RunDir.open(tmp_path / "run", "loop-test", {}, seed=0)
    assert run.resumed
    fresh = small_net()
    result = train(fresh, mse_loss_of(fresh), data, settings, eval_batches=eval_data, run=run)
    assert result.resumed_from_step is None
    assert [row["step"] for row in read_metrics(run.path)] == [0, 1, 2, 3, 4, 4]  # step 4: train row, final eval


def test_resume_refuses_changed_data(tmp_path):
    model = small_net()
    settings = TrainSettings(lr=0.05, save_every=1, cpu=True)
    run = RunDir.open(tmp_path / "run", "loop-test", {}, seed=0)
    train(model, mse_loss_of(model), regression_data(2), settings, run=run)
    with pytest.raises(UserError, match="num_batches: checkpoint 2, now 3"):
        train(model, mse_loss_of(model), regression_data(3), settings, run=run)


DDP_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from safetensors.torch import save_file
    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.models.registry import load_adapter_model
    from vlm_rlaif.train.data import InstructionDataset, PlannedBatches, batch_plan, read_instruction_file
    from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train, trainable_state
    from vlm_rlaif.train.sft import make_sft_loss

    root, out, grad_accum = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    settings = TrainSettings(batch_size=2, grad_accum=grad_accum, lr=1e-3, schedule="constant", cpu=True)
    accelerator = accelerator_for(settings)
    lm = load_adapter_model(root / "base", device=accelerator.device)
    lm.set_trainable(language_model=True, projector=True, vision_tower=True)
    dataset = InstructionDataset(read_instruction_file(root / "sft.json"), FrameStore(root, FrameSampling(8, 4)))
    sft_loss = make_sft_loss(lm)
    seen = []

    def counting_loss(batch):
        seen.append(batch["input_ids"].shape[0])
        return sft_loss(batch)

    batches = PlannedBatches(batch_plan(range(len(dataset)), 2, seed=0), dataset, lm.collate)
    train(lm.model, counting_loss, batches, settings, accelerator=accelerator)
    rank = accelerator.process_index
    save_file(trainable_state(lm.model), out / f"rank{rank}.safetensors")
    info = {"world": accelerator.num_processes, "micro_batches": len(seen), "examples": sum(seen)}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    """
)


def test_data_parallel_two_processes_match_one_process_with_accumulation(tmp_path):
    from vlm_rlaif.models import build_tiny_model, train_tokenizer
    from vlm_rlaif.video import write_video

    texts = ["What colour is the square?", "The square is red.", "The square is blue."]
    build_tiny_model("tiny", train_tokenizer(texts * 10, vocab_size=300), frames=8, seed=3).save(tmp_path / "base")
    records = []
    for i, (colour, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 4):
        frames = np.zeros((8, 32, 32, 3), np.uint8)
        frames[:, 8:24, 8 + i : 24 + i] = rgb
        write_video(frames, tmp_path / f"v{i}.mp4")
        answer = f"The square is {colour}." + " It does not move." * (i % 3)
        records.append({"id": i, "video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat colour is the square?"}, {"from": "gpt", "value": answer}]})
    (tmp_path / "sft.json").write_text(json.dumps(records))
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` launches through torchrun; with no GPU, accelerate runs the processes on the CPU
    # with gloo (`--cpu` alone starts a single process unless an MPI hostfile is given).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    ddp = subprocess.run([*launch, str(driver), str(tmp_path), str(tmp_path / "ddp"), "1"], capture_output=True, text=True, env=env, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(driver), str(tmp_path), str(tmp_path / "single"), "2"], capture_output=True, text=True, env=env, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]

    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["micro_batches"] for r in ranks] == [2, 2]  # 4 micro-batches of 2 examples, split evenly
    assert sum(r["examples"] for r in ranks) == 8
    weights = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    reference = load_file(tmp_path / "single" / "rank0.safetensors")
    initial = load_file(tmp_path / "base" / "model.safetensors")
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6)
    assert set(weights[0]) == set(initial)  # full fine-tuning: every weight trains
    assert sum(not torch.equal(weights[0][name], initial[name]) for name in initial) > len(initial) // 2
