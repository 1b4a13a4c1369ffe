"""Answers of a model to benchmark items, appended per item to a JSONL file that a rerun resumes.

Paper defaults: 50 frames sampled uniformly, temperature 0.2, up to 512 new tokens. Items go to
`VideoLM.generate` in batches; each finished batch is written (one line per item, flushed) before the
next starts, so a killed run loses at most the batch in flight, and a rerun skips every id already in
the file.

A prediction line: {"id", "video_name", "prompts": [...], "predictions": [...], "ended_with_eos": [...],
"video_warnings": [...]} (two prompts and predictions for a consistency item, one otherwise;
video_warnings: data.frames.SINGLE_FRAME / NON_IMAGE_FILES when the video has them). With
on_bad_video "skip", an item whose video is missing or does not decode gets {"id", "video_name",
"skipped": reason} instead, is never judged, and stays skipped when the run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlm_rlaif.data import JsonlWriter, done_ids, iter_raw
from vlm_rlaif.data.frames import NON_IMAGE_FILES, SINGLE_FRAME, BadVideoError, FrameStore, check_on_bad_video
from vlm_rlaif.errors import RecordError
from vlm_rlaif.eval.benchmarks import EvalItem, model_prompts

log = logging.getLogger(__name__)


@dataclass
class PredictSettings:
    """The paper's inference settings by default."""

    num_frames: int = 50
    temperature: float = 0.2
    max_new_tokens: int = 512
    top_p: float = 1.0
    batch_size: int = 8  # items per generate call (a consistency item counts its two questions)
    seed: int = 0


def iter_predict(
    lm, items: list[EvalItem], frames: FrameStore, out_path: str | Path, settings: PredictSettings, on_bad_video: str = "fail"
) -> Iterator[dict]:
    """Predict every item not yet in `out_path`, yielding each prediction line once it is written.

    Stopping the iterator early (or killing the process) leaves a valid file that the next call
    completes without redoing finished items. `frames` samples settings.num_frames per video.
    on_bad_video: "fail" raises BadVideoError (naming the benchmark file, the item and the video) for
    a video that is missing or does not decode; "skip" writes the item as skipped and goes on.
    """
    from vlm_rlaif.models import GenerationSettings, VideoExample

    check_on_bad_video(on_bad_video, "eval")

    if frames.sampling.num_frames != settings.num_frames:
        raise ValueError(f"the frame store samples {frames.sampling.num_frames} frames, settings ask for {settings.num_frames}")
    generation = GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    done = done_ids(out_path)
    pending = [item for item in items if item.id not in done]
    with JsonlWriter(out_path) as writer:
        for batch_start in range(0, len(pending), settings.batch_size):
            chunk = pending[batch_start : batch_start + settings.batch_size]
            examples, spans = [], []  # spans: each item's examples, [first, end)
            for item in chunk:
                try:
                    video, video_key = frames.by_name(item.video_name, where=item.where)
                except BadVideoError as err:
                    if on_bad_video == "fail":
                        raise
                    log.warning("skipped: %s", err)
                    line = {"id": item.id, "video_name": item.video_name, "skipped": str(err)}
                    writer.write(line)
                    yield line
                    continue
                first = len(examples)
                for prompt in model_prompts(item):
                    examples.append(VideoExample([{"role": "user", "content": prompt}], video=video, video_key=video_key, where=item.where))
                spans.append((item, first, len(examples)))
            by_example = {g.example_index: g for g in lm.generate(examples, generation)} if examples else {}
            for item, first, end in spans:
                answers = [by_example[i] for i in range(first, end)]
                line = {
                    "id": item.id,
                    "video_name": item.video_name,
                    "prompts": [examples[i].conversation[0]["content"] for i in range(first, end)],
                    "predictions": [g.text for g in answers],
                    "ended_with_eos": [g.ended_with_eos for g in answers],
                    "video_warnings": frames.warnings.get(examples[first].video_key, []),
                }
                writer.write(line)
                yield line


def predict(
    lm, items: list[EvalItem], frames: FrameStore, out_path: str | Path, settings: PredictSettings, on_bad_video: str = "fail"
) -> dict[str, list[str]]:
    """Predict what is missing, then return every item's predictions (id -> list) from the file
    (skipped items are not in it)."""
    for _ in iter_predict(lm, items, frames, out_path, settings, on_bad_video):
        pass
    return read_predictions(out_path, items)


def read_predictions(path: str | Path, items: list[EvalItem] | None = None) -> dict[str, list[str]]:
    """id -> predictions from a prediction file, skipped items left out; with `items`, every item
    must be there (predicted or skipped)."""
    predictions, skipped = {}, set()
    for line, row in iter_raw(path, repair=True):
        if "id" in row and "skipped" in row:
            skipped.add(str(row["id"]))
            continue
        if "id" not in row or not isinstance(row.get("predictions"), list):
            raise RecordError(f"{path}:{line}: a prediction line needs 'id' and a list 'predictions'")
        predictions[str(row["id"])] = [str(p) for p in row["predictions"]]
    if items is not None:
        missing = [item.id for item in items if item.id not in predictions and item.id not in skipped]
        if missing:
            raise RecordError(f"{path}: no predictions for {len(missing)} items (first: {missing[0]!r})")
    return predictions


def read_video_notes(path: str | Path) -> tuple[list[dict], dict[str, int]]:
    """From a prediction file: the skipped items ({"id", "video_name", "reason"}) and, per warning,
    how many distinct videos had it."""
    skipped, videos = [], {SINGLE_FRAME: set(), NON_IMAGE_FILES: set()}
    for _, row in iter_raw(path, repair=True):
        if "skipped" in row:
            skipped.append({"id": str(row.get("id")), "video_name": row.get("video_name"), "reason": row["skipped"]})
        for kind in row.get("video_warnings") or []:
            videos.setdefault(kind, set()).add(row.get("video_name"))
    return skipped, {kind: len(names) for kind, names in videos.items()}


__all__ = ["PredictSettings", "iter_predict", "predict", "read_predictions", "read_video_notes"]
