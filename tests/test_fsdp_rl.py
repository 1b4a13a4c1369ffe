"""PPO and GRPO under FSDP2 (train/rollouts.py, train/sharding.py): 2 gloo CPU processes with the
shipped FSDP2 config (through test_fsdp's CPU_SHIM) against the same 2 processes data parallel, and
GRPO on fixed answers against one process.

Each process samples with a seed of (seed, iteration, process) and shuffles its own minibatches, so a
1-process run samples other answers and takes other minibatches; 2 data-parallel processes take
exactly the steps the sharded ones do, and their gradients are averaged the same way. So: the same
rewards and responses, and the same trained weights within float tolerance (FSDP2 reduce-scatters
where data parallelism all-reduces). The PPO run initialises its policy (an SFT run sharded by
train/loop.py) and samples with an engine that saves the policy adapter after every update, as the
server engine does; the GRPO run is killed after its first checkpoint (sharded) and resumed; GRPO
with full fine-tuning keeps its reference a whole copy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_fsdp import CPU_SHIM, FSDP2_CONFIG, REPO
from test_grpo import REWARD_MODULE, grpo_config
from test_ppo import ppo_config, save_random_reward_model, world  # noqa: F401  (world: the shared fixture)

from vlm_rlaif.config import to_dict

DRIVER = CPU_SHIM + textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch

    from vlm_rlaif.config import from_dict
    from vlm_rlaif.models import count_visual_calls
    from vlm_rlaif.rollout.engine import HFEngine
    from vlm_rlaif.train import grpo, ppo, rollouts

    stage, config = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    out = Path(config["out"])
    rank = int(os.environ.get("RANK", "0"))
    module = ppo if stage == "ppo" else grpo
    trainer_class = ppo.PPOTrainer if stage == "ppo" else grpo.GRPOTrainer
    seen = {"trainer": None, "loss_calls": []}


    class SavingEngine(HFEngine):
        # The HF engine's sampling, and after every update the adapter saved as the server engine does.
        name = "hf+saved-adapter"

        def update_policy(self):
            if self.adapter is not None:  # LoRA: what a server loads
                self.lm.save_lora(out / f"served_rank{rank}", self.adapter)


    class FixedEngine(SavingEngine):
        # Fixed answers, alternating within each group, whatever the process: runs of any size compare.
        name = "fixed"

        def generate(self, examples, settings):
            from vlm_rlaif.models.examples import Generation

            texts = ["The circle is red.", "The circle is blue."]
            ids = [self.lm.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.lm.eos_token_id] for t in texts]
            return [Generation(i, 0, texts[i % 2], ids[i % 2], True) for i in range(len(examples))]


    engine = FixedEngine if os.environ.get("FIXED_ANSWERS") == "1" else SavingEngine
    module.make_rollout_engine = lambda config, policy, out: engine(policy, adapter="policy" if policy.adapter_names else None)
    loss = trainer_class.loss


    def counted_loss(self, *args):
        seen["trainer"] = self
        bases = [self.policy] + ([self.value.lm] if stage == "ppo" else [])
        counts = [count_visual_calls(lm) for lm in bases]
        entered = [c.__enter__() for c in counts]
        try:
            result = loss(self, *args)
        finally:
            for c in counts:
                c.__exit__(None, None, None)
        grad = result[0].requires_grad
        seen["loss_calls"].append([[c.calls_with_grad["splice"], c.video_forwards_with_grad, grad] for c in entered])
        return result


    trainer_class.loss = counted_loss

    # Sampling under FSDP2: how many all-gathers the units make while generating a whole answer.
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    gathers, all_gather = [0], _fsdp_param_group.foreach_all_gather
    generate = rollouts.RLTrainer.generate
    seen["generations"] = []


    def counted_all_gather(*args, **kwargs):
        gathers[0] += 1
        return all_gather(*args, **kwargs)


    def counted_generate(self, examples, iteration):
        before = gathers[0]
        generations = generate(self, examples, iteration)
        units = 0
        if self.root is not None:  # the policy's units and the root's (the value base does not run)
            units = 1 + sum(isinstance(m, FSDPModule) for m in self.root.model["policy"].modules())
        seen["generations"].append([gathers[0] - before, units, max(len(g.token_ids) for g in generations)])
        return generations


    _fsdp_param_group.foreach_all_gather = counted_all_gather
    rollouts.RLTrainer.generate = counted_generate
    if stage == "ppo":
        summary = ppo.run_ppo(from_dict(ppo.PPOConfig, config))  # the reward model on the value base
    else:
        summary = grpo.run_grpo(from_dict(grpo.GRPOConfig, config))
    trainer = seen["trainer"]
    info = {"world": trainer.world, "sharded": trainer.root is not None, "loss_calls": seen["loss_calls"],
            "resumed_from": summary["resumed_from_iteration"], "generations": seen["generations"]}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    """
)


