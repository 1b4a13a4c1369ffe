"""Does a toy SFT model read the clip context? Held-out short questions answered greedily three ways.

    python bench/probe_context_reading.py --work runs/foundation [--videos 80]

WORK is a measure_toy_sft.py work dir or a `demo --from-scratch` run (world/ and sft/model). For
the eval-split videos of its world (never seen in SFT), the questions of SFT_context-style records
(short ones), answered (1) from the video alone, (2) from a blank video with the true clip
descriptions in the prompt (answer_with_context), (3) from the video with them; oracle accuracy.
(2) tells whether the model can read the context at all, (3) minus (1) whether it uses it when the
video is there too.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "toy.yaml")
    parser.add_argument("--videos", type=int, default=80)
    args = parser.parse_args()

    import torch

    from vlm_rlaif.config import load_config
    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.models import GenerationSettings, VideoExample, load_adapter_model
    from vlm_rlaif.toyworld import Oracle, ToyWorldConfig
    from vlm_rlaif.toyworld.dataset import make_records
    from vlm_rlaif.toyworld.lexicon import BACKGROUND
    from vlm_rlaif.toyworld.world import Truth, video_id_of

    torch.set_num_threads(1)
    world = args.work / "world"
    cfg = load_config(ToyWorldConfig, args.recipe, [], section="toyworld", variables={"seed": 0, "run_dir": "x"})
    lm = load_adapter_model(args.work / "sft" / "model")
    num_frames = lm.processor.num_frames
    store = FrameStore(world, FrameSampling(num_frames, cfg.clip_max_frames))
    blank = np.empty((num_frames, cfg.size, cfg.size, 3), dtype=np.uint8)
    blank[:] = BACKGROUND
    manifest = json.loads((world / "manifest.json").read_text())
    truths = [Truth.from_dict(json.loads((world / "truth" / f"{video_id_of(i)}.json").read_text()))
              for i in range(manifest["videos"])]
    truths = [t for t in truths if t.split == "eval"][: args.videos]
    rows = []
    for truth in truths:
        truth.split = "sft"  # the records an SFT video would get; the video stays unseen
        records = make_records(truth, replace(cfg, context_per_video=4, context_blank_video_prob=0.0))
        frames, key = store.video(f"videos/{truth.video_id}.mp4")
        for record in records["sft/SFT_context.json"]:
            if record["toy"]["qtype"].startswith("describe"):
                continue
            with_context = record["conversations"][0]["value"].replace("<video>\n", "")
            question = with_context.split("answer: ", 1)[1]
            rows.append((truth, record, question, with_context, frames, key))
    conditions = {
        "video only": lambda r: VideoExample([{"role": "user", "content": r[2]}], r[4], r[5]),
        "blank video + true context": lambda r: VideoExample([{"role": "user", "content": r[3]}], blank, "blank"),
        "video + true context": lambda r: VideoExample([{"role": "user", "content": r[3]}], r[4], r[5]),
    }
    oracle, result = Oracle(), {"work": str(args.work), "questions": len(rows)}
    for name, make in conditions.items():
        outputs = lm.generate([make(r) for r in rows], GenerationSettings(max_new_tokens=24, temperature=0.0, batch_size=32))
        correct = [oracle.check(r[0], r[1]["toy"], o.text).correct for r, o in zip(rows, outputs)]
        result[name] = round(sum(correct) / len(correct), 3)
        print(f"{name:<28} {result[name]:.3f} (n={len(correct)})")
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "probe_context_reading.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
