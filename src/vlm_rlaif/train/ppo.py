"""Stage 3: policy initialisation and PPO against the video reward model (docs/method.md, stage 3).

    config = load_config(PPOConfig, "recipes/toy.yaml", section="ppo")
    summary = run_ppo(config)       # <out>/policy_adapter, <out>/value, metrics.jsonl, summary.json

Four roles on two bases, as the paper:
    policy base (the SFT model):  LoRA "policy" (trains)   + LoRA "reference" (frozen)
    value base (the RM's base):   LoRA "value" (trains; starts as a copy of the RM's LoRA, with a
                                  new zero-initialised head)  + LoRA "reward" (the frozen RM)
Both bases share one FeatureCache: a prompt's video runs through the frozen visual path once, in the
rollout, and the reference, policy, value and reward passes read the cached features.

Top to bottom:
1. Policy initialisation (paper default): a fresh LoRA SFT-trained for one epoch on the RL prompts'
   reference answers (PPO_init.json) through train/loop.py, saved as <out>/policy_init/adapter. The
   reference is that adapter, frozen; the policy starts as a trainable copy of it.
2. Every iteration takes `rollout_batch_size` prompts (one shuffled pass over the prompts per epoch),
   split across `accelerate launch` processes:
   a. rollouts: one sampled answer per prompt (temperature 1.0, top-p 1.0), cut at the first EOS
      (with stop_at_question_mark, as the released code, also right after the first "?" token);
   b. no-grad passes: policy log-probabilities and entropy, reference log-probabilities, values,
      reward-model scores (through RewardModel's own input builder);
   c. rewards (train/ppo_math.py): score, -8 without EOS, -10 * length / max_new_tokens; per-token
      KL penalty; everything x10; GAE; advantages whitened over all processes' rollouts;
   d. `ppo_epochs` passes over shuffled minibatches: clipped policy loss + value_loss_coef * clipped
      value loss; one AdamW over policy LoRA, value LoRA and value head; gradients averaged over
      processes and clipped;
   e. the learning rate (warm-up, then cosine) steps once per iteration, as in the paper's code.
3. Metrics per iteration (metrics.jsonl), a few rollouts per iteration in samples.jsonl, a checkpoint
   every `save_every` iterations; a re-run on the directory resumes from the newest checkpoint.

Loading the bases, initialising the policy and reading the RL prompts live in train/ppo_setup.py;
the checkpoint files in train/checkpoints.py.

Deviations from the paper's code (fixes): the sequence reward goes on each response's last real token
(the code adds it at the last padded column); padding never enters the KL, whitening or losses; the
first warm-up iteration has a non-zero learning rate (the code's first iteration has lr 0).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vlm_rlaif.data.frames import check_on_bad_video
from vlm_rlaif.data.jsonio import JsonlWriter
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.adapter import Generation, GenerationSettings, VideoExample, VideoLM
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.heads import ScalarModel
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.rollout.engine import EngineKind, RolloutEngine, make_engine
from vlm_rlaif.rundir import RunDir, check_inputs, drop_rows_after, read_metrics
from vlm_rlaif.train import checkpoints, ppo_math
from vlm_rlaif.train.data import SKIPPED_LISTED
from vlm_rlaif.train.loop import TrainSettings
from vlm_rlaif.train.ppo_setup import (
    POLICY,
    REFERENCE,
    VALUE,
    Prompt,
    decode_prompt_videos,
    frame_store,
    load_policy,
    load_value_and_reward,
    prompt_examples,
    read_prompts,
    read_rl_data,
)

log = logging.getLogger(__name__)

STAGE = "ppo"
CHECKPOINT_PREFIX = "iter_"

# Answers to the RL prompts' questions given to the reward model: (prompts, answer texts) -> scores (B,).
RewardFn = Callable[[Sequence[VideoExample], Sequence[str]], torch.Tensor]


# ---------------------------------------------------------------------------- config


@dataclass
class PolicySettings:
    """model: the SFT model directory, base of the policy and the reference. finetune "lora" (the
    paper: r=64, alpha=16 on attention and MLP projections) or "full" (reference = a frozen copy)."""

    model: str = ""
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=16))


@dataclass
class InitSettings:
    """Policy initialisation: SFT on data.init_data (one epoch in the paper: lr 1e-4 cosine, batch 128).
    adapter: start from an already initialised policy LoRA instead (e.g. the paper's released one)."""

    enabled: bool = True
    adapter: str | None = None
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(batch_size=8, lr=1e-4, schedule="cosine", warmup_ratio=0.03, save_every=50)
    )


