"""Direct preference optimisation on the AI preference pairs: an alternative to RM + PPO.

    config = load_config(DPOConfig, "recipes/toy.yaml", section="dpo")
    summary = run_dpo(config)          # writes <out>/model (the tuned policy) and <out>/summary.json

Not part of the paper (which trains a reward model and runs PPO); DPO (Rafailov et al., 2023) learns
from the same preference files directly, with no reward model and no sampling. Top to bottom:
1. Read and check the preference files, drop useless pairs and hold out pairs by video, exactly as
   the reward-model stage does (train/rm.py).
2. Load the SFT model and choose what trains: a LoRA adapter (default r=64, alpha=16 on attention and
   MLP projections, as the paper's policy) or the whole language model. The visual path stays frozen,
   so each video is encoded once into the feature cache and both answers of a pair reuse it.
3. The reference policy is the SFT model itself: the same base with the adapter disabled (LoRA) or a
   frozen copy (full fine-tuning).
4. Train with train/loop.py. A micro-batch of N pairs is one forward over 2N conversations (prompt +
   preferred answer, then prompt + other answer); an answer's log-probability is the sum over its
   tokens and closing EOS (the SFT labels). Loss: -log sigmoid(beta * (policy log-ratio of the
   preferred answer - that of the other)).
5. Save <out>/model (LoRA merged into the weights, loadable by every stage) and, with LoRA,
   <out>/lora (the adapter alone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.adapter import IGNORE_INDEX, VideoExample, VideoLM
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.rundir import RunDir
from vlm_rlaif.train.data import PlannedBatches, batch_plan
from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
from vlm_rlaif.train.rm import PreferenceDataset, PreferencePair, read_preference_file, split_heldout, usable_pairs

log = logging.getLogger(__name__)

STAGE = "dpo"
ADAPTER_NAME = "dpo"


@dataclass
class DPOModelSettings:
    path: str | None = None  # the SFT model directory
    dtype: str | None = None
    gradient_checkpointing: bool = False


@dataclass
class DPODataSettings:
    """Preference files as for the reward model (train/rm.py): relative to root, videos relative to
    video_root (default root); pairs held out by video for the eval metrics."""

    files: list[str] = field(default_factory=list)
    root: str = "."
    video_root: str | None = None
    num_frames: int = 0  # 0: the model's own setting
    clip_max_frames: int = 20
    eval_pairs: int = 500
    eval_fraction: float | None = None
    max_text_tokens: int = 1024
    group_by_length: bool = True
    preload_frames: bool = False
    frame_cache_videos: int = 4096
    feature_cache_bytes: int = 1 << 30


@dataclass
class DPOTuneSettings:
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "attn_mlp"


@dataclass
class DPOConfig:
    out: str = "runs/dpo"
    epochs: int = 1
    beta: float = 0.1
    model: DPOModelSettings = field(default_factory=DPOModelSettings)
    data: DPODataSettings = field(default_factory=DPODataSettings)
    tune: DPOTuneSettings = field(default_factory=DPOTuneSettings)
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(
            batch_size=8, lr=5e-6, schedule="cosine", warmup_ratio=0.1, save_every=100
        )
    )

    def __post_init__(self):
        if not self.model.path:
            raise ConfigError("dpo: model.path (the SFT model directory) is required")
        if not self.data.files:
            raise ConfigError("dpo: data.files (preference files) is required")
        if self.epochs < 1 or self.beta <= 0:
            raise ConfigError(f"dpo: epochs must be >= 1 and beta > 0, got {self.epochs}, {self.beta}")
        if self.data.eval_fraction is not None and not 0.0 <= self.data.eval_fraction < 1.0:
            raise ConfigError(f"dpo: data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")


# ------------------------------------------------------------------------------------------ loss


def answer_conversations(pairs: Sequence[PreferencePair]) -> list[VideoExample]:
    """2N training conversations: prompt + preferred answer for every pair, then prompt + other."""
    examples = []
    for answers in ([p.chosen for p in pairs], [p.rejected for p in pairs]):
        for pair, answer in zip(pairs, answers):
            conversation = [*pair.prompt.conversation, {"role": "assistant", "content": answer}]
            examples.append(VideoExample(conversation, pair.prompt.video, pair.prompt.video_key))
    return examples


def answer_logprobs(lm: VideoLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log-probabilities (B,) float32 of each row's labelled tokens (its assistant answers and
    their EOS; earlier answers of a multi-turn prompt are the same in both rows of a pair and cancel in
    the loss); grad follows the caller. Only the labelled positions go through the softmax (memory)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = lm.forward(inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:].to(logits.device)
    mask = labels != IGNORE_INDEX
    picked = logits[mask].float()
    token_logprobs = picked.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(dim=-1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)[mask]
    return torch.zeros(labels.shape[0], device=logits.device).index_add(0, rows, token_logprobs)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of answer log-probabilities (2N,) laid out as answer_conversations makes them."""
    count = policy.shape[0] // 2
    ratios = policy - reference
    rewards_chosen, rewards_rejected = beta * ratios[:count], beta * ratios[count:]
    margin = rewards_chosen - rewards_rejected
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item(),
        "reward_chosen": rewards_chosen.mean().item(),
        "reward_rejected": rewards_rejected.mean().item(),
        "margin": margin.mean().item(),
        "logp_chosen": policy[:count].mean().item(),
        "logp_rejected": policy[count:].mean().item(),
    }
    return loss, metrics


