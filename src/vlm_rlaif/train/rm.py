"""Stage 2b: train the reward model on preference pairs (docs/method.md, stage 2b).

    config = load_config(RMConfig, "recipes/toy.yaml", section="rm")
    summary = run_rm(config)           # writes <out>/model (a RewardModel) and <out>/summary.json

Top to bottom:
1. Read the preference files: the public layout (JSON array of {id, conversations, video | images,
   output_1, output_2, preference}) or ours (JSONL with extra fields such as the judge's context,
   which the reward model never reads). Every record is checked first; errors name file and line.
   Pairs with identical outputs or text longer than data.max_text_tokens are dropped and counted.
2. Hold out pairs for evaluation by video (the paper: 500 pairs), so held-out accuracy is measured on
   videos the reward model never trained on.
3. Load the SFT model, add a LoRA adapter (the paper: r=64, alpha=16, attention and MLP projections)
   and a linear head (reward.RewardModel.create); the vision tower and projector stay frozen, so each
   video is encoded once into the feature cache and both answers of a pair reuse it.
4. Train with train/loop.py. A micro-batch of N pairs is one forward over 2N rows (all preferred
   answers, then all others) built by RewardModel.collate, the same input builder PPO scores with.
   Loss: Bradley-Terry, BCE-with-logits of (r_preferred - r_other) against 1, plus
   center_coef * |mean reward| to keep rewards centred (the paper: 1e-3).
5. Save <out>/model (RewardModel.save), score every held-out pair (and any extra evaluation set, e.g.
   oracle-labelled pairs) into <out>/eval/<name>.jsonl, and report pairwise accuracy.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.data.jsonio import JsonlWriter, iter_raw
from vlm_rlaif.data.paths import resolve_video_source
from vlm_rlaif.data.records import PreferenceRecord, to_messages
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models.adapter import VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.reward import MODEL_SUBDIR, FrameSettings, RewardModel
from vlm_rlaif.rundir import RunDir
from vlm_rlaif.train.data import (
    InstructionDataset,
    PlannedBatches,
    batch_plan,
    read_instruction_file,
    video_identity,
)
from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train

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
class RMDataSettings:
    """files: preference files relative to `root` (their video paths are relative to video_root,
    default root). eval_sets: extra evaluation files by name (e.g. {oracle: oracle_prefs.jsonl}),
    scored after training; with eval_sets_heldout_only only their pairs about held-out videos count."""

    files: list[str] = field(default_factory=list)
    root: str = "."
    video_root: str | None = None
    num_frames: int = 0  # frames sampled per video (0: the model's own setting)
    clip_max_frames: int = 20
    eval_pairs: int = 500  # held-out pairs (whole videos are held out until at least this many)
    eval_fraction: float | None = None  # instead of eval_pairs: this share of the pairs
    eval_sets: dict[str, str] = field(default_factory=dict)
    eval_sets_heldout_only: bool = True
    toy_root: str | None = None  # a toy world directory (truth/): also measure agreement with its oracle
    max_text_tokens: int = 1024  # question + longer answer + evaluation turn, in tokens; longer pairs are dropped
    group_by_length: bool = True
    preload_frames: bool = False
    frame_cache_videos: int = 4096
    feature_cache_bytes: int = 1 << 30
    feature_cache_dir: str | None = None  # keep pooled features on disk (reused by resumes and later stages)


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
    center_coef: float = 1e-3  # weight of |mean reward| in the loss
    score_batch_size: int = 16  # pairs per forward when scoring the evaluation sets
    model: RMModelSettings = field(default_factory=RMModelSettings)
    data: RMDataSettings = field(default_factory=RMDataSettings)
    lora: RMLoraSettings = field(default_factory=RMLoraSettings)
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(
            batch_size=16, lr=2e-5, schedule="constant", warmup_ratio=0.03, save_every=100
        )
    )

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

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(r=self.lora.r, alpha=self.lora.alpha, dropout=self.lora.dropout, targets=self.lora.targets)


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class SourcedPreference:
    """A preference record and where it came from ("path:line (id X)")."""

    record: PreferenceRecord
    where: str


@dataclass
class PreferencePair:
    """One training pair: the prompt (conversation ending with the question, and its video) and the
    preferred and other answers."""

    prompt: VideoExample
    chosen: str
    rejected: str


def read_preference_file(path: str | Path) -> list[SourcedPreference]:
    """Validate every record of a JSON array / JSONL preference file; errors name file, line, field."""
    records = []
    for line, raw in iter_raw(path):
        where = f"{path}:{line}" + (f" (id {raw['id']})" if "id" in raw else "")
        try:
            record = PreferenceRecord.model_validate(raw)
        except ValidationError as err:
            fields = "; ".join(
                f"field '{'.'.join(map(str, e['loc'])) or '<record>'}': {e['msg']}" for e in err.errors()
            )
            raise RecordError(f"{where}: {fields}") from None
        records.append(SourcedPreference(record, where))
    return records


def prompt_messages(sourced: SourcedPreference) -> list[dict[str, str]]:
    """The prompt's chat messages: the record's turns without a trailing gpt turn (some public files
    keep the SFT answer there); they must alternate from a human turn and end with one."""
    turns = list(sourced.record.conversations)
    if len(turns) > 1 and turns[-1].speaker == "gpt":
        turns = turns[:-1]
    speakers = [turn.speaker for turn in turns]
    expected = ["human" if i % 2 == 0 else "gpt" for i in range(len(speakers))]
    if speakers != expected or speakers[-1] != "human":
        raise RecordError(
            f"{sourced.where}: the prompt must alternate human/gpt from a human turn and end with the human "
            f"question; got {speakers}"
        )
    return to_messages(turns)


class PreferenceDataset:
    """Preference pairs about videos: item i is a PreferencePair (frames decoded on first use).

    Every record is checked when the dataset is built (prompt turns, video present), so a bad record
    fails before training starts, with its file and line."""

    def __init__(self, records: Sequence[SourcedPreference], frame_store: FrameStore):
        self.records = list(records)
        self.frame_store = frame_store
        self._messages = [prompt_messages(r) for r in self.records]
        for sourced in self.records:
            resolved = resolve_video_source(frame_store.root, sourced.record.video_source, where=sourced.where)
            missing = [p for p in (resolved if isinstance(resolved, list) else [resolved]) if not p.exists()]
            if missing:
                raise RecordError(f"{sourced.where}: video not found: {missing[0]}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PreferencePair:
        sourced = self.records[index]
        try:
            frames, key = self.frame_store.video(sourced.record.video_source, where=sourced.where)
        except UserError as err:
            if isinstance(err, RecordError):
                raise
            raise RecordError(f"{sourced.where}: {err}") from err  # e.g. a video that does not decode
        prompt = VideoExample(self._messages[index], frames, key)
        return PreferencePair(prompt, sourced.record.chosen, sourced.record.rejected)

    def preload(self) -> None:
        """Decode every distinct video once now."""
        for sourced in self.records:
            self.frame_store.video(sourced.record.video_source, where=sourced.where)

    def text_lengths(self, tokenizer, evaluation: str) -> list[int]:
        """Tokens of the text a pair's longer row holds: prompt turns, the longer answer, the
        evaluation turn (without the chat template and the video tokens)."""
        texts = []
        for messages, sourced in zip(self._messages, self.records):
            answers = sourced.record.output_1.value, sourced.record.output_2.value
            prompt = " ".join(m["content"] for m in messages)
            texts.extend([f"{prompt} {answers[0]} {evaluation}", f"{prompt} {answers[1]} {evaluation}"])
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [max(len(ids[2 * i]), len(ids[2 * i + 1])) for i in range(len(self.records))]

    def distinct_videos(self) -> int:
        return len({video_identity(r.record) for r in self.records})


def split_heldout(
    records: Sequence[SourcedPreference], eval_pairs: int, eval_fraction: float | None, seed: int
) -> tuple[list[SourcedPreference], list[SourcedPreference]]:
    """(train, held-out): whole videos, in a seeded random order, are held out until at least
    `eval_pairs` pairs (or `eval_fraction` of them) are; at least one video stays for training."""
    target = round(eval_fraction * len(records)) if eval_fraction is not None else eval_pairs
    by_video: dict[str, int] = {}
    for sourced in records:
        identity = video_identity(sourced.record)
        by_video[identity] = by_video.get(identity, 0) + 1
    videos = sorted(by_video)
    random.Random(seed).shuffle(videos)
    held: set[str] = set()
    count = 0
    for video in videos[:-1]:
        if count >= target:
            break
        held.add(video)
        count += by_video[video]
    train_records = [r for r in records if video_identity(r.record) not in held]
    heldout = [r for r in records if video_identity(r.record) in held]
    return train_records, heldout


def usable_pairs(
    records: Sequence[SourcedPreference], lengths: Sequence[int] | None, max_text_tokens: int
) -> tuple[list[int], dict[str, int]]:
    """Indices of pairs worth training on, and how many were dropped and why: identical outputs
    (no preference to learn) and text over max_text_tokens (0: no limit)."""
    keep, dropped = [], {"identical_outputs": 0, "too_long": 0}
    for i, sourced in enumerate(records):
        if sourced.record.output_1.value.strip() == sourced.record.output_2.value.strip():
            dropped["identical_outputs"] += 1
        elif max_text_tokens and lengths is not None and lengths[i] > max_text_tokens:
            dropped["too_long"] += 1
        else:
            keep.append(i)
    return keep, dropped


# ------------------------------------------------------------------------------------------ loss


def collate_pairs(rm: RewardModel, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
    """N pairs -> one batch of 2N reward-model rows: the preferred answers, then the others. The two
    rows of a pair share the prompt's video (and video_key: one encode)."""
    prompts = [pair.prompt for pair in pairs]
    return rm.collate(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])


