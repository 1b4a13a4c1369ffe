"""GRPO: group-relative policy optimisation of the policy against pluggable rewards (train/rewards.py).

    config = load_config(GRPOConfig, "recipes/toy.yaml", section="grpo")
    summary = run_grpo(config)      # <out>/policy_adapter, metrics.jsonl, samples.jsonl, summary.json

Shao et al. (2024, DeepSeekMath), the algorithm Video-R1 and its successors tune video LMMs with, on
PPO's parts (train/rollouts.py): the policy base with LoRA "policy" (trains) and "reference"
(frozen), one FeatureCache (a prompt's video is encoded once, in the rollout; every later pass, the
grad-enabled loss forward included, splices the cached features), `accelerate launch`. No value model.

Top to bottom:
1. Policy initialisation as PPO's (train/ppo_setup.py): a fresh LoRA SFT-trained on the RL prompts'
   reference answers; the reference is that adapter, frozen; the policy starts as a copy of it.
2. Every iteration takes `prompts_per_iteration` prompts (one shuffled pass per epoch), split across
   processes; a prompt's group lives on one process:
   a. G = group_size sampled answers per prompt (temperature, top-p as PPO; seeded by seed,
      iteration and process, so a resumed run samples what the interrupted one would have);
   b. no-grad passes: the policy's log-probabilities (the "old" policy of the ratio) and the
      reference's (skipped when kl_coef is 0);
   c. rewards: the components' weighted sum, plus no_eos_penalty for a response without EOS; a
      response with a None reward is dropped from its group's statistics and from the loss, counted;
   d. group advantages: A_i = r_i - mean(r of the group), divided by std(r of the group) + 1e-4 when
      scale_rewards (GRPO; sample std, as TRL). Dr. GRPO (Liu et al., 2025) found the division
      biased (groups of near-equal rewards weigh most) and drops it: scale_rewards false. A_i is
      every token's advantage;
   e. updates_per_batch passes (mu in the paper) over shuffled minibatches, each token's loss
          l_t = -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + kl_coef * k3_t,
          rho_t = exp(logp_t - logp_old_t),  k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1,
      aggregated "sequence"-level (GRPO: mean over each response's tokens, then over responses) or
      "token"-level (DAPO, Yu et al., 2025: mean over all the minibatch's tokens), the denominators
      counting the minibatch over all processes; gradients averaged over processes and clipped;
   f. the learning rate (warm-up, then the schedule) steps once per iteration.
3. Metrics per iteration (metrics.jsonl), the first rollouts of each iteration (samples.jsonl), a
   checkpoint every `save_every` iterations; a re-run on the directory resumes from the newest one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vlm_rlaif.data.jsonio import JsonlWriter
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, VideoExample
from vlm_rlaif.rollout.engine import RolloutEngine
from vlm_rlaif.rundir import read_metrics
from vlm_rlaif.train import collectives, ppo_math
from vlm_rlaif.train.data import SKIPPED_LISTED
from vlm_rlaif.train.ppo_setup import (
    DataSettings,
    InitSettings,
    PolicySettings,
    Prompt,
    RuntimeSettings,
    check_policy_settings,
    initialises,
    num_frames_of,
    policy_inputs,
    prompt_examples,
)
from vlm_rlaif.train.rewards import RewardSpec, build_rewards
from vlm_rlaif.train.rollouts import (
    RLTrainer,
    make_rollout_engine,
    open_rl_run,
    plan_prompts,
    policy_outputs,
    resume,
    save_policy,
)
from vlm_rlaif.train.tracking import LoggingSettings, log_sample_table

log = logging.getLogger(__name__)

STAGE = "grpo"
ADVANTAGE_EPS = 1e-4  # added to the group's std, as TRL

# (prompts, examples, response texts) -> (reward or None per response, each component's values by name)
GroupRewardFn = Callable[
    [Sequence[Prompt], Sequence[VideoExample], Sequence[str]], tuple[list[float | None], dict[str, list[float | None]]]
]


# ---------------------------------------------------------------------------- config


@dataclass
class GRPOSettings:
    """Batch sizes count rollouts (prompts x group_size) over all processes, except micro_batch_size,
    forward_batch_size and generation_batch_size (per process, per call). stop_at_question_mark and
    top_p as PPO's (train/ppo.py)."""

    prompts_per_iteration: int = 16
    group_size: int = 8
    minibatch_size: int = 64
    micro_batch_size: int = 8
    forward_batch_size: int = 16
    generation_batch_size: int = 16
    updates_per_batch: int = 1
    epochs: int = 1  # passes over the RL prompts
    max_iterations: int = 0  # > 0: stop after this many iterations
    max_new_tokens: int = 896
    temperature: float = 1.0
    top_p: float = 1.0
    stop_at_question_mark: bool = False
    clip_range: float = 0.2
    kl_coef: float = 0.04  # beta; 0 skips the reference pass
    scale_rewards: bool = True  # divide by the group's std (GRPO); false: Dr. GRPO
    loss_normalization: Literal["sequence", "token"] = "sequence"
    no_eos_penalty: float = 0.0
    lr: float = 1e-5
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_iterations: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 10
    keep_checkpoints: int = 2
    log_samples: int = 4

    def __post_init__(self):
        positive = ("prompts_per_iteration", "group_size", "minibatch_size", "micro_batch_size", "forward_batch_size",
                    "generation_batch_size", "updates_per_batch", "epochs", "max_new_tokens", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ConfigError("grpo.group_size must be >= 2: a group of one has no relative advantage")
        if self.rollout_batch_size % self.minibatch_size:
            raise ConfigError(
                f"grpo: prompts_per_iteration x group_size ({self.rollout_batch_size}) must be a multiple of "
                f"grpo.minibatch_size ({self.minibatch_size})"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("grpo.temperature must be > 0 (GRPO samples) and grpo.top_p in (0, 1]")
        if min(self.max_iterations, self.warmup_iterations, self.save_every, self.log_samples, self.kl_coef,
               self.max_grad_norm, self.weight_decay, self.clip_range) < 0 or self.lr <= 0:
            raise ConfigError("grpo: iteration counts, kl_coef, max_grad_norm, weight_decay, clip_range must be >= 0, lr > 0")

    @property
    def rollout_batch_size(self) -> int:
        return self.prompts_per_iteration * self.group_size


@dataclass
class GRPOConfig:
    out: str = "runs/grpo"
    seed: int = 0
    policy: PolicySettings = field(default_factory=PolicySettings)
    init: InitSettings = field(default_factory=InitSettings)
    rewards: list[RewardSpec] = field(default_factory=list)
    data: DataSettings = field(default_factory=DataSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        check_policy_settings(self, STAGE)
        if not self.rewards:
            raise ConfigError("grpo: rewards is empty; list at least one {kind: reward_model | oracle | python | judge}")

    @property
    def initialises(self) -> bool:
        """Whether this run reads data.init_data: only until the initialisation has finished."""
        return initialises(self)

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        rewards = {f"rewards.{i}.{key}": getattr(spec, key) for i, spec in enumerate(self.rewards)
                   for key in ("model", "toy_dir") if getattr(spec, key)}
        return {**policy_inputs(self), **rewards}


# ---------------------------------------------------------------------------- the formulas


def group_advantages(
    rewards: Sequence[float | None], group_size: int, *, scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage (N,), valid (N,)) of N rewards listed group by group. A None reward is not valid:
    it is left out of its group's mean and std, and its advantage is 0. A group with one valid reward
    has std 0 and advantage 0."""
    r = torch.tensor([math.nan if x is None else float(x) for x in rewards], dtype=torch.float64).view(-1, group_size)
    valid = ~torch.isnan(r)
    count = valid.sum(dim=1, keepdim=True)
    mean = torch.where(valid, r, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(valid, r - mean, 0.0)
    if scale:
        std = ((centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        centred = centred / (std + ADVANTAGE_EPS)
    return centred.reshape(-1).float(), valid.reshape(-1)


def token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO losses (B, R), 0 where mask is False, and sums for the statistics (clipped
    tokens, the k3 KL, 0.5 (logp - logp_old)^2)."""
    mask_f = mask.to(logprobs.dtype)
    advantage = advantages.to(logprobs.dtype).unsqueeze(1)
    ratio = (logprobs - old_logprobs).exp()
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantage
    losses = -torch.minimum(unclipped, clipped)
    kl = ppo_math.kl_penalty(logprobs, ref_logprobs, "k3")
    if kl_coef:
        losses = losses + kl_coef * kl
    with torch.no_grad():
        sums = {
            "clip_fraction": ((clipped < unclipped).to(mask_f.dtype) * mask_f).sum(),
            "kl_per_token": (kl * mask_f).sum(),
            "approx_kl": (0.5 * (logprobs - old_logprobs) ** 2 * mask_f).sum(),
        }
    return losses * mask_f, sums


# ---------------------------------------------------------------------------- the trainer


@dataclass
class GroupRollouts:
    """One iteration's rollouts on this process, group by group (G consecutive rows per prompt).
    Tensors are on the CPU: (N, R) per token, (N,) per response; rewards NaN where None."""

    examples: list[VideoExample]
    generations: list[Generation]
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    rewards: torch.Tensor
    components: dict[str, list[float | None]]
    advantages: torch.Tensor
    valid: torch.Tensor

    @property
    def responses(self) -> list[list[int]]:
        return [g.token_ids for g in self.generations]

    def __len__(self) -> int:
        return len(self.generations)


class GRPOTrainer(RLTrainer):
    """The GRPO loop over an already built policy (see the module docstring); sampling, the policy and
    reference passes, the optimizer step and checkpoints are RLTrainer's. rewards: a GroupRewardFn
    (train/rewards.py WeightedRewards)."""

    def __init__(
        self,
        policy: VideoLM,
        rewards: GroupRewardFn,
        settings: GRPOSettings,
        *,
        reference: VideoLM | None = None,
        engine: RolloutEngine | None = None,
        accelerator=None,
        seed: int = 0,
        total_iterations: int = 1,
    ):
        super().__init__(policy, settings, reference=reference, engine=engine, accelerator=accelerator, seed=seed)
        self.rewards = rewards
        self.generation_s = 0.0  # the last rollouts' sampling time (metrics)
        if settings.prompts_per_iteration % self.world or settings.minibatch_size % self.world:
            raise ConfigError(
                f"grpo.prompts_per_iteration and grpo.minibatch_size must be multiples of the {self.world} processes"
            )
        self._setup_optimizer(self._policy_parameters, total_iterations)

    def rollouts(self, prompts: Sequence[Prompt], examples: Sequence[VideoExample], iteration: int) -> GroupRollouts:
        """Steps a to d for this process's prompts (examples: one per prompt)."""
        s = self.settings
        group_examples = [e for e in examples for _ in range(s.group_size)]
        group_prompts = [p for p in prompts for _ in range(s.group_size)]
        started = time.time()
        generations = self.generate(group_examples, iteration)
        self.generation_s = time.time() - started
        passes = self.scoring_passes(group_examples, generations, reference=s.kl_coef > 0)
        with torch.no_grad():
            totals, components = self.rewards(group_prompts, group_examples, [g.text for g in generations])
        totals = [None if r is None else r + (0.0 if g.ended_with_eos else s.no_eos_penalty)
                  for r, g in zip(totals, generations)]
        advantages, valid = group_advantages(totals, s.group_size, scale=s.scale_rewards)
        return GroupRollouts(
            examples=group_examples, generations=generations, mask=passes["mask"], logprobs=passes["logprobs"],
            ref_logprobs=passes["ref_logprobs"], entropy=passes["entropy"],
            rewards=torch.tensor([math.nan if r is None else r for r in totals]), components=components,
            advantages=advantages, valid=valid,
        )

    def loss(
        self, rollouts: GroupRollouts, members: Sequence[int], denominator: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's share of a minibatch's loss: its members' token (or per-response mean)
        losses summed, over the minibatch's `denominator` (tokens or responses, all processes),
        times the processes (their gradients are averaged). Invalid responses weigh 0."""
        s = self.settings
        batch = self.policy.collate_with_responses(
            [rollouts.examples[i] for i in members], [rollouts.responses[i] for i in members]
        )
        width = batch["response_mask"].shape[1]
        rows = torch.as_tensor(list(members))
        self._activate_policy()
        logprobs, _ = self.policy_logprobs(self.policy, batch)  # the video's cached features, with grad
        device = logprobs.device
        mask = batch["response_mask"].to(device) & rollouts.valid[rows].to(device).unsqueeze(1)
        losses, sums = token_losses(
            logprobs, rollouts.logprobs[rows, :width].to(device), rollouts.ref_logprobs[rows, :width].to(device),
            rollouts.advantages[rows].to(device), mask, clip_range=s.clip_range, kl_coef=s.kl_coef,
        )
        if s.loss_normalization == "sequence":
            total = (losses.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
        else:
            total = losses.sum()
        stats = {k: float(v) for k, v in sums.items()}
        stats["tokens"] = float(mask.sum())
        return total * self.world / denominator, stats

    def _denominator(self, rollouts: GroupRollouts, members: Sequence[int]) -> float:
        """The minibatch's valid responses ("sequence") or valid tokens ("token"), over all processes."""
        rows = torch.as_tensor(list(members))
        valid = rollouts.valid[rows]
        counts = torch.tensor([float(valid.sum()), float((rollouts.mask[rows] & valid.unsqueeze(1)).sum())],
                              dtype=torch.float64)
        if self.world > 1:
            collectives.all_reduce_sum_(counts, self.accelerator.device)
        return float(counts[0] if self.settings.loss_normalization == "sequence" else counts[1])

    def update(self, rollouts: GroupRollouts, iteration: int) -> dict[str, float]:
        """updates_per_batch passes over shuffled minibatches; returns this process's statistic sums."""
        s = self.settings
        local_minibatch = s.minibatch_size // self.world
        rng = np.random.default_rng([self.seed, iteration, self.rank, 1])
        sums: dict[str, float] = {"tokens": 0.0, "grad_norm": 0.0, "steps": 0.0}
        with self._mode(training=True):
            for _ in range(s.updates_per_batch):
                order = rng.permutation(len(rollouts)).tolist()
                for start in range(0, len(order), local_minibatch):
                    members = order[start : start + local_minibatch]
                    denominator = self._denominator(rollouts, members)
                    if denominator == 0:  # no valid response anywhere: every process skips the step alike
                        continue
                    for micro in range(0, len(members), s.micro_batch_size):
                        micro_members = members[micro : micro + s.micro_batch_size]
                        loss, stats = self._through_root(self.loss, rollouts, micro_members, denominator)
                        loss.backward()
                        for key, value in stats.items():
                            sums[key] = sums.get(key, 0.0) + value
                    sums["grad_norm"] += self.optimizer_step()
                    sums["steps"] += 1
        return sums

    def iteration(
        self, prompts: Sequence[Prompt], examples: Sequence[VideoExample], iteration: int
    ) -> tuple[GroupRollouts, dict[str, float]]:
        """Rollouts, rewards, advantages and the update for this process's prompts; returns the
        rollouts and the iteration's metrics (reduced over processes)."""
        started = time.time()
        rollouts = self.rollouts(prompts, examples, iteration)
        scored = time.time()
        lr = self.scheduler.get_last_lr()[0]
        update_sums = self.update(rollouts, iteration)
        self.scheduler.step()
        self.update_engine()
        finished = time.time()
        metrics = self._metrics(rollouts, update_sums)
        metrics.update(
            lr=lr,
            tokens_per_s=metrics["generated_tokens"] / max(self.generation_s, 1e-9),  # as PPO's: generation only
            generation_s=self.generation_s,
            scoring_s=scored - started - self.generation_s,  # the no-grad passes and the rewards
            update_s=finished - scored,
            iteration_s=finished - started,
        )
        return rollouts, metrics

    def _metrics(self, r: GroupRollouts, update: dict[str, float]) -> dict[str, float]:
        mask = r.mask.float()
        valid = r.valid.float()
        lengths = mask.sum(dim=1)
        groups = r.valid.view(-1, self.settings.group_size)
        spread = torch.nan_to_num(r.rewards).view(groups.shape)
        # A group teaches nothing when fewer than two valid rewards differ (every advantage is 0).
        flat = [bool(len(set(row[g].tolist())) < 2) for row, g in zip(spread, groups)]
        kl = (r.ref_logprobs - r.logprobs).exp() - (r.ref_logprobs - r.logprobs) - 1
        totals = {  # summed over processes
            "rewards_none": float(len(r) - valid.sum()),
            "rollouts": float(len(r)),
            "generated_tokens": float(mask.sum()),
        }
        sums = {  # (numerator, denominator), each summed over processes
            "reward_score": (float(torch.nan_to_num(r.rewards).sum()), float(valid.sum())),
            "groups_without_signal": (float(sum(flat)), float(len(flat))),
            "advantage_abs": (float(r.advantages.abs().sum()), float(valid.sum())),
            "response_length": (float(lengths.sum()), float(len(r))),
            "eos_fraction": (float(sum(g.ended_with_eos for g in r.generations)), float(len(r))),
            "entropy": (float((r.entropy * mask).sum()), float(mask.sum())),
            "clip_fraction": (update.get("clip_fraction", 0.0), update["tokens"]),
            "approx_kl": (update.get("approx_kl", 0.0), update["tokens"]),
            "kl_update_per_token": (update.get("kl_per_token", 0.0), update["tokens"]),
            "grad_norm": (update["grad_norm"], update["steps"]),
        }
        if self.settings.kl_coef > 0:
            sums["kl"] = (float((kl * mask).sum()), float(len(r)))  # k3 summed over each response, mean
        for name, values in r.components.items():
            given = [v for v in values if v is not None]
            sums[f"reward_{name}"] = (float(sum(given)), float(len(given)))
            totals[f"reward_{name}_none"] = float(len(values) - len(given))
        # A total is a ratio whose denominators sum to 1 over the processes: one all-reduce for both.
        sums.update({k: (v, 1.0 / self.world) for k, v in totals.items()})
        return self._reduce_ratios(sums)


# ---------------------------------------------------------------------------- run_grpo


def run_grpo(config: GRPOConfig, *, overwrite: bool = False) -> dict:
    """Initialise the policy, then run GRPO (see the module docstring); returns the summary (also in
    <out>/summary.json). A re-run on an unfinished output directory resumes from its newest checkpoint."""
    settings = config.grpo
    rl = open_rl_run(config, STAGE, overwrite=overwrite)  # every video opens before anything is written
    accelerator, out, policy, prompts = rl.accelerator, rl.out, rl.policy, rl.prompts
    rewards = build_rewards(config.rewards, accelerator=accelerator, runtime=config.runtime, cache=rl.cache,
                            batch_size=settings.forward_batch_size, out=out)
    for info in rewards.info():
        if info.get("frames") and info["frames"] != num_frames_of(config, policy):
            log.warning("reward %s was trained on %d frames per video, GRPO samples %d",
                        info["name"], info["frames"], num_frames_of(config, policy))
    plan = plan_prompts(len(prompts), settings.prompts_per_iteration, epochs=settings.epochs,
                        max_iterations=settings.max_iterations, seed=config.seed, key="grpo.prompts_per_iteration")
    trainer = GRPOTrainer(
        policy, rewards, settings, reference=rl.reference, engine=make_rollout_engine(config, policy, out),
        accelerator=accelerator, seed=config.seed, total_iterations=len(plan),
    )
    layout = {"num_prompts": len(prompts), "prompts_per_iteration": settings.prompts_per_iteration,
              "group_size": settings.group_size, "seed": config.seed}
    start = resume(trainer, rl, layout)

    samples = JsonlWriter(out / "samples.jsonl") if rl.is_main else None
    started = time.time()
    for iteration in range(start, len(plan)):
        mine = [prompts[i] for i in plan[iteration][accelerator.process_index :: accelerator.num_processes]]
        rollouts, metrics = trainer.iteration(mine, prompt_examples(mine, rl.store), iteration)
        done = iteration + 1
        if rl.is_main:
            rl.run.log_metrics(done, **{k: v if math.isfinite(v) else None for k, v in metrics.items()})
            rows = [_sample_row(done, mine[k // settings.group_size], rollouts, k)
                    for k in range(min(settings.log_samples, len(rollouts)))]
            for row in rows:
                samples.write(row)
            log_sample_table(rl.run, done, rows)  # the dashboards' table, every logging.samples_every iterations
            log.info(
                "iteration %d/%d: reward %.3f (%d none), length %.1f, %.1f s",
                done, len(plan), metrics["reward_score"], metrics["rewards_none"], metrics["response_length"],
                metrics["iteration_s"],
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
        "rollouts": len(plan) * settings.rollout_batch_size,
        "rewards_none": int(sum(row.get("rewards_none") or 0 for row in history)),
        # on_bad_video "skip": the RL prompts' and the initialisation data's skipped records
        "records_skipped": len(rl.skipped) + init_summary.get("records_skipped", 0),
        "skipped_records": (rl.skipped + init_summary.get("skipped_records", []))[:SKIPPED_LISTED],
        "init": init_summary,
        "rewards": rewards.info(),
        **policy_outputs(policy, out),
        "policy_base": config.policy.model,
        "first": _pick(history[0]) if history else None,
        "last": _pick(history[-1]) if history else None,
        "seconds": round(time.time() - started, 1),
    }
    if rl.is_main:
        samples.close()
        save_policy(policy, out)
        summary = rl.run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


def _pick(row: dict) -> dict:
    keys = ("step", "reward_score", "rewards_none", "kl", "response_length", "eos_fraction", "entropy")
    return {k: row[k] for k in keys if k in row}


def _sample_row(iteration: int, prompt: Prompt, rollouts: GroupRollouts, k: int) -> dict:
    generation = rollouts.generations[k]
    reward = float(rollouts.rewards[k])
    return {
        "iteration": iteration,
        "id": prompt.id,
        "question": prompt.question,
        "response": generation.text,
        "reward": reward if math.isfinite(reward) else None,
        "components": {name: values[k] for name, values in rollouts.components.items()},
        "advantage": float(rollouts.advantages[k]),
        "ended_with_eos": generation.ended_with_eos,
        "length": len(generation.token_ids),
    }


__all__ = [
    "GRPOConfig",
    "GRPOSettings",
    "GRPOTrainer",
    "GroupRewardFn",
    "GroupRollouts",
    "group_advantages",
    "run_grpo",
    "token_losses",
]
