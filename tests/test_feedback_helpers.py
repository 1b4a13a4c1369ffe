"""Helpers (no tests) shared by the tests/test_feedback*.py files: a saved tiny model, a small video folder with prompts, a config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlm_rlaif.feedback import FeedbackConfig
from vlm_rlaif.feedback.config import CandidateSettings, ContextSettings, JudgeSettings
from vlm_rlaif.models import build_tiny_model, train_tokenizer
from vlm_rlaif.prompts import load_prompt
from vlm_rlaif.video import write_video

FRAMES = 12  # sampled per video; clip_max_frames 4 -> 3 clips
CLIP_MAX = 4
QUESTIONS = ["What colour is the square?", "Which way does the circle move?", "Describe the video.", "How many shapes are there?"]


def make_model_dir(directory: Path) -> Path:
    prefix = load_prompt("judge_verdict_prefix").text
    texts = [
        load_prompt("judge_pairwise_context").text,
        load_prompt("describe_clip").text,
        *QUESTIONS,
        "The red square moves left. The blue circle turns green.",
    ] * 5 + [f"{prefix} A. It is right.", f"{prefix} B. It is wrong.", "ASSISTANT: Yes", "ASSISTANT: No"] * 20
    lm = build_tiny_model("tiny", train_tokenizer(texts, vocab_size=600), frames=FRAMES, seed=3)
    lm.save(directory)
    return directory


def make_video_root(directory: Path, videos: int = 3, prompts_per_video: int = 2) -> Path:
    """videos/v<i>.mp4 (frame t of video i has grey level 20 * (t % 12) + i) and prompts.json."""
    (directory / "videos").mkdir(parents=True)
    records = []
    for v in range(videos):
        frames = np.zeros((FRAMES, 32, 32, 3), np.uint8)
        for t in range(FRAMES):
            frames[t] = 10 + 18 * t
        frames[:, : 4 + 4 * v, :4] = 255  # a white corner bar whose length tells videos apart
        write_video(frames, directory / "videos" / f"v{v}.mp4", fps=8)
        for q in range(prompts_per_video):
            records.append(
                {
                    "id": f"v{v}q{q}",
                    "video": f"videos/v{v}.mp4",
                    "conversations": [{"from": "human", "value": f"<video>\n{QUESTIONS[(v + q) % len(QUESTIONS)]}"}],
                    "toy": {"video_id": f"v{v}", "qtype": "colour"},
                }
            )
    (directory / "prompts.json").write_text(json.dumps(records, indent=1))
    return directory


def make_config(model_dir: Path, root: Path, out: Path, **overrides) -> FeedbackConfig:
    config = FeedbackConfig(
        model_dir=model_dir,
        prompts=root / "prompts.json",
        video_root=root,
        out=out,
        seed=1,
        clip_max_frames=CLIP_MAX,
        chunk_size=2,
        candidates=CandidateSettings(max_new_tokens=6, batch_size=8),
        describe=ContextSettings(max_new_tokens=6),
        judge=JudgeSettings(batch_size=8),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config