def launch(tmp_path: Path, stage: str, config, *, sharded: bool, port: int, env: dict | None = None, processes: int = 2):
    out = Path(config.out)
    config_file = tmp_path / f"{out.name}.json"
    config_file.write_text(json.dumps(to_dict(config)))
    driver = tmp_path / "rl_driver.py"
    driver.write_text(DRIVER)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision", "no",
                "--main_process_port", str(port)]
    if processes == 1:
        launcher = [sys.executable]
    elif sharded:
        environment["CPU_SHIM"] = "1"
        launcher += ["--config_file", str(FSDP2_CONFIG)]
    else:  # data parallel; without a GPU the processes run on the CPU with gloo
        launcher += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    return subprocess.run([*launcher, str(driver), stage, str(config_file)], env=environment, capture_output=True,
                          text=True, timeout=400)


def failure(done) -> str:
    """The first traceback of a failed launch (the launcher's own report follows it)."""
    text = done.stderr
    start = text.find("Traceback")
    return text[start : start + 4000] if start >= 0 else text[-3000:]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_tensors(a: Path, b: Path, atol: float = 1e-5) -> dict[str, torch.Tensor]:
    # AdamW after clipped gradients of norm ~40 turns float rounding (another summation order) into
    # ~2e-6 on weights of ~0.1.
    one, other = load_file(a), load_file(b)
    assert one.keys() == other.keys() and one
    for name in one:
        torch.testing.assert_close(other[name], one[name], rtol=1e-4, atol=atol, msg=name)
    return one


def assert_sane_and_equal(ddp: list[dict], fsdp: list[dict], keys: tuple[str, ...], scores: tuple[float, float]) -> None:
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [1, 2]
    for one, other in zip(ddp, fsdp):
        assert scores[0] <= other["reward_score"] <= scores[1] and other["response_length"] > 0
        for key in keys:
            assert other[key] == pytest.approx(one[key], rel=1e-3, abs=1e-5), key


