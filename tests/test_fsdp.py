"""FSDP2 through accelerate (train/sharding.py, train/loop.py): the expected memory per GPU, and 2
CPU processes (gloo) sharding the tiny llava-video model with the shipped FSDP2 config, against one
process: loss and weights of full fine-tuning (a killed run resumed from sharded checkpoints, the
consolidated model loaded with from_pretrained) and of the rm stage with LoRA and its scalar head.

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


CPU_SHIM = textwrap.dedent(
    """
    import os

    if os.environ.get("CPU_SHIM") == "1":  # test-only: accelerate's FSDP path on gloo CPU processes
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        prepare_backend = PartialState._prepare_backend

        def on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):
            backend, kind = prepare_backend(self, True, sagemaker_dp, backend)
            return backend, DistributedType.MULTI_GPU if kind == DistributedType.MULTI_CPU else kind

        PartialState._prepare_backend = on_cpu
        # A stage that asks for cpu=True without a GPU (ppo, grpo) takes the GPU path's set-up too.
        partial_init = PartialState.__init__
        PartialState.__init__ = lambda self, cpu=False, **kwargs: partial_init(self, False, **kwargs)
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    """
)

DRIVER = CPU_SHIM + textwrap.dedent(
    """
    import json, signal, sys
    from pathlib import Path

    import torch

    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.models.registry import load_adapter_model
    from vlm_rlaif.rundir import RunDir
    from vlm_rlaif.train.data import InstructionDataset, PlannedBatches, batch_plan, read_instruction_file
    from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
    from vlm_rlaif.train.sft import make_sft_loss

    root, out, grad_accum, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    settings = TrainSettings(batch_size=2, grad_accum=grad_accum, lr=1e-3, schedule="cosine", save_every=1,
                             keep_checkpoints=1)
    accelerator = accelerator_for(settings)
    lm = load_adapter_model(root / "base", device=accelerator.device)
    # Full fine-tuning; the vision tower trains too (as in the toy recipe): kept whole, its gradients summed.
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


def run_driver(root: Path, out: Path, *, sharded: bool, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    if sharded:
        env["CPU_SHIM"] = "1"
        # The shipped config, with 2 processes and fp32 (bf16 is checked on GPUs).
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG),
                   "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "29531",
                   str(root / "driver.py"), str(root), str(out), "1", str(kill_at)]
    else:  # one process, 2 micro-batches per step: the same steps as 2 processes with 1 each
        command = [sys.executable, str(root / "driver.py"), str(root), str(out), "2", str(kill_at)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def assert_same_model(a: Path, b: Path, changed_from: Path, min_changed: int) -> None:
    one, other, initial = (load_file(p / "model.safetensors") for p in (a, b, changed_from))
    assert set(one) == set(other) == set(initial)
    for name in one:
        torch.testing.assert_close(one[name], other[name], rtol=1e-4, atol=2e-6, msg=name)
    assert sum(not torch.equal(one[name], initial[name]) for name in one) >= min_changed


def test_fsdp2_full_fine_tuning_killed_and_resumed_matches_one_process(world):
    single = run_driver(world, world / "full-single", sharded=False)
    assert single.returncode == 0, single.stderr[-3000:]

    # Killed in step 3 (each process's 3rd training micro-batch): the newest checkpoint is step 2, sharded.
    out = world / "full-fsdp"
    killed = run_driver(world, out, sharded=True, kill_at=3)
    assert killed.returncode != 0
    checkpoint = out / "checkpoints" / "step_00000002"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "trainable.safetensors").exists() and not (out / "model").exists()
    resumed = run_driver(world, out, sharded=True)
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