@dataclass
class RewardSettings:
    """model: a reward model saved by `vlm-rlaif rm` (its directory or run directory); its base becomes
    the value base. value_init "reward_model": the value LoRA starts as a copy of the RM's (the paper);
    "fresh": a new LoRA (value_lora)."""

    model: str | None = None
    value_init: Literal["reward_model", "fresh"] = "reward_model"
    value_lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=16))


@dataclass
class DataSettings:
    """Files are relative to root, and so are the records' videos (unless video_root is set).
    prompts: RL prompts (instruction records; the first human turn is the question).
    init_data: the same prompts with reference answers, for the policy initialisation.
    num_frames: frames per video (0: the policy model's own setting). Prompts whose rendered query
    (system sentence, template, video placeholder as one token, question) is over max_prompt_tokens
    tokens are dropped, together with their videos (the released code drops queries over 128 tokens,
    counted that way). on_bad_video: a prompt's or an initialisation record's video that is missing
    or does not decode stops the run ("fail", naming the file, the record and the video) or is
    skipped ("skip": its records are dropped and counted in the summary)."""

    root: str = "."
    prompts: str = "rl/prompts.json"
    init_data: str = "rl/PPO_init.json"
    video_root: str | None = None
    num_frames: int = 0
    max_prompt_tokens: int = 128
    frame_cache_videos: int = 1024
    on_bad_video: str = "fail"


