"""GRPO on tiny models (on test_ppo's world): group advantages and the loss against hand-computed
values, the video in the loss forward, a known reward that rises with None rewards dropped and
counted, resume after a kill, two processes, the reward components, the pipeline's grpo stage."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_ppo import FRAMES, SMALL_LORA, prompts_of, world  # noqa: F401  (world: the shared fixture)

from vlm_rlaif.config import from_dict, to_dict
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models import FeatureCache, LoraSettings, VideoExample, count_visual_calls, load_adapter_model
from vlm_rlaif.reward import prompt_example
from vlm_rlaif.train.grpo import GRPOConfig, GRPOSettings, GRPOTrainer, group_advantages, run_grpo, token_losses
from vlm_rlaif.train.ppo_setup import POLICY, REFERENCE, Prompt
from vlm_rlaif.train.rewards import RewardSpec, build_rewards, multiple_choice_reward

REWARD_MODULE = '''
import os, signal
CALLS = [0]

def says_red(record, text):
    CALLS[0] += 1
    if CALLS[0] == int(os.environ.get("GRPO_KILL_AT_CALL", "0")):  # mid-iteration, after a checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    if record["id"].endswith("_3"):
        return None  # abstains: every 4th prompt's responses have no reward
    return float("red" in text)
'''


@pytest.fixture()
def reward_module(tmp_path, monkeypatch) -> Path:
    """tmp_path/grpo_test_rewards.py importable (here and in subprocesses through PYTHONPATH)."""
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("grpo_test_rewards", None)  # a fresh call counter per test
    return tmp_path


def grpo_config(world: Path, out: Path, **sections) -> GRPOConfig:
    data = {
        "out": str(out),
        "policy": {"model": str(world / "sft_model"), "lora": SMALL_LORA},
        "init": {"train": {"batch_size": 4, "lr": 3e-3, "save_every": 0}},
        "rewards": [{"kind": "python", "function": "grpo_test_rewards:says_red"}],
        "data": {"root": str(world)},
        "grpo": {
            "prompts_per_iteration": 4, "group_size": 4, "minibatch_size": 8, "micro_batch_size": 4,
            "forward_batch_size": 16, "generation_batch_size": 16, "max_new_tokens": 12, "lr": 3e-3,
            "save_every": 0, "kl_coef": 0.04,
        },
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_dict(GRPOConfig, data)


def build_trainer(world: Path, rewards, *, settings: dict | None = None, cache=None) -> GRPOTrainer:
    """A policy whose LoRA B is random (so it differs from the base) with the same weights as its
    reference adapter."""
    policy = load_adapter_model(world / "sft_model")
    policy.feature_cache = cache if cache is not None else FeatureCache()
    torch.manual_seed(1)
    policy.add_lora(POLICY, LoraSettings(**SMALL_LORA))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    policy.save_lora(world / "tmp_grpo_adapter", POLICY)
    policy.load_lora(world / "tmp_grpo_adapter", REFERENCE)
    policy.set_adapter(POLICY)
    defaults = dict(prompts_per_iteration=2, group_size=4, minibatch_size=8, micro_batch_size=4, max_new_tokens=10)
    return GRPOTrainer(policy, rewards, GRPOSettings(**{**defaults, **(settings or {})}))


def red_rewards(prompts, examples, texts):
    return [float("red" in t) for t in texts], {}


def prompt_records(world: Path, count: int) -> list[Prompt]:
    from vlm_rlaif.train.ppo_setup import read_prompts

    return read_prompts(world / "rl" / "prompts.json", world, load_adapter_model(world / "sft_model"), 128)[0][:count]


def test_group_advantages_match_hand_computed_values():
    rewards = [1.0, 2.0, 3.0, None,  # valid 1, 2, 3: mean 2, sample std 1
               5.0, 5.0, 5.0, 5.0,  # no spread: no signal
               None, None, 2.0, None,  # one valid reward: std undefined, advantage 0
               0.0, 1.0, 1.0, 1.0]  # mean 0.75, sample std sqrt(0.75 / 3) = 0.5
    advantages, valid = group_advantages(rewards, 4, scale=True)
    eps = 1e-4
    expected = [-1 / (1 + eps), 0.0, 1 / (1 + eps), 0.0, 0, 0, 0, 0, 0, 0, 0, 0,
                -0.75 / (0.5 + eps), 0.25 / (0.5 + eps), 0.25 / (0.5 + eps), 0.25 / (0.5 + eps)]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert valid.tolist() == [r is not None for r in rewards]
    unscaled, _ = group_advantages(rewards, 4, scale=False)  # Dr. GRPO: the mean only
    assert unscaled.tolist() == pytest.approx([-1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.75, 0.25, 0.25, 0.25])


def test_token_losses_match_hand_computed_values():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    old = torch.tensor([[-1.0, -1.5], [-0.5, 0.0]])
    ref = torch.tensor([[-1.2, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    advantages = torch.tensor([2.0, -1.0])
    losses, sums = token_losses(logprobs, old, ref, advantages, mask, clip_range=0.2, kl_coef=0.5)
    rho = math.exp(-0.5)  # token (0, 1): clipped to 0.8; min(rho A, 0.8 A) = rho A for A = 2 > 0
    k3 = math.exp(-0.2) + 0.2 - 1  # token (0, 0): exp(ref - logp) - (ref - logp) - 1
    expected = [-2.0 + 0.5 * k3, -rho * 2.0, 1.0, 0.0]  # the masked-out token is 0
    assert losses.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert sums["clip_fraction"].item() == 0.0  # the unclipped term is the smaller one there
    assert sums["kl_per_token"].item() == pytest.approx(k3, abs=1e-6)


def test_loss_normalisation_sequence_and_token(world):
    trainer = build_trainer(world, red_rewards)
    examples = prompts_of(world, trainer.policy, 2)
    rollouts = trainer.rollouts(prompt_records(world, 2), examples, 0)
    rollouts.advantages = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.0, 2.0, -0.5])
    rollouts.valid[3] = False  # a None reward: out of the loss
    lengths = rollouts.mask.sum(dim=1).float()
    valid = rollouts.valid
    members = list(range(8))
    # ratio 1 (old = current policy) and no KL (reference = policy): each token's loss is -A.
    with torch.no_grad():
        loss, _ = trainer.loss(rollouts, members, denominator=float(valid.sum()))
        assert loss.item() == pytest.approx(-(rollouts.advantages * valid).sum().item() / valid.sum().item(), abs=1e-5)
        trainer.settings.loss_normalization = "token"
        tokens = (lengths * valid).sum().item()
        loss, _ = trainer.loss(rollouts, members, denominator=tokens)
        assert loss.item() == pytest.approx(-(rollouts.advantages * lengths * valid).sum().item() / tokens, abs=1e-5)


def test_video_reaches_the_loss_forward_through_the_cache(world):
    cache = FeatureCache()
    trainer = build_trainer(world, red_rewards, cache=cache)
    examples = prompts_of(world, trainer.policy, 2)
    prompts = prompt_records(world, 2)
    with count_visual_calls(trainer.policy) as rollout_calls:
        rollouts = trainer.rollouts(prompts, examples, 0)
    assert rollout_calls.with_grad == 0 and rollout_calls.calls_without_grad["vision_tower"] > 0
    with count_visual_calls(trainer.policy) as loss_calls:
        trainer.loss(rollouts, [0, 1, 4, 5], denominator=4.0)[0].backward()
    # The grad-enabled forward splices the video, read from the cache (the tower does not run again).
    assert loss_calls.calls_with_grad["splice"] > 0 and loss_calls.video_forwards_with_grad > 0
    assert loss_calls.calls_with_grad["vision_tower"] == 0
    assert cache.misses == len({e.video_key for e in examples})  # each video encoded once, for 8 rollouts

    blind = [VideoExample(e.conversation) for e in examples]  # the counts above could have been zero
    with count_visual_calls(trainer.policy) as blind_calls:
        blind_rollouts = trainer.rollouts(prompts, blind, 1)
        trainer.loss(blind_rollouts, [0, 1], denominator=2.0)[0].backward()
    assert blind_calls.with_grad == 0 and sum(blind_calls.calls_without_grad.values()) == 0


def test_known_reward_rises_and_none_rewards_are_counted(world, tmp_path, reward_module):
    from vlm_rlaif.train.rollouts import plan_prompts

    config = grpo_config(world, tmp_path / "grpo", grpo={"epochs": 2, "max_iterations": 6})
    summary = run_grpo(config)
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and summary["iterations"] == 6
    rewards = [r["reward_score"] for r in rows]
    assert np.mean(rewards[-2:]) >= np.mean(rewards[:2]) + 0.2, rewards
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0.0  # starts as the reference

    # Every response to a prompt whose id ends in _3 had a None reward: dropped and counted.
    ids = [p["id"] for p in json.loads((world / "rl" / "prompts.json").read_text())]
    plan = plan_prompts(16, 4, epochs=2, max_iterations=6, seed=0, key="k")
    expected = [4 * sum(ids[i].endswith("_3") for i in batch) for batch in plan]
    assert [r["rewards_none"] for r in rows] == expected and summary["rewards_none"] == sum(expected) > 0
    for key in ("reward_python", "reward_python_none", "groups_without_signal", "clip_fraction", "approx_kl",
                "entropy", "tokens_per_s", "lr", "grad_norm", "response_length"):
        assert key in rows[-1], key
    samples = [json.loads(line) for line in (tmp_path / "grpo" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 4 and len({s["id"] for s in samples if s["iteration"] == 1}) == 1  # one group
    assert summary["init"]["trained"] and Path(summary["policy_adapter"]).is_dir()


KILL_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from vlm_rlaif.config import from_dict
from vlm_rlaif.train.grpo import GRPOConfig, run_grpo

run_grpo(from_dict(GRPOConfig, json.loads(open(sys.argv[1]).read())))
"""


