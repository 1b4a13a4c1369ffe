"""FSDP2 for the supervised loop (train/loop.py) and PPO / GRPO (train/rollouts.py), through
accelerate: what sharding needs besides accelerate's own `prepare`, and the expected memory per GPU.

Launch with a config whose `fsdp_config` says `fsdp_version: 2` (recipes/accelerate/fsdp2-8gpu.yaml).
accelerate shards the model in place (torch's fully_shard: one unit per decoder layer, found through
the transformers models' `_no_split_modules` unless the config names the layer classes, plus the
root) and its parameters become DTensors holding 1/N of each tensor. This module adds:
- `LossRoot`, the module handed to accelerate: the loss functions reach the model through adapter
  methods (a reward head beside the backbone, a reference pass with the adapter disabled), and FSDP2
  gathers a unit's parameters only inside that unit's forward; the root's forward running the whole
  loss function puts every call inside it. PPO and GRPO hand over `CallRoot`, whose forward runs
  whatever pass it is given (sampling, scoring, the loss); `kept_unsharded` lets processes sample
  answers of different lengths (each unit gathered once for the whole generation);
- modules kept whole (`keep_whole`, the trainers pass the frozen visual path): their parameters stay
  ordinary tensors on every process. The visual path runs outside any forward (pooled features are
  computed while batches are collated, and cached per video) and only for batches with a video, so
  sharded it would need every process to run it in lockstep. A trainable one (the toy recipe trains
  its tower) has its gradients summed like in data parallelism;
- the consolidated model: the main process keeps a copy of the model's structure on the meta
  device (no memory) and fills it with the gathered full weights at the end, so the trainers save
  it (merge LoRA, save_pretrained) exactly as an unsharded model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.train import collectives

log = logging.getLogger(__name__)
GIB = 1 << 30


class _Root(nn.Module):
    """The module handed to accelerate (see the module docstring): `model` inside, and accelerate's
    auto wrap looks for the layer classes in the root's _no_split_modules: those of every
    transformers model inside that occur outside the modules kept whole (a vision tower's list names
    text-side classes, which accelerate refuses, and its own blocks: made FSDP units, they would act
    as roots when the visual path runs outside the root's forward)."""

    def __init__(self, model: nn.Module, keep_whole: Sequence[nn.Module] = ()):
        super().__init__()
        self.model = model
        inside = {id(m) for whole in keep_whole for m in whole.modules()}
        present = {type(m).__name__ for m in model.modules() if id(m) not in inside}
        names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
        self._no_split_modules = sorted(names & present)


class LossRoot(_Root):
    """The supervised loop's root: `forward(batch)` runs the trainer's loss function.

    Returns (loss, metrics); metrics["loss"] is the loss in float32, since under bf16 mixed precision
    FSDP2 casts the root's outputs (the returned loss) to bf16."""

    def __init__(self, model: nn.Module, loss_fn, keep_whole: Sequence[nn.Module] = ()):
        super().__init__(model, keep_whole)
        self.loss_fn = loss_fn

    def forward(self, batch):
        loss, metrics = self.loss_fn(batch)
        return loss, {**metrics, "loss": loss.detach().float().item()}


class CallRoot(_Root):
    """PPO's and GRPO's root (train/rollouts.py): `forward(fn, *args)` returns fn(*args), so every
    pass of theirs (sampling, the no-grad scoring passes, the loss) runs inside the root's forward.
    `model` is an nn.ModuleDict of what is sharded (the policy's model; PPO's value model and head)."""

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


def is_sharded(accelerator) -> bool:
    """Whether this run shards with FSDP2; FSDP1 and DeepSpeed are refused (the loop drives neither)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported by the training loop (its engine must own the forward and the "
            "optimizer step); shard with FSDP2: accelerate launch --config_file recipes/accelerate/fsdp2-8gpu.yaml"
        )
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config's fsdp_config")
    return kind == DistributedType.FSDP


def check_shardable(model: nn.Module) -> None:
    """Refuse 4-bit weights (QLoRA): their quantization state would not survive the meta copy and
    the consolidation, and bitsandbytes' packed storage does not shard like a plain tensor."""
    if any(type(p).__name__ == "Params4bit" for p in model.parameters()):
        raise ConfigError(
            "4-bit quantization (model.quantization: 4bit) is not supported under FSDP2: launch data "
            "parallel (recipes/accelerate/ddp-8gpu.yaml) or drop the quantization"
        )


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters live on the meta device (no memory); buffers are copied
    to the CPU (rotary tables and the like are not all in a state dict)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.detach().to("cpu", copy=True) for b in model.buffers()})
    return copy.deepcopy(model, memo)


