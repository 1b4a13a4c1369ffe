"""Every collective runs on the accelerator's device (train/collectives.py).

Multi-GPU PPO used to crash on its first iteration: the rollout statistics (advantage whitening,
metric means) were all-reduced as CPU tensors, and NCCL takes CUDA tensors only. The 2-process gloo
tests cannot see that, so here torch.distributed is replaced by a fake NCCL of two identical
processes that rejects any tensor not on the accelerator's device, and PPO's and GRPO's statistics,
whitening and gradient averaging run through it. A machine without GPUs has no second real device:
the fake accelerator device is "meta", and Tensor.to(meta) is patched to return a marked copy that
keeps its values (a real meta tensor has none). The old code fails here with NCCL's own message.
A source check keeps every other module from calling a collective directly.
"""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_grpo import build_trainer as build_grpo_trainer
from test_grpo import prompt_records, red_rewards
from test_ppo import build_trainer as build_ppo_trainer
from test_ppo import prompts_of, says_red, world  # noqa: F401  (world: the shared fixture)

from vlm_rlaif.train import collectives

ACCELERATOR = torch.device("meta")  # stands in for cuda:0
SRC = Path(__file__).resolve().parents[1] / "src" / "vlm_rlaif"
COLLECTIVE_NAMES = {
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "broadcast_object_list",
    "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "gather_object", "scatter", "scatter_object_list",
    "all_to_all", "all_to_all_single", "send", "recv", "isend", "irecv", "barrier",
}


class _Done:
    def wait(self):
        pass


@pytest.fixture()
def fake_nccl(monkeypatch):
    """torch.distributed as two processes holding the same tensors under NCCL; returns the devices
    of the tensors each collective received."""
    seen: list[str] = []
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = kwargs.get("device", next((a for a in args if isinstance(a, (torch.device, str))), None))
        if target is not None and torch.device(target) == ACCELERATOR:
            moved = self.clone()
            moved.on_accelerator = True  # "on the accelerator", values kept
            return moved
        return original_to(self, *args, **kwargs)

    def check(tensor):
        where = "accelerator" if getattr(tensor, "on_accelerator", False) else tensor.device.type
        seen.append(where)
        if where != "accelerator":
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")

    def all_reduce(tensor, op=None, group=None, async_op=False):
        check(tensor)
        tensor.mul_(2)  # the other process holds the same values
        return _Done() if async_op else None

    def broadcast(tensor, src=0, group=None, async_op=False):
        check(tensor)
        return _Done() if async_op else None

    monkeypatch.setattr(torch.Tensor, "to", to)
    for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                        "get_world_size": lambda group=None: 2, "get_backend": lambda group=None: "nccl",
                        "all_reduce": all_reduce, "broadcast": broadcast}.items():
        monkeypatch.setattr(dist, name, value)
    return seen


class OnAccelerator:
    """A trainer's accelerator whose device is the fake accelerator device."""

    device = ACCELERATOR

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9) for k in a
    )


def test_ppo_statistics_whitening_and_gradients_run_on_the_accelerator(world, fake_nccl, monkeypatch):
    with monkeypatch.context() as undo:  # first, a single CPU process: the values to match
        undo.setattr(dist, "is_initialized", lambda: False)
        trainer = build_ppo_trainer(world, says_red, same_reference=False)
        examples = prompts_of(world, trainer.policy, 4)
        rollouts = trainer.score_rollouts(examples, trainer.generate(examples, 0))
        trainer.compute_advantages(rollouts)
        advantages = rollouts.advantages.clone()
        metrics = trainer._rollout_metrics(rollouts)
        trainer.loss(rollouts, [0, 1, 2, 3])[0].backward()
        grads = [p.grad.clone() for p in trainer.parameters if p.grad is not None]

    trainer.world, trainer.accelerator = 2, OnAccelerator(trainer.accelerator)
    trainer.compute_advantages(rollouts)  # whitening over both processes
    assert torch.allclose(rollouts.advantages, advantages, atol=1e-6)  # two equal halves whiten alike
    assert same(trainer._rollout_metrics(rollouts), metrics)
    trainer._average_gradients()
    assert all(torch.allclose(p.grad, g) for p, g in zip([p for p in trainer.parameters if p.grad is not None], grads))
    assert trainer._sum_over_processes(3.0) == 6.0
    assert fake_nccl and set(fake_nccl) == {"accelerator"}


def test_grpo_statistics_and_denominators_run_on_the_accelerator(world, fake_nccl, monkeypatch):
    with monkeypatch.context() as undo:
        undo.setattr(dist, "is_initialized", lambda: False)
        trainer = build_grpo_trainer(world, red_rewards)
        rollouts = trainer.rollouts(prompt_records(world, 2), prompts_of(world, trainer.policy, 2), 0)
        local = trainer._denominator(rollouts, list(range(8)))
        update = trainer.update(rollouts, 0)
        metrics = trainer._metrics(rollouts, update)

    trainer.world, trainer.accelerator = 2, OnAccelerator(trainer.accelerator)
    assert trainer._denominator(rollouts, list(range(8))) == 2 * local  # both processes' responses
    assert same(trainer._metrics(rollouts, update), {k: 2 * v if k in ("generated_tokens", "rewards_none", "rollouts")
                                                     else v for k, v in metrics.items()})
    trainer.settings.minibatch_size = 16  # 8 per process, as before
    trainer.update(rollouts, 0)  # gradients averaged through the fake NCCL
    assert fake_nccl and set(fake_nccl) == {"accelerator"}


def test_collectives_write_back_into_cpu_tensors(fake_nccl):
    sums = torch.tensor([1.0, 2.0])
    grads = [torch.ones(3), torch.full((2,), 3.0)]
    assert collectives.all_reduce_sum_(sums, ACCELERATOR) is sums and sums.tolist() == [2.0, 4.0]
    collectives.all_reduce_sum_many_(grads, ACCELERATOR)
    assert grads[0].tolist() == [2.0] * 3 and grads[1].tolist() == [6.0, 6.0]
    collectives.broadcast_(sums, 0, ACCELERATOR)
    with pytest.raises(RuntimeError, match="device type cpu"):  # the fake is strict, like NCCL
        dist.all_reduce(torch.ones(1))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_no_module_but_collectives_calls_torch_distributed_collectives():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "train" / "collectives.py":
            continue
        tree = ast.parse(path.read_text())
        names = {"torch.distributed"}  # what torch.distributed is called in this module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch":
                names |= {a.asname or a.name for a in node.names if a.name == "distributed"}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
                offenders += [f"{path.relative_to(SRC)}:{node.lineno} imports {a.name}"
                              for a in node.names if a.name in COLLECTIVE_NAMES]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVE_NAMES and _dotted(node.value) in names:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {_dotted(node)}")
    assert offenders == [], "call train/collectives.py instead (it moves tensors to the accelerator's device)"
