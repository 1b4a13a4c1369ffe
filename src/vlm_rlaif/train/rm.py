"""Stage 2b: train the reward model on preference pairs (docs/method.md, stage 2b).

    config = load_config(RMConfig, "recipes/toy.yaml", section="rm")
    summary = run_rm(config)           # writes <out>/model (a RewardModel) and <out>/summary.json

Top to bottom:
1. Read the preference files (train/preference_data.py, shared with DPO): the public layout (JSON array of {id, conversations, video | images,
   output_1, output_2, preference}) or ours (JSONL with extra fields such as the judge's context,
   which the reward model never reads). Every record is checked first; errors name file and line.
   Pairs with identical outputs or text longer than data.max_text_tokens are dropped and counted.
   A pair whose video is missing or does not decode (data.on_bad_video, also for data.eval_sets):
   "fail" stops the run naming the file, the record and the video; "skip" drops the pair and counts
   it in the summary (records_skipped, skipped_records).
2. Hold out pairs for evaluation by video (the paper: 500 pairs), so held-out accuracy is measured on
   videos the reward model never trained on.
3. Load the SFT model, add a LoRA adapter (the paper: r=64, alpha=16, attention and MLP projections)
   and a linear head (reward.RewardModel.create); the vision tower and projector stay frozen, so each
   video is encoded once into the feature cache and both answers of a pair reuse it.
4. Train with train/loop.py. A micro-batch of N pairs is one forward over 2N rows (all preferred
   answers, then all others) built by RewardModel.collate, the same input builder PPO scores with.
   Loss: Bradley-Terry, BCE-with-logits of (r_preferred - r_other) against 1, plus
   center_coef * |mean over pairs of (r_preferred + r_other)| to keep rewards centred (the paper's
   code: 1e-3; a sum per pair, so twice the mean over all 2N rewards).
5. Save <out>/model (RewardModel.save), score every held-out pair (and any extra evaluation set, e.g.
   oracle-labelled pairs) into <out>/eval/<name>.jsonl, and report pairwise accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.data.jsonio import JsonlWriter, iter_raw
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.examples import VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.reward import MODEL_SUBDIR, FrameSettings, RewardModel
from vlm_rlaif.rundir import RunDir, check_inputs
from vlm_rlaif.train.data import (
    InstructionDataset,
    PlannedBatches,
    check_videos,
    decodes_every_video,
    read_instruction_file,
    skipped_summary,
    video_identity,
)
from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
from vlm_rlaif.train.preference_data import (
    PreferenceDataSettings,
    PreferenceDataset,
    PreferencePair,
    SourcedPreference,
    frame_store,
    frames_per_video,
    prepare_pairs,
    read_pairs,
    read_preference_file,
    usable_pairs,
)
from vlm_rlaif.train.tracking import LoggingSettings, tracker_for

log = logging.getLogger(__name__)

STAGE = "rm"
HELDOUT_SET = "heldout"


# ------------------------------------------------------------------------------------------ config


@dataclass
class RMModelSettings:
    """The backbone: the SFT model directory (the paper uses the 13B SFT model for every policy)."""

    path: str | None = None
    dtype: str | None = None  # e.g. "bfloat16"; default: as saved
    quantization: str | None = None  # "4bit" (QLoRA; CUDA and bitsandbytes)
    gradient_checkpointing: bool = False


@dataclass
class RMDataSettings(PreferenceDataSettings):
    """The preference files and their split (train/preference_data.py), plus: eval_sets: extra
    evaluation files by name (e.g. {oracle: oracle_prefs.jsonl}), scored after training; with
    eval_sets_heldout_only only their pairs about held-out videos count. toy_root: a toy world
    directory (truth/): also measure agreement with its oracle. feature_cache_dir: keep pooled
    features on disk (reused by resumes and later stages)."""

    eval_sets: dict[str, str] = field(default_factory=dict)
    eval_sets_heldout_only: bool = True
    toy_root: str | None = None
    feature_cache_dir: str | None = None


@dataclass
class RMLoraSettings:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.0
    targets: str = "attn_mlp"


@dataclass
class RMConfig:
    out: str = "runs/rm"
    epochs: int = 1
    center_coef: float = 1e-3  # weight of |mean over pairs of (r_preferred + r_other)| in the loss
    score_batch_size: int = 16  # pairs per forward when scoring the evaluation sets
    model: RMModelSettings = field(default_factory=RMModelSettings)
    data: RMDataSettings = field(default_factory=RMDataSettings)
    lora: RMLoraSettings = field(default_factory=RMLoraSettings)
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(
            batch_size=16, lr=2e-5, schedule="constant", warmup_ratio=0.03, save_every=100
        )
    )
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        if not self.model.path:
            raise ConfigError("rm: model.path (the SFT model directory) is required")
        if not self.data.files:
            raise ConfigError("rm: data.files (preference files) is required")
        if self.epochs < 1 or self.center_coef < 0 or self.score_batch_size < 1:
            raise ConfigError("rm: epochs and score_batch_size must be >= 1, center_coef >= 0")
        if self.data.eval_fraction is not None and not 0.0 <= self.data.eval_fraction < 1.0:
            raise ConfigError(f"rm: data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        if self.data.eval_pairs < 0 or self.data.max_text_tokens < 0:
            raise ConfigError("rm: data.eval_pairs and data.max_text_tokens must be >= 0")
        if HELDOUT_SET in self.data.eval_sets:
            raise ConfigError(f"rm: data.eval_sets may not use the name {HELDOUT_SET!r} (the held-out split)")
        self.data.check("rm")

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(r=self.lora.r, alpha=self.lora.alpha, dropout=self.lora.dropout, targets=self.lora.targets)

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        sets = {f"data.eval_sets.{name}": Path(self.data.root) / f for name, f in self.data.eval_sets.items()}
        return {"model.path": self.model.path, **self.data.inputs(), **sets, "data.toy_root": self.data.toy_root}


# ------------------------------------------------------------------------------------------ loss


def collate_pairs(rm: RewardModel, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
    """N pairs -> one batch of 2N reward-model rows: the preferred answers, then the others. The two
    rows of a pair share the prompt's video (and video_key: one encode)."""
    prompts = [pair.prompt for pair in pairs]
    return rm.collate(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])


