"""Does the clip context make the judge agree with the truth more often? A toy-world smoke measurement.

    python bench/measure_judge_context.py --work runs/judge_context --videos 300 --rest-epochs 3

Steps (each reused when its output already exists, so a rerun is cheap):
1. a toy world of --videos videos (vlm_rlaif.toyworld.generate);
2. a share of the SFT videos is held out; a tiny model is trained from scratch with run_sft on the
   other videos' short answers, then long answers + clip descriptions + judge-skill examples;
3. held-out judge pairs (a correct and a corrupted answer, from the held-out videos' judge-skill
   records) are judged in both orders under three conditions: the model's own clip descriptions as
   context (the paper's method), no context (the ablation), and the true clip descriptions (an upper
   bound: does the judge use a context at all?); agreement with the oracle, n, Wilson 95% intervals;
4. `measure_context` on the feedback prompts (pairs the model samples itself: the real pipeline);
5. `run_feedback` on the feedback prompts: throughput (pairs per minute) and the stage's counts.
The lead reruns steps 3-5 on the demo's real SFT model with --model DIR (skipping 1-2 training).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vlm_rlaif.data import InstructionRecord
from vlm_rlaif.feedback import FeedbackConfig, measure_context, run_feedback
from vlm_rlaif.feedback.agreement import OracleReference
from vlm_rlaif.feedback.config import CandidateSettings, ContextSettings, JudgeSettings
from vlm_rlaif.feedback.context import ClipContexts
from vlm_rlaif.feedback.measure import compare_conditions, format_report, judge_both_ways
from vlm_rlaif.feedback.pipeline import FeedbackRunner, Pair

log = logging.getLogger("measure_judge_context")
SFT_FILES = ("SFT_short.json", "SFT_long.json", "SFT_clips.json", "SFT_judge.json")


def make_toy_world(work: Path, videos: int, seed: int, judge_per_video: int) -> Path:
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    toy = work / "toy"
    if not (toy / "manifest.json").exists():
        generate(ToyWorldConfig(seed=seed, judge_per_video=judge_per_video), toy, videos, workers=2)
    return toy


def split_sft(toy: Path, work: Path, held_fraction: float, seed: int) -> tuple[Path, list[dict]]:
    """SFT files without the held-out videos (written under work/sft_data), and the held-out videos'
    judge-skill records (the measurement's pairs)."""
    records = {name: json.loads((toy / "sft" / name).read_text()) for name in SFT_FILES}
    videos = sorted({r["toy"]["video_id"] for r in records["SFT_judge.json"]})
    held = set(random.Random(seed).sample(videos, max(1, round(held_fraction * len(videos)))))
    data = work / "sft_data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in records.items():
        (data / name).write_text(json.dumps([r for r in rows if r["toy"]["video_id"] not in held]))
    return data, [r for r in records["SFT_judge.json"] if r["toy"]["video_id"] in held]


def train_model(toy: Path, data: Path, work: Path, args) -> Path:
    from vlm_rlaif.train.loop import TrainSettings
    from vlm_rlaif.train.sft import (
        CurriculumSettings,
        DataSettings,
        ModelSettings,
        PhaseSettings,
        SFTConfig,
        TinyModelSettings,
        TuneSettings,
        run_sft,
    )

    out = work / "sft"
    if (out / "summary.json").exists():
        return out / "model"
    config = SFTConfig(
        out=str(out),
        model=ModelSettings(init=TinyModelSettings(size=args.size, vocab_size=1024, frames=24)),
        data=DataSettings(root=str(data), video_root=str(toy), clip_max_frames=8, eval_fraction=0.05, preload_frames=True),
        curriculum=CurriculumSettings(
            phases=[
                PhaseSettings("short", ["SFT_short.json"], epochs=args.short_epochs),
                PhaseSettings("rest", ["SFT_long.json", "SFT_clips.json", "SFT_judge.json"], epochs=args.rest_epochs),
            ]
        ),
        # The tiny model has no pretrained vision tower: it trains everything (a toy-only deviation).
        tune=TuneSettings(method="full", projector=True, vision_tower=True),
        train=TrainSettings(batch_size=16, lr=args.lr, warmup_ratio=0.03, cpu=True, seed=args.seed),
    )
    summary = run_sft(config)
    log.info("SFT: %s", {k: summary[k] for k in ("steps", "train_loss", "eval_loss_before", "eval_loss_after", "train_seconds")})
    return out / "model"


class TruthDescriber:
    """The toy world's true clip descriptions (the context the judge was trained with)."""

    id = "toy-truth"

    def __init__(self, toy: Path):
        from vlm_rlaif.toyworld.dataset import clip_descriptions
        from vlm_rlaif.toyworld.world import Truth

        self.toy = toy
        self.order_gap = json.loads((toy / "manifest.json").read_text())["config"]["order_gap"]
        self._describe = clip_descriptions
        self._truth = Truth

    def describe(self, clips):
        out = []
        for _, key in clips:
            video_id, clip = re.fullmatch(r"videos/(\w+)\.mp4@u\d+/clip(\d+)of\d+", key).groups()
            truth = self._truth.from_dict(json.loads((self.toy / "truth" / f"{video_id}.json").read_text()))
            out.append(self._describe(truth, np.random.default_rng(int(clip)), self.order_gap)[int(clip)])
        return out


def held_out_pairs(judge_records: list[dict]) -> list[Pair]:
    """Each judge-skill record as a pair: (correct, corrupted) in the record's A/B order, asked as its
    base question, with the base question's toy metadata for the oracle."""
    pairs = []
    for r in judge_records:
        params = r["toy"]["params"]
        question = re.search(r"Question: (.*)\n", r["conversations"][0]["value"]).group(1)
        prompt = InstructionRecord.model_validate(
            {
                "id": r["id"],
                "video": r["video"],
                "conversations": [{"from": "human", "value": f"<video>\n{question}"}],
                "toy": {"video_id": r["toy"]["video_id"], "qtype": params["base_qtype"], "params": params["base_params"]},
            }
        )
        answer_1, answer_2 = params["answers"]
        pairs.append(Pair(r["id"], prompt, answer_1, answer_2))
    return pairs


def measure_held_out(config: FeedbackConfig, toy: Path, pairs: list[Pair], work: Path) -> dict:
    out = work / "held_out"
    out.mkdir(parents=True, exist_ok=True)
    runner = FeedbackRunner(config, out)
    reference = OracleReference(toy)
    started = time.perf_counter()
    rows = judge_both_ways(runner, pairs, reference)
    model_context_s = time.perf_counter() - started
    # Third condition: the same judge reading the true clip descriptions.
    runner.contexts = ClipContexts(TruthDescriber(toy), runner.frames)
    for row, (first, second) in zip(rows, runner.judge_pairs(pairs, with_context=True)):
        pair = next(p for p in pairs if p.id == row["id"])
        row["true_context"] = runner.judgment(pair, first, second, True, runner.judge)
    with (out / "rows.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    conditions = ("context", "no_context", "true_context")
    summary = compare_conditions(rows, conditions)
    summary.update(judge=runner.judge.id, seconds=round(model_context_s, 1))
    print(format_report(summary, conditions))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="judge/policy model dir (skips training)")
    parser.add_argument("--judge-per-video", type=int, default=6, help="judge-skill examples per SFT video")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--short-epochs", type=int, default=1)
    parser.add_argument("--rest-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-fraction", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    work = args.work
    toy = make_toy_world(work, args.videos, args.seed, args.judge_per_video)
    data, judge_records = split_sft(toy, work, args.held_fraction, args.seed)
    started = time.perf_counter()
    model = args.model or train_model(toy, data, work, args)
    train_s = time.perf_counter() - started

    config = FeedbackConfig(
        model_dir=model,
        prompts=toy / "feedback" / "prompts.json",
        video_root=toy,
        out=work / "measure_feedback_prompts",
        seed=args.seed,
        clip_max_frames=8,
        chunk_size=16,
        candidates=CandidateSettings(max_new_tokens=64, batch_size=16),
        describe=ContextSettings(max_new_tokens=96),
        judge=JudgeSettings(batch_size=16),
    )
    report = {"model": str(model), "train_seconds": round(train_s, 1)}
    report["held_out_judge_pairs"] = measure_held_out(config, toy, held_out_pairs(judge_records), work)
    if not (config.out / "summary.json").exists():
        measure_context(config)
    report["feedback_prompts"] = json.loads((config.out / "summary.json").read_text())
    print(format_report(report["feedback_prompts"]))
    stage = replace(config, out=work / "feedback_run")
    if not (stage.out / "summary.json").exists():
        run_feedback(stage)
    report["feedback_stage"] = json.loads((stage.out / "summary.json").read_text())
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report["feedback_stage"][k] for k in ("pairs_judged", "pairs_kept", "this_run", "oracle")}, indent=2))


if __name__ == "__main__":
    main()
