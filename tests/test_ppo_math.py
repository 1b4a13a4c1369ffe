"""PPO formulas against values computed by hand (see the comments for the arithmetic)."""

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vlm_rlaif.train import ppo_math as pm

# Two rollouts: the first has 3 response tokens, the second 2 (its third column is padding and holds
# garbage that must never matter).
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 123.0]])
    values = torch.tensor([[0.5, 0.2, 1.0], [0.3, 0.4, 9.0]])
    advantages, returns = pm.gae(rewards, values, MASK, gamma=0.9, lam=0.8)
    # Row 0, V after the end = 0, gamma*lam = 0.72:
    #   t2: delta = 2 - 1.0 = 1.0                 A = 1.0
    #   t1: delta = 0 + 0.9*1.0 - 0.2 = 0.7       A = 0.7 + 0.72*1.0 = 1.42
    #   t0: delta = 1 + 0.9*0.2 - 0.5 = 0.68      A = 0.68 + 0.72*1.42 = 1.7024
    # Row 1 ends at t1:
    #   t1: delta = 1 - 0.4 = 0.6                 A = 0.6
    #   t0: delta = 0.5 + 0.9*0.4 - 0.3 = 0.56    A = 0.56 + 0.72*0.6 = 0.992
    expected_adv = torch.tensor([[1.7024, 1.42, 1.0], [0.992, 0.6, 0.0]])
    expected_ret = torch.tensor([[2.2024, 1.62, 2.0], [1.292, 1.0, 0.0]])
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 123.0]])
    values = torch.tensor([[0.5, 0.2, 1.0], [0.3, 0.4, 9.0]])
    advantages, returns = pm.gae(rewards, values, MASK, gamma=1.0, lam=1.0)
    # reward-to-go: row 0 [3, 2, 2], row 1 [1.5, 1]
    torch.testing.assert_close(advantages, torch.tensor([[2.5, 1.8, 1.0], [1.2, 0.6, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 2.0], [1.5, 1.0, 0.0]]))