def pair_loss(rewards: torch.Tensor, center_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss of rewards (2N,) laid out as collate_pairs makes them, plus the centring
    term center_coef * |mean over pairs of (r_preferred + r_other)|, and the batch's metrics
    (accuracy counts a tie as half right)."""
    count = rewards.shape[0] // 2
    chosen, rejected = rewards[:count], rewards[count:]
    margin = chosen - rejected
    bradley_terry = F.binary_cross_entropy_with_logits(margin, torch.ones_like(margin))
    # The released code's form: a sum per pair, then the mean (twice the mean over all 2N rewards).
    loss = bradley_terry + center_coef * (chosen + rejected).mean().abs()
    metrics = {
        "bt_loss": bradley_terry.item(),
        "accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item(),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        "margin": margin.mean().item(),
    }
    return loss, metrics


def make_rm_loss(rm: RewardModel, center_coef: float):
    """loss_fn for the training loop (batches from collate_pairs)."""

    def rm_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return pair_loss(rm(batch), center_coef)

    return rm_loss


class RewardTrainable(nn.Module):
    """What the loop trains and checkpoints: the backbone (its LoRA parameters) and the head."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.backbone = rm.lm.model
        self.head = rm.head


# ------------------------------------------------------------------------------------------ scoring files


@dataclass
class ScoringRow:
    """What `score_rows` scores for one record: its answers (2 for a pair, 1 otherwise) to its prompt."""

    id: str
    prompt: VideoExample
    answers: list[str]
    preference: int | None = None


def preference_rows(dataset: PreferenceDataset) -> Callable[[int], ScoringRow]:
    """Row i of a preference set: both outputs, in file order, and the label."""

    def row(index: int) -> ScoringRow:
        record = dataset.records[index].record
        pair = dataset[index]
        return ScoringRow(record.id, pair.prompt, [record.output_1.value, record.output_2.value], record.preference)

    return row


def answer_rows(dataset: InstructionDataset) -> Callable[[int], ScoringRow]:
    """Row i of an instruction set: its last gpt turn, scored as the answer to the turns before it."""

    def row(index: int) -> ScoringRow:
        example = dataset[index]
        prompt = VideoExample(example.conversation[:-1], example.video, example.video_key)
        return ScoringRow(dataset.records[index].record.id, prompt, [example.conversation[-1]["content"]])

    return row


@torch.no_grad()
def score_rows(
    rm: RewardModel,
    row: Callable[[int], ScoringRow],
    ids: Sequence[str],
    *,
    batch_size: int = 16,
    out: Path | None = None,
) -> list[dict]:
    """Score rows 0..len(ids)-1 (batch_size rows per step); one result dict per row, in order.

    Results: {id, reward} for one answer; {id, reward_1, reward_2, preference, correct} for a pair
    (correct: 1, 0, or 0.5 for a tie). With `out`, each finished batch is appended to that JSONL
    file at once, and a re-run continues after the rows already there (same ids in the same order)."""
    count = len(ids)
    results = _resume(out, ids) if out is not None else []
    writer = JsonlWriter(out) if out is not None else None
    try:
        progress = tqdm(total=count, initial=len(results), desc="scoring", leave=False)
        for start in range(len(results), count, batch_size):
            rows = [row(i) for i in range(start, min(start + batch_size, count))]
            prompts = [r.prompt for r in rows for _ in r.answers]
            answers = [answer for r in rows for answer in r.answers]
            rewards = iter(rm.score(prompts, answers, batch_size=len(answers)).tolist())
            for r in rows:
                result = _result(r, [next(rewards) for _ in r.answers])
                results.append(result)
                if writer is not None:
                    writer.write(result)
            progress.update(len(rows))
        progress.close()
    finally:
        if writer is not None:
            writer.close()
    return results


def _result(row: ScoringRow, rewards: list[float]) -> dict:
    if len(rewards) == 1:
        return {"id": row.id, "reward": rewards[0]}
    reward_1, reward_2 = rewards
    higher = _higher(reward_1, reward_2)
    if row.preference is None:
        correct = None
    else:
        correct = 0.5 if higher is None else float(higher == row.preference)
    return {"id": row.id, "reward_1": reward_1, "reward_2": reward_2, "preference": row.preference, "correct": correct}


def _resume(out: Path, ids: Sequence[str]) -> list[dict]:
    if not out.is_file():
        return []
    done = [obj for _, obj in iter_raw(out, repair=True)]
    if len(done) > len(ids):
        raise UserError(
            f"{out} holds {len(done)} results but there are only {len(ids)} records; choose another output file"
        )
    for index, result in enumerate(done):
        expected = ids[index]
        if str(result.get("id")) != expected:
            raise UserError(
                f"{out}:{index + 1}: holds id {result.get('id')!r} where record {index} is {expected!r}: it was "
                "written for other records; choose another output file"
            )
    if done:
        log.info("%s: %d of %d records already scored, continuing", out, len(done), len(ids))
    return done


def score_file(
    rm: RewardModel,
    records: str | Path,
    *,
    video_root: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 16,
) -> dict:
    """Score a record file with a reward model (`vlm-rlaif rm score`): preference records (both
    outputs; accuracy against the label) or instruction records (the last gpt turn). Videos are
    sampled as the reward model was trained (else the model's own frame count); paths are relative
    to video_root (default: the records' folder). Returns score_metrics; `out` gets one line per record
    and is resumed if it exists."""
    records = Path(records)
    first = next((raw for _, raw in iter_raw(records)), None)
    if first is None:
        raise UserError(f"{records}: no records")
    frames = rm.frames or FrameSettings(getattr(rm.lm.processor, "num_frames", 0))
    if not frames.num_frames:
        raise UserError("the reward model records no frame count and its processor names none")
    store = FrameStore(
        Path(video_root) if video_root is not None else records.parent,
        FrameSampling(num_frames=frames.num_frames, clip_max_frames=frames.clip_max_frames),
    )
    if "output_1" in first or "output_2" in first:
        dataset = PreferenceDataset(read_preference_file(records), store)
        row = preference_rows(dataset)
    else:
        dataset = InstructionDataset(read_instruction_file(records), store)
        row = answer_rows(dataset)
    ids = [sourced.record.id for sourced in dataset.records]
    results = score_rows(rm, row, ids, batch_size=batch_size, out=Path(out) if out is not None else None)
    return score_metrics(results)


def score_metrics(results: Sequence[dict]) -> dict:
    """Pairwise accuracy (pairs with a label; ties count half), and mean and std of all rewards."""
    rewards = [r[k] for r in results for k in ("reward", "reward_1", "reward_2") if k in r]
    labelled = [r["correct"] for r in results if r.get("correct") is not None]
    values = torch.tensor(rewards) if rewards else None
    return {
        "records": len(results),
        "pairs": len(labelled),
        "accuracy": sum(labelled) / len(labelled) if labelled else None,
        "reward_mean": values.mean().item() if values is not None else None,
        "reward_std": values.std(unbiased=False).item() if values is not None else None,
    }


def oracle_metrics(results: Sequence[dict], records: Sequence[SourcedPreference], toy_root: str | Path) -> dict:
    """On toy-world pairs: how often the reward model's choice (the higher reward) and the pairs' own
    labels agree with the toy world's oracle (oracle ties and reward ties left out; see
    feedback.agreement). Pairs without toy metadata are counted, not scored."""
    from vlm_rlaif.feedback.agreement import OracleReference, agreement

    reference = OracleReference(toy_root)
    scored = []
    for result, sourced in zip(results, records):
        meta = (sourced.record.model_extra or {}).get("toy")
        if meta is not None:
            scored.append((result, sourced.record, meta))
    oracle = [reference.compare(meta, record.output_1.value, record.output_2.value) for _, record, meta in scored]
    chosen = [_higher(r["reward_1"], r["reward_2"]) for r, _, _ in scored]
    return {
        "reward_model": agreement(chosen, oracle),
        "labels": agreement([record.preference for _, record, _ in scored], oracle),
        "pairs_without_toy_metadata": len(results) - len(scored),
    }


def _higher(reward_1: float, reward_2: float) -> int | None:
    """1 or 2: the output with the higher reward; None for a tie."""
    if reward_1 == reward_2:
        return None
    return 1 if reward_1 > reward_2 else 2


# ------------------------------------------------------------------------------------------ the stage


def run_rm(config: RMConfig, *, overwrite: bool = False) -> dict:
    """Run stage 2b (see the module docstring); returns the summary also written to summary.json.

    A re-run on an unfinished output directory resumes from its last checkpoint."""
    from vlm_rlaif.models.registry import load_adapter_model

    settings = config.train
    accelerator = accelerator_for(settings)
    check_inputs(STAGE, config.inputs())  # a missing model or file first, before any video is opened
    data = config.data
    root = Path(data.root)
    records, skipped, pairs_read = read_pairs(data, "rm")
    extra_sets = {}
    for name, f in data.eval_sets.items():
        extra_sets[name], more = check_videos(read_preference_file(root / f), data.on_bad_video, root=data.videos)
        skipped += more
    if data.toy_root is not None and not (Path(data.toy_root) / "truth").is_dir():
        raise ConfigError(f"rm: data.toy_root {data.toy_root} is not a toy world directory (no truth/ folder)")

    out = Path(config.out)
    run = RunDir.open_on_main(
        accelerator, out, STAGE, config, settings.seed, overwrite=overwrite, inputs=config.inputs(), tracker=tracker_for(config)
    )

    feature_cache = FeatureCache(data.feature_cache_bytes, data.feature_cache_dir)
    lm = load_adapter_model(
        config.model.path,
        device=accelerator.device,
        dtype=config.model.dtype,
        quantization=config.model.quantization,
        feature_cache=feature_cache,
    )
    num_frames = frames_per_video(data, lm, "rm")
    torch.manual_seed(settings.seed)  # the adapter's and the head's initialisation
    rm = RewardModel.create(
        lm,
        config.lora_settings(),
        base_model=config.model.path,
        frames=FrameSettings(num_frames, data.clip_max_frames),
    )
    if config.model.gradient_checkpointing:
        lm.enable_gradient_checkpointing()

    store = frame_store(data, num_frames)
    pairs = prepare_pairs(
        records, store, lm.tokenizer, data, evaluation=rm.prompts.evaluation.render(),
        batch_size=settings.batch_size, epochs=config.epochs, seed=settings.seed, stage="rm",
    )
    train_set, heldout_set = pairs.train, pairs.heldout
    skipped += pairs.skipped
    # Extra evaluation sets are checked now too, not after hours of training.
    heldout_videos = {video_identity(r.record) for r in heldout_set.records}
    eval_sets = {HELDOUT_SET: heldout_set}
    for name, extra in extra_sets.items():
        extra = [extra[i] for i in usable_pairs(extra, None, 0)[0]]
        if data.eval_sets_heldout_only:
            extra = [r for r in extra if video_identity(r.record) in heldout_videos]
        if decodes_every_video(store, [*records, *extra]):  # decoded now, not after hours of training
            extra, more = check_videos(extra, data.on_bad_video, store=store)
            skipped += more
        eval_sets[name] = PreferenceDataset(extra, store)
    if data.preload_frames:
        train_set.preload()
        heldout_set.preload()

    def collate(pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        return collate_pairs(rm, pairs)

    trainable = RewardTrainable(rm)
    result = train(
        trainable,
        make_rm_loss(rm, config.center_coef),
        PlannedBatches(pairs.plan, train_set, collate),
        settings,
        eval_batches=PlannedBatches(pairs.eval_plan, heldout_set, collate) if pairs.eval_plan else None,
        run=run,
        accelerator=accelerator,
        desc="rm",
        keep_whole=list(lm.visual_modules().values()),  # FSDP2: the visual path is not sharded
    )
    if result.consolidated is not None:
        # FSDP2: the trained full weights (main process), on its device for the scoring below.
        consolidated = result.consolidated.to(accelerator.device)
        rm.lm.model, rm.scalar.head = consolidated.backbone, consolidated.head

    summary: dict = {
        "model": str(out / MODEL_SUBDIR),
        "base_model": config.model.path,
        "pairs_read": pairs_read,
        "pairs_dropped": pairs.dropped,
        **skipped_summary(skipped),  # on_bad_video "skip", the eval sets' pairs included
        "train_pairs": len(train_set),
        "train_videos": train_set.distinct_videos(),
        "heldout_pairs": len(heldout_set),
        "heldout_videos": heldout_set.distinct_videos(),
        "trainable_parameters": sum(p.numel() for p in trainable.parameters() if p.requires_grad),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_metrics": result.train_metrics,
        "train_seconds": round(result.seconds, 1),
    }
    if accelerator.is_main_process:
        rm.save(out / MODEL_SUBDIR)
        summary["eval"] = {}
        for name, dataset in eval_sets.items():
            ids = [r.record.id for r in dataset.records]
            results = score_rows(rm, preference_rows(dataset), ids, batch_size=config.score_batch_size,
                                 out=out / "eval" / f"{name}.jsonl")
            metrics = score_metrics(results)
            if data.toy_root is not None:
                metrics["oracle"] = oracle_metrics(results, dataset.records, data.toy_root)
            summary["eval"][name] = metrics
            log.info("rm: %s: %d pairs, accuracy %s", name, metrics["pairs"],
                     "n/a" if metrics["accuracy"] is None else f"{metrics['accuracy']:.3f}")
        summary = run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


__all__ = [
    "RMConfig",
    "RMDataSettings",
    "RMLoraSettings",
    "RMModelSettings",
    "RewardTrainable",
    "collate_pairs",
    "make_rm_loss",
    "oracle_metrics",
    "ScoringRow",
    "answer_rows",
    "pair_loss",
    "preference_rows",
    "run_rm",
    "score_file",
    "score_metrics",
    "score_rows",
]
