"""Instruction records -> VideoExamples, and the order in which trainers see them.

    records = read_instruction_file("sft/SFT_short.json")        # each with its "file:line"
    dataset = InstructionDataset(records, frame_store)            # item i -> VideoExample
    plan = batch_plan(range(len(dataset)), 16, epochs=1, seed=0, lengths=dataset.lengths(tokenizer))
    batches = PlannedBatches(plan, dataset, lm.collate)            # what train.loop.train consumes

Decoded frames are kept by the FrameStore's LRU (size it to the number of distinct videos for small
sets, or call `preload()`), so later epochs do not decode again; a clip record reuses its video's
frames.

Bad videos (missing, not a video, not decodable) are found before training by `check_videos`, the
one check every training stage runs (its `data.on_bad_video`: "fail" stops with a BadVideoError
naming the data file, the record and the video; "skip" drops every record of that video and lists
them, see `skipped_summary`):

    kept, skipped = check_videos(records, on_bad_video, root=video_root)   # opens each video once
    kept, more = check_videos(kept, on_bad_video, store=store)            # decodes into the store
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from vlm_rlaif.data.frames import BadVideoError, FrameStore, probe_record_video, source_name
from vlm_rlaif.data.jsonio import iter_raw
from vlm_rlaif.data.paths import resolve_video_source
from vlm_rlaif.data.records import InstructionRecord, to_messages
from vlm_rlaif.errors import RecordError, UserError
from vlm_rlaif.models.examples import VideoExample

if TYPE_CHECKING:
    from vlm_rlaif.train.preference_data import SourcedPreference

R = TypeVar("R", bound=BaseModel)
S = TypeVar("S")  # SourcedRecord or SourcedPreference

log = logging.getLogger(__name__)

# Skipped records a stage's summary lists (all of them are counted).
SKIPPED_LISTED = 20


@dataclass(frozen=True)
class SourcedRecord:
    """A record and where it came from ("path:line (id X)"), for error messages."""

    record: InstructionRecord
    where: str


def read_instruction_file(path: str | Path) -> list[SourcedRecord]:
    """Validate every record of a JSON array / JSONL file; errors name the file, line and field."""
    return [SourcedRecord(record, where) for record, where in validated_records(path, InstructionRecord)]


def validated_records(path: str | Path, schema: type[R]) -> list[tuple[R, str]]:
    """Every record of a JSON array / JSONL file validated as `schema`, with its place
    ("path:line (id X)") for later errors; a bad record's error names the file, line and field."""
    records = []
    for line, raw in iter_raw(path):
        where = f"{path}:{line}" + (f" (id {raw['id']})" if "id" in raw else "")
        try:
            records.append((schema.model_validate(raw), where))
        except ValidationError as err:
            fields = "; ".join(f"field '{'.'.join(map(str, e['loc'])) or '<record>'}': {e['msg']}" for e in err.errors())
            raise RecordError(f"{where}: {fields}") from None
    return records


def answer_words(record: InstructionRecord) -> int:
    """Words in all assistant turns (what the answer-length curriculum splits on)."""
    return sum(len(turn.value.split()) for turn in record.conversations if turn.speaker == "gpt")


def video_identity(record: InstructionRecord) -> str:
    """The video a record is about (its clip records share it): the held-out split is by video."""
    source = record.video_source
    return source if isinstance(source, str) else source[0]


class InstructionDataset:
    """Training conversations about videos: item i is a VideoExample (conversation, frames, video_key).

    Every record is checked when the dataset is built (roles alternate human/gpt and end with a gpt
    answer; the video file or frame images exist), so a bad record fails before training starts, with
    its file and line. Frames are decoded on first use (or by `preload`).
    """

    def __init__(self, records: Iterable[SourcedRecord], frame_store: FrameStore):
        self.records = list(records)
        self.frame_store = frame_store
        self._messages = [_training_messages(r) for r in self.records]
        for sourced in self.records:
            check_video_exists(frame_store.root, sourced)
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> VideoExample:
        sourced = self.records[index]
        try:
            frames, key = self.frame_store.for_record(sourced.record, where=sourced.where)
        except UserError as err:
            if isinstance(err, RecordError):  # already names the record
                raise
            raise RecordError(f"{sourced.where}: {err}") from err  # e.g. a video that does not decode
        return VideoExample(conversation=self._messages[index], video=frames, video_key=key)

    def preload(self) -> None:
        """Decode every distinct video once now (the frame store must be large enough to hold them)."""
        seen = set()
        for sourced in tqdm(self.records, desc="decoding videos", leave=False):
            identity = video_identity(sourced.record)
            if identity not in seen:
                seen.add(identity)
                self.frame_store.video(sourced.record.video_source, where=sourced.where)

    def lengths(self, tokenizer) -> list[int]:
        """Text tokens per example (all turns, without the template and video tokens): the key for
        length-grouped batching. Computed once."""
        if self._lengths is None:
            texts = [" ".join(m["content"] for m in messages) for messages in self._messages]
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            self._lengths = [len(row) for row in ids]
        return self._lengths

    def distinct_videos(self) -> int:
        return len({video_identity(r.record) for r in self.records})


def check_training_records(records: Iterable[SourcedRecord], video_root: str | Path) -> None:
    """The checks InstructionDataset makes, without building one: run them before writing anything."""
    for sourced in records:
        _training_messages(sourced)
        check_video_exists(Path(video_root), sourced)


