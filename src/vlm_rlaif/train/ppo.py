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
sampling, the policy and reference passes, the optimizer step, metric reduction and checkpoints,
shared with GRPO (train/grpo.py), in train/rollouts.py; the checkpoint files in train/checkpoints.py.

Deviations from the paper's code (fixes): the sequence reward goes on each response's last real token
(the code adds it at the last padded column); padding never enters the KL, whitening or losses; the
first warm-up iteration has a non-zero learning rate (the code's first iteration has lr 0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vlm_rlaif.data.jsonio import JsonlWriter
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, VideoExample
from vlm_rlaif.models.heads import ScalarModel
from vlm_rlaif.rollout.engine import RolloutEngine
from vlm_rlaif.rundir import read_metrics
from vlm_rlaif.train import ppo_math
from vlm_rlaif.train.data import SKIPPED_LISTED
from vlm_rlaif.train.ppo_setup import (
    POLICY,
    REFERENCE,
    VALUE,
    DataSettings,
    InitSettings,
    PolicySettings,
    Prompt,
    RewardFn,
    RewardSettings,
    RuntimeSettings,
    check_policy_settings,
    initialises,
    load_value_and_reward,
    policy_inputs,
    prompt_examples,
)
from vlm_rlaif.train.rollouts import (
    RLTrainer,
    cut_after_question_mark,
    lr_multiplier,
    make_rollout_engine,
    open_rl_run,
    plan_prompts,
    policy_outputs,
    question_mark_ids,
    resume,
    save_policy,
)
from vlm_rlaif.train.tracking import LoggingSettings, log_sample_table

log = logging.getLogger(__name__)

STAGE = "ppo"


# ---------------------------------------------------------------------------- config
# PolicySettings, InitSettings, RewardSettings, DataSettings and RuntimeSettings: train/ppo_setup.py.


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
class PPOConfig:
    out: str = "runs/ppo"
    seed: int = 0
    policy: PolicySettings = field(default_factory=PolicySettings)
    init: InitSettings = field(default_factory=InitSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    data: DataSettings = field(default_factory=DataSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        check_policy_settings(self, STAGE)

    @property
    def initialises(self) -> bool:
        """Whether this run reads data.init_data: only until the initialisation has finished."""
        return initialises(self)

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        return {**policy_inputs(self), "reward.model": self.reward.model}


# ---------------------------------------------------------------------------- the prompt plan


def prompt_plan(num_prompts: int, settings: PPOSettings, seed: int) -> list[list[int]]:
    """Prompt indices per iteration (train/rollouts.py plan_prompts): rollout_batch_size per iteration."""
    return plan_prompts(
        num_prompts, settings.rollout_batch_size, epochs=settings.epochs, max_iterations=settings.max_iterations,
        seed=seed, key="ppo.rollout_batch_size",
    )


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


class PPOTrainer(RLTrainer):
    """The PPO loop over already built models (see the module docstring for the roles); sampling,
    the policy and reference passes, the optimizer step and checkpoints are RLTrainer's.

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
        super().__init__(policy, settings, reference=reference, engine=engine, accelerator=accelerator, seed=seed)
        self.value = value
        self.reward_fn = reward_fn
        if settings.rollout_batch_size % self.world or settings.minibatch_size % self.world:
            raise ConfigError(
                f"ppo.rollout_batch_size and ppo.minibatch_size must be multiples of the {self.world} processes"
            )
        self._setup_optimizer(self._trainable_parameters, total_iterations)
        if settings.adaptive_kl:
            self.kl_controller = ppo_math.AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
        else:
            self.kl_controller = ppo_math.FixedKLController(settings.kl_coef)

    # ------------------------------------------------------------------------ models

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What trains, by a stable name (checkpoints): the policy's, the value LoRA's and the head's."""
        named = self._policy_parameters()
        self.value.lm.set_adapter(VALUE)
        named.update({f"value.{n}": p for n, p in self.value.lm.model.named_parameters() if p.requires_grad})
        named.update({f"value_head.{n}": p for n, p in self.value.head.named_parameters()})
        return named

    def _models(self) -> list[nn.Module]:
        return [self.policy.model, self.value.lm.model]

    def _shardable(self) -> dict[str, nn.Module]:  # FSDP2: the value base holds the frozen RM too
        return {**super()._shardable(), "value": self.value.lm.model, "value_head": self.value.head}

    def _bases(self) -> list[VideoLM]:
        return [self.policy, self.value.lm]

    def _take_full(self, full: nn.ModuleDict) -> None:
        super()._take_full(full)
        self.value.lm.model, self.value.head = full["value"], full["value_head"]

    # ------------------------------------------------------------------------ the value and reward passes

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
        """The no-grad passes over sampled answers (RLTrainer.scoring_passes), with values and scores."""

        def values_and_scores(chunk_examples, chunk_generations):
            return {
                "values": self.values(chunk_examples, [g.token_ids for g in chunk_generations]),
                "scores": self.scores(chunk_examples, [g.text for g in chunk_generations]),
            }

        passes = self.scoring_passes(examples, generations, extra=values_and_scores)
        return Rollouts(
            examples=list(examples),
            generations=list(generations),
            mask=passes["mask"],
            logprobs=passes["logprobs"],
            ref_logprobs=passes["ref_logprobs"],
            entropy=passes["entropy"],
            values=passes["values"],
            scores=passes["scores"],
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
            advantages = ppo_math.whiten(advantages, mask, across_processes=True, device=self.accelerator.device)
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
                        loss, stats = self._through_root(self.loss, rollouts, micro_members)
                        # The minibatch's gradient: micro-batches weighted by their share of its rollouts.
                        (loss * len(micro_members) / len(members)).backward()
                        for key, value in stats.items():
                            add(key, value)
                    add("grad_norm", self.optimizer_step())
        return {key: sums[key] / counts[key] for key in sums}

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
        self.update_engine()
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
        explained = ppo_math.explained_variance(
            r.values, r.returns, r.mask, across_processes=True, device=self.accelerator.device
        )
        metrics["explained_variance"] = explained.item()
        return metrics

    # ------------------------------------------------------------------------ checkpoints (RLTrainer's)

    def _checkpoint_state(self) -> dict:
        return {"kl_coef": self.kl_controller.value}

    def _restore_state(self, state: dict) -> None:
        self.kl_controller.value = float(state["kl_coef"])


# ---------------------------------------------------------------------------- run_ppo


def run_ppo(config: PPOConfig, *, reward_fn: RewardFn | None = None, overwrite: bool = False) -> dict:
    """Initialise the policy, then run PPO (see the module docstring); returns the summary (also in
    <out>/summary.json). reward_fn replaces the reward model (tests, custom rewards); a re-run on an
    unfinished output directory resumes from its newest checkpoint."""
    settings = config.ppo
    rl = open_rl_run(config, STAGE, overwrite=overwrite)  # every video opens before anything is written
    accelerator, out, policy, prompts = rl.accelerator, rl.out, rl.policy, rl.prompts
    value, reward_fn, reward_info = load_value_and_reward(config, policy, accelerator, rl.cache, reward_fn)
    plan = prompt_plan(len(prompts), settings, config.seed)
    trainer = PPOTrainer(
        policy, value, reward_fn, settings, reference=rl.reference, engine=make_rollout_engine(config, policy, out),
        accelerator=accelerator, seed=config.seed, total_iterations=len(plan),
    )
    layout = {"num_prompts": len(prompts), "rollout_batch_size": settings.rollout_batch_size, "seed": config.seed}
    start = resume(trainer, rl, layout)

    samples = JsonlWriter(out / "samples.jsonl") if rl.is_main else None
    started = time.time()
    for iteration in range(start, len(plan)):
        mine = [prompts[i] for i in plan[iteration][accelerator.process_index :: accelerator.num_processes]]
        rollouts, metrics = trainer.iteration(prompt_examples(mine, rl.store), iteration)
        done = iteration + 1
        if rl.is_main:
            # JSON has no NaN: an undefined metric (e.g. explained variance of constant returns) is null.
            rl.run.log_metrics(done, **{k: v if math.isfinite(v) else None for k, v in metrics.items()})
            rows = [_sample_row(done, mine[k], rollouts, k) for k in range(min(settings.log_samples, len(mine)))]
            for row in rows:
                samples.write(row)
            log_sample_table(rl.run, done, rows)  # the dashboards' table, every logging.samples_every iterations
            log.info(
                "iteration %d/%d: reward %.3f, kl %.3f, length %.1f, %.1f s",
                done, len(plan), metrics["reward_score"], metrics["kl"], metrics["response_length"], metrics["iteration_s"],
            )
        if settings.save_every and (done % settings.save_every == 0 or done == len(plan)):
            trainer.save_checkpoint(out / "checkpoints", done, settings.keep_checkpoints, layout)

    trainer.consolidate()  # FSDP2: the full weights, on the main process
    history = read_metrics(out / "metrics.jsonl") if rl.is_main else []
    init_summary = rl.init_summary
    summary = {
        "iterations": len(plan),
        "resumed_from_iteration": start or None,
        "prompts": len(prompts),
        "prompts_dropped": rl.prompts_dropped,
        # on_bad_video "skip": the RL prompts' and the initialisation data's skipped records
        "records_skipped": len(rl.skipped) + init_summary.get("records_skipped", 0),
        "skipped_records": (rl.skipped + init_summary.get("skipped_records", []))[:SKIPPED_LISTED],
        "init": init_summary,
        "reward": reward_info,
        **policy_outputs(policy, out),
        "policy_base": config.policy.model,
        "value": str(out / "value"),
        "first": _pick(history[0]) if history else None,
        "last": _pick(history[-1]) if history else None,
        "seconds": round(time.time() - started, 1),
    }
    if rl.is_main:
        samples.close()
        save_policy(policy, out)
        value.save(out / "value")
        summary = rl.run.finish(summary)
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


# Re-exported: tests, benchmarks and callers reach the shared settings and helpers through this module.
__all__ = [
    "POLICY",
    "REFERENCE",
    "VALUE",
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
    "cut_after_question_mark",
    "lr_multiplier",
    "prompt_plan",
    "question_mark_ids",
    "run_ppo",
]
