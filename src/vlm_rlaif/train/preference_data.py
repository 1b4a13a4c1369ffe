"""Preference pairs about videos for the trainers that learn from them: the reward model
(train/rm.py) and DPO (train/dpo.py).

    records = read_pairs(config.data, "rm")                 # every record checked, file:line errors
    store = frame_store(config.data, num_frames)
    pairs = prepare_pairs(records, store, tokenizer, ...)    # train / held-out datasets and batch plans

Files are the public layout (JSON array of {id, conversations, video | images, output_1, output_2,
preference}) or ours (JSONL with extra fields such as the judge's context, which neither trainer
reads). Pairs with identical outputs or text longer than data.max_text_tokens are dropped and counted;
pairs are held out by video, so held-out metrics are measured on videos the model never trained on.
Bad videos (data.on_bad_video, train.data.check_videos): read_pairs opens every video before the
stage writes anything, prepare_pairs decodes them into the frame store (when it holds them all);
"fail" stops at the first bad one, "skip" drops its pairs and lists them (PreparedPairs.skipped).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlm_rlaif.data.frames import FrameSampling, FrameStore, check_on_bad_video
from vlm_rlaif.data.records import PreferenceRecord, to_messages
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import VideoExample
from vlm_rlaif.train.data import (
    batch_plan,
    check_video_exists,
    check_videos,
    decodes_every_video,
    validated_records,
    video_identity,
)

log = logging.getLogger(__name__)


@dataclass
class PreferenceDataSettings:
    """files: preference files relative to `root` (their video paths are relative to video_root,
    default root). num_frames: frames sampled per video (0: the model's own setting). eval_pairs:
    held-out pairs (whole videos are held out until at least this many), or eval_fraction of them.
    max_text_tokens: question + longer answer (+ the reward model's evaluation turn) in tokens;
    longer pairs are dropped (0: no limit)."""

    files: list[str] = field(default_factory=list)
    root: str = "."
    video_root: str | None = None
    num_frames: int = 0
    clip_max_frames: int = 20
    eval_pairs: int = 500
    eval_fraction: float | None = None
    max_text_tokens: int = 1024
    group_by_length: bool = True
    preload_frames: bool = False
    frame_cache_videos: int = 4096
    feature_cache_bytes: int = 1 << 30
    # A pair's video that is missing or does not decode: "fail" stops the run (the error names the
    # file, the record and the video); "skip" drops the pairs of that video, counted in the summary.
    on_bad_video: str = "fail"

    def check(self, stage: str) -> None:
        check_on_bad_video(self.on_bad_video, f"{stage}: data")

    @property
    def videos(self) -> Path:
        """The folder the records' video paths are relative to."""
        return Path(self.video_root or self.root)

    def inputs(self) -> dict[str, str | Path | None]:
        """The preference files and the video root, by config key (see RunDir.open's inputs)."""
        paths: dict[str, str | Path | None] = {f"data.files[{i}]": Path(self.root) / f for i, f in enumerate(self.files)}
        paths["data.video_root" if self.video_root else "data.root"] = self.video_root or self.root
        return paths


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
    return [SourcedPreference(record, where) for record, where in validated_records(path, PreferenceRecord)]


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
            check_video_exists(frame_store.root, sourced)

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


# ------------------------------------------------------------------------------------------ for a trainer


@dataclass
class PreparedPairs:
    """The pairs a trainer uses: datasets, the batch plans over them, and what was dropped."""

    train: PreferenceDataset
    heldout: PreferenceDataset
    dropped: dict[str, int]
    plan: list[list[int]]
    eval_plan: list[list[int]]
    skipped: list[dict] = field(default_factory=list)  # pairs whose video did not decode (on_bad_video "skip")


def read_pairs(data: PreferenceDataSettings, stage: str) -> tuple[list[SourcedPreference], list[dict], int]:
    """Every record of data.files (relative to data.root), checked, and its video opened: (the pairs
    to use, the pairs skipped for a bad video under data.on_bad_video "skip", how many were read).
    At least one pair must be left."""
    root = Path(data.root)
    records = [r for f in data.files for r in read_preference_file(root / f)]
    if not records:
        raise UserError(f"{stage}: no preference records in {', '.join(data.files)}")
    kept, skipped = check_videos(records, data.on_bad_video, root=data.videos)
    if not kept:
        raise UserError(f"{stage}: every preference record in {', '.join(data.files)} has a bad video ({len(skipped)} skipped)")
    return kept, skipped, len(records)


def frames_per_video(data: PreferenceDataSettings, lm: VideoLM, stage: str) -> int:
    num_frames = data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not num_frames:
        raise ConfigError(f"{stage}: data.num_frames is 0 and the model's processor names no frame count; set it")
    return num_frames


def frame_store(data: PreferenceDataSettings, num_frames: int) -> FrameStore:
    return FrameStore(
        Path(data.video_root or data.root),
        FrameSampling(num_frames=num_frames, clip_max_frames=data.clip_max_frames),
        max_videos=data.frame_cache_videos,
    )


def prepare_pairs(
    records: Sequence[SourcedPreference],
    store: FrameStore,
    tokenizer,
    data: PreferenceDataSettings,
    *,
    evaluation: str,
    batch_size: int,
    epochs: int,
    seed: int,
    stage: str,
) -> PreparedPairs:
    """Check every record, drop useless pairs, hold out pairs by video and plan the batches
    (length-grouped with data.group_by_length). `evaluation` is text every row appends to its answer
    (the reward model's evaluation turn), counted in the pair's length. When the store holds every
    video, each is decoded now (data.on_bad_video decides about one that does not decode) and
    training reuses the frames."""
    skipped: list[dict] = []
    if decodes_every_video(store, records):
        records, skipped = check_videos(records, data.on_bad_video, store=store)
        if not records:
            raise UserError(f"{stage}: no pair has a video that decodes ({len(skipped)} skipped)")
    everything = PreferenceDataset(records, store)  # checks every record before anything trains
    lengths = everything.text_lengths(tokenizer, evaluation)
    keep, dropped = usable_pairs(records, lengths, data.max_text_tokens)
    if any(dropped.values()):
        log.warning("%s: dropped %d pairs with identical outputs and %d over %d text tokens",
                    stage, dropped["identical_outputs"], dropped["too_long"], data.max_text_tokens)
    usable = [records[i] for i in keep]
    train_records, heldout = split_heldout(usable, data.eval_pairs, data.eval_fraction, seed)
    if not train_records:
        raise UserError(f"{stage}: no training pairs left after dropping and holding out pairs")
    train_set = PreferenceDataset(train_records, store)
    heldout_set = PreferenceDataset(heldout, store)
    train_lengths = train_set.text_lengths(tokenizer, evaluation) if data.group_by_length else None
    plan = batch_plan(range(len(train_set)), batch_size, epochs=epochs, seed=seed, lengths=train_lengths)
    eval_plan = batch_plan(range(len(heldout_set)), batch_size, seed=seed)
    return PreparedPairs(train_set, heldout_set, dropped, plan, eval_plan, skipped)


__all__ = [
    "PreferenceDataSettings",
    "PreferenceDataset",
    "PreferencePair",
    "PreparedPairs",
    "SourcedPreference",
    "frame_store",
    "frames_per_video",
    "prepare_pairs",
    "prompt_messages",
    "read_pairs",
    "read_preference_file",
    "split_heldout",
    "usable_pairs",
]