def fill(skeleton: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> nn.Module:
    """Put the full weights `state` (keys: `prefix` + parameter name) into a `meta_copy`, each in
    the dtype the copy was made with; a parameter shared by several names (tied embeddings) stays
    one tensor."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
        params[id(param)] = param
    for key, param in params.items():
        found = [prefix + name for name in names[key] if prefix + name in state]
        if not found:  # a shared parameter may be gathered under any one of its names
            raise KeyError(f"the gathered state lacks {prefix + names[key][0]}")
        full = nn.Parameter(state[found[0]].to(param.dtype), requires_grad=param.requires_grad)
        for name in names[key]:
            owner, _, leaf = name.rpartition(".")
            skeleton.get_submodule(owner)._parameters[leaf] = full
    return skeleton


def consolidate(accelerator, root: LossRoot, skeleton: nn.Module | None) -> nn.Module | None:
    """The trained model with its full weights on the main process's CPU (every process calls this:
    the weights are gathered); None on the other processes."""
    state = accelerator.get_state_dict(root)  # full tensors, on the main process only
    if not accelerator.is_main_process:
        return None
    return fill(skeleton, state, prefix="model.")


def shard(accelerator, root: _Root, optimizer, keep_whole: Sequence[nn.Module] = ()):
    """accelerate's FSDP2 prepare of `root` (its model: 4-bit weights refused) and its optimizer, with
    `keep_whole` left unsharded; returns (root, optimizer) as prepared. Every process calls this."""
    check_shardable(root.model)
    accelerator.state.fsdp_plugin.ignored_modules = list(keep_whole) or None
    return accelerator.prepare(root, optimizer)


def _fsdp_modules(root: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextmanager
def kept_unsharded(accelerator, root: nn.Module) -> Iterator[None]:
    """Forwards inside the block (through `root`) leave each unit's full parameters in place: the
    first forward gathers them, later ones run without collectives, so processes may run different
    numbers of forwards (sampling answers of different lengths). Costs the sharded models' whole
    parameters on every process until the block ends, when they are resharded."""
    after = getattr(accelerator.state.fsdp_plugin, "reshard_after_forward", True)
    root.set_reshard_after_forward(False)
    try:
        yield
    finally:
        root.set_reshard_after_forward(after if isinstance(after, bool) else True)
        root.set_reshard_after_forward(False, recurse=False)  # FSDP2's own choice for the root
        for module in _fsdp_modules(root):
            module.reshard()


def split_parameters(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sharded DTensor parameters, parameters kept whole on every process)."""
    from torch.distributed.tensor import DTensor

    sharded, whole = [], []
    for p in params:
        (sharded if isinstance(p, DTensor) else whole).append(p)
    return sharded, whole


def finish_gradients(sharded: list[nn.Parameter], whole: list[nn.Parameter], world: int, micro_batches: int) -> None:
    """Make every gradient the mean over the step's micro-batches. FSDP2 already averaged the
    sharded ones over the processes (reduce-scatter); the whole ones are summed here, a missing one
    counting as 0."""
    with torch.no_grad():
        for p in sharded:
            if p.grad is not None:
                p.grad.mul_(world / micro_batches)
        for p in whole:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        collectives.all_reduce_sum_many_([p.grad for p in whole])
        for p in whole:
            p.grad.div_(micro_batches)