def _training_messages(sourced: SourcedRecord) -> list[dict[str, str]]:
    speakers = [turn.speaker for turn in sourced.record.conversations]
    expected = ["human" if i % 2 == 0 else "gpt" for i in range(len(speakers))]
    if speakers != expected or speakers[-1] != "gpt":
        raise RecordError(
            f"{sourced.where}: a training conversation alternates human/gpt from a human turn and ends "
            f"with a gpt answer; got {speakers}"
        )
    return to_messages(sourced.record.conversations)


def check_video_exists(root: Path, sourced: SourcedRecord | SourcedPreference) -> None:
    """A record's video file (or every frame image) must exist under `root`."""
    resolved = resolve_video_source(root, sourced.record.video_source, where=sourced.where)
    missing = [p for p in (resolved if isinstance(resolved, list) else [resolved]) if not p.exists()]
    if missing:
        raise RecordError(f"{sourced.where}: video not found: {missing[0]}")


def check_videos(
    records: Iterable[S], on_bad_video: str, *, root: str | Path | None = None, store: FrameStore | None = None
) -> tuple[list[S], list[dict]]:
    """Check each distinct video of `records` once; returns (the records whose video is good, the
    skipped ones as {"id", "file" (path:line), "video", "reason"}).

    With `root`: open each video (data.frames.probe_record_video: it exists and is a video file or a
    frame folder; nothing decoded), cheap enough to run before the run directory exists. With
    `store`: decode each video through it, so with a store that holds every video (see
    `decodes_every_video`) training reuses these frames and the check costs nothing extra.
    on_bad_video "fail": the first bad video raises BadVideoError naming the record's file, line and
    id and the video; "skip": every record of a bad video is dropped (logged once per video).
    A record whose path escapes the video root stays an error (RecordError) either way."""
    if (root is None) == (store is None):
        raise ValueError("check_videos needs exactly one of root and store")
    kept: list[S] = []
    skipped: list[dict] = []
    bad: dict[object, str] = {}
    checked: set[object] = set()
    for sourced in records:
        source = sourced.record.video_source
        key = source if isinstance(source, str) else tuple(source)
        if key not in checked:
            checked.add(key)
            try:
                if store is not None:
                    store.video(source, where=sourced.where)
                else:
                    probe_record_video(root, source, where=sourced.where)
            except BadVideoError as err:
                if on_bad_video != "skip":
                    raise
                log.warning("skipped (on_bad_video: skip): %s", err)
                bad[key] = err.reason
        if key in bad:
            skipped.append(_skipped(sourced, bad[key]))
        else:
            kept.append(sourced)
    return kept, skipped


def decodes_every_video(store: FrameStore, records: Iterable) -> bool:
    """Whether the store's LRU holds every distinct video of `records` (then decoding them all up
    front is the preload training would do anyway; otherwise it would decode them a second time)."""
    return len({video_identity(r.record) for r in records}) <= store.capacity


def _skipped(sourced, reason: str) -> dict:
    record_id = sourced.record.id
    suffix = f" (id {record_id})"
    file = sourced.where[: -len(suffix)] if sourced.where.endswith(suffix) else sourced.where
    return {"id": record_id, "file": file, "video": source_name(sourced.record.video_source), "reason": reason}


def skipped_summary(skipped: Sequence[dict]) -> dict:
    """A stage summary's account of on_bad_video "skip": how many records were skipped, and the first
    SKIPPED_LISTED of them with their reasons."""
    return {"records_skipped": len(skipped), "skipped_records": list(skipped[:SKIPPED_LISTED])}


def batch_plan(
    indices: Iterable[int],
    batch_size: int,
    *,
    epochs: int = 1,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
    group_size: int = 32,
) -> list[list[int]]:
    """Micro-batches (lists of dataset indices) for `epochs` passes over `indices`, reshuffled each
    epoch; the last batch of an epoch may be smaller (nothing is dropped).

    With `lengths`, batches are length-grouped: each window of group_size * batch_size shuffled
    indices is sorted by length and cut into batches, then the epoch's batches are shuffled. A batch
    then holds similar lengths (little padding) while the order stays random.
    """
    pool = list(indices)
    if batch_size < 1 or epochs < 0:
        raise UserError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
    rng = random.Random(seed)
    plan: list[list[int]] = []
    for _ in range(epochs):
        order = pool[:]
        rng.shuffle(order)
        if lengths is None:
            plan.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
            continue
        window = group_size * batch_size
        epoch: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
            epoch.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        rng.shuffle(epoch)
        plan.extend(epoch)
    return plan


class PlannedBatches(Sequence):
    """Collated micro-batches in plan order, built on access: `batches[i]` = collate(examples of plan[i])."""

    def __init__(self, plan: Sequence[Sequence[int]], dataset: InstructionDataset, collate: Callable[[list[VideoExample]], dict]):
        self.plan = plan
        self.dataset = dataset
        self.collate = collate

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict:
        members = self.plan[index]
        examples = [self.dataset[i] for i in members]
        try:
            return self.collate(examples)
        except UserError as err:  # the model's message names "example k" of this batch: add the files
            wheres = ", ".join(f"example {k} = {self.dataset.records[i].where}" for k, i in enumerate(members))
            raise RecordError(f"{err} [{wheres}]") from err


__all__ = [
    "InstructionDataset",
    "PlannedBatches",
    "SourcedRecord",
    "answer_words",
    "batch_plan",
    "check_training_records",
    "check_video_exists",
    "check_videos",
    "decodes_every_video",
    "read_instruction_file",
    "skipped_summary",
    "validated_records",
    "video_identity",
]