RM_DRIVER = CPU_SHIM + textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from vlm_rlaif.config import from_dict
    from vlm_rlaif.train.rm import RMConfig, run_rm

    config = json.loads(Path(sys.argv[1]).read_text())
    config["train"]["grad_accum"] = int(sys.argv[2])
    run_rm(from_dict(RMConfig, config))
    """
)


def test_fsdp2_reward_model_with_lora_matches_one_process(tmp_path):
    """The rm stage: a LoRA adapter on the sharded backbone and the scalar head in the root unit,
    saved from the consolidated model and scoring the held-out pairs like one process does."""
    from colour_pairs import write_colour_pairs

    from vlm_rlaif.models import build_tiny_model, train_tokenizer
    from vlm_rlaif.prompts import load_prompt

    write_colour_pairs(tmp_path)
    corpus = ["What colour is the video? The video is red. The video is blue."] * 20 + [load_prompt("rm_evaluation").text] * 5
    build_tiny_model("tiny", train_tokenizer(corpus, vocab_size=400), frames=8, seed=0).save(tmp_path / "sft")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    driver = tmp_path / "rm_driver.py"
    driver.write_text(RM_DRIVER)
    outs = {}
    for name, grad_accum in (("single", 2), ("fsdp", 1)):
        outs[name] = tmp_path / name
        config = {
            "out": str(outs[name]), "model": {"path": str(tmp_path / "sft")},
            "data": {"files": ["prefs.jsonl"], "root": str(tmp_path), "eval_pairs": 8},
            "lora": {"r": 8, "alpha": 16},
            "train": {"batch_size": 4, "lr": 3e-3, "max_steps": 3, "schedule": "constant"},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        args = [str(driver), str(tmp_path / f"{name}.json"), str(grad_accum)]
        if name == "fsdp":
            env["CPU_SHIM"] = "1"
            args = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG), "--num_processes", "2",
                    "--mixed_precision", "no", "--main_process_port", "29533", *args]
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    summaries = {name: json.loads((out / "summary.json").read_text()) for name, out in outs.items()}
    assert summaries["fsdp"]["train_metrics"]["loss"] == pytest.approx(summaries["single"]["train_metrics"]["loss"], rel=1e-4)
    assert (outs["fsdp"] / "model" / "lora" / "adapter_model.safetensors").is_file()
    adapters = [load_file(out / "model" / "lora" / "adapter_model.safetensors") for out in outs.values()]
    for name, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][name], value, rtol=1e-4, atol=2e-6, msg=name)
    assert any("lora_B" in name and bool(value.abs().sum() > 0) for name, value in adapters[1].items())  # it trained
    heads = [load_file(out / "model" / "scalar_head.safetensors") for out in outs.values()]
    for name, value in heads[0].items():
        torch.testing.assert_close(heads[1][name], value, rtol=1e-4, atol=2e-6, msg=name)
    scores = [[json.loads(line) for line in (out / "eval" / "heldout.jsonl").read_text().splitlines()] for out in outs.values()]
    assert len(scores[0]) == len(scores[1]) > 0
    for one, other in zip(*scores):
        assert one["id"] == other["id"]
        assert one["reward_1"] == pytest.approx(other["reward_1"], rel=1e-3, abs=1e-4)


def test_rl_stages_refuse_deepspeed_and_fsdp1_and_take_fsdp2():
    from accelerate.utils import DistributedType

    from vlm_rlaif.errors import ConfigError
    from vlm_rlaif.train.rollouts import check_sharding

    class Launched:
        distributed_type = DistributedType.DEEPSPEED
        is_fsdp2 = False

    with pytest.raises(ConfigError, match="ppo does not run under DeepSpeed.*fsdp2-8gpu.yaml"):
        check_sharding(Launched(), "ppo")
    Launched.distributed_type = DistributedType.FSDP
    with pytest.raises(ConfigError, match="FSDP1"):
        check_sharding(Launched(), "grpo")
    Launched.is_fsdp2 = True
    assert check_sharding(Launched(), "grpo")
    Launched.distributed_type = DistributedType.MULTI_GPU
    assert not check_sharding(Launched(), "ppo")


def test_shipped_accelerate_configs_parse_say_when_to_use_them_and_ship():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted(FSDP2_CONFIG.parent.glob("*.yaml"))
    assert {p.name for p in configs} == {"1gpu.yaml", "ddp-8gpu.yaml", "fsdp2-8gpu.yaml", "multinode-fsdp2.yaml"}
    kinds = {}
    for path in configs:
        assert path.read_text().startswith("# "), f"{path.name} opens without a comment on when to use it"
        config = load_config_from_file(str(path))
        kinds[path.name] = (str(config.distributed_type).split(".")[-1], config.num_processes,
                            (config.fsdp_config or {}).get("fsdp_version"))
    assert kinds == {"1gpu.yaml": ("NO", 1, None), "ddp-8gpu.yaml": ("MULTI_GPU", 8, None),
                     "fsdp2-8gpu.yaml": ("FSDP", 8, 2), "multinode-fsdp2.yaml": ("FSDP", 16, 2)}
    assert '"recipes/accelerate/*.yaml"' in (REPO / "pyproject.toml").read_text()  # package data


def test_fill_puts_full_weights_into_a_meta_copy_keeping_ties_and_dtypes():
    from vlm_rlaif.train.sharding import fill, meta_copy

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False)).to(torch.bfloat16)
    model[1].weight = model[0].weight  # tied, as in models with tie_word_embeddings
    model.register_buffer("table", torch.arange(3.0), persistent=False)
    skeleton = meta_copy(model)
    assert skeleton[0].weight.is_meta and skeleton[1].weight is skeleton[0].weight
    trained = torch.randn(5, 3)
    # The gathered state names the shared weight once, under its second name; float32 master weights.
    filled = fill(skeleton, {"model.1.weight": trained}, prefix="model.")
    assert filled[0].weight is filled[1].weight and filled[0].weight.dtype == torch.bfloat16
    assert torch.equal(filled[0].weight, trained.to(torch.bfloat16))
    assert torch.equal(filled.table, torch.arange(3.0))  # non-persistent buffers survive the copy
    with pytest.raises(KeyError, match="model.0.weight"):
        fill(meta_copy(model), {}, prefix="model.")


def test_four_bit_weights_are_refused_under_fsdp2():
    from vlm_rlaif.errors import ConfigError
    from vlm_rlaif.train.sharding import check_shardable

    class Params4bit(torch.nn.Parameter):  # stands in for bitsandbytes' class (matched by name)
        pass

    model = torch.nn.Linear(2, 2)
    check_shardable(model)
    model.weight = Params4bit(model.weight.detach())
    with pytest.raises(ConfigError, match="4-bit.*ddp-8gpu.yaml"):
        check_shardable(model)