def pair_loss(rewards: torch.Tensor, center_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss of rewards (2N,) laid out as collate_pairs makes them, plus the centring
    term, and the batch's metrics (accuracy counts a tie as half right)."""
    count = rewards.shape[0] // 2
    chosen, rejected = rewards[:count], rewards[count:]
    margin = chosen - rejected
    bradley_terry = F.binary_cross_entropy_with_logits(margin, torch.ones_like(margin))
    loss = bradley_terry + center_coef * rewards.mean().abs()
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
    data = config.data
    root = Path(data.root)
    records = [r for f in data.files for r in read_preference_file(root / f)]
    extra_sets = {name: read_preference_file(root / f) for name, f in data.eval_sets.items()}
    if not records:
        raise UserError(f"rm: no preference records in {', '.join(data.files)}")
    if data.toy_root is not None and not (Path(data.toy_root) / "truth").is_dir():
        raise ConfigError(f"rm: data.toy_root {data.toy_root} is not a toy world directory (no truth/ folder)")

    out = Path(config.out)
    if accelerator.is_main_process:
        run = RunDir.open(out, STAGE, config, settings.seed, overwrite=overwrite)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        run = RunDir(out, STAGE, resumed=True)  # the main process owns the directory's files

    feature_cache = FeatureCache(data.feature_cache_bytes, data.feature_cache_dir)
    lm = load_adapter_model(
        config.model.path,
        device=accelerator.device,
        dtype=config.model.dtype,
        quantization=config.model.quantization,
        feature_cache=feature_cache,
    )
    num_frames = data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not num_frames:
        raise ConfigError("rm: data.num_frames is 0 and the model's processor names no frame count; set it")
    torch.manual_seed(settings.seed)  # the adapter's and the head's initialisation
    rm = RewardModel.create(
        lm,
        config.lora_settings(),
        base_model=config.model.path,
        frames=FrameSettings(num_frames, data.clip_max_frames),
    )
    if config.model.gradient_checkpointing:
        lm.enable_gradient_checkpointing()

    store = FrameStore(
        Path(data.video_root or data.root),
        FrameSampling(num_frames=num_frames, clip_max_frames=data.clip_max_frames),
        max_videos=data.frame_cache_videos,
    )
    evaluation = rm.prompts.evaluation.render()
    everything = PreferenceDataset(records, store)  # checks every record before anything trains
    lengths = everything.text_lengths(lm.tokenizer, evaluation)
    keep, dropped = usable_pairs(records, lengths, data.max_text_tokens)
    if any(dropped.values()):
        log.warning("rm: dropped %d pairs with identical outputs and %d over %d text tokens",
                    dropped["identical_outputs"], dropped["too_long"], data.max_text_tokens)
    usable = [records[i] for i in keep]
    train_records, heldout = split_heldout(usable, data.eval_pairs, data.eval_fraction, settings.seed)
    if not train_records:
        raise UserError("rm: no training pairs left after dropping and holding out pairs")
    train_set = PreferenceDataset(train_records, store)
    heldout_set = PreferenceDataset(heldout, store)
    # Extra evaluation sets are checked now too, not after hours of training.
    heldout_videos = {video_identity(r.record) for r in heldout}
    eval_sets = {HELDOUT_SET: heldout_set}
    for name, extra in extra_sets.items():
        extra = [extra[i] for i in usable_pairs(extra, None, 0)[0]]
        if data.eval_sets_heldout_only:
            extra = [r for r in extra if video_identity(r.record) in heldout_videos]
        eval_sets[name] = PreferenceDataset(extra, store)
    if data.preload_frames:
        train_set.preload()
        heldout_set.preload()

    train_lengths = train_set.text_lengths(lm.tokenizer, evaluation) if data.group_by_length else None
    plan = batch_plan(range(len(train_set)), settings.batch_size, epochs=config.epochs, seed=settings.seed,
                      lengths=train_lengths)
    eval_plan = batch_plan(range(len(heldout_set)), settings.batch_size, seed=settings.seed)

    def collate(pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        return collate_pairs(rm, pairs)

    trainable = RewardTrainable(rm)
    result = train(
        trainable,
        make_rm_loss(rm, config.center_coef),
        PlannedBatches(plan, train_set, collate),
        settings,
        eval_batches=PlannedBatches(eval_plan, heldout_set, collate) if eval_plan else None,
        run=run,
        accelerator=accelerator,
        desc="rm",
    )

    summary: dict = {
        "model": str(out / MODEL_SUBDIR),
        "base_model": config.model.path,
        "pairs_read": len(records),
        "pairs_dropped": dropped,
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
    "PreferenceDataset",
    "PreferencePair",
    "RMConfig",
    "RMDataSettings",
    "RMLoraSettings",
    "RMModelSettings",
    "RewardTrainable",
    "SourcedPreference",
    "collate_pairs",
    "make_rm_loss",
    "oracle_metrics",
    "ScoringRow",
    "answer_rows",
    "pair_loss",
    "preference_rows",
    "prompt_messages",
    "read_preference_file",
    "run_rm",
    "score_file",
    "score_metrics",
    "score_rows",
    "split_heldout",
]
