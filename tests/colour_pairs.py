"""The colour preference world of the reward-model and DPO tests: solid red or blue videos, and
pairs whose preferred answer names the video's true colour."""

import json
from pathlib import Path

import numpy as np

from vlm_rlaif.video import write_video

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
QUESTION = "What colour is the video?"
CONTEXT = "Clip 1: a secret context sentence that only the judge reads."
NUM_FRAMES = 8
NUM_VIDEOS = 24


def colour_frames(colour: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(COLOURS[colour])[None, None, None]
    return np.clip(base + rng.integers(-20, 20, (NUM_FRAMES, 32, 32, 3)), 0, 255).astype(np.uint8)


def pair_record(index: int, colour: str, preference: int, video: str) -> dict:
    """A pair whose preferred answer names the video's true colour. Both answers occur preferred and
    not, in both positions, so only the video tells them apart."""
    other = "blue" if colour == "red" else "red"
    good, bad = f"The video is {colour}.", f"The video is {other}."
    first, second = (good, bad) if preference == 1 else (bad, good)
    return {
        "id": f"p{index}",
        "video": video,
        "conversations": [{"from": "human", "value": f"<video>\n{QUESTION}"}],
        "output_1": {"value": first},
        "output_2": {"value": second},
        "preference": preference,
        "context": CONTEXT,
        "judge": "test",
    }


def write_colour_pairs(root: Path) -> None:
    """NUM_VIDEOS written videos v<i>.mp4 (alternately red and blue) and prefs.jsonl, one pair each."""
    rng = np.random.default_rng(0)
    records = []
    for v in range(NUM_VIDEOS):
        colour = list(COLOURS)[v % 2]
        write_video(colour_frames(colour, rng), root / f"v{v}.mp4")
        records.append(pair_record(v, colour, 1 + (v // 2) % 2, f"v{v}.mp4"))
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