def test_ppo_under_fsdp2_matches_data_parallel(world, tmp_path):  # noqa: F811
    """The paper's roles: the value model starts from the reward model's LoRA, and the frozen reward
    model scores on the same (sharded) value base."""
    from vlm_rlaif.models import LoraSettings, load_adapter_model

    save_random_reward_model(world, tmp_path / "rm", LoraSettings(r=8, alpha=16))
    sections = {"ppo": {"max_iterations": 2, "save_every": 1}, "reward": {"model": str(tmp_path / "rm"), "value_init": "reward_model"}}
    ddp_config = ppo_config(world, tmp_path / "ppo-ddp", **sections)
    fsdp_config = ppo_config(world, tmp_path / "ppo-fsdp", **sections)
    ddp = launch(tmp_path, "ppo", ddp_config, sharded=False, port=29541)
    assert ddp.returncode == 0, failure(ddp)
    fsdp = launch(tmp_path, "ppo", fsdp_config, sharded=True, port=29542)
    assert fsdp.returncode == 0, failure(fsdp)
    assert "expected memory per GPU (FSDP2 over 2 processes)" in fsdp.stdout

    ddp_out, fsdp_out = Path(ddp_config.out), Path(fsdp_config.out)
    ranks = [json.loads((fsdp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["sharded"] for r in ranks)
    assert not json.loads((ddp_out / "rank0.json").read_text())["sharded"]
    # The sharded initialisation's model and optimizer were dropped: the checkpoint holds PPO's root only.
    checkpoint = fsdp_out / "checkpoints" / "iter_00000002"
    assert sorted(p.name for p in checkpoint.iterdir() if p.is_dir()) == ["optimizer_0", "pytorch_model_fsdp_0"]
    # The policy initialisation ran sharded too and saved its adapter from the consolidated weights.
    assert_same_tensors(ddp_out / "policy_init" / "adapter" / "adapter_model.safetensors",
                        fsdp_out / "policy_init" / "adapter" / "adapter_model.safetensors")
    assert_sane_and_equal(metrics(ddp_out), metrics(fsdp_out),
                          ("reward_score", "response_length", "kl", "value_loss", "policy_loss", "entropy"),
                          (-100.0, 100.0))
    adapter = assert_same_tensors(ddp_out / "policy_adapter" / "adapter_model.safetensors",
                                  fsdp_out / "policy_adapter" / "adapter_model.safetensors")
    assert_same_tensors(ddp_out / "value" / "lora" / "adapter_model.safetensors",
                        fsdp_out / "value" / "lora" / "adapter_model.safetensors")
    head = assert_same_tensors(ddp_out / "value" / "scalar_head.safetensors", fsdp_out / "value" / "scalar_head.safetensors")
    assert any(bool(v.abs().sum() > 0) for v in head.values())  # the zero-initialised head trained
    initial = load_file(fsdp_out / "policy_init" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(adapter[k], initial[k]) for k in adapter)  # PPO moved the policy

    # What a rollout server would load after the last update: gathered from the shards, on every process.
    final = load_file(fsdp_out / "policy_adapter" / "adapter_model.safetensors")
    for r in (0, 1):
        served = load_file(fsdp_out / f"served_rank{r}" / "adapter_model.safetensors")
        assert served.keys() == final.keys()
        for name, value in final.items():
            torch.testing.assert_close(served[name], value, rtol=0, atol=0, msg=name)

    # Sampling kept each unit's full parameters for the whole generation: one all-gather per unit,
    # however many tokens (responses of several tokens, processes stopping at different lengths).
    for rank in ranks:
        assert len(rank["generations"]) == 2
        for gathered, units, longest in rank["generations"]:
            assert units > 2 and gathered == units and longest > 1

    # The vision path: every loss forward (with grad) spliced the cached video features, on both bases.
    for rank in ranks:
        assert rank["loss_calls"]
        for policy_counts, value_counts in rank["loss_calls"]:
            assert policy_counts[0] > 0 and policy_counts[1] > 0 and policy_counts[2]
            assert value_counts[0] > 0 and value_counts[1] > 0

    # The saved adapter loads with the usual loader.
    lm = load_adapter_model(world / "sft_model")
    lm.load_lora(fsdp_out / "policy_adapter", "policy")
    assert lm.adapter_names == ["policy"]


def test_grpo_under_fsdp2_killed_and_resumed_matches_data_parallel(world, tmp_path):  # noqa: F811
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_MODULE)
    sections = {"grpo": {"max_iterations": 2, "save_every": 1}, "init": {"enabled": False}}
    ddp_config = grpo_config(world, tmp_path / "grpo-ddp", **sections)
    fsdp_config = grpo_config(world, tmp_path / "grpo-fsdp", **sections)
    ddp = launch(tmp_path, "grpo", ddp_config, sharded=False, port=29543)
    assert ddp.returncode == 0, failure(ddp)

    # 8 rollouts per process per iteration: the 12th reward call is in iteration 2, after checkpoint 1.
    fsdp_out = Path(fsdp_config.out)
    killed = launch(tmp_path, "grpo", fsdp_config, sharded=True, port=29544, env={"GRPO_KILL_AT_CALL": "12"})
    assert killed.returncode != 0
    checkpoint = fsdp_out / "checkpoints" / "iter_00000001"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "trainable.safetensors").exists() and not (fsdp_out / "policy_adapter").exists()
    resumed = launch(tmp_path, "grpo", fsdp_config, sharded=True, port=29545)
    assert resumed.returncode == 0, failure(resumed)
    assert "expected memory per GPU (FSDP2 over 2 processes)" in resumed.stdout

    ddp_out = Path(ddp_config.out)
    ranks = [json.loads((fsdp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["sharded"] and r["resumed_from"] == 1 for r in ranks)
    assert all(counts[0][0] > 0 and counts[0][1] > 0 and counts[0][2] for r in ranks for counts in r["loss_calls"])
    assert_sane_and_equal(metrics(ddp_out), metrics(fsdp_out), ("reward_score", "response_length", "kl", "rewards_none"), (0.0, 1.0))
    assert_same_tensors(ddp_out / "policy_adapter" / "adapter_model.safetensors",
                        fsdp_out / "policy_adapter" / "adapter_model.safetensors")

    from vlm_rlaif.models import load_adapter_model

    lm = load_adapter_model(world / "sft_model")
    lm.load_lora(fsdp_out / "policy_adapter", "policy")
    assert lm.adapter_names == ["policy"]


def test_grpo_on_fixed_answers_under_fsdp2_matches_one_process(world, tmp_path):  # noqa: F811
    """With the answers fixed (an engine that does not sample), token-level normalisation and one
    minibatch per iteration, the update does not depend on how the rollouts are split over
    processes: 2 sharded processes end with one process's weights."""
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_MODULE)
    sections = {"init": {"enabled": False}, "grpo": {
        "max_iterations": 2, "prompts_per_iteration": 4, "group_size": 4, "minibatch_size": 16, "micro_batch_size": 4,
        "loss_normalization": "token", "kl_coef": 0.04}}
    outs = {}
    for name, processes in (("single", 1), ("fsdp", 2)):
        config = grpo_config(world, tmp_path / f"fixed-{name}", **sections)
        done = launch(tmp_path, "grpo", config, sharded=processes == 2, port=29546, processes=processes,
                      env={"FIXED_ANSWERS": "1"})
        assert done.returncode == 0, failure(done)
        outs[name] = Path(config.out)
    assert json.loads((outs["fsdp"] / "rank1.json").read_text())["sharded"]
    single, fsdp = metrics(outs["single"]), metrics(outs["fsdp"])
    for one, other in zip(single, fsdp):
        for key in ("reward_score", "rewards_none", "kl", "approx_kl", "grad_norm"):
            assert other[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert single[1]["kl"] > 0  # the policy moved away from its reference in iteration 1
    # 1 process sums the micro-batches in another order than 2: the gradient norms agree to ~1e-7,
    # but AdamW's first steps move a weight by about lr = 3e-3 whatever its gradient's
    # size, which turns that rounding into up to ~5e-5 where a gradient is near 0. The LoRA B
    # matrices start at 0: the largest moved by ~5e-3.
    adapter = assert_same_tensors(outs["single"] / "policy_adapter" / "adapter_model.safetensors",
                                  outs["fsdp"] / "policy_adapter" / "adapter_model.safetensors", atol=1e-4)
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 3e-3


def test_grpo_full_fine_tuning_under_fsdp2_keeps_a_whole_reference_and_matches_data_parallel(world, tmp_path):  # noqa: F811
    """Full fine-tuning: the language model sharded, the frozen reference a whole copy on each process."""
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_MODULE)
    sections = {"policy": {"finetune": "full"}, "init": {"enabled": False},
                "grpo": {"max_iterations": 2, "prompts_per_iteration": 2, "lr": 1e-3}}
    outs = {}
    for name, sharded in (("ddp", False), ("fsdp", True)):
        config = grpo_config(world, tmp_path / f"full-{name}", **sections)
        done = launch(tmp_path, "grpo", config, sharded=sharded, port=29547 + sharded)
        assert done.returncode == 0, failure(done)
        outs[name] = Path(config.out)
    assert json.loads((outs["fsdp"] / "rank0.json").read_text())["sharded"]
    ddp, fsdp = metrics(outs["ddp"]), metrics(outs["fsdp"])
    assert_sane_and_equal(ddp, fsdp, ("reward_score", "response_length", "kl"), (0.0, 1.0))
    assert fsdp[0]["kl"] == pytest.approx(0.0, abs=1e-6) and fsdp[1]["kl"] > 0  # the copy stayed behind
    tuned = assert_same_tensors(outs["ddp"] / "policy_model" / "model.safetensors",
                                outs["fsdp"] / "policy_model" / "model.safetensors")
    sft = load_file(world / "sft_model" / "model.safetensors")
    assert any(not torch.equal(tuned[k], sft[k]) for k in sft)

    from vlm_rlaif.models import load_adapter_model

    assert load_adapter_model(outs["fsdp"] / "policy_model").family == "llava-video"