def test_policy_loss_matches_hand_computation():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 7.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    new = old + ratios.log()
    advantages = torch.tensor([[1.0, 1.0, -2.0, 50.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = pm.policy_loss(new, old, advantages, mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped term taken); token 1: max(-0.5, -0.8) = -0.5;
    # token 2: max(2, 2) = 2; the padded token 3 is ignored. Mean = 0.3 / 3 = 0.1.
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + 0.0) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)


def test_policy_loss_gradient_is_minus_advantage_inside_the_clip_range():
    old = torch.tensor([[-1.0, -2.0]])
    new = old.clone().requires_grad_(True)
    advantages = torch.tensor([[0.7, -0.3]])
    loss, _ = pm.policy_loss(new, old, advantages, torch.ones(1, 2, dtype=torch.bool), clip_range=0.2)
    loss.backward()
    # At ratio 1 the loss is -mean(A * exp(new - old)): d/d new_t = -A_t / 2.
    torch.testing.assert_close(new.grad, torch.tensor([[-0.35, 0.15]]))


def test_value_loss_matches_hand_computation_and_clipping_blocks_the_gradient():
    old = torch.tensor([[1.0, 1.0, 5.0]])
    returns = torch.tensor([[2.0, 0.0, 5.0]])
    new = torch.tensor([[1.5, 0.5, 99.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss, stats = pm.value_loss(new, old, returns, mask, clip_range=0.2)
    # clipped values [1.2, 0.8]; unclipped errors 0.25, 0.25; clipped errors 0.64, 0.64
    # -> 0.5 * mean(0.64, 0.64) = 0.32, both tokens take the clipped term.
    assert loss.item() == pytest.approx(0.32)
    assert stats["value_clip_fraction"].item() == 1.0
    loss.backward()
    assert torch.count_nonzero(new.grad) == 0  # the clipped term does not depend on the new values

    inside = torch.tensor([[1.1, 0.9]], requires_grad=True)
    loss, stats = pm.value_loss(inside, old[:, :2], returns[:, :2], mask[:, :2], clip_range=0.2)
    # (1.1-2)^2 = 0.81, 0.9^2 = 0.81 -> 0.5 * 0.81 = 0.405; gradient 0.5 * 2 (v - G) / 2 = (v - G) / 2
    assert loss.item() == pytest.approx(0.405)
    loss.backward()
    torch.testing.assert_close(inside.grad, torch.tensor([[-0.45, 0.45]]))


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    # logp - ref = [0.5, -1.0, 0.0]
    torch.testing.assert_close(pm.kl_penalty(logp, ref, "clamped"), torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(pm.kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0, 0.0]))
    # k3 = (rho - 1) - log rho, rho = p_ref / p = exp(ref - logp)
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
    torch.testing.assert_close(pm.kl_penalty(logp, ref, "k3"), torch.tensor(k3))
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'"):
        pm.kl_penalty(logp, ref, "k2")


def test_sequence_and_token_rewards():
    scores = torch.tensor([1.0, 2.0])
    ended = torch.tensor([True, False])
    lengths = torch.tensor([3, 2])
    seq = pm.sequence_rewards(scores, ended, lengths, max_new_tokens=4, no_eos_penalty=-8.0, length_penalty=-10.0)
    # row 0: 1 - 10 * 3/4 = -6.5; row 1: 2 - 8 - 10 * 2/4 = -11
    torch.testing.assert_close(seq, torch.tensor([-6.5, -11.0]))
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    rewards = pm.token_rewards(seq, kl, MASK, kl_coef=0.1)
    # -0.1 * kl everywhere real, the sequence reward on the last real token, 0 on padding.
    expected = torch.tensor([[-0.01, -0.02, -0.03 - 6.5], [-0.04, -0.05 - 11.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_whiten_is_masked_and_shift_mean_keeps_the_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 1000.0]])
    white = pm.whiten(values, MASK)
    real = white[MASK]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert white[1, 2].item() == 0.0
    kept = pm.whiten(values, MASK, shift_mean=False)
    assert kept[MASK].mean().item() == pytest.approx(3.0, abs=1e-5)  # mean of 1..5
    # all-equal values (e.g. zero advantages) whiten to zero, not NaN
    assert torch.equal(pm.whiten(torch.zeros(2, 3), MASK), torch.zeros(2, 3))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, -7.0]])
    assert pm.explained_variance(returns, returns, MASK).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, 3.0)
    assert pm.explained_variance(constant, returns, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(pm.explained_variance(returns, constant, MASK).item())  # returns without variance


def test_token_logprobs_and_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    logprobs = pm.token_logprobs(logits, targets, MASK, temperature=0.5)
    reference = torch.log_softmax(logits / 0.5, dim=-1)
    expected = reference.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * MASK
    torch.testing.assert_close(logprobs, expected)
    expected_entropy = -(reference.exp() * reference).sum(-1) * MASK
    torch.testing.assert_close(pm.entropy(logits, MASK, temperature=0.5), expected_entropy)
    uniform = pm.entropy(torch.zeros(1, 1, 7), torch.ones(1, 1, dtype=torch.bool))
    assert uniform.item() == pytest.approx(math.log(7))


def test_last_positions_and_empty_response():
    assert pm.last_positions(MASK).tolist() == [2, 1]
    with pytest.raises(ValueError, match="empty response"):
        pm.last_positions(torch.tensor([[True], [False]]))


def test_kl_controllers():
    fixed = pm.FixedKLController(0.1)
    fixed.update(100.0, 256)
    assert fixed.value == 0.1
    adaptive = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    adaptive.update(12.0, 256)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 256 / 10000)
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    adaptive.update(3.0, 1000)  # error -0.5 clipped to -0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 0.0256) * (1 - 0.2 * 0.1))


def _whiten_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]) + 10.0 * rank
        mask = torch.tensor([[True, True, False], [True, rank == 0, True]])
        mean, var = pm.masked_mean_var(values, mask, across_processes=True)
        queue.put((rank, mean.item(), var.item()))
    finally:
        torch.distributed.destroy_process_group()


def test_whitening_statistics_are_gathered_across_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_whiten_worker, args=(2, port, queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    # all real values of both processes: rank 0 [1, 2, 4, 5, 6], rank 1 [11, 12, 14, 16]
    together = torch.tensor([1.0, 2.0, 4.0, 5.0, 6.0, 11.0, 12.0, 14.0, 16.0])
    for _, mean, var in results:
        assert mean == pytest.approx(together.mean().item(), rel=1e-6)
        assert var == pytest.approx(together.var(unbiased=False).item(), rel=1e-5)
