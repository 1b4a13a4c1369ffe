"""Direct preference optimisation on the AI preference pairs: an alternative to RM + PPO.

    config = load_config(DPOConfig, "recipes/toy.yaml", section="dpo")
    summary = run_dpo(config)          # writes <out>/model (the tuned policy) and <out>/summary.json

Not part of the paper (which trains a reward model and runs PPO); DPO (Rafailov et al., 2023) learns
from the same preference files directly, with no reward model and no sampling. Top to bottom:
1. Read and check the preference files, drop useless pairs and hold out pairs by video, exactly as
   the reward-model stage does (train/preference_data.py); a pair whose video is missing or does
   not decode stops the run or, with data.on_bad_video "skip", is dropped and counted in the summary.
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import IGNORE_INDEX, VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.rundir import RunDir, check_inputs
from vlm_rlaif.train.data import PlannedBatches, skipped_summary
from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
from vlm_rlaif.train.preference_data import (
    PreferenceDataSettings,
    PreferencePair,
    frame_store,
    frames_per_video,
    prepare_pairs,
    read_pairs,
)
from vlm_rlaif.train.tracking import LoggingSettings, tracker_for

STAGE = "dpo"
ADAPTER_NAME = "dpo"


@dataclass
class DPOModelSettings:
    path: str | None = None  # the SFT model directory
    dtype: str | None = None
    gradient_checkpointing: bool = False


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
    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)  # as the reward model's
    tune: DPOTuneSettings = field(default_factory=DPOTuneSettings)
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(
            batch_size=8, lr=5e-6, schedule="cosine", warmup_ratio=0.1, save_every=100
        )
    )
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        if not self.model.path:
            raise ConfigError("dpo: model.path (the SFT model directory) is required")
        if not self.data.files:
            raise ConfigError("dpo: data.files (preference files) is required")
        if self.epochs < 1 or self.beta <= 0:
            raise ConfigError(f"dpo: epochs must be >= 1 and beta > 0, got {self.epochs}, {self.beta}")
        if self.data.eval_fraction is not None and not 0.0 <= self.data.eval_fraction < 1.0:
            raise ConfigError(f"dpo: data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        self.data.check("dpo")

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        return {"model.path": self.model.path, **self.data.inputs()}


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
    check_inputs(STAGE, config.inputs())  # a missing model or file first, before any video is opened
    data = config.data
    records, skipped, pairs_read = read_pairs(data, "dpo")

    out = Path(config.out)
    run = RunDir.open_on_main(
        accelerator, out, STAGE, config, settings.seed, overwrite=overwrite, inputs=config.inputs(), tracker=tracker_for(config)
    )

    lm = load_adapter_model(
        config.model.path,
        device=accelerator.device,
        dtype=config.model.dtype,
        feature_cache=FeatureCache(data.feature_cache_bytes),
    )
    num_frames = frames_per_video(data, lm, "dpo")
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

    pairs = prepare_pairs(
        records, frame_store(data, num_frames), lm.tokenizer, data, evaluation="",
        batch_size=settings.batch_size, epochs=config.epochs, seed=settings.seed, stage="dpo",
    )
    if data.preload_frames:
        pairs.train.preload()
        pairs.heldout.preload()

    def collate(pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        return lm.collate(answer_conversations(pairs))

    result = train(
        lm.model,
        make_dpo_loss(lm, reference, config.beta),
        PlannedBatches(pairs.plan, pairs.train, collate),
        settings,
        eval_batches=PlannedBatches(pairs.eval_plan, pairs.heldout, collate) if pairs.eval_plan else None,
        run=run,
        accelerator=accelerator,
        desc="dpo",
        keep_whole=list(lm.visual_modules().values()),  # FSDP2: the visual path is not sharded
    )
    if result.consolidated is not None:  # FSDP2: the trained full weights, on the main process
        lm.model = result.consolidated

    summary = {
        "model": str(out / "model"),
        "lora": str(out / "lora") if tune.method == "lora" else None,
        "base_model": config.model.path,
        "finetune": tune.method,
        "beta": config.beta,
        "pairs_read": pairs_read,
        "pairs_dropped": pairs.dropped,
        **skipped_summary(skipped + pairs.skipped),  # on_bad_video "skip"
        "train_pairs": len(pairs.train),
        "heldout_pairs": len(pairs.heldout),
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
    "DPOModelSettings",
    "DPOTuneSettings",
    "Reference",
    "answer_conversations",
    "answer_logprobs",
    "dpo_loss",
    "make_dpo_loss",
    "run_dpo",
]
