"""The machinery PPO (train/ppo.py) and GRPO (train/grpo.py) share, in one place.

- open_rl_run: the accelerator, the input checks, the run directory, the one FeatureCache, the
  policy (initialised first when asked) and its reference, the RL prompts with their videos decoded,
  and the rollout engine;
- RLTrainer, the base of both trainers: sampling answers from the policy (seeded by seed, iteration
  and process, so a resumed run samples what the interrupted one would have), the no-grad scoring
  passes over them (policy log-probabilities and entropy, reference log-probabilities), the
  optimizer step with gradients averaged over processes, metrics reduced over processes, and
  checkpoints;
- the prompt plan, the learning-rate schedule and the released code's "?" stop.
Every collective goes through train/collectives.py on the accelerator's device.

FSDP2 (an accelerate launch with recipes/accelerate/fsdp2-8gpu.yaml; train/sharding.py): what trains
is sharded by accelerate inside one root (sharding.CallRoot: the policy's model, in PPO also the
value model and its head; the visual paths stay whole) and every pass runs inside the root's forward.
Sampling with the HF engine keeps the units' full parameters for the whole generation
(sharding.kept_unsharded). The reference is the shared sharded base (LoRA) or a whole frozen copy on
every process (full fine-tuning), as DPO's. Checkpoints are sharded (accelerate's save_state); the
policy a server loads is saved from the gathered weights; the final models are consolidated.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from vlm_rlaif.data.frames import FrameStore
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, GenerationSettings, VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.rollout.engine import HFEngine, RolloutEngine, make_engine
from vlm_rlaif.rundir import RunDir, check_inputs, drop_rows_after
from vlm_rlaif.train import checkpoints, collectives, ppo_math, sharding
from vlm_rlaif.train.ppo_setup import (
    POLICY,
    REFERENCE,
    Prompt,
    RLConfig,
    RLData,
    decode_prompt_videos,
    frame_store,
    load_policy,
    read_prompts,
    read_rl_data,
)
from vlm_rlaif.train.tracking import tracker_for

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "iter_"


class SamplingSettings(Protocol):
    """The settings RLTrainer reads (PPOSettings and GRPOSettings have them all)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    generation_batch_size: int
    forward_batch_size: int
    stop_at_question_mark: bool
    lr: float
    weight_decay: float
    max_grad_norm: float
    warmup_iterations: int
    schedule: str


# ---------------------------------------------------------------------------- the run