def clip_gradients(sharded: list[nn.Parameter], whole: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0: only measure it); returns the norm before.
    The shards are disjoint, so the squares of the local shards sum to the full norm's square."""
    local = [p.grad.to_local().float() for p in sharded if p.grad is not None]
    squares = torch.stack([g.pow(2).sum() for g in local]).sum() if local else torch.zeros(())
    collectives.all_reduce_sum_(squares)
    for p in whole:
        if p.grad is not None:
            squares = squares + p.grad.float().pow(2).sum().cpu()
    norm = float(squares.sqrt())
    if max_norm and norm > max_norm:
        coefficient = max_norm / (norm + 1e-6)
        with torch.no_grad():
            for p in (*sharded, *whole):
                if p.grad is not None:
                    p.grad.mul_(coefficient)
    return norm


# ---------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryEstimate:
    """Expected bytes per GPU of the model's state (activations and temporary gathers not included)."""

    parameters: int
    gradients: int
    optimizer: int
    sharding: str

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_size(getattr(self, k))}" for k in ("parameters", "gradients", "optimizer"))
        return f"expected memory per GPU ({self.sharding}): {parts}; total {_size(self.total)} plus activations"


def _size(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB // 10 else f"{count / (1 << 20):.2f} MiB"


def expected_memory(
    tensors: Sequence[tuple[int, int, bool, bool]], world: int, *, sharded: bool, upcast: bool, offload: bool = False
) -> MemoryEstimate:
    """Bytes per GPU of parameters, gradients and AdamW state.

    tensors: (numel, bytes per element, trains, sharded-able) per parameter; the last is False for a
        module kept whole (the visual path), which every process holds entirely.
    sharded: FSDP2 (each shardable tensor split over `world` processes) or data parallel (whole).
    upcast: trainable parameters are held in float32 (accelerate's FSDP2 under mixed precision keeps
        fp32 master weights and casts to bf16 per unit for compute); gradients and AdamW's two
        moments have the trainable parameter's dtype.
    offload: FSDP2 CPU offload: sharded parameters, gradients and optimizer state live in CPU memory.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    parameters = gradients = optimizer = 0.0
    for numel, element, trains, shardable in tensors:
        share = 1 / world if sharded and shardable else 1.0
        if sharded and shardable and offload:
            share = 0.0
        element = 4 if trains and upcast else element
        parameters += numel * element * share
        if trains:
            gradients += numel * element * share
            optimizer += 2 * numel * element * share
    name = ("FSDP2 over %d processes%s" % (world, ", CPU offload" if offload else "")) if sharded else "data parallel"
    return MemoryEstimate(round(parameters), round(gradients), round(optimizer), name)


def model_memory(model: nn.Module, keep_whole: Sequence[nn.Module], world: int, *, sharded: bool, upcast: bool, offload: bool) -> MemoryEstimate:
    """`expected_memory` of a model before sharding (parameters of `keep_whole` are not sharded)."""
    whole = {id(p) for m in keep_whole for p in m.parameters()}
    tensors = [(p.numel(), p.element_size(), p.requires_grad, id(p) not in whole) for p in model.parameters()]
    return expected_memory(tensors, world, sharded=sharded, upcast=upcast, offload=offload)



def report_expected_memory(model: nn.Module, keep_whole: Sequence[nn.Module], accelerator, sharded: bool) -> MemoryEstimate:
    """Print (main process) the expected memory per GPU of `model`'s parameters, gradients and AdamW
    state under this launch (`keep_whole`: not sharded); on CPU runs without sharding (the demo,
    tests) it goes to the log instead of the console."""
    offload = upcast = False
    if sharded:
        plugin = accelerator.state.fsdp_plugin
        offload = plugin.cpu_offload is not None and type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
        upcast = accelerator.mixed_precision != "no"  # accelerate keeps fp32 master weights then
    estimate = model_memory(
        model, keep_whole if sharded else (), accelerator.num_processes, sharded=sharded, upcast=upcast, offload=offload
    )
    if sharded or accelerator.device.type == "cuda":
        accelerator.print(estimate.describe())
    elif accelerator.is_main_process:
        log.info(estimate.describe())
    return estimate

__all__ = [
    "CallRoot",
    "LossRoot",
    "MemoryEstimate",
    "check_shardable",
    "clip_gradients",
    "consolidate",
    "expected_memory",
    "fill",
    "finish_gradients",
    "is_sharded",
    "meta_copy",
    "kept_unsharded",
    "model_memory",
    "report_expected_memory",
    "shard",
    "split_parameters",
]