@dataclass
class PPOSettings:
    """The paper's values are the defaults. Batch sizes count rollouts over all processes, except
    micro_batch_size, forward_batch_size and generation_batch_size (per process, per call).
    top_p < 1 samples from a truncated distribution that the log-probabilities (softmax at
    `temperature`) do not model; keep 1.0 as the paper does.
    stop_at_question_mark: end a response right after its first "?" token, as the released PPO code
    does (not in the paper's text); the cut response has no EOS, so it takes no_eos_penalty."""

    rollout_batch_size: int = 256
    minibatch_size: int = 128
    micro_batch_size: int = 8
    forward_batch_size: int = 16
    generation_batch_size: int = 16
    ppo_epochs: int = 2
    epochs: int = 1  # passes over the RL prompts
    max_iterations: int = 0  # > 0: stop after this many iterations
    max_new_tokens: int = 896
    temperature: float = 1.0
    top_p: float = 1.0
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    value_loss_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 1.0
    kl_coef: float = 0.1
    kl_estimator: Literal["clamped", "k1", "k3"] = "clamped"
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    reward_scale: float = 10.0
    no_eos_penalty: float = -8.0
    stop_at_question_mark: bool = False
    length_penalty: float = -10.0
    whiten_advantages: bool = True
    lr: float = 3e-5
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_iterations: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 10
    keep_checkpoints: int = 2
    log_samples: int = 4

    def __post_init__(self):
        positive = ("rollout_batch_size", "minibatch_size", "micro_batch_size", "forward_batch_size",
                    "generation_batch_size", "ppo_epochs", "epochs", "max_new_tokens", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batch_size % self.minibatch_size:
            raise ConfigError(
                f"ppo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                f"ppo.minibatch_size ({self.minibatch_size})"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("ppo.temperature must be > 0 (PPO samples) and ppo.top_p in (0, 1]")
        if min(self.max_iterations, self.warmup_iterations, self.save_every, self.log_samples, self.kl_coef,
               self.max_grad_norm, self.weight_decay, self.clip_range, self.value_clip_range) < 0:
            raise ConfigError("ppo: iteration counts, kl_coef, max_grad_norm, weight_decay and clip ranges must be >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1) or self.lr <= 0:
            raise ConfigError("ppo.gamma and ppo.lam must be in [0, 1], ppo.lr > 0")


@dataclass
class RuntimeSettings:
    """dtype: e.g. bfloat16 (default: as saved). quantization "4bit": QLoRA bases (CUDA + bitsandbytes).
    mixed_precision "bf16" runs every forward under autocast. feature_cache_mb 0 turns the shared
    visual-feature cache off (every pass re-encodes its videos: only for measuring)."""

    dtype: str | None = None
    quantization: str | None = None
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"
    cpu: bool = False
    engine: EngineKind = "hf"
    vllm_gpu_memory_utilization: float = 0.3
    feature_cache_mb: int = 2048


@dataclass
class PPOConfig:
    out: str = "runs/ppo"
    seed: int = 0
    policy: PolicySettings = field(default_factory=PolicySettings)
    init: InitSettings = field(default_factory=InitSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    data: DataSettings = field(default_factory=DataSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self):
        if not self.policy.model:
            raise ConfigError("policy.model (the SFT model directory) is required")
        lora = self.policy.lora
        if lora.train_projector or lora.train_vision_tower:
            raise ConfigError(
                "the visual path stays frozen in PPO: policy.lora.train_projector/train_vision_tower must be false"
            )
        if self.init.adapter and self.policy.finetune == "full":
            raise ConfigError("init.adapter is a LoRA adapter; it needs policy.finetune: lora")
        check_on_bad_video(self.data.on_bad_video, "ppo: data")

    @property
    def initialises(self) -> bool:
        """Whether this run reads data.init_data: only until the initialisation has finished."""
        init_done = (Path(self.out) / "policy_init" / "summary.json").is_file()
        return self.init.enabled and not self.init.adapter and not init_done

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        data, root = self.data, Path(self.data.root)
        initialises = self.initialises
        return {
            "policy.model": self.policy.model,
            "reward.model": self.reward.model,
            "init.adapter": self.init.adapter,
            "data.prompts": root / data.prompts,
            "data.init_data": root / data.init_data if initialises else None,
            "data.video_root" if data.video_root else "data.root": data.video_root or root,
        }


# ---------------------------------------------------------------------------- the prompt plan


def prompt_plan(num_prompts: int, settings: PPOSettings, seed: int) -> list[list[int]]:
    """Prompt indices per iteration: each epoch a fresh shuffle cut into rollout batches (the last
    incomplete batch of an epoch is dropped, as the paper's loader does)."""
    batch = settings.rollout_batch_size
    if num_prompts < batch:
        raise ConfigError(f"{num_prompts} RL prompts, fewer than ppo.rollout_batch_size ({batch})")
    rng = random.Random(seed)
    plan = []
    for _ in range(settings.epochs):
        order = list(range(num_prompts))
        rng.shuffle(order)
        plan.extend(order[i : i + batch] for i in range(0, num_prompts - batch + 1, batch))
    return plan[: settings.max_iterations] if settings.max_iterations else plan


# ---------------------------------------------------------------------------- the trainer


@dataclass
class Rollouts:
    """One iteration's rollouts on this process. Tensors are (B, R) on the CPU unless noted; R is the
    longest response; `mask` marks real response tokens."""

    examples: list[VideoExample]
    generations: list[Generation]
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) the reward model's
    seq_rewards: torch.Tensor | None = None  # (B,) score plus the EOS and length terms
    kl: torch.Tensor | None = None
    rewards: torch.Tensor | None = None  # per token, scaled
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def responses(self) -> list[list[int]]:
        return [g.token_ids for g in self.generations]

    def __len__(self) -> int:
        return len(self.generations)


class PPOTrainer:
    """The PPO loop over already built models (see the module docstring for the roles).

    policy: the policy base; with finetune "lora" its adapter POLICY trains and `reference` is None:
        the reference is its REFERENCE adapter if attached, else the bare base. With full fine-tuning
        `reference` is a frozen copy.
    value: ScalarModel on the value base, LoRA VALUE, zero-initialised head.
    reward_fn: scores (prompt examples, answer texts) -> (B,) tensor.
    """

    def __init__(
        self,
        policy: VideoLM,
        value: ScalarModel,
        reward_fn: RewardFn,
        settings: PPOSettings,
        *,
        reference: VideoLM | None = None,
        engine: RolloutEngine | None = None,
        accelerator=None,
        seed: int = 0,
        total_iterations: int = 1,
    ):
        from accelerate import Accelerator

        self.policy = policy
        self.reference = reference
        self.value = value
        self.reward_fn = reward_fn
        self.settings = settings
        self.accelerator = accelerator or Accelerator(cpu=policy.device.type == "cpu")
        self.engine = engine or make_engine("hf", policy, adapter=POLICY if policy.adapter_names else None)
        self.seed = seed
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if settings.rollout_batch_size % self.world or settings.minibatch_size % self.world:
            raise ConfigError(
                f"ppo.rollout_batch_size and ppo.minibatch_size must be multiples of the {self.world} processes"
            )
        self.named_parameters = self._trainable_parameters()
        self.parameters = list(self.named_parameters.values())
        if self.world > 1:
            with torch.no_grad():  # every process starts from the main process's weights
                for p in self.parameters:
                    torch.distributed.broadcast(p.data, src=0)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(settings, total_iterations))
        self.question_marks = question_mark_ids(policy.tokenizer) if settings.stop_at_question_mark else set()
        if settings.adaptive_kl:
            self.kl_controller = ppo_math.AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
        else:
            self.kl_controller = ppo_math.FixedKLController(settings.kl_coef)

    # ------------------------------------------------------------------------ models

    @property
    def policy_uses_lora(self) -> bool:
        return bool(self.policy.adapter_names)

    def _activate_policy(self) -> None:
        if self.policy_uses_lora:
            self.policy.set_adapter(POLICY)

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What trains, by a stable name (checkpoints): the policy's, the value LoRA's and the head's."""
        self._activate_policy()
        named = {f"policy.{n}": p for n, p in self.policy.model.named_parameters() if p.requires_grad}
        self.value.lm.set_adapter(VALUE)
        named.update({f"value.{n}": p for n, p in self.value.lm.model.named_parameters() if p.requires_grad})
        named.update({f"value_head.{n}": p for n, p in self.value.head.named_parameters()})
        if not any(name.startswith("policy.") for name in named):
            raise UserError("the policy has no trainable parameters")
        return named

    @contextmanager
    def _reference_model(self) -> Iterator[VideoLM]:
        """The reference policy's model inside the block (an adapter switch, the bare base, or a copy)."""
        if self.reference is not None:
            yield self.reference
        elif REFERENCE in self.policy.adapter_names:
            self.policy.set_adapter(REFERENCE)
            try:
                yield self.policy
            finally:
                self.policy.set_adapter(POLICY)
        else:
            with self.policy.adapter_disabled():
                yield self.policy

    @contextmanager
    def _mode(self, training: bool) -> Iterator[None]:
        """Train mode (gradient checkpointing needs it; dropout is 0 in LoRA) or eval mode for both bases."""
        models = [self.policy.model, self.value.lm.model]
        previous = [m.training for m in models]
        for m in models:
            m.train(training)
        try:
            yield
        finally:
            for m, was in zip(models, previous):
                m.train(was)

    # ------------------------------------------------------------------------ the passes

    def generate(self, examples: Sequence[VideoExample], iteration: int) -> list[Generation]:
        """Sample one answer per prompt from the current policy (seeded by seed, iteration, process)."""
        s = self.settings
        generation = GenerationSettings(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            batch_size=s.generation_batch_size,
            seed=_derived_seed(self.seed, iteration, self.rank),
        )
        self._activate_policy()
        generations = self.engine.generate(examples, generation)
        if s.stop_at_question_mark:
            generations = cut_after_question_mark(generations, self.question_marks, self.policy.tokenizer)
        return generations

    def policy_logprobs(
        self, lm: VideoLM, batch: dict, *, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probabilities (B, R) of the responses of a collate_with_responses batch under `lm`, and
        the entropies when asked (grad follows the caller)."""
        mask = batch["response_mask"]
        width = mask.shape[1]
        with self.accelerator.autocast():
            # The logits at column P - 1 + t predict response token t.
            logits = lm.forward(batch, logits_to_keep=width + 1).logits[:, :-1]
        targets = batch["input_ids"][:, -width:].to(logits.device)
        mask = mask.to(logits.device)
        temperature = self.settings.temperature
        logprobs = ppo_math.token_logprobs(logits, targets, mask, temperature=temperature)
        return logprobs, ppo_math.entropy(logits, mask, temperature=temperature) if with_entropy else None

    def reference_logprobs(self, batch: dict) -> torch.Tensor:
        with torch.no_grad(), self._reference_model() as reference:
            return self.policy_logprobs(reference, batch)[0]

    def values(self, examples: Sequence[VideoExample], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        """Value estimates (B, R) of the states before each response token (grad follows the caller)."""
        batch = self.value.lm.collate_with_responses(examples, responses)
        width = batch["response_mask"].shape[1]
        with self.accelerator.autocast():
            per_position = self.value.values(batch)
        # Column P - 1 + t holds the state before response token t (P = prompt width).
        values = per_position[:, -(width + 1) : -1].float()
        return values * batch["response_mask"].to(values.device)

    def scores(self, examples: Sequence[VideoExample], texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad(), self.accelerator.autocast():
            scores = self.reward_fn(examples, texts)
        return torch.as_tensor(scores, dtype=torch.float32).cpu().reshape(len(texts))

    @torch.no_grad()
    def score_rollouts(self, examples: Sequence[VideoExample], generations: Sequence[Generation]) -> Rollouts:
        """The no-grad passes over sampled answers, `forward_batch_size` rollouts at a time."""
        responses = [g.token_ids for g in generations]
        width = max(len(r) for r in responses)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("mask", "logprobs", "ref", "entropy", "values", "scores")}
        step = self.settings.forward_batch_size
        with self._mode(training=False):
            for start in range(0, len(responses), step):
                chunk_examples = examples[start : start + step]
                chunk_responses = responses[start : start + step]
                batch = self.policy.collate_with_responses(chunk_examples, chunk_responses)
                self._activate_policy()
                logprobs, entropy = self.policy_logprobs(self.policy, batch, with_entropy=True)
                parts["mask"].append(_pad_columns(batch["response_mask"], width))
                parts["logprobs"].append(_pad_columns(logprobs, width))
                parts["entropy"].append(_pad_columns(entropy, width))
                parts["ref"].append(_pad_columns(self.reference_logprobs(batch), width))
                parts["values"].append(_pad_columns(self.values(chunk_examples, chunk_responses), width))
                parts["scores"].append(self.scores(chunk_examples, [g.text for g in generations[start : start + step]]))
        return Rollouts(
            examples=list(examples),
            generations=list(generations),
            mask=torch.cat(parts["mask"]).bool(),
            logprobs=torch.cat(parts["logprobs"]),
            ref_logprobs=torch.cat(parts["ref"]),
            entropy=torch.cat(parts["entropy"]),
            values=torch.cat(parts["values"]),
            scores=torch.cat(parts["scores"]),
        )

    def compute_advantages(self, rollouts: Rollouts) -> None:
        """Shaped rewards, KL, GAE and (whitened) advantages, filled into `rollouts`."""
        s = self.settings
        mask = rollouts.mask
        ended = torch.tensor([g.ended_with_eos for g in rollouts.generations])
        rollouts.seq_rewards = ppo_math.sequence_rewards(
            rollouts.scores, ended, mask.sum(dim=1), max_new_tokens=s.max_new_tokens,
            no_eos_penalty=s.no_eos_penalty, length_penalty=s.length_penalty,
        )
        rollouts.kl = ppo_math.kl_penalty(rollouts.logprobs, rollouts.ref_logprobs, s.kl_estimator) * mask
        rewards = ppo_math.token_rewards(rollouts.seq_rewards, rollouts.kl, mask, kl_coef=self.kl_controller.value)
        rollouts.rewards = rewards * s.reward_scale
        advantages, rollouts.returns = ppo_math.gae(rollouts.rewards, rollouts.values, mask, gamma=s.gamma, lam=s.lam)
        if s.whiten_advantages:
            advantages = ppo_math.whiten(advantages, mask, across_processes=True)
        rollouts.advantages = advantages

    # ------------------------------------------------------------------------ the update

    def loss(self, rollouts: Rollouts, members: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO loss of some rollouts: clipped policy loss + value_loss_coef * clipped value loss."""
        s = self.settings
        examples = [rollouts.examples[i] for i in members]
        responses = [rollouts.responses[i] for i in members]
        batch = self.policy.collate_with_responses(examples, responses)
        width = batch["response_mask"].shape[1]
        rows = torch.as_tensor(list(members))
        self._activate_policy()
        logprobs, _ = self.policy_logprobs(self.policy, batch)
        device = logprobs.device
        mask = batch["response_mask"].to(device)
        pg_loss, pg_stats = ppo_math.policy_loss(
            logprobs, rollouts.logprobs[rows, :width].to(device), rollouts.advantages[rows, :width].to(device),
            mask, clip_range=s.clip_range,
        )
        values = self.values(examples, responses)
        v_loss, v_stats = ppo_math.value_loss(
            values, rollouts.values[rows, :width].to(values.device), rollouts.returns[rows, :width].to(values.device),
            mask.to(values.device), clip_range=s.value_clip_range,
        )
        loss = pg_loss + s.value_loss_coef * v_loss.to(device)
        stats = {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), **pg_stats, **v_stats}
        return loss, {k: float(v) for k, v in stats.items()}

    def update(self, rollouts: Rollouts, iteration: int) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled minibatches of this process's rollouts; returns mean stats."""
        s = self.settings
        local_minibatch = s.minibatch_size // self.world
        rng = np.random.default_rng([self.seed, iteration, self.rank, 1])
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(key: str, value: float) -> None:
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1

        with self._mode(training=True):
            for _ in range(s.ppo_epochs):
                order = rng.permutation(len(rollouts)).tolist()
                for start in range(0, len(order), local_minibatch):
                    members = order[start : start + local_minibatch]
                    for micro in range(0, len(members), s.micro_batch_size):
                        micro_members = members[micro : micro + s.micro_batch_size]
                        loss, stats = self.loss(rollouts, micro_members)
                        # The minibatch's gradient: micro-batches weighted by their share of its rollouts.
                        (loss * len(micro_members) / len(members)).backward()
                        for key, value in stats.items():
                            add(key, value)
                    self._average_gradients()
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, s.max_grad_norm or float("inf"))
                    add("grad_norm", float(grad_norm))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        return {key: sums[key] / counts[key] for key in sums}

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(self.world)

    # ------------------------------------------------------------------------ one iteration

    def iteration(self, examples: Sequence[VideoExample], iteration: int) -> tuple[Rollouts, dict[str, float]]:
        """Rollouts, scoring, advantages and the update for this process's prompts; returns the
        rollouts and the iteration's metrics (reduced over processes)."""
        started = time.time()
        generations = self.generate(examples, iteration)
        generated = time.time()
        rollouts = self.score_rollouts(examples, generations)
        self.compute_advantages(rollouts)
        scored = time.time()
        lr = self.scheduler.get_last_lr()[0]
        update_stats = self.update(rollouts, iteration)
        self.scheduler.step()
        self.engine.update_policy()
        finished = time.time()

        metrics = self._rollout_metrics(rollouts)
        metrics.update(self._mean_over_processes(update_stats))
        self.kl_controller.update(metrics["kl"], self.settings.rollout_batch_size)
        generated_tokens = self._sum_over_processes(float(rollouts.mask.sum()))
        metrics.update(
            lr=lr,
            kl_coef_next=self.kl_controller.value,
            tokens_per_s=generated_tokens / max(generated - started, 1e-9),
            generation_s=generated - started,
            scoring_s=scored - generated,
            update_s=finished - scored,
            iteration_s=finished - started,
        )
        return rollouts, metrics

    def _rollout_metrics(self, r: Rollouts) -> dict[str, float]:
        mask = r.mask.float()
        lengths = mask.sum(dim=1)
        ended = torch.tensor([float(g.ended_with_eos) for g in r.generations])
        kl_sums = r.kl.sum(dim=1)
        unscaled_total = r.seq_rewards - self.kl_controller.value * kl_sums
        sums = {
            "reward_score": (r.scores.sum().item(), len(r)),
            "reward_shaped": (r.seq_rewards.sum().item(), len(r)),
            "reward_total": (unscaled_total.sum().item(), len(r)),
            "kl": (kl_sums.sum().item(), len(r)),
            "kl_per_token": (r.kl.sum().item(), mask.sum().item()),
            "entropy": ((r.entropy * mask).sum().item(), mask.sum().item()),
            "response_length": (lengths.sum().item(), len(r)),
            "eos_fraction": (ended.sum().item(), len(r)),
            "value_mean": ((r.values * mask).sum().item(), mask.sum().item()),
            "return_mean": ((r.returns * mask).sum().item(), mask.sum().item()),
        }
        metrics = self._reduce_ratios(sums)
        metrics["kl_coef"] = self.kl_controller.value
        explained = ppo_math.explained_variance(r.values, r.returns, r.mask, across_processes=True)
        metrics["explained_variance"] = explained.item()
        return metrics

    def _reduce_ratios(self, sums: dict[str, tuple[float, float]]) -> dict[str, float]:
        keys = sorted(sums)
        totals = torch.tensor([[sums[k][0], sums[k][1]] for k in keys], dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(totals)
        return {k: (t[0] / max(t[1], 1e-12)).item() for k, t in zip(keys, totals)}

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        return self._reduce_ratios({k: (v, 1.0) for k, v in stats.items()})

    def _sum_over_processes(self, value: float) -> float:
        total = torch.tensor(value, dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(total)
        return total.item()

    # ------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: Path, iteration: int, keep: int, extra: dict) -> Path:
        """<directory>/iter_<N>/ (train/checkpoints.py): the trainable parameters by name (policy LoRA,
        value LoRA, value head), optimizer, scheduler, every process's RNG, the KL coefficient."""
        state = {"iteration": iteration, "kl_coef": self.kl_controller.value, "num_processes": self.world, **extra}
        return checkpoints.save_checkpoint(
            directory, CHECKPOINT_PREFIX, iteration, self.named_parameters, self.optimizer, self.scheduler, state,
            keep, self.accelerator,
        )

    def load_checkpoint(self, path: Path, extra: dict) -> int:
        """Restore a checkpoint written by save_checkpoint; returns the iterations it had completed."""
        expected = {"num_processes": self.world, **extra}
        state = checkpoints.load_checkpoint(
            path, self.named_parameters, self.optimizer, self.scheduler, expected, self.rank, inputs="prompts"
        )
        self.kl_controller.value = float(state["kl_coef"])
        self.engine.update_policy()
        return int(state["iteration"])


def lr_multiplier(settings: PPOSettings, total_iterations: int) -> Callable[[int], float]:
    """Learning-rate multiplier of an iteration: linear warm-up (the first iteration already at
    1/warmup_iterations), then the schedule over the remaining iterations."""
    warmup = settings.warmup_iterations

    def multiplier(iteration: int) -> float:
        if iteration < warmup:
            return (iteration + 1) / warmup
        if settings.schedule == "constant":
            return 1.0
        progress = min(1.0, (iteration - warmup) / max(1, total_iterations - warmup))
        if settings.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def question_mark_ids(tokenizer) -> set[int]:
    """Ids of the tokens that are a question mark alone, after optional whitespace (Vicuna's "?" and
    "▁?": the two the released code stops at)."""
    return {i for token, i in tokenizer.get_vocab().items() if tokenizer.convert_tokens_to_string([token]).strip() == "?"}


def cut_after_question_mark(generations: Sequence[Generation], stops: set[int], tokenizer) -> list[Generation]:
    """Each response ended right after its first token in `stops` (question_mark_ids: the released
    PPO code's extra stop tokens). A cut response loses its EOS, also when the "?" came just before
    it, as there."""
    cut = []
    for g in generations:
        body = g.token_ids[:-1] if g.ended_with_eos else g.token_ids
        at = next((k for k, token in enumerate(body) if token in stops), None)
        if at is not None:
            kept = list(g.token_ids[: at + 1])
            g = replace(g, token_ids=kept, text=tokenizer.decode(kept, skip_special_tokens=True).strip(), ended_with_eos=False)
        cut.append(g)
    return cut


# ---------------------------------------------------------------------------- run_ppo


def run_ppo(config: PPOConfig, *, reward_fn: RewardFn | None = None, overwrite: bool = False) -> dict:
    """Initialise the policy, then run PPO (see the module docstring); returns the summary (also in
    <out>/summary.json). reward_fn replaces the reward model (tests, custom rewards); a re-run on an
    unfinished output directory resumes from its newest checkpoint."""
    from accelerate import Accelerator

    runtime = config.runtime
    settings = config.ppo
    # Without a GPU, cpu=True is what makes accelerate join `accelerate launch`'s CPU processes (gloo).
    accelerator = Accelerator(cpu=runtime.cpu or not torch.cuda.is_available(), mixed_precision=runtime.mixed_precision)
    out = Path(config.out)
    check_inputs(STAGE, config.inputs())
    rl_data = read_rl_data(config)  # every video opens (or its records are skipped) before anything is written
    run = RunDir.open_on_main(accelerator, out, STAGE, config, config.seed, overwrite=overwrite, inputs=config.inputs())

    cache = FeatureCache(max_bytes=runtime.feature_cache_mb << 20) if runtime.feature_cache_mb > 0 else None
    policy, reference, init_summary = load_policy(config, out, accelerator, cache, rl_data)
    value, reward_fn, reward_info = load_value_and_reward(config, policy, accelerator, cache, reward_fn)
    if runtime.gradient_checkpointing:
        policy.enable_gradient_checkpointing()

    root = Path(config.data.root)
    store = frame_store(config, policy)
    max_tokens = config.data.max_prompt_tokens
    prompts, dropped = read_prompts(root / config.data.prompts, store.root, policy, max_tokens, records=rl_data.prompts)
    if dropped:
        log.warning("dropped %d prompts whose rendered query exceeds %d tokens", dropped, max_tokens)
    prompts, more = decode_prompt_videos(prompts, store, config.data.on_bad_video)
    skipped = rl_data.prompts_skipped + more
    if not prompts:
        raise UserError(f"ppo: no RL prompt left in {root / config.data.prompts} ({dropped} too long, {len(skipped)} with bad videos)")
    plan = prompt_plan(len(prompts), settings, config.seed)
    engine = make_engine(
        runtime.engine, policy, adapter=POLICY if policy.adapter_names else None, model_dir=config.policy.model,
        workdir=out / "vllm_adapter", seed=config.seed, gpu_memory_utilization=runtime.vllm_gpu_memory_utilization,
    )
    trainer = PPOTrainer(
        policy, value, reward_fn, settings, reference=reference, engine=engine, accelerator=accelerator,
        seed=config.seed, total_iterations=len(plan),
    )

    checkpoint_dir = out / "checkpoints"
    layout = {"num_prompts": len(prompts), "rollout_batch_size": settings.rollout_batch_size, "seed": config.seed}
    start = 0
    latest = checkpoints.latest_checkpoint(checkpoint_dir, CHECKPOINT_PREFIX)
    if latest is not None:
        start = trainer.load_checkpoint(latest, layout)
        log.info("resumed PPO after iteration %d from %s", start, latest)
    if accelerator.is_main_process:
        # The iterations after the checkpoint (all of them without one) are redone and logged again.
        drop_rows_after(out / "metrics.jsonl", "step", start)
        drop_rows_after(out / "samples.jsonl", "iteration", start)

    samples = JsonlWriter(out / "samples.jsonl") if accelerator.is_main_process else None
    started = time.time()
    for iteration in range(start, len(plan)):
        mine = [prompts[i] for i in plan[iteration][accelerator.process_index :: accelerator.num_processes]]
        rollouts, metrics = trainer.iteration(prompt_examples(mine, store), iteration)
        done = iteration + 1
        if accelerator.is_main_process:
            # JSON has no NaN: an undefined metric (e.g. explained variance of constant returns) is null.
            run.log_metrics(done, **{k: v if math.isfinite(v) else None for k, v in metrics.items()})
            for k in range(min(settings.log_samples, len(mine))):
                samples.write(_sample_row(done, mine[k], rollouts, k))
            log.info(
                "iteration %d/%d: reward %.3f, kl %.3f, length %.1f, %.1f s",
                done, len(plan), metrics["reward_score"], metrics["kl"], metrics["response_length"], metrics["iteration_s"],
            )
        if settings.save_every and (done % settings.save_every == 0 or done == len(plan)):
            trainer.save_checkpoint(checkpoint_dir, done, settings.keep_checkpoints, layout)

    history = read_metrics(out / "metrics.jsonl") if accelerator.is_main_process else []
    summary = {
        "iterations": len(plan),
        "resumed_from_iteration": start or None,
        "prompts": len(prompts),
        "prompts_dropped": dropped,
        # on_bad_video "skip": the RL prompts' and the initialisation data's skipped records
        "records_skipped": len(skipped) + init_summary.get("records_skipped", 0),
        "skipped_records": (skipped + init_summary.get("skipped_records", []))[:SKIPPED_LISTED],
        "init": init_summary,
        "reward": reward_info,
        "policy_adapter": str(out / "policy_adapter") if policy.adapter_names else None,
        "policy_model": str(out / "policy_model") if not policy.adapter_names else None,
        "policy_base": config.policy.model,
        "value": str(out / "value"),
        "first": _pick(history[0]) if history else None,
        "last": _pick(history[-1]) if history else None,
        "seconds": round(time.time() - started, 1),
    }
    if accelerator.is_main_process:
        samples.close()
        if policy.adapter_names:
            policy.save_lora(out / "policy_adapter", POLICY)
        else:
            policy.save(out / "policy_model")
        value.save(out / "value")
        summary = run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


def _pick(row: dict) -> dict:
    keys = ("step", "reward_score", "reward_shaped", "kl", "response_length", "eos_fraction", "entropy")
    return {k: row[k] for k in keys if k in row}


def _sample_row(iteration: int, prompt: Prompt, rollouts: Rollouts, k: int) -> dict:
    generation = rollouts.generations[k]
    return {
        "iteration": iteration,
        "id": prompt.id,
        "question": prompt.question,
        "response": generation.text,
        "score": float(rollouts.scores[k]),
        "reward": float(rollouts.seq_rewards[k]),
        "ended_with_eos": generation.ended_with_eos,
        "length": len(generation.token_ids),
    }


# ---------------------------------------------------------------------------- small helpers


def _derived_seed(seed: int, iteration: int, rank: int) -> int:
    """A sampling seed that depends only on (seed, iteration, process), so a resumed run samples
    exactly what the interrupted one would have."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


def _pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if tensor.shape[1] == width:
        return tensor
    pad = torch.zeros((tensor.shape[0], width - tensor.shape[1]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


__all__ = [
    "DataSettings",
    "InitSettings",
    "PPOConfig",
    "PPOSettings",
    "PPOTrainer",
    "PolicySettings",
    "RewardFn",
    "RewardSettings",
    "Rollouts",
    "RuntimeSettings",
    "lr_multiplier",
    "prompt_plan",
    "run_ppo",
]
