"""Answers of a model to benchmark items, appended per item to a JSONL file that a rerun resumes.

Paper defaults: 50 frames sampled uniformly, temperature 0.2, up to 512 new tokens. Items go to
`VideoLM.generate` in batches; each finished batch is written (one line per item, flushed) before the
next starts, so a killed run loses at most the batch in flight, and a rerun skips every id already in
the file.

A prediction line: {"id", "video_name", "prompts": [...], "predictions": [...], "ended_with_eos": [...]}
(two prompts and predictions for a consistency item, one otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlm_rlaif.data import JsonlWriter, done_ids, iter_raw
from vlm_rlaif.data.frames import FrameStore
from vlm_rlaif.errors import RecordError
from vlm_rlaif.eval.benchmarks import EvalItem, model_prompts


@dataclass
class PredictSettings:
    """The paper's inference settings by default."""

    num_frames: int = 50
    temperature: float = 0.2
    max_new_tokens: int = 512
    top_p: float = 1.0
    batch_size: int = 8  # items per generate call (a consistency item counts its two questions)
    seed: int = 0


def iter_predict(lm, items: list[EvalItem], frames: FrameStore, out_path: str | Path, settings: PredictSettings) -> Iterator[dict]:
    """Predict every item not yet in `out_path`, yielding each prediction line once it is written.

    Stopping the iterator early (or killing the process) leaves a valid file that the next call
    completes without redoing finished items. `frames` samples settings.num_frames per video.
    """
    from vlm_rlaif.models import GenerationSettings, VideoExample

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
                video, video_key = frames.by_name(item.video_name, where=item.where)
                first = len(examples)
                for prompt in model_prompts(item):
                    examples.append(VideoExample([{"role": "user", "content": prompt}], video=video, video_key=video_key))
                spans.append((item, first, len(examples)))
            by_example = {g.example_index: g for g in lm.generate(examples, generation)}
            for item, first, end in spans:
                answers = [by_example[i] for i in range(first, end)]
                line = {
                    "id": item.id,
                    "video_name": item.video_name,
                    "prompts": [examples[i].conversation[0]["content"] for i in range(first, end)],
                    "predictions": [g.text for g in answers],
                    "ended_with_eos": [g.ended_with_eos for g in answers],
                }
                writer.write(line)
                yield line


def predict(lm, items: list[EvalItem], frames: FrameStore, out_path: str | Path, settings: PredictSettings) -> dict[str, list[str]]:
    """Predict what is missing, then return every item's predictions (id -> list) from the file."""
    for _ in iter_predict(lm, items, frames, out_path, settings):
        pass
    return read_predictions(out_path, items)


def read_predictions(path: str | Path, items: list[EvalItem] | None = None) -> dict[str, list[str]]:
    """id -> predictions from a prediction file; with `items`, every item must be there."""
    predictions = {}
    for line, row in iter_raw(path, repair=True):
        if "id" not in row or not isinstance(row.get("predictions"), list):
            raise RecordError(f"{path}:{line}: a prediction line needs 'id' and a list 'predictions'")
        predictions[str(row["id"])] = [str(p) for p in row["predictions"]]
    if items is not None:
        missing = [item.id for item in items if item.id not in predictions]
        if missing:
            raise RecordError(f"{path}: no predictions for {len(missing)} items (first: {missing[0]!r})")
    return predictions


__all__ = ["PredictSettings", "iter_predict", "predict", "read_predictions"]
