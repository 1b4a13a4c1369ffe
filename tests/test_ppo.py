"""PPO on tiny models: log-prob and value alignment, zero KL and zero policy gradient at the
reference, the video in every pass, a known reward that rises, the reward model as reward and value
initialisation, two processes, full fine-tuning, resume after a kill."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlm_rlaif.config import from_dict
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models import (
    FeatureCache,
    LoraSettings,
    ScalarHead,
    ScalarModel,
    VideoExample,
    build_tiny_model,
    count_visual_calls,
    load_adapter_model,
    train_tokenizer,
)
from vlm_rlaif.rollout import make_engine, vllm_available
from vlm_rlaif.train.ppo import (
    POLICY,
    REFERENCE,
    VALUE,
    PPOConfig,
    PPOSettings,
    PPOTrainer,
    lr_multiplier,
    prompt_plan,
    run_ppo,
)
from vlm_rlaif.train.ppo_setup import load_value_and_reward, prompt_examples, read_prompts
from vlm_rlaif.video import write_video

QUESTION = "What colour is the circle?"
ANSWERS = ["The circle is red.", "The circle is blue."]
FRAMES = 4
SMALL_LORA = {"r": 8, "alpha": 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """4 videos, 16 RL prompts (rl/prompts.json) and the same prompts with reference answers half
    "red", half "blue" (rl/PPO_init.json), and an SFT model that answers either (sft_model/)."""
    root = tmp_path_factory.mktemp("ppo_world")
    rng = np.random.default_rng(0)
    prompts, init = [], []
    for v in range(4):
        write_video(rng.integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8), root / "videos" / f"v{v}.mp4")
        for k in range(4):
            human = {"from": "human", "value": "<video>\n" + QUESTION}
            prompts.append({"id": f"v{v}_{k}", "video": f"videos/v{v}.mp4", "conversations": [human]})
            answer = {"from": "gpt", "value": ANSWERS[(v + k) % 2]}
            init.append({"id": f"v{v}_{k}", "video": f"videos/v{v}.mp4", "conversations": [human, answer]})
    (root / "rl").mkdir()
    (root / "rl" / "prompts.json").write_text(json.dumps(prompts))
    (root / "rl" / "PPO_init.json").write_text(json.dumps(init))

    torch.manual_seed(0)
    tokenizer = train_tokenizer([QUESTION, *ANSWERS] * 20, vocab_size=500)
    lm = build_tiny_model("tiny", tokenizer, frames=FRAMES, seed=0)
    lm.set_trainable(language_model=True)
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=3e-3)
    video = rng.integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8)
    examples = [VideoExample([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": a}], video, "sft") for a in ANSWERS]
    for _ in range(120):  # until it answers "The circle is red." or "... blue." about equally often
        lm.forward(lm.collate(examples, visual="features")).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lm.model.requires_grad_(False)
    lm.save(root / "sft_model")
    return root


def save_random_reward_model(world: Path, out: Path, lora: LoraSettings):
    """A reward model on the world's SFT model whose LoRA and head are random (not zero), so that
    it scores answers differently; saved to out. Returns (its language model, the reward model)."""
    from vlm_rlaif.reward import RewardModel

    rm_lm = load_adapter_model(world / "sft_model")
    torch.manual_seed(2)
    reward_model = RewardModel.create(rm_lm, lora, base_model=world / "sft_model")
    with torch.no_grad():
        for name, p in rm_lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        reward_model.head.linear.weight.normal_(0, 0.5)
    reward_model.save(out)
    return rm_lm, reward_model


def ppo_config(world: Path, out: Path, **sections) -> PPOConfig:
    data = {
        "out": str(out),
        "policy": {"model": str(world / "sft_model"), "lora": SMALL_LORA},
        "init": {"train": {"batch_size": 4, "lr": 3e-3, "save_every": 0}},
        "reward": {"value_init": "fresh", "value_lora": SMALL_LORA},
        "data": {"root": str(world)},
        "ppo": {
            "rollout_batch_size": 8, "minibatch_size": 4, "micro_batch_size": 2, "forward_batch_size": 8,
            "generation_batch_size": 8, "max_new_tokens": 12, "lr": 3e-3, "warmup_iterations": 0,
            "no_eos_penalty": 0.0, "length_penalty": 0.0, "save_every": 0,
        },
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_dict(PPOConfig, data)


def says_red(examples, texts):
    return torch.tensor([float("red" in t) for t in texts])


def zero_reward(examples, texts):
    return torch.zeros(len(texts))


def prompts_of(world: Path, lm, count: int, store_frames: int = FRAMES) -> list[VideoExample]:
    from vlm_rlaif.data.frames import FrameSampling, FrameStore

    store = FrameStore(world, FrameSampling(num_frames=store_frames))
    prompts, _ = read_prompts(world / "rl" / "prompts.json", world, lm, 128)
    return prompt_examples(prompts[:count], store)


def build_trainer(world: Path, reward_fn, *, same_reference: bool, settings: dict | None = None, cache=None):
    """Policy (LoRA with random B so it differs from the base) and value on two bases of the SFT model."""
    cache = cache if cache is not None else FeatureCache()
    policy = load_adapter_model(world / "sft_model")
    policy.feature_cache = cache
    torch.manual_seed(1)
    policy.add_lora(POLICY, LoraSettings(**SMALL_LORA))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    if same_reference:
        policy.save_lora(world / "tmp_policy_adapter", POLICY)
        policy.load_lora(world / "tmp_policy_adapter", REFERENCE)
        policy.set_adapter(POLICY)
    value_lm = load_adapter_model(world / "sft_model")
    value_lm.feature_cache = cache
    value_lm.add_lora(VALUE, LoraSettings(**SMALL_LORA))
    value = ScalarModel(value_lm, ScalarHead(value_lm.hidden_size, zero_init=True), lora_name=VALUE)
    defaults = dict(rollout_batch_size=4, minibatch_size=2, micro_batch_size=2, max_new_tokens=10,
                    no_eos_penalty=0.0, length_penalty=0.0, warmup_iterations=0)
    return PPOTrainer(policy, value, reward_fn, PPOSettings(**{**defaults, **(settings or {})}))


def policy_grads(trainer) -> list[torch.Tensor]:
    return [p.grad for name, p in trainer.named_parameters.items() if name.startswith("policy.") and p.grad is not None]


def test_kl_and_policy_gradient_are_zero_when_policy_equals_reference(world):
    trainer = build_trainer(world, zero_reward, same_reference=True)
    examples = prompts_of(world, trainer.policy, 4)
    rollouts = trainer.score_rollouts(examples, trainer.generate(examples, 0))
    assert torch.equal(rollouts.logprobs, rollouts.ref_logprobs)  # the same adapter weights, bitwise
    for estimator in ("clamped", "k1", "k3"):
        trainer.settings.kl_estimator = estimator
        trainer.compute_advantages(rollouts)
        assert torch.count_nonzero(rollouts.kl) == 0
        assert torch.count_nonzero(rollouts.rewards) == 0 and torch.count_nonzero(rollouts.advantages) == 0
    loss, stats = trainer.loss(rollouts, [0, 1, 2, 3])
    loss.backward()
    assert stats["approx_kl"] == 0.0 and stats["clip_fraction"] == 0.0  # old and new log-probs agree
    grads = policy_grads(trainer)
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)

    # The same rollouts with a reward that tells answers apart: now the gradient is not zero.
    trainer.optimizer.zero_grad(set_to_none=True)
    rollouts.scores = says_red(None, [g.text for g in rollouts.generations])
    assert 0 < rollouts.scores.sum() < 4, "the sampled answers should differ for this check"
    trainer.compute_advantages(rollouts)
    trainer.loss(rollouts, [0, 1, 2, 3])[0].backward()
    assert any(torch.count_nonzero(g) > 0 for g in policy_grads(trainer))


@torch.no_grad()
def test_logprobs_and_values_align_with_an_unpadded_forward(world):
    trainer = build_trainer(world, zero_reward, same_reference=False)
    trainer.value.head.linear.weight.normal_()  # a zero head would make every value trivially 0
    examples = prompts_of(world, trainer.policy, 3)
    responses = [[5, 6, 7, 8], [9], [10, 11]]  # different lengths: right padding inside the batch
    batch = trainer.policy.collate_with_responses(examples, responses)
    logprobs, _ = trainer.policy_logprobs(trainer.policy, batch)
    values = trainer.values(examples, responses)
    for row, (example, response) in enumerate(zip(examples, responses)):
        prompt = trainer.policy.collate([example], add_generation_prompt=True)  # one row: no padding
        width = prompt["input_ids"].shape[1]
        alone = dict(prompt, input_ids=torch.cat([prompt["input_ids"], torch.tensor([response])], dim=1))
        alone["attention_mask"] = torch.ones_like(alone["input_ids"])
        alone["position_ids"] = torch.arange(alone["input_ids"].shape[1]).unsqueeze(0)
        trainer.policy.set_adapter(POLICY)
        log_softmax = torch.log_softmax(trainer.policy.forward(alone).logits[0].float(), dim=-1)
        trainer.value.lm.set_adapter(VALUE)
        head = trainer.value.head(trainer.value.lm.hidden_states(alone)[0])
        for t, token in enumerate(response):  # position width - 1 + t predicts response token t
            assert logprobs[row, t].item() == pytest.approx(log_softmax[width - 1 + t, token].item(), abs=1e-4)
            assert values[row, t].item() == pytest.approx(head[width - 1 + t].item(), abs=1e-4)
            assert values[row, t].item() != pytest.approx(head[width + t].item(), abs=1e-4)  # not off by one
        assert torch.count_nonzero(logprobs[row, len(response) :]) == 0 and torch.count_nonzero(values[row, len(response) :]) == 0


def test_video_reaches_every_pass_and_is_encoded_once(world):
    from vlm_rlaif.reward import RewardModel

    cache = FeatureCache()
    trainer = build_trainer(world, None, same_reference=False, cache=cache)
    value_lm = trainer.value.lm
    reward_model = RewardModel.create(value_lm, LoraSettings(**SMALL_LORA))  # the frozen RM on the value base
    trainer.reward_fn = lambda examples, texts: reward_model.score(examples, texts)
    value_lm.set_adapter(VALUE)
    examples = prompts_of(world, trainer.policy, 4)
    videos = len({e.video_key for e in examples})

    with count_visual_calls(trainer.policy) as rollout_calls:
        generations = trainer.generate(examples, 0)
    responses = [g.token_ids for g in generations]
    batch = trainer.policy.collate_with_responses(examples, responses)
    with count_visual_calls(trainer.policy) as reference_calls:
        trainer.reference_logprobs(batch)
    with count_visual_calls(value_lm) as value_calls, torch.no_grad():
        trainer.values(examples, responses)
    with count_visual_calls(value_lm) as reward_calls:
        trainer.scores(examples, [g.text for g in generations])
    for counts in (rollout_calls, reference_calls, value_calls, reward_calls):
        assert counts.calls_without_grad["splice"] > 0 and counts.with_grad == 0

    rollouts = trainer.score_rollouts(examples, generations)
    trainer.compute_advantages(rollouts)
    with count_visual_calls(trainer.policy) as policy_calls, count_visual_calls(value_lm) as value_train_calls:
        loss, _ = trainer.loss(rollouts, [0, 1])
        loss.backward()
    assert policy_calls.calls_with_grad["splice"] > 0 and policy_calls.video_forwards_with_grad > 0
    assert value_train_calls.calls_with_grad["splice"] > 0
    # The frozen visual path ran once per video for all those passes on both bases (shared cache).
    assert cache.misses == videos and len(cache) == videos
    assert rollout_calls.calls_without_grad["vision_tower"] > 0 and policy_calls.calls_with_grad["vision_tower"] == 0

    # Without a video no pass splices one: the counts above could have been zero.
    blind = [VideoExample(e.conversation) for e in examples]
    with count_visual_calls(trainer.policy) as blind_calls:
        blind_rollouts = trainer.score_rollouts(blind, trainer.generate(blind, 1))
        trainer.compute_advantages(blind_rollouts)
        trainer.loss(blind_rollouts, [0, 1])[0].backward()
    assert blind_calls.with_grad == 0 and sum(blind_calls.calls_without_grad.values()) == 0


def test_known_reward_rises_with_policy_initialisation(world, tmp_path):
    # 16 rollouts per iteration, 6 iterations: at 8 rollouts the per-iteration mean is too noisy to compare.
    config = ppo_config(world, tmp_path / "ppo", ppo={
        "epochs": 6, "kl_coef": 0.05, "rollout_batch_size": 16, "minibatch_size": 8, "micro_batch_size": 4,
        "forward_batch_size": 16, "generation_batch_size": 16,
    })
    summary = run_ppo(config, reward_fn=says_red)
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and summary["iterations"] == 6
    rewards = [r["reward_score"] for r in rows]
    assert np.mean(rewards[-2:]) >= np.mean(rewards[:2]) + 0.2, rewards
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert rows[-1]["kl"] > 0.0
    for key in ("reward_shaped", "entropy", "clip_fraction", "approx_kl", "value_loss", "explained_variance",
                "response_length", "tokens_per_s", "kl_coef", "lr", "grad_norm"):
        assert key in rows[-1]
    init = summary["init"]
    assert init["trained"] and init["examples"] == 16 and (tmp_path / "ppo" / "policy_init" / "adapter").is_dir()
    samples = [json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 4 and {"question", "response", "score", "reward"} <= set(samples[0])

    # The saved policy adapter, loaded as evaluation loads it, says "red" more often than the SFT model.
    sft = load_adapter_model(world / "sft_model")
    tuned = load_adapter_model(world / "sft_model")
    tuned.load_lora(summary["policy_adapter"], "tuned")
    from vlm_rlaif.models import GenerationSettings

    examples = prompts_of(world, sft, 16)
    sampling = GenerationSettings(max_new_tokens=12, batch_size=16, seed=123)
    red_before = says_red(None, [g.text for g in sft.generate(examples, sampling)]).mean()
    red_after = says_red(None, [g.text for g in tuned.generate(examples, sampling)]).mean()
    assert red_after > red_before, (red_before, red_after)
    assert ScalarModel.load(summary["value"], load_adapter_model(world / "sft_model")).head is not None


def test_reward_model_scores_and_initialises_the_value_model(world, tmp_path):
    from accelerate import Accelerator

    from vlm_rlaif.reward import RewardModel

    rm_lm, reward_model = save_random_reward_model(world, tmp_path / "rm", LoraSettings(**SMALL_LORA))

    config = ppo_config(world, tmp_path / "ppo", reward={"model": str(tmp_path / "rm"), "value_init": "reward_model"})
    policy = load_adapter_model(world / "sft_model")
    value, reward_fn, info = load_value_and_reward(config, policy, Accelerator(cpu=True), FeatureCache(), None)
    lm = value.lm
    assert set(lm.adapter_names) == {"reward", VALUE} and info["reward"] == str(tmp_path / "rm")
    state = dict(lm.model.named_parameters())
    copied = [n for n in state if ".lora_B.value." in n]
    assert copied and all(torch.equal(state[n], state[n.replace(".value.", ".reward.")]) for n in copied)
    assert torch.count_nonzero(value.head.linear.weight) == 0  # a new zero-initialised head

    # PPO's reward is the reward model's score through its own input builder.
    examples = prompts_of(world, policy, 3)
    texts = ["The circle is red.", "The circle is blue.", "red"]
    expected = RewardModel.load(tmp_path / "rm").score(examples, texts)
    torch.testing.assert_close(reward_fn(examples, texts), expected)

    summary = run_ppo(ppo_config(world, tmp_path / "ppo_rm", reward={"model": str(tmp_path / "rm"), "value_init": "reward_model"},
                                 init={"enabled": False}, ppo={"max_iterations": 1}))
    assert summary["iterations"] == 1 and summary["reward"]["reward"] == str(tmp_path / "rm")


def test_restart_before_the_first_checkpoint_logs_each_iteration_once(world, tmp_path):
    class Killed(Exception):
        pass

    config = ppo_config(world, tmp_path / "run", ppo={"epochs": 2, "save_every": 0})  # 4 iterations
    calls = [0]

    def dies_in_iteration_2(examples, texts):
        calls[0] += 1
        if calls[0] == 2:
            raise Killed  # stands in for a kill: nothing is finalised
        return says_red(examples, texts)

    with pytest.raises(Killed):
        run_ppo(config, reward_fn=dies_in_iteration_2)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]

    run_ppo(config, reward_fn=says_red)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    samples = [json.loads(line)["iteration"] for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and samples.count(1) == samples.count(2)


KILL_SCRIPT = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from vlm_rlaif.config import from_dict
from vlm_rlaif.train.ppo import PPOConfig, run_ppo

config = from_dict(PPOConfig, json.loads(open(sys.argv[1]).read()))
calls = [0]

def reward(examples, texts):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):  # mid-iteration, after the previous iteration's checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.tensor([float("red" in t) for t in texts])

run_ppo(config, reward_fn=reward)
"""


