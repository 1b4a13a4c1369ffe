"""The formulas of PPO for language models, as pure tensor functions (no models, no I/O).

Shapes: B rollouts, R response positions (right-padded); `mask` (B, R) is True on real response
tokens (the EOS token included when the response ended with one). Padding never counts in a mean,
a statistic or a loss. Response token t is the action taken in state "prompt + tokens < t"; its
value estimate V_t is read at the position that predicts token t.

Per-rollout reward, as the paper's public code shapes it (docs/method.md, stage 3):
    R_seq = score + no_eos_penalty * [no EOS] + length_penalty * len / max_new_tokens
Per-token rewards: r_t = -kl_coef * KL_t on every real token, plus R_seq on the last real token.
GAE (gamma, lambda): delta_t = r_t + gamma V_{t+1} - V_t (V past the last token = 0),
    A_t = delta_t + gamma lambda A_{t+1};  returns G_t = A_t + V_t.
With gamma = lambda = 1 (the paper): A_t = sum_{k >= t} r_k - V_t.
Clipped losses (Schulman et al. 2017), token means over real tokens:
    policy: mean(max(-A rho, -A clip(rho, 1 - eps, 1 + eps))), rho = exp(logp - logp_old);
    value:  0.5 mean(max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from vlm_rlaif.train import collectives
from vlm_rlaif.train.collectives import Device

KLEstimator = Literal["clamped", "k1", "k3"]
KL_ESTIMATORS = ("clamped", "k1", "k3")


# ---------------------------------------------------------------------------- masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the True positions (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_mean_var(
    values: torch.Tensor, mask: torch.Tensor, *, across_processes: bool = False, device: Device = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance over the True positions.

    across_processes: when torch.distributed is initialised, the statistics are those of all
    processes' values together (their sums are all-reduced on `device`, the accelerator's: see
    train/collectives.py), so every process whitens alike.
    """
    mask = mask.to(values.dtype)
    # float64 sums: sum of squares minus squared sum loses little even for large batches.
    sums = torch.stack([(values * mask).sum(), (values * values * mask).sum(), mask.sum()]).double()
    if across_processes:
        collectives.all_reduce_sum_(sums, device)
    total, total_sq, count = sums.unbind()
    count = count.clamp(min=1.0)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)
    return mean.to(values.dtype), var.to(values.dtype)


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
    across_processes: bool = False,
    device: Device = None,
) -> torch.Tensor:
    """(values - mean) / (std + eps) over the True positions (0 on padding).

    shift_mean=False adds the mean back (rescales without centring).
    """
    mean, var = masked_mean_var(values, mask, across_processes=across_processes, device=device)
    whitened = (values - mean) / (var.sqrt() + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def explained_variance(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    across_processes: bool = False,
    device: Device = None,
) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns): 1 for a perfect value model, 0 for a constant one;
    NaN when the returns do not vary (undefined)."""
    _, var_returns = masked_mean_var(returns, mask, across_processes=across_processes, device=device)
    _, var_error = masked_mean_var(returns - values, mask, across_processes=across_processes, device=device)
    if var_returns.item() < 1e-12:
        return torch.tensor(float("nan"))
    return 1.0 - var_error / var_returns


# ---------------------------------------------------------------------------- log-probabilities


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities (B, R) of `targets` under softmax(logits / temperature), from logits
    (B, R, V) aligned with the targets; 0 on padding.

    The temperature is the one the rollouts were sampled at, so importance ratios and KL are those of
    the distribution that produced the tokens.
    """
    logits = logits.float() / temperature
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return logprobs * mask.to(logprobs.dtype)


def entropy(logits: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (B, R) of softmax(logits / temperature) at every position; 0 on padding."""
    logits = logits.float() / temperature
    log_norm = logits.logsumexp(dim=-1)
    probs = (logits - log_norm.unsqueeze(-1)).exp()
    return (log_norm - (probs * logits).sum(dim=-1)) * mask.to(log_norm.dtype)


# ---------------------------------------------------------------------------- rewards


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "clamped") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens.

    "clamped": max(logp - logp_ref, 0), the paper's code (never rewards moving below the reference);
    "k1": logp - logp_ref (unbiased, can be negative);
    "k3": (rho - 1) - log rho with rho = p_ref / p (unbiased, always >= 0; Schulman's k3).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "clamped":
        return log_ratio.clamp(min=0.0)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}")


def sequence_rewards(
    scores: torch.Tensor,
    ended_with_eos: torch.Tensor,
    lengths: torch.Tensor,
    *,
    max_new_tokens: int,
    no_eos_penalty: float,
    length_penalty: float,
) -> torch.Tensor:
    """Per-rollout reward (B,): score + no_eos_penalty if no EOS + length_penalty * len / max_new_tokens."""
    no_eos = (~ended_with_eos.bool()).to(scores.dtype)
    return scores + no_eos_penalty * no_eos + length_penalty * lengths.to(scores.dtype) / max_new_tokens


def token_rewards(seq_rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, R): -kl_coef * kl on real tokens, plus the rollout's reward on its last
    real token (the EOS, or the last token of a truncated response)."""
    mask_f = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask_f
    last = last_positions(mask)
    rewards[torch.arange(len(last)), last] += seq_rewards.to(rewards.dtype)
    return rewards


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position per row (rows must have one)."""
    lengths = mask.long().sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a rollout has an empty response")
    return lengths - 1


# ---------------------------------------------------------------------------- advantages


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses: (advantages, returns), 0 on padding.

    Rewards and values on padding are treated as 0, so the value after the last real token is 0
    (the episode ends there) and nothing flows back from the padding.
    """
    mask_f = mask.to(values.dtype)
    rewards = rewards * mask_f
    values = values * mask_f
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_values = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_values = values[:, t]
    advantages = advantages * mask_f
    return advantages, (advantages + values) * mask_f


# ---------------------------------------------------------------------------- losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss; stats: clip_fraction (share of tokens whose clipped term is taken) and
    approx_kl = 0.5 mean((logp - logp_old)^2) (the paper's code's approximation)."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio.float() ** 2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (new values may move at most clip_range from the rollout's); stats:
    value_clip_fraction."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    losses = (values - returns) ** 2
    clipped_losses = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(losses, clipped_losses), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped_losses > losses).float(), mask)}
    return loss, stats


# ---------------------------------------------------------------------------- KL coefficient


class FixedKLController:
    """A constant KL coefficient (the paper: 0.1)."""

    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, num_rollouts: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so the per-rollout KL approaches `target`.

    value *= 1 + clip(kl / target - 1, -0.2, 0.2) * num_rollouts / horizon
    """

    def __init__(self, value: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = value
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, num_rollouts: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_rollouts / self.horizon


__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLEstimator",
    "explained_variance",
    "gae",
    "kl_penalty",
    "last_positions",
    "entropy",
    "masked_mean",
    "masked_mean_var",
    "policy_loss",
    "sequence_rewards",
    "token_logprobs",
    "token_rewards",
    "value_loss",
    "whiten",
]
