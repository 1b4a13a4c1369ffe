"""FSDP2 through accelerate (train/sharding.py, train/loop.py): the expected memory per GPU, and 2
CPU processes (gloo) sharding the tiny llava-video model with the shipped FSDP2 config, against one
process: loss and weights, full and LoRA fine-tuning, a killed run resumed from sharded checkpoints,
the consolidated model loaded with from_pretrained.

torch's fully_shard runs on CPU with gloo, but accelerate turns FSDP on only for GPU processes; the
driver's CPU_SHIM (test-only) makes accelerate treat its gloo CPU processes like GPU ones, so the
loop, accelerate's prepare and save_state/load_state run as on GPUs. What needs GPUs (bf16 mixed
precision, CPU offload, NCCL, the peak memory) is in bench/gpu_fsdp2_check.py."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlm_rlaif.train.sharding import GIB, expected_memory

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
FSDP2_CONFIG = REPO / "src" / "vlm_rlaif" / "recipes" / "accelerate" / "fsdp2-8gpu.yaml"


def test_expected_memory_of_7b_full_fine_tuning():
    # 7e9 bf16 parameters, all trainable, bf16 mixed precision (fp32 master weights): 16 bytes a
    # parameter, the issue's ~110 GB, whole on every GPU under data parallelism, an 8th under FSDP2.
    tensors = [(7 * 10**9, 2, True, True)]
    ddp = expected_memory(tensors, 8, sharded=False, upcast=True)
    assert (ddp.parameters, ddp.gradients, ddp.optimizer) == (28e9, 28e9, 56e9)
    fsdp = expected_memory(tensors, 8, sharded=True, upcast=True)
    assert fsdp.total == ddp.total / 8 == 14e9
    assert expected_memory(tensors, 8, sharded=True, upcast=True, offload=True).total == 0
    assert "14e9" not in fsdp.describe() and f"{14e9 / GIB:.2f} GiB" in fsdp.describe()


def test_expected_memory_of_lora_with_a_whole_vision_tower():
    # A frozen bf16 base (sharded), a LoRA adapter in fp32, a frozen vision tower kept whole.
    tensors = [(1000, 2, False, True), (10, 4, True, True), (300, 2, False, False)]
    estimate = expected_memory(tensors, 4, sharded=True, upcast=False)
    assert estimate.parameters == 1000 * 2 / 4 + 10 * 4 / 4 + 300 * 2
    assert estimate.gradients == 10
    assert estimate.optimizer == 20
    with pytest.raises(ValueError):
        expected_memory(tensors, 0, sharded=True, upcast=False)


DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    import torch

    if os.environ.get("CPU_SHIM") == "1":  # test-only: accelerate's FSDP path on gloo CPU processes
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        prepare_backend = PartialState._prepare_backend

        def on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):
            backend, kind = prepare_backend(self, True, sagemaker_dp, backend)
            return backend, DistributedType.MULTI_GPU if kind == DistributedType.MULTI_CPU else kind

        PartialState._prepare_backend = on_cpu
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"

    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.models.lora import LoraSettings
    from vlm_rlaif.models.registry import load_adapter_model
    from vlm_rlaif.rundir import RunDir
    from vlm_rlaif.train.data import InstructionDataset, PlannedBatches, batch_plan, read_instruction_file
    from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
    from vlm_rlaif.train.sft import make_sft_loss

    root, out, method, grad_accum, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    settings = TrainSettings(batch_size=2, grad_accum=grad_accum, lr=1e-3, schedule="cosine", save_every=1,
                             keep_checkpoints=1)
    accelerator = accelerator_for(settings)
    lm = load_adapter_model(root / "base", device=accelerator.device)
    if method == "lora":
        torch.manual_seed(0)
        lm.add_lora("sft", LoraSettings(r=4, alpha=8, targets="attn_mlp", train_projector=True))
    else:  # the vision tower trains too (as in the toy recipe): kept whole, its gradients summed
        lm.set_trainable(language_model=True, projector=True, vision_tower=True)
    dataset = InstructionDataset(read_instruction_file(root / "sft.json"), FrameStore(root, FrameSampling(8, 4)))
    sft_loss = make_sft_loss(lm)
    calls = []

    def loss_fn(batch):
        calls.append(torch.is_grad_enabled())  # training calls; evaluation runs under no_grad
        if kill_at and sum(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return sft_loss(batch)

    # 5 micro-batches, 2 per step: the 3rd step has one, so under FSDP2 process 1 runs a weight-0
    # one; 3 evaluation batches: process 1 runs one more, not counted.
    plan = batch_plan(range(len(dataset)), 2, seed=0)
    batches = PlannedBatches(plan + plan[:1], dataset, lm.collate)
    eval_batches = PlannedBatches(plan[1:4], dataset, lm.collate)
    run = RunDir.open_on_main(accelerator, out, "fsdp-test", {}, 0)
    result = train(lm.model, loss_fn, batches, settings, eval_batches=eval_batches, run=run, accelerator=accelerator,
                   keep_whole=list(lm.visual_modules().values()))
    if result.consolidated is not None:
        lm.model = result.consolidated
    if accelerator.is_main_process:
        if method == "lora":
            lm.merge_lora()
        lm.save(out / "model")
        info = {"world": accelerator.num_processes, "sharded": result.consolidated is not None,
                "loss": result.train_metrics["loss"], "eval_loss": result.final_eval["loss"],
                "resumed_from": result.resumed_from_step}
        (out / "result.json").write_text(json.dumps(info))
    accelerator.wait_for_everyone()
    """
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model and 8 SFT records with videos."""
    from vlm_rlaif.models import build_tiny_model, train_tokenizer
    from vlm_rlaif.video import write_video

    root = tmp_path_factory.mktemp("fsdp")
    texts = ["What colour is the square?", "The square is red.", "The square is blue."]
    build_tiny_model("tiny", train_tokenizer(texts * 10, vocab_size=300), frames=8, seed=3).save(root / "base")
    records = []
    for i, (colour, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 4):
        frames = np.zeros((8, 32, 32, 3), np.uint8)
        frames[:, 8:24, 8 + i : 24 + i] = rgb
        write_video(frames, root / f"v{i}.mp4")
        answer = f"The square is {colour}." + " It does not move." * (i % 3)
        records.append({"id": i, "video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\\nWhat colour is the square?"}, {"from": "gpt", "value": answer}]})
    (root / "sft.json").write_text(json.dumps(records))
    (root / "driver.py").write_text(DRIVER)
    return root


def run_driver(root: Path, out: Path, method: str, *, sharded: bool, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    if sharded:
        env["CPU_SHIM"] = "1"
        # The shipped config, with 2 processes and fp32 (bf16 is checked on GPUs).
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG),
                   "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "29531",
                   str(root / "driver.py"), str(root), str(out), method, "1", str(kill_at)]
    else:  # one process, 2 micro-batches per step: the same steps as 2 processes with 1 each
        command = [sys.executable, str(root / "driver.py"), str(root), str(out), method, "2", str(kill_at)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def assert_same_model(a: Path, b: Path, changed_from: Path, min_changed: int) -> None:
    one, other, initial = (load_file(p / "model.safetensors") for p in (a, b, changed_from))
    assert set(one) == set(other) == set(initial)
    for name in one:
        torch.testing.assert_close(one[name], other[name], rtol=1e-4, atol=2e-6, msg=name)
    assert sum(not torch.equal(one[name], initial[name]) for name in one) >= min_changed


def test_fsdp2_full_fine_tuning_killed_and_resumed_matches_one_process(world):
    single = run_driver(world, world / "full-single", "full", sharded=False)
    assert single.returncode == 0, single.stderr[-3000:]

    # Killed in step 3 (each process's 3rd training micro-batch): the newest checkpoint is step 2, sharded.
    out = world / "full-fsdp"
    killed = run_driver(world, out, "full", sharded=True, kill_at=3)
    assert killed.returncode != 0
    checkpoint = out / "checkpoints" / "step_00000002"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "trainable.safetensors").exists() and not (out / "model").exists()
    resumed = run_driver(world, out, "full", sharded=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "expected memory per GPU (FSDP2 over 2 processes)" in resumed.stdout

    info = json.loads((out / "result.json").read_text())
    reference = json.loads((world / "full-single" / "result.json").read_text())
    assert info["world"] == 2 and info["sharded"] and info["resumed_from"] == 2
    assert info["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert info["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4)
    initial = load_file(world / "base" / "model.safetensors")
    assert_same_model(out / "model", world / "full-single" / "model", world / "base", len(initial) // 2)

    # The consolidated model is an ordinary HF directory.
    from transformers import AutoModelForImageTextToText

    from vlm_rlaif.models.registry import load_adapter_model  # registers llava-video with the Auto classes

    model = AutoModelForImageTextToText.from_pretrained(out / "model")
    saved = load_file(out / "model" / "model.safetensors")
    name, value = next(iter(saved.items()))
    assert torch.equal(model.state_dict()[name], value)
    assert load_adapter_model(out / "model").family == "llava-video"


def test_fsdp2_lora_matches_one_process(world):
    single = run_driver(world, world / "lora-single", "lora", sharded=False)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run_driver(world, world / "lora-fsdp", "lora", sharded=True)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    info = json.loads((world / "lora-fsdp" / "result.json").read_text())
    reference = json.loads((world / "lora-single" / "result.json").read_text())
    assert info["sharded"] and info["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert info["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4)
    # The merged model: LoRA folded into the base weights (the attention and MLP matrices changed).
    # 4 layers x 7 matrices with an adapter, and the projector.
    assert_same_model(world / "lora-fsdp" / "model", world / "lora-single" / "model", world / "base", 28)