def test_resume_after_kill_gives_the_uninterrupted_result(world, tmp_path):
    sections = {"ppo": {"epochs": 2, "save_every": 1, "keep_checkpoints": 1}}  # 2 x 16 prompts / 8 = 4 iterations
    uninterrupted = run_ppo(ppo_config(world, tmp_path / "straight", **sections), reward_fn=says_red)

    config = ppo_config(world, tmp_path / "killed", **sections)
    config_file = tmp_path / "config.json"
    from vlm_rlaif.config import to_dict

    config_file.write_text(json.dumps(to_dict(config)))
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, str(script), str(config_file), "3"], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["iter_00000002"]

    resumed = run_ppo(config, reward_fn=says_red)
    assert resumed["resumed_from_iteration"] == 2 and resumed["iterations"] == 4
    for name in ("adapter_model.safetensors",):
        a = load_file(Path(uninterrupted["policy_adapter"]) / name)
        b = load_file(Path(resumed["policy_adapter"]) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    head_a = load_file(Path(uninterrupted["value"]) / "scalar_head.safetensors")
    head_b = load_file(Path(resumed["value"]) / "scalar_head.safetensors")
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_score"] for r in rows] == [r["reward_score"] for r in straight]
    samples = [json.loads(line)["iteration"] for line in (tmp_path / "killed" / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and samples.count(3) == 4


DDP_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from vlm_rlaif.config import from_dict
from vlm_rlaif.train import ppo

config = from_dict(ppo.PPOConfig, json.loads(open(sys.argv[1]).read()))
seen = {"rollouts": [], "trainer": None}
iteration = ppo.PPOTrainer.iteration

def recording_iteration(self, examples, number):
    seen["trainer"] = self
    seen["rollouts"].append(len(examples))
    return iteration(self, examples, number)

ppo.PPOTrainer.iteration = recording_iteration
summary = ppo.run_ppo(config, reward_fn=lambda examples, texts: torch.tensor([float("red" in t) for t in texts]))
trainer = seen["trainer"]
out = config.out
save_file({k: p.detach().contiguous() for k, p in trainer.named_parameters.items()}, f"{out}/rank{trainer.rank}.safetensors")
info = {"world": trainer.world, "rollouts": seen["rollouts"], "iterations": summary["iterations"]}
open(f"{out}/rank{trainer.rank}.json", "w").write(json.dumps(info))
"""


def test_two_processes_share_the_rollouts_and_stay_in_sync(world, tmp_path):
    from vlm_rlaif.config import to_dict

    config = ppo_config(world, tmp_path / "ddp", ppo={"max_iterations": 2})
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(to_dict(config)))
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` launches through torchrun; without a GPU the processes run on the CPU with gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]
    process = subprocess.run([*launch, str(script), str(config_file)], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["rollouts"] for r in ranks] == [[4, 4], [4, 4]]  # 8 prompts per iteration, half each
    weights = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and any(k.startswith("value_head.") for k in weights[0])
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks disagree on {name}"
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # logged once, by the main process


def test_full_fine_tuning_keeps_a_frozen_reference_copy(world, tmp_path):
    config = ppo_config(world, tmp_path / "full", policy={"finetune": "full"}, init={"enabled": False},
                        ppo={"max_iterations": 2, "lr": 1e-3})
    summary = run_ppo(config, reward_fn=says_red)
    assert summary["policy_adapter"] is None and Path(summary["policy_model"]).is_dir()
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["kl"] > 0.0  # the copy stayed behind
    tuned = load_adapter_model(summary["policy_model"])
    sft = load_adapter_model(world / "sft_model")
    changed = [not torch.equal(a, b) for a, b in zip(tuned.model.parameters(), sft.model.parameters())]
    assert any(changed)


def test_stop_at_question_mark_ends_responses_after_the_first_question_mark(world):
    from vlm_rlaif.models.examples import Generation

    tokenizer = load_adapter_model(world / "sft_model").tokenizer
    eos = tokenizer.eos_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    asks = ids("Is the circle red?")
    sampled = [
        Generation(0, 0, "Is the circle red? The circle is red.", asks + ids(" The circle is red.") + [eos], True),
        Generation(1, 0, "Is the circle red?", asks + [eos], True),  # "?" just before EOS: cut too
        Generation(2, 0, "The circle is red.", ids("The circle is red.") + [eos], True),
    ]

    class Sampled:  # a rollout engine that returns fixed samples
        def generate(self, examples, settings):
            return list(sampled)

        def update_policy(self):
            pass

    for stop, expected in ((False, sampled), (True, None)):
        trainer = build_trainer(world, says_red, same_reference=False, settings={"stop_at_question_mark": stop})
        trainer.engine = Sampled()
        out = trainer.generate(prompts_of(world, trainer.policy, 3), 0)
        if expected is not None:
            assert out == expected
            continue
        assert [g.token_ids for g in out] == [asks, asks, sampled[2].token_ids]
        assert [g.text for g in out] == ["Is the circle red?", "Is the circle red?", "The circle is red."]
        assert [g.ended_with_eos for g in out] == [False, False, True]  # so a cut answer takes the -8


def test_prompt_limit_counts_the_rendered_query(world):
    # The released code's 128-token limit counts the whole query: system sentence, template, video
    # placeholder and question, not the question alone.
    from vlm_rlaif.models.llava_video.processing import render_conversation

    lm = load_adapter_model(world / "sft_model")
    question_tokens = len(lm.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    rendered = lm.prompt_length([{"role": "user", "content": QUESTION}])
    text, _ = render_conversation([{"role": "user", "content": QUESTION}], has_video=True, add_generation_prompt=True)
    assert rendered == 1 + len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # BOS + query
    assert rendered > question_tokens
    path = world / "rl" / "prompts.json"
    prompts, dropped = read_prompts(path, world, lm, question_tokens)
    assert prompts == [] and dropped == 16  # the questions fit, the queries do not
    prompts, dropped = read_prompts(path, world, lm, rendered)
    assert len(prompts) == 16 and dropped == 0


def test_prompt_plan_and_learning_rate_schedule():
    settings = PPOSettings(rollout_batch_size=4, minibatch_size=2, epochs=2)
    plan = prompt_plan(10, settings, seed=0)
    assert len(plan) == 4 and all(len(batch) == 4 for batch in plan)  # 2 per epoch, the rest dropped
    assert len(set(plan[0] + plan[1])) == 8 and plan[:2] != plan[2:]
    assert len(prompt_plan(10, PPOSettings(rollout_batch_size=4, minibatch_size=2, epochs=2, max_iterations=3), seed=0)) == 3
    with pytest.raises(ConfigError, match="3 RL prompts, fewer than ppo.rollout_batch_size"):
        prompt_plan(3, settings, seed=0)

    multiplier = lr_multiplier(PPOSettings(warmup_iterations=2), total_iterations=6)
    values = [multiplier(i) for i in range(6)]
    # warm-up 1/2, 2/2, then cosine over the 4 remaining iterations: progress 0, 1/4, 2/4, 3/4
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert values == pytest.approx(expected)


def test_errors_are_clear(world, tmp_path):
    with pytest.raises(ConfigError, match="multiple of ppo.minibatch_size"):
        PPOSettings(rollout_batch_size=10, minibatch_size=4)
    with pytest.raises(ConfigError, match="policy.model"):
        from_dict(PPOConfig, {})
    with pytest.raises(ConfigError, match="visual path stays frozen"):
        from_dict(PPOConfig, {"policy": {"model": "m", "lora": {"train_projector": True}}})
    with pytest.raises(UserError, match="4-bit quantization"):
        run_ppo(ppo_config(world, tmp_path / "q", runtime={"quantization": "4bit"}), reward_fn=says_red)
    with pytest.raises(ConfigError, match="reward.model"):
        run_ppo(ppo_config(world, tmp_path / "no_reward", init={"enabled": False}))

    bad = tmp_path / "bad.json"
    good = json.loads((world / "rl" / "prompts.json").read_text())
    bad.write_text(json.dumps([good[0], {"id": "x", "video": "videos/missing.mp4", "conversations": good[0]["conversations"]}]))
    lm = load_adapter_model(world / "sft_model")
    with pytest.raises(RecordError, match=r"bad.json:\d+ \(id x\): video not found"):
        read_prompts(bad, world, lm, 128)
    prompts, dropped = read_prompts(world / "rl" / "prompts.json", world, lm, 3)
    assert prompts == [] and dropped == 16  # every prompt is longer than 3 tokens

    if not vllm_available():
        with pytest.raises(UserError, match="needs vllm"):
            make_engine("vllm", load_adapter_model(world / "sft_model"), adapter=None)


def test_cli_offers_ppo():
    from vlm_rlaif.cli import build_parser

    help_text = build_parser().format_help()
    assert "ppo" in help_text and "policy initialisation and PPO" in help_text


def test_on_bad_video_fail_or_skip(world, tmp_path):
    """An RL prompt about a file of random bytes and an initialisation record about a frame folder that
    does not decode, beside the world's prompts."""
    import shutil

    from bad_videos import write_bad_videos

    root = tmp_path / "root"
    shutil.copytree(world / "videos", root / "videos")
    shutil.copytree(world / "rl", root / "rl")
    corrupt, broken = write_bad_videos(root / "videos")
    prompts = json.loads((root / "rl" / "prompts.json").read_text())
    init = json.loads((root / "rl" / "PPO_init.json").read_text())
    prompts.insert(2, {**prompts[0], "id": "bad_prompt", "video": f"videos/{corrupt}"})
    init.append({**init[0], "id": "bad_init", "video": f"videos/{broken}"})
    (root / "rl" / "prompts.json").write_text(json.dumps(prompts))
    (root / "rl" / "PPO_init.json").write_text(json.dumps(init))

    def config(out, on_bad_video="fail"):
        return ppo_config(world, tmp_path / out, data={"root": str(root), "on_bad_video": on_bad_video},
                          ppo={"max_iterations": 1})

    with pytest.raises(UserError, match=r"prompts.json:\d+ \(id bad_prompt\): video videos/corrupt.mp4: .*cannot open"):
        run_ppo(config("fail"), reward_fn=says_red)
    assert not (tmp_path / "fail").exists()  # opened before anything is written

    summary = run_ppo(config("skip", "skip"), reward_fn=says_red)
    assert summary["iterations"] == 1 and summary["prompts"] == 16 and summary["records_skipped"] == 2
    assert summary["init"]["examples"] == 16 and summary["init"]["records_skipped"] == 1
    assert [(s["id"], s["video"]) for s in summary["skipped_records"]] == [
        ("bad_prompt", "videos/corrupt.mp4"), ("bad_init", "videos/broken_frames")]
    assert "PPO_init.json" in summary["skipped_records"][1]["file"]
    assert "cannot read frame image" in summary["skipped_records"][1]["reason"]
    with pytest.raises(ConfigError, match="on_bad_video must be 'fail' or 'skip'"):
        config("x", "ignore")