@dataclass
class RLRun:
    """What open_rl_run sets up for a trainer."""

    accelerator: object
    run: RunDir
    out: Path
    cache: FeatureCache | None
    policy: VideoLM
    reference: VideoLM | None  # a frozen copy with full fine-tuning; None with LoRA
    init_summary: dict
    store: FrameStore
    prompts: list[Prompt]
    prompts_dropped: int  # over data.max_prompt_tokens
    skipped: list[dict]  # RL prompts with a bad video under on_bad_video "skip" (init_summary has its own)
    rl_data: RLData

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def check_sharding(accelerator, stage: str) -> bool:
    """Whether this run shards with FSDP2 (see the module docstring); DeepSpeed and FSDP1 are refused."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            f"{stage} does not run under DeepSpeed (its engine would own the forward and the optimizer step): "
            "launch with recipes/accelerate/fsdp2-8gpu.yaml (FSDP2) or recipes/accelerate/ddp-8gpu.yaml"
        )
    return sharding.is_sharded(accelerator)


def open_rl_run(config: RLConfig, stage: str, *, overwrite: bool = False) -> RLRun:
    """Check the inputs and open every video before the run directory is made, then load the policy
    (initialising it when asked) and read the RL prompts."""
    from accelerate import Accelerator

    runtime = config.runtime
    # Without a GPU, cpu=True is what makes accelerate join `accelerate launch`'s CPU processes (gloo).
    accelerator = Accelerator(cpu=runtime.cpu or not torch.cuda.is_available(), mixed_precision=runtime.mixed_precision)
    check_sharding(accelerator, stage)
    out = Path(config.out)
    check_inputs(stage, config.inputs())
    rl_data = read_rl_data(config)
    run = RunDir.open_on_main(
        accelerator, out, stage, config, config.seed, overwrite=overwrite, inputs=config.inputs(), tracker=tracker_for(config)
    )
    cache = FeatureCache(max_bytes=runtime.feature_cache_mb << 20) if runtime.feature_cache_mb > 0 else None
    policy, reference, init_summary = load_policy(config, out, accelerator, cache, rl_data)
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
        raise UserError(
            f"{stage}: no RL prompt left in {root / config.data.prompts} ({dropped} too long, {len(skipped)} with bad videos)"
        )
    return RLRun(accelerator, run, out, cache, policy, reference, init_summary, store, prompts, dropped, skipped, rl_data)


def make_rollout_engine(config: RLConfig, policy: VideoLM, out: Path) -> RolloutEngine:
    runtime = config.runtime
    return make_engine(
        runtime.engine, policy, adapter=POLICY if policy.adapter_names else None, model_dir=config.policy.model,
        workdir=out / ("rollout_adapters" if runtime.engine == "openai" else "vllm_adapter"), seed=config.seed,
        gpu_memory_utilization=runtime.vllm_gpu_memory_utilization, server=runtime.rollout_server,
    )


def resume(trainer: RLTrainer, run: RLRun, layout: dict) -> int:
    """Load the newest checkpoint (if any); returns the iterations it had completed. The iterations
    after it (all of them without one) are redone and logged again."""
    latest = checkpoints.latest_checkpoint(run.out / "checkpoints", CHECKPOINT_PREFIX)
    start = trainer.load_checkpoint(latest, layout) if latest is not None else 0
    if start:
        log.info("resumed after iteration %d from %s", start, latest)
    if run.is_main:
        drop_rows_after(run.out / "metrics.jsonl", "step", start)
        drop_rows_after(run.out / "samples.jsonl", "iteration", start)
    return start


def policy_outputs(policy: VideoLM, out: Path) -> dict[str, str | None]:
    """Where save_policy writes the tuned policy (the summary's policy_adapter / policy_model)."""
    return {
        "policy_adapter": str(out / "policy_adapter") if policy.adapter_names else None,
        "policy_model": str(out / "policy_model") if not policy.adapter_names else None,
    }


def save_policy(policy: VideoLM, out: Path) -> None:
    """<out>/policy_adapter (LoRA) or <out>/policy_model (full fine-tuning), for evaluation."""
    if policy.adapter_names:
        policy.save_lora(out / "policy_adapter", POLICY)
    else:
        policy.save(out / "policy_model")


def plan_prompts(num_prompts: int, batch: int, *, epochs: int, max_iterations: int, seed: int, key: str) -> list[list[int]]:
    """Prompt indices per iteration: each epoch a fresh shuffle cut into batches of `batch` (the last
    incomplete batch of an epoch is dropped, as the paper's loader does). key: the batch size's
    config key, for the error."""
    if num_prompts < batch:
        raise ConfigError(f"{num_prompts} RL prompts, fewer than {key} ({batch})")
    rng = random.Random(seed)
    plan = []
    for _ in range(epochs):
        order = list(range(num_prompts))
        rng.shuffle(order)
        plan.extend(order[i : i + batch] for i in range(0, num_prompts - batch + 1, batch))
    return plan[:max_iterations] if max_iterations else plan


def lr_multiplier(settings: SamplingSettings, total_iterations: int) -> Callable[[int], float]:
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


# ---------------------------------------------------------------------------- the trainers' base


class RLTrainer:
    """The policy (and its reference) on one base, sampled through a rollout engine; see the module
    docstring. A subclass adds its own trainable parameters, then calls _setup_optimizer.

    policy: with LoRA its adapter POLICY trains and `reference` is None: the reference is its
    REFERENCE adapter if attached, else the bare base. With full fine-tuning `reference` is a frozen
    copy.
    """

    def __init__(
        self,
        policy: VideoLM,
        settings: SamplingSettings,
        *,
        reference: VideoLM | None = None,
        engine: RolloutEngine | None = None,
        accelerator=None,
        seed: int = 0,
    ):
        from accelerate import Accelerator

        self.policy = policy
        self.reference = reference
        self.settings = settings
        self.accelerator = accelerator or Accelerator(cpu=policy.device.type == "cpu")
        self.engine = engine or make_engine("hf", policy, adapter=POLICY if policy.adapter_names else None)
        self.seed = seed
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.question_marks = question_mark_ids(policy.tokenizer) if settings.stop_at_question_mark else set()
        self.root: sharding.CallRoot | None = None  # FSDP2 (see the module docstring)

    def _setup_optimizer(self, collect: Callable[[], dict[str, nn.Parameter]], total_iterations: int) -> None:
        """AdamW over collect()'s parameters (what trains, by a stable name); under FSDP2 the models
        are sharded first and collect() is read again (the parameters are then sharded ones)."""
        named = collect()
        with torch.no_grad():  # every process starts from the main process's weights
            for p in named.values():
                collectives.broadcast_(p.data, src=0, device=self.accelerator.device)
        s = self.settings
        optimizer = torch.optim.AdamW(list(named.values()), lr=s.lr, weight_decay=s.weight_decay)
        sharded = sharding.is_sharded(self.accelerator)
        shardable = nn.ModuleDict(self._shardable())
        keep_whole = [m for lm in self._bases() for m in lm.visual_modules().values()]
        # The estimate counts a full fine-tuning reference copy too (whole on every process).
        copies = {"reference": self.reference.model} if self.reference is not None else {}
        sharding.report_expected_memory(
            nn.ModuleDict({**shardable, **copies}), keep_whole + list(copies.values()), self.accelerator, sharded
        )
        if sharded:
            self.skeleton = sharding.meta_copy(shardable) if self.accelerator.is_main_process else None
            self.root, optimizer = sharding.shard(self.accelerator, sharding.CallRoot(shardable, keep_whole), optimizer, keep_whole)
            named = collect()
            self._sharded_parameters, self._whole_parameters = sharding.split_parameters(named.values())
        self.named_parameters = named
        self.parameters = list(named.values())
        self.optimizer = optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(s, total_iterations))

    # ------------------------------------------------------------------------ models

    @property
    def policy_uses_lora(self) -> bool:
        return bool(self.policy.adapter_names)

    def _activate_policy(self) -> None:
        if self.policy_uses_lora:
            self.policy.set_adapter(POLICY)

    def _policy_parameters(self) -> dict[str, nn.Parameter]:
        """The policy's trainable parameters by a stable name (checkpoints)."""
        self._activate_policy()
        named = {f"policy.{n}": p for n, p in self.policy.model.named_parameters() if p.requires_grad}
        if not named:
            raise UserError("the policy has no trainable parameters")
        return named

    def _models(self) -> list[nn.Module]:
        """The modules that switch between train and eval mode (PPO adds the value base)."""
        return [self.policy.model]

    def _shardable(self) -> dict[str, nn.Module]:
        """What FSDP2 shards, by name in the root (PPO adds the value model and its head)."""
        return {"policy": self.policy.model}

    def _bases(self) -> list[VideoLM]:
        """The models whose visual paths stay whole under FSDP2 (PPO adds the value base)."""
        return [self.policy]

    def _through_root(self, fn: Callable, *args):
        """fn(*args); under FSDP2 inside the root's forward, where the units gather their parameters
        (every process makes the same calls)."""
        return fn(*args) if self.root is None else self.root(fn, *args)

    def update_engine(self) -> None:
        """The engine's update_policy after the weights changed, on every process: under FSDP2 an
        engine that saves the policy adapter (for a server) gathers it from the shards there
        (VideoLM.save_lora: the full fp32 tensors of the adapter alone), which takes every process."""
        self.engine.update_policy()

    def consolidate(self) -> None:
        """Under FSDP2 (every process calls this, after training): the main process's models get
        the trained full weights on the CPU (sharding.consolidate), so they save as usual."""
        if self.root is not None:
            full = sharding.consolidate(self.accelerator, self.root, self.skeleton)
            if full is not None:
                self._take_full(full)

    def _take_full(self, full: nn.ModuleDict) -> None:
        self.policy.model = full["policy"]

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
        """Train mode (gradient checkpointing needs it; dropout is 0 in LoRA) or eval mode."""
        models = self._models()
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
        """Sample one answer per example from the current policy (seeded by seed, iteration, process)."""
        s = self.settings
        generation = GenerationSettings(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            batch_size=s.generation_batch_size,
            seed=derived_seed(self.seed, iteration, self.rank),
        )
        self._activate_policy()
        if self.root is not None and isinstance(self.engine, HFEngine):
            # Under FSDP2 a unit gathers its parameters in each forward, so every process must run
            # the same forwards, but processes stop sampling at different lengths. transformers keeps
            # them stepping together (synced_gpus, on by itself for FSDP-managed models), which alone
            # would gather every unit once per token. The units keep their full parameters for the
            # whole generation instead: one all-gather each, at the cost of the policy's whole
            # weights on every GPU while sampling (as data parallel holds them all the time).
            with sharding.kept_unsharded(self.accelerator, self.root):
                generations = self.root(self.engine.generate, examples, generation)
        else:
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

    @torch.no_grad()
    def scoring_passes(
        self,
        examples: Sequence[VideoExample],
        generations: Sequence[Generation],
        *,
        reference: bool = True,
        extra: Callable[[Sequence[VideoExample], Sequence[Generation]], dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The no-grad passes over sampled answers, `forward_batch_size` rollouts at a time, in eval
        mode: "mask", "logprobs", "entropy", "ref_logprobs" (B, R) on the CPU (reference False: no
        reference pass, zeros), plus what `extra(examples, generations)` returns per chunk ((n, r)
        tensors are padded to R, (n,) ones concatenated)."""
        responses = [g.token_ids for g in generations]
        width = max(len(r) for r in responses)
        parts: dict[str, list[torch.Tensor]] = {}

        def add(key: str, tensor: torch.Tensor) -> None:
            tensor = tensor.detach().cpu()
            parts.setdefault(key, []).append(pad_columns(tensor, width) if tensor.dim() == 2 else tensor)

        step = self.settings.forward_batch_size

        def chunk(start: int) -> dict[str, torch.Tensor]:
            chunk_examples = examples[start : start + step]
            batch = self.policy.collate_with_responses(chunk_examples, responses[start : start + step])
            self._activate_policy()
            logprobs, entropy = self.policy_logprobs(self.policy, batch, with_entropy=True)
            ref_logprobs = self.reference_logprobs(batch) if reference else torch.zeros_like(logprobs)
            found = {"mask": batch["response_mask"], "logprobs": logprobs, "entropy": entropy, "ref_logprobs": ref_logprobs}
            return {**found, **(extra(chunk_examples, generations[start : start + step]) if extra else {})}

        with self._mode(training=False):
            for start in range(0, len(responses), step):
                for key, tensor in self._through_root(chunk, start).items():
                    add(key, tensor)
        out = {key: torch.cat(chunks) for key, chunks in parts.items()}
        out["mask"] = out["mask"].bool()
        return out

    # ------------------------------------------------------------------------ the update and processes

    def optimizer_step(self) -> float:
        """Average the gradients over processes, clip, step; returns the gradient norm."""
        if self.root is not None:  # FSDP2 averaged the sharded gradients over processes already
            sharded, whole = self._sharded_parameters, self._whole_parameters
            sharding.finish_gradients(sharded, whole, self.world, self.world)
            grad_norm = sharding.clip_gradients(sharded, whole, self.settings.max_grad_norm)
        else:
            self._average_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        collectives.all_reduce_sum_many_([p.grad for p in self.parameters], self.accelerator.device)
        for p in self.parameters:
            p.grad.div_(self.world)

    def _reduce_ratios(self, sums: dict[str, tuple[float, float]]) -> dict[str, float]:
        """{key: (numerator, denominator)} summed over processes -> {key: ratio}."""
        keys = sorted(sums)
        totals = torch.tensor([[sums[k][0], sums[k][1]] for k in keys], dtype=torch.float64)
        if self.world > 1:
            collectives.all_reduce_sum_(totals, self.accelerator.device)
        return {k: (t[0] / max(t[1], 1e-12)).item() for k, t in zip(keys, totals)}

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        return self._reduce_ratios({k: (v, 1.0) for k, v in stats.items()})

    def _sum_over_processes(self, value: float) -> float:
        total = torch.tensor(value, dtype=torch.float64)
        if self.world > 1:
            collectives.all_reduce_sum_(total, self.accelerator.device)
        return total.item()

    # ------------------------------------------------------------------------ checkpoints

    def _checkpoint_state(self) -> dict:
        """What a subclass adds to a checkpoint's state (PPO: the KL coefficient)."""
        return {}

    def _restore_state(self, state: dict) -> None:
        pass

    def save_checkpoint(self, directory: Path, iteration: int, keep: int, extra: dict) -> Path:
        """<directory>/iter_<N>/ (train/checkpoints.py): the trainable parameters by name, optimizer,
        scheduler, every process's RNG and the subclass's state."""
        state = {"iteration": iteration, "num_processes": self.world, **self._checkpoint_state(), **extra}
        if self.root is not None:  # sharded state (accelerate's save_state); resumed only by FSDP2
            state["sharded"] = True
        return checkpoints.save_checkpoint(
            directory, CHECKPOINT_PREFIX, iteration, self.named_parameters, self.optimizer, self.scheduler, state,
            keep, self.accelerator, sharded=self.root is not None,
        )

    def load_checkpoint(self, path: Path, extra: dict) -> int:
        """Restore a checkpoint written by save_checkpoint; returns the iterations it had completed."""
        expected = {"num_processes": self.world, **extra, "sharded": True if self.root is not None else None}
        state = checkpoints.load_checkpoint(
            path, self.named_parameters, self.optimizer, self.scheduler, expected, self.rank, inputs="prompts",
            accelerator=self.accelerator if self.root is not None else None,
        )
        self._restore_state(state)
        self.update_engine()
        return int(state["iteration"])


# ---------------------------------------------------------------------------- small helpers


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


def derived_seed(seed: int, iteration: int, rank: int) -> int:
    """A sampling seed that depends only on (seed, iteration, process), so a resumed run samples
    exactly what the interrupted one would have."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


def pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if tensor.shape[1] == width:
        return tensor
    pad = torch.zeros((tensor.shape[0], width - tensor.shape[1]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


__all__ = [
    "CHECKPOINT_PREFIX",
    "RLRun",
    "RLTrainer",
    "check_sharding",
    "cut_after_question_mark",
    "derived_seed",
    "lr_multiplier",
    "make_rollout_engine",
    "open_rl_run",
    "pad_columns",
    "plan_prompts",
    "policy_outputs",
    "question_mark_ids",
    "resume",
    "save_policy",
]