def test_resume_after_kill_gives_the_uninterrupted_result(world, tmp_path, reward_module):
    sections = {"grpo": {"save_every": 1, "keep_checkpoints": 1}}  # 16 prompts / 4 = 4 iterations
    straight = run_grpo(grpo_config(world, tmp_path / "straight", **sections))

    config = grpo_config(world, tmp_path / "killed", **sections)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))
    (tmp_path / "kill_run.py").write_text(KILL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRPO_KILL_AT_CALL": str(2 * 16 + 5),
           "PYTHONPATH": os.pathsep.join([str(reward_module), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run([sys.executable, str(tmp_path / "kill_run.py"), str(tmp_path / "config.json")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["iter_00000002"]

    resumed = run_grpo(config)
    assert resumed["resumed_from_iteration"] == 2 and resumed["iterations"] == 4
    a = load_file(Path(straight["policy_adapter"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["policy_adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [(r["reward_score"], r["rewards_none"]) for r in rows] == [(r["reward_score"], r["rewards_none"]) for r in first]


DDP_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from vlm_rlaif.config import from_dict
from vlm_rlaif.train import grpo

config = from_dict(grpo.GRPOConfig, json.loads(open(sys.argv[1]).read()))
seen = {"prompts": [], "trainer": None}
iteration = grpo.GRPOTrainer.iteration

def recording_iteration(self, prompts, examples, number):
    seen["trainer"] = self
    seen["prompts"].append(len(prompts))
    return iteration(self, prompts, examples, number)

grpo.GRPOTrainer.iteration = recording_iteration
summary = grpo.run_grpo(config)
trainer = seen["trainer"]
save_file({k: p.detach().contiguous() for k, p in trainer.named_parameters.items()}, f"{config.out}/rank{trainer.rank}.safetensors")
info = {"world": trainer.world, "prompts": seen["prompts"], "iterations": summary["iterations"]}
open(f"{config.out}/rank{trainer.rank}.json", "w").write(json.dumps(info))
"""


def test_two_processes_share_the_prompts_and_stay_in_sync(world, tmp_path, reward_module):
    # Token-level normalisation: each minibatch's denominator counts both processes' tokens.
    config = grpo_config(world, tmp_path / "ddp", grpo={"max_iterations": 2, "loss_normalization": "token"})
    (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))
    (tmp_path / "ddp_run.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(reward_module), os.environ.get("PYTHONPATH", "")])}
    # `--multi_gpu` launches through torchrun; without a GPU the processes run on the CPU with gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534"]
    process = subprocess.run([*launch, str(tmp_path / "ddp_run.py"), str(tmp_path / "config.json")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["prompts"] for r in ranks] == [[2, 2], [2, 2]]
    weights = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks disagree on {name}"
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rollouts"] == 16 for r in rows)  # both ranks' groups


def test_rewards_weighted_sum_judge_and_multiple_choice(world, tmp_path, reward_module, fake_openai_server):
    """A python reward and a judge behind an OpenAI-compatible server, weighted; the judge's
    unparseable reply is a None reward (the sum is None too)."""
    server = fake_openai_server
    replies = {"The circle is red.": "{'score': 5}", "The circle is blue.": "{'score': 1}", "red?": "no idea"}
    server.reply = lambda request: replies[request["messages"][0]["content"][-1]["text"].split("Answer: ")[1].split("\n")[0]]
    specs = [from_dict(RewardSpec, {"kind": "python", "function": "grpo_test_rewards:says_red", "weight": 2.0}),
             from_dict(RewardSpec, {"kind": "judge", "weight": 0.5, "judge": {
                 "base_url": server.url, "model": "judge", "api_key_env": None, "max_invalid_retries": 0, "max_frames": 2}})]
    rewards = build_rewards(specs, accelerator=None, runtime=None, cache=None, batch_size=4, out=tmp_path)
    prompts = prompt_records(world, 3)
    frames = np.zeros((FRAMES, 32, 32, 3), dtype=np.uint8)
    examples = [prompt_example(p.question, frames) for p in prompts]
    texts = ["The circle is red.", "The circle is blue.", "red?"]
    totals, parts = rewards(prompts, examples, texts)
    assert parts == {"python": [1.0, 0.0, 1.0], "judge": [1.0, 0.2, None]}
    assert totals[:2] == pytest.approx([2 * 1.0 + 0.5 * 1.0, 2 * 0.0 + 0.5 * 0.2]) and totals[2] is None
    assert sum(part["type"] == "image_url" for part in server.requests[0]["messages"][0]["content"]) == 2  # the video

    assert multiple_choice_reward("(B) blue", ["red", "blue"], "blue", "x") == 1.0
    assert multiple_choice_reward("A", ["red", "blue"], "B", "x") == 0.0
    assert multiple_choice_reward("red or blue", ["red", "blue"], "blue", "x") == 0.0  # no option picked
    with pytest.raises(ConfigError, match="module:function"):
        RewardSpec(kind="python", function="no_colon")
    with pytest.raises(ConfigError, match="rewards is empty"):
        from_dict(GRPOConfig, {"policy": {"model": "m"}})
    with pytest.raises(ConfigError, match="group of one"):
        GRPOSettings(group_size=1)


def test_cli_and_pipeline_run_feedback_rm_grpo_eval(monkeypatch):
    from vlm_rlaif import pipeline
    from vlm_rlaif.cli import build_parser
    from vlm_rlaif.eval.config import EvalConfig

    assert "grpo" in build_parser().format_help()
    recipe = pipeline.Recipe(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml", {"run_dir": "/r"}, {})
    seen = {}

    def fake_runner(name):
        def run(recipe, settings, redo):
            seen[name] = recipe.load(EvalConfig, "eval") if name == "eval" else recipe.load(GRPOConfig, "grpo")
            return Path("/r") / name, "ran", {}
        return run

    monkeypatch.setattr(pipeline, "check_stage_inputs", lambda *args: None)
    for name in ("feedback", "rm", "grpo", "eval"):
        monkeypatch.setitem(pipeline._RUNNERS, name, fake_runner(name))
    results = pipeline.run_pipeline(recipe, only=["feedback", "rm", "grpo", "eval"])
    assert [r.name for r in results] == ["feedback", "rm", "grpo", "eval"]
    assert seen["grpo"].rewards[0].model == "/r/rm"  # the RM stage's output is the reward
    assert [m.lora for m in seen["eval"].models] == [None, "/r/grpo/policy_init/adapter", "/r/grpo/policy_adapter"]
    assert "grpo" not in pipeline.PipelineSettings().stages  # the default (and the demo) keeps PPO


def test_oracle_reward_verifies_short_answers_and_skips_or_grades_descriptions(tmp_path):
    from vlm_rlaif.toyworld import ToyWorldConfig, generate
    from vlm_rlaif.train.data import read_instruction_file

    world_dir = tmp_path / "world"
    generate(ToyWorldConfig(seed=7), world_dir, 12, workers=1)
    records = {name: read_instruction_file(world_dir / "sft" / f"{name}.json")[:6] for name in ("SFT_short", "SFT_long")}
    prompts = {name: [Prompt(s.record.id, s.record.question, s) for s in sourced] for name, sourced in records.items()}
    answers = {name: [s.record.answer for s in sourced] for name, sourced in records.items()}

    def score(descriptions: str, name: str, texts: list[str]) -> list:
        spec = RewardSpec(kind="oracle", toy_dir=str(world_dir), descriptions=descriptions)
        return build_rewards([spec], accelerator=None, runtime=None, cache=None, batch_size=1, out=tmp_path)(
            prompts[name], [None] * len(texts), texts)[0]

    assert score("none", "SFT_short", answers["SFT_short"]) == [1.0] * 6  # the world's own answers are right
    assert score("none", "SFT_short", ["I cannot tell."] * 6) == [0.0] * 6
    assert score("none", "SFT_long", answers["SFT_long"]) == [None] * 6  # no verifiable answer: dropped
    graded = score("quality", "SFT_long", answers["SFT_long"])
    assert all(0.6 <= g <= 1.0 for g in graded)  # correct: the oracle's quality rule gives 3-5, / 5