class Reference:
    """The frozen reference policy's answer log-probabilities: the same base with the adapter
    disabled (LoRA), or a frozen copy (full fine-tuning)."""

    def __init__(self, lm: VideoLM):
        self.lm = lm
        self.copy = None if lm.adapter_names else lm.frozen_copy()

    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.copy is not None:
            return answer_logprobs(self.copy, batch)
        with self.lm.adapter_disabled():
            return answer_logprobs(self.lm, batch)


def make_dpo_loss(lm: VideoLM, reference: Reference, beta: float):
    """loss_fn for the training loop (batches: lm.collate of answer_conversations)."""

    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        reference_logprobs = reference.logprobs(batch)
        return dpo_loss(answer_logprobs(lm, batch), reference_logprobs, beta)

    return loss_fn


# ------------------------------------------------------------------------------------------ the stage


def run_dpo(config: DPOConfig, *, overwrite: bool = False) -> dict:
    """Run DPO (see the module docstring); returns the summary also written to summary.json.

    A re-run on an unfinished output directory resumes from its last checkpoint."""
    from vlm_rlaif.models.registry import load_adapter_model

    settings = config.train
    accelerator = accelerator_for(settings)
    data = config.data
    root = Path(data.root)
    records = [r for f in data.files for r in read_preference_file(root / f)]
    if not records:
        raise UserError(f"dpo: no preference records in {', '.join(data.files)}")

    out = Path(config.out)
    if accelerator.is_main_process:
        run = RunDir.open(out, STAGE, config, settings.seed, overwrite=overwrite)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        run = RunDir(out, STAGE, resumed=True)  # the main process owns the directory's files

    lm = load_adapter_model(
        config.model.path,
        device=accelerator.device,
        dtype=config.model.dtype,
        feature_cache=FeatureCache(data.feature_cache_bytes),
    )
    num_frames = data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not num_frames:
        raise ConfigError("dpo: data.num_frames is 0 and the model's processor names no frame count; set it")
    torch.manual_seed(settings.seed)  # the adapter's initialisation
    tune = config.tune
    reference = None
    if tune.method == "full":
        reference = Reference(lm)  # copied before anything trains
        lm.set_trainable(language_model=True)
    else:
        lora = LoraSettings(r=tune.lora_r, alpha=tune.lora_alpha, dropout=tune.lora_dropout, targets=tune.lora_targets)
        lm.add_lora(ADAPTER_NAME, lora)
        reference = Reference(lm)
    if config.model.gradient_checkpointing:
        lm.enable_gradient_checkpointing()

    store = FrameStore(
        Path(data.video_root or data.root),
        FrameSampling(num_frames=num_frames, clip_max_frames=data.clip_max_frames),
        max_videos=data.frame_cache_videos,
    )
    everything = PreferenceDataset(records, store)  # checks every record before anything trains
    lengths = everything.text_lengths(lm.tokenizer, "")
    keep, dropped = usable_pairs(records, lengths, data.max_text_tokens)
    if any(dropped.values()):
        log.warning("dpo: dropped %d pairs with identical outputs and %d over %d text tokens",
                    dropped["identical_outputs"], dropped["too_long"], data.max_text_tokens)
    usable = [records[i] for i in keep]
    train_records, heldout = split_heldout(usable, data.eval_pairs, data.eval_fraction, settings.seed)
    if not train_records:
        raise UserError("dpo: no training pairs left after dropping and holding out pairs")
    train_set = PreferenceDataset(train_records, store)
    heldout_set = PreferenceDataset(heldout, store)
    if data.preload_frames:
        train_set.preload()
        heldout_set.preload()

    train_lengths = train_set.text_lengths(lm.tokenizer, "") if data.group_by_length else None
    plan = batch_plan(range(len(train_set)), settings.batch_size, epochs=config.epochs, seed=settings.seed,
                      lengths=train_lengths)
    eval_plan = batch_plan(range(len(heldout_set)), settings.batch_size, seed=settings.seed)

    def collate(pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        return lm.collate(answer_conversations(pairs))

    result = train(
        lm.model,
        make_dpo_loss(lm, reference, config.beta),
        PlannedBatches(plan, train_set, collate),
        settings,
        eval_batches=PlannedBatches(eval_plan, heldout_set, collate) if eval_plan else None,
        run=run,
        accelerator=accelerator,
        desc="dpo",
    )

    summary = {
        "model": str(out / "model"),
        "lora": str(out / "lora") if tune.method == "lora" else None,
        "base_model": config.model.path,
        "finetune": tune.method,
        "beta": config.beta,
        "pairs_read": len(records),
        "pairs_dropped": dropped,
        "train_pairs": len(train_set),
        "heldout_pairs": len(heldout_set),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_metrics": result.train_metrics,
        "eval_before": result.eval_history[0][1] if result.resumed_from_step is None and result.eval_history else None,
        "eval_after": result.final_eval or None,
        "train_seconds": round(result.seconds, 1),
    }
    if accelerator.is_main_process:
        if tune.method == "lora":
            lm.save_lora(out / "lora", ADAPTER_NAME)
            lm.merge_lora()
        lm.save(out / "model")
        summary = run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


__all__ = [
    "DPOConfig",
    "DPODataSettings",
    "DPOModelSettings",
    "DPOTuneSettings",
    "Reference",
    "answer_conversations",
    "answer_logprobs",
    "dpo_loss",
    "make_dpo_loss",
    "run_dpo",
]
