"""The training loop every supervised trainer shares (SFT, reward model, DPO, PPO's policy init).

The caller builds everything that depends on the model and the task:
    model     the nn.Module whose requires_grad parameters train (e.g. `lm.model`, or an
              nn.ModuleDict holding a backbone and a scalar head), already on `accelerator.device`;
    batches   a Sequence of micro-batches in training order (e.g. `train.data.PlannedBatches`). The
              loop only indexes it, so the data position is one integer a checkpoint can hold;
    loss_fn   batch -> (loss tensor, metrics dict of floats); run with grad to train and under
              no_grad on `eval_batches`.
The loop does the rest: AdamW, warm-up then a constant / linear / cosine schedule, gradient
accumulation, data parallelism across `accelerate launch` processes, gradient clipping, evaluation,
metrics (RunDir.log_metrics), a progress bar, checkpoints and resume.

One optimizer step consumes `grad_accum * num_processes` consecutive micro-batches; process r takes
those whose offset in the window is r modulo num_processes. Every micro-batch weighs the same: the
step's gradient is the mean of its micro-batches' gradients, whichever process computed them. After
the accumulation the gradients are summed across processes with all-reduce (not a DDP wrapper: the
caller's loss_fn reaches the model through its own adapter methods, which a wrapper cannot
intercept). A 1-process run with grad_accum=2 and a 2-process run with grad_accum=1 therefore take
the same steps. Launch with `accelerate launch --multi_gpu --num_processes N ...` (torchrun; on a
machine without GPUs the N processes run on the CPU with gloo; `--cpu` alone starts one process).

FSDP2 (`accelerate launch --config_file recipes/accelerate/fsdp2-8gpu.yaml`, train/sharding.py):
the model is sharded by accelerate (one unit per decoder layer) inside a root module whose forward is
the loss function, and `keep_whole` modules (the trainers' visual path) stay whole. FSDP2 averages the
gradients itself; each process still takes the same micro-batches as above, and one with fewer in a
step (the last step of a pass) runs an extra one with weight 0, because every process must run the
same forwards. Checkpoints hold sharded state (accelerate's save_state: torch.distributed.checkpoint)
and `TrainResult.consolidated` is the trained model with full weights on the main process, which the
trainers save as usual. DeepSpeed is refused.

Checkpoints: <run>/checkpoints/step_<N>/ holds trainable.safetensors (the requires_grad parameters by
name: a LoRA adapter and whatever else trains, or the full weights), optimizer.pt, scheduler.pt,
rng_<rank>.pt and state.json (step, number of micro-batches, processes, grad_accum); under FSDP2
accelerate's sharded model and optimizer folders replace the first two. A checkpoint is
written under a temporary name and renamed when complete, so a kill mid-write leaves the previous one
usable. `train` resumes from the newest complete checkpoint and, with the same batches, ends with the
same weights as an uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.rundir import RunDir, drop_rows_after
from vlm_rlaif.train import checkpoints, collectives, sharding

LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, float]]]
CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainSettings:
    """Optimisation settings shared by every trainer (a stage config's `train` section).

    batch_size: examples per micro-batch per process (the caller builds micro-batches of this size).
    grad_accum: micro-batches per process per optimizer step.
    max_steps: > 0 trains exactly this many optimizer steps, cycling through the batches;
        0 makes one pass over the batches (callers put their epochs into the batches).
    warmup_steps: > 0 overrides warmup_ratio (a share of the total steps).
    max_grad_norm: clip the global gradient norm to this (0: no clipping; the norm is still logged).
    eval_every / save_every: in optimizer steps; 0 = evaluate only before and after training / no
        checkpoints. keep_checkpoints: how many of the newest checkpoints to keep.
    mixed_precision: "bf16" runs loss_fn under autocast (weights and optimizer stay as loaded).
    cpu: force the CPU even when a GPU is visible.
    """

    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    mixed_precision: Literal["no", "bf16"] = "no"
    cpu: bool = False

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("train.lr must be > 0, train.weight_decay and train.max_grad_norm >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainResult:
    """What a finished `train` call reports.

    train_metrics: means over the last logged window (loss and loss_fn's metrics).
    eval_history: (step, metrics) for every evaluation, the one before training (step 0) included
        unless the run resumed.
    consolidated: under FSDP2, on the main process, a copy of the model with the trained full
        weights on the CPU (the model itself stays sharded); None otherwise.
    peak_memory_bytes: torch.cuda.max_memory_allocated on this process's GPU (None on the CPU).
    """

    steps: int
    resumed_from_step: int | None
    train_metrics: dict[str, float]
    eval_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0
    consolidated: nn.Module | None = None
    peak_memory_bytes: int | None = None

    @property
    def final_eval(self) -> dict[str, float]:
        return self.eval_history[-1][1] if self.eval_history else {}


def accelerator_for(settings: TrainSettings) -> Accelerator:
    """The Accelerator a trainer uses (also under `accelerate launch`); create it before the model so
    the model can be placed on `accelerator.device`."""
    from accelerate.state import AcceleratorState

    # Accelerate keeps one process-wide state and refuses a second Accelerator with another
    # mixed_precision; stages run one after another in one process (the demo) may differ. Only the
    # precision part is reset: the process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=settings.cpu, mixed_precision=settings.mixed_precision)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence,
    settings: TrainSettings,
    *,
    eval_batches: Sequence | None = None,
    run: RunDir | None = None,
    accelerator: Accelerator | None = None,
    desc: str = "train",
    keep_whole: Sequence[nn.Module] = (),
) -> TrainResult:
    """Train `model`'s requires_grad parameters on `batches` (see the module docstring).

    run: where metrics (main process) and checkpoints go; a run directory holding checkpoints
        resumes from the newest one. Without it nothing is written.
    keep_whole: submodules FSDP2 leaves unsharded on every process (ignored without FSDP2).
    """
    accelerator = accelerator or accelerator_for(settings)
    if len(batches) == 0:
        raise UserError(f"{desc}: no training batches")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"{desc}: the model has no trainable parameters")
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = settings.grad_accum * world
    total_steps = settings.max_steps or math.ceil(len(batches) / per_step)

    torch.manual_seed(settings.seed)
    _broadcast_from_main(params, world)  # every process starts from the same weights
    sharded = sharding.is_sharded(accelerator)
    sharding.report_expected_memory(model, keep_whole, accelerator, sharded)
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    skeleton = None
    if sharded:
        sharding.check_shardable(model)
        skeleton = sharding.meta_copy(model) if accelerator.is_main_process else None
        root, optimizer = sharding.shard(accelerator, sharding.LossRoot(model, loss_fn, keep_whole), optimizer, keep_whole)
        params = [p for p in root.parameters() if p.requires_grad]
        sharded_params, whole_params = sharding.split_parameters(params)

        def compute(batch):  # through the root, so FSDP2 gathers what the loss reaches
            loss, metrics = root(batch)
            return loss, {k: v for k, v in metrics.items() if k != "loss"}, metrics["loss"]
    else:

        def compute(batch):
            loss, metrics = loss_fn(batch)
            return loss, metrics, loss.item()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings, total_steps))

    checkpoints = run.path / "checkpoints" if run is not None else None
    resumed_from = None
    if checkpoints is not None:
        latest = latest_checkpoint(checkpoints)
        if latest is not None:
            resumed_from = _load_checkpoint(
                latest, model, optimizer, scheduler, len(batches), settings, accelerator, sharded
            )
        if accelerator.is_main_process:
            # Every step after the checkpoint is redone and logged again; without a checkpoint that is
            # all of them, the evaluation at step 0 included.
            drop_rows_after(run.path / "metrics.jsonl", "step", -1 if resumed_from is None else resumed_from)
    start_step = resumed_from or 0

    def evaluate(step: int, history: list) -> None:
        metrics = _evaluate(model, compute, eval_batches, accelerator, sharded)
        history.append((step, metrics))
        if run is not None and accelerator.is_main_process:
            run.log_metrics(step, **{f"eval_{k}": v for k, v in metrics.items()})

    eval_history: list[tuple[int, dict[str, float]]] = []
    if eval_batches and resumed_from is None:
        evaluate(0, eval_history)

    model.train()
    progress = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not accelerator.is_main_process)
    window: dict[str, float] = {}
    window_count = 0
    # For tokens_per_s: every process's micro-batches since the last log (the same number on each:
    # the window's "tokens" is their mean) and the seconds of those steps.
    window_batches, window_seconds = 0, 0.0
    train_metrics: dict[str, float] = {}
    started = time.time()
    for step in range(start_step, total_steps):
        step_started = time.time()
        first = step * per_step
        if settings.max_steps:
            positions = [(first + i) % len(batches) for i in range(per_step)]
        else:
            positions = list(range(first, min(first + per_step, len(batches))))
        slots = list(range(rank, len(positions), world))
        # FSDP2: every process runs as many forwards as the busiest; an extra one counts 0.
        extra = math.ceil(len(positions) / world) - len(slots) if sharded else 0
        for slot in slots + [None] * extra:
            batch = batches[positions[0 if slot is None else slot]]
            with accelerator.autocast():
                loss, metrics, loss_value = compute(batch)
            if slot is None:
                (loss * 0).backward()
                continue
            loss.backward()
            window["tokens"] = window.get("tokens", 0.0) + _count_tokens(batch)
            window["loss"] = window.get("loss", 0.0) + loss_value
            for key, value in metrics.items():
                window[key] = window.get(key, 0.0) + float(value)
            window_count += 1
        if sharded:
            sharding.finish_gradients(sharded_params, whole_params, world, len(positions))
            grad_norm = sharding.clip_gradients(sharded_params, whole_params, settings.max_grad_norm)
        else:
            _sum_gradients(params, world)
            for p in params:
                if p.grad is not None:
                    p.grad.div_(len(positions))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm or float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        progress.update(1)
        step_seconds = time.time() - step_started
        window_batches += len(positions)
        window_seconds += step_seconds

        if done % settings.log_every == 0 or done == total_steps:
            train_metrics = _mean_across_processes(window, window_count, world)
            tokens = train_metrics.pop("tokens") * window_batches
            speed = {"tokens_per_s": tokens / max(window_seconds, 1e-9)} if tokens else {}
            window, window_count, window_batches, window_seconds = {}, 0, 0, 0.0
            progress.set_postfix(loss=f"{train_metrics.get('loss', float('nan')):.4f}")
            if run is not None and accelerator.is_main_process:
                run.log_metrics(
                    done, **train_metrics, lr=lr, grad_norm=float(grad_norm), step_seconds=step_seconds, **speed
                )
        if eval_batches and settings.eval_every and done % settings.eval_every == 0 and done < total_steps:
            evaluate(done, eval_history)
        if checkpoints is not None and settings.save_every and (done % settings.save_every == 0 or done == total_steps):
            save_checkpoint(
                checkpoints, done, model, optimizer, scheduler, len(batches), settings, accelerator, sharded=sharded
            )
    progress.close()

    if eval_batches:
        evaluate(total_steps, eval_history)
    peak = None
    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(accelerator.device)
        accelerator.print(f"{desc}: peak GPU memory allocated {peak / sharding.GIB:.2f} GiB (process 0)")
        if run is not None and accelerator.is_main_process:
            run.log_metrics(total_steps, peak_memory_gib=round(peak / sharding.GIB, 3))
    return TrainResult(
        steps=total_steps,
        resumed_from_step=resumed_from,
        train_metrics=train_metrics,
        eval_history=eval_history,
        seconds=time.time() - started,
        consolidated=sharding.consolidate(accelerator, root, skeleton) if sharded else None,
        peak_memory_bytes=peak,
    )


# ---------------------------------------------------------------------------- optimisation


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases and norm weights), as usual for transformers."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(settings: TrainSettings, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier at an optimizer step: linear warm-up from 0, then the schedule."""
    warmup = settings.warmup_steps or math.ceil(settings.warmup_ratio * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return step / warmup
        if settings.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if settings.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


# ---------------------------------------------------------------------------- processes


# The collectives run on the backend's device (train/collectives.py); the parameters are already there.
def _broadcast_from_main(params: list[nn.Parameter], world: int) -> None:
    if world > 1:
        with torch.no_grad():
            for p in params:
                collectives.broadcast_(p.data, src=0)


def _sum_gradients(params: list[nn.Parameter], world: int) -> None:
    """Sum every trainable parameter's gradient across processes (a missing gradient counts as 0,
    e.g. the vision tower's when this process's micro-batches had no video)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    collectives.all_reduce_sum_many_([p.grad for p in params])


def _mean_across_processes(sums: dict[str, float], count: int, world: int) -> dict[str, float]:
    if world > 1:
        gathered = collectives.all_gather_object((sums, count))
        sums, count = {}, 0
        for process_sums, process_count in gathered:
            for key, value in process_sums.items():
                sums[key] = sums.get(key, 0.0) + value
            count += process_count
    return {key: value / max(1, count) for key, value in sums.items()}


def _count_tokens(batch: Any) -> int:
    """The real (unpadded) tokens of a micro-batch: its attention mask's sum; 0 for a batch without one."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    return int(mask.sum()) if mask is not None else 0


@torch.no_grad()
def _evaluate(model: nn.Module, compute, batches: Sequence, accelerator: Accelerator, sharded: bool) -> dict[str, float]:
    """Mean loss and metrics over the eval batches, each process taking every num_processes-th one
    (under FSDP2 a process with fewer runs one more forward, not counted: see the module docstring)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    world = accelerator.num_processes
    mine = list(range(accelerator.process_index, len(batches), world))
    extra = math.ceil(len(batches) / world) - len(mine) if sharded else 0
    for index in mine + [None] * extra:
        with accelerator.autocast():
            _, metrics, loss_value = compute(batches[0 if index is None else index])
        if index is None:
            continue
        sums["loss"] = sums.get("loss", 0.0) + loss_value
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
    model.train(was_training)
    return _mean_across_processes(sums, count, accelerator.num_processes)


# ---------------------------------------------------------------------------- checkpoints


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The requires_grad parameters by name, detached on the CPU (what a checkpoint holds)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint of a `train` run under `directory` (partial ones are ignored)."""
    return checkpoints.latest_checkpoint(directory, CHECKPOINT_PREFIX)


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    num_batches: int,
    settings: TrainSettings,
    accelerator: Accelerator,
    *,
    sharded: bool = False,
) -> Path:
    """Write checkpoint `step` (all processes call this; each saves its RNG state) and prune old ones.
    sharded: the model and optimizer went through accelerate's FSDP2 prepare (sharded state)."""
    state = {
        "step": step,
        "num_batches": num_batches,
        "num_processes": accelerator.num_processes,
        "grad_accum": settings.grad_accum,
    }
    if sharded:  # a data-parallel run cannot resume from shards (nor the reverse)
        state["sharded"] = True
    return checkpoints.save_checkpoint(
        directory, CHECKPOINT_PREFIX, step, _trainable_parameters(model), optimizer, scheduler, state,
        settings.keep_checkpoints, accelerator, sharded=sharded,
    )


def _load_checkpoint(
    path: Path, model: nn.Module, optimizer, scheduler, num_batches: int, settings: TrainSettings, accelerator, sharded: bool
) -> int:
    world, rank = accelerator.num_processes, accelerator.process_index
    expected = {"num_batches": num_batches, "num_processes": world, "grad_accum": settings.grad_accum}
    expected["sharded"] = True if sharded else None
    state = checkpoints.load_checkpoint(
        path, _trainable_parameters(model), optimizer, scheduler, expected, rank, inputs="data",
        accelerator=accelerator if sharded else None,
    )
    return int(state["step"])


def _trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


__all__ = [
    "LossFn",
    "TrainResult",
    "TrainSettings",
    "accelerator_for",
    "latest_checkpoint",
    "save_checkpoint",
    "train",
    "trainable_state",
]
