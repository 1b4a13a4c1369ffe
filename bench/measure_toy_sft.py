"""Does the toy recipe's SFT model learn what the RLAIF loop needs? Held-out measurements by the oracle.

    python bench/measure_toy_sft.py --work runs/measure_sft [--recipe recipes/toy.yaml] [--videos 600]
        [--toyworld KEY=VALUE ...] [--sft KEY=VALUE ...] [--threads 1 | --processes 2]

1. A toy world from the recipe's `toyworld` section (plus --toyworld overrides) with --videos videos.
2. SFT from the recipe's `sft` section (plus --sft overrides) on the world's SFT split, timed (wall
   clock of the whole stage: tokenizer, model build, training, eval loss, saving). --processes 2
   launches it through `accelerate launch` (2 CPU processes over gloo), else in this process with
   --threads torch threads.
3. Held out: the world's eval-split videos, which SFT never sees. For each, the records SFT would
   have had if the video were in the SFT split (toyworld.make_records: the same question, clip and
   judge-example distributions), with more judge examples per video (--judge-per-video).
   (a) short answers, greedy: oracle accuracy (Wilson 95% interval), per question type;
   (b) clip descriptions (the describe_clip prompt on each of the 3 clips, greedy: what the feedback
       stage's context is made of): oracle-correct share, hallucination-free share, mean coverage;
   (c) judge-skill pairs (a correct and a corrupted answer) judged in both orders (mean of the two
       P(A)) three ways: no context, the model's own clip descriptions (b) as context, the true clip
       descriptions; agreement with the oracle and paired differences;
   (d) pairs of the model's own sampled answers to the world's feedback prompts (what the feedback
       stage judges; feedback.measure_context, the recipe's feedback sampling settings), with own
       context, without, and with the true clip descriptions.
Every number comes with its n; report.json in --work holds everything, one line per run is appended
to bench/out/measure_toy_sft.jsonl. Steps reuse finished outputs under --work (delete to redo).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "toy.yaml"
LOG_FILE = REPO / "bench" / "out" / "measure_toy_sft.jsonl"
CONDITIONS = ("no_context", "own_context", "true_context")
log = logging.getLogger("measure_toy_sft")


# ---------------------------------------------------------------------- 1. world, 2. SFT


def make_world(args, work: Path):
    from vlm_rlaif.config import load_config
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    cfg = load_config(ToyWorldConfig, args.recipe, args.toyworld, section="toyworld", variables=_variables(args, work))
    world = work / "world"
    if not (world / "manifest.json").exists():
        generate(cfg, world, args.videos, workers=1)
    return cfg, world


def _variables(args, work: Path) -> dict:
    return {"run_dir": str(work), "seed": args.seed}


def run_sft_timed(args, work: Path) -> dict:
    """SFT as the recipe says; returns its summary plus the stage's wall-clock seconds."""
    out = work / "sft"
    summary_path = out / "summary.json"
    timing_path = work / "sft_wall.json"
    if summary_path.exists() and timing_path.exists():
        return {**json.loads(summary_path.read_text()), **json.loads(timing_path.read_text())}
    overrides = [f"out={out}", f"data.root={work / 'world'}", *args.sft]
    started = time.perf_counter()
    if args.processes > 1:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "vlm_rlaif.cli", "sft", "--config", str(args.recipe), *overrides]
        subprocess.run(command, check=True, env=env)
    else:
        from vlm_rlaif.config import load_config
        from vlm_rlaif.train.sft import SFTConfig, run_sft

        config = load_config(SFTConfig, args.recipe, overrides, section="sft", variables=_variables(args, work))
        run_sft(config)
    timing = {"wall_seconds": round(time.perf_counter() - started, 1), "threads": args.threads,
              "processes": args.processes}
    timing_path.write_text(json.dumps(timing))
    return {**json.loads(summary_path.read_text()), **timing}


# ---------------------------------------------------------------------- 3. held-out records


def held_out_records(cfg, world: Path, judge_per_video: int, max_videos: int) -> dict[str, list[dict]]:
    """SFT-style records (short, clips, judge) of the world's eval-split videos."""
    from vlm_rlaif.toyworld.dataset import make_records
    from vlm_rlaif.toyworld.world import Truth, video_id_of

    manifest = json.loads((world / "manifest.json").read_text())
    truths = []
    for index in range(manifest["videos"]):
        truth = Truth.from_dict(json.loads((world / "truth" / f"{video_id_of(index)}.json").read_text()))
        if truth.split == "eval":
            truths.append(truth)
    out: dict[str, list[dict]] = defaultdict(list)
    as_sft = replace(cfg, judge_per_video=judge_per_video)
    for truth in truths[:max_videos]:
        truth.split = "sft"  # the records an SFT video gets; the video itself stays unseen
        for name, records in make_records(truth, as_sft).items():
            out[name.split("/")[-1]].extend(records)
    return out


def short_answers(lm, store, records: list[dict], oracle, world: Path) -> dict:
    from vlm_rlaif.feedback.agreement import wilson_interval
    from vlm_rlaif.models import GenerationSettings, VideoExample

    examples = []
    for r in records:
        frames, key = store.video(r["video"])
        examples.append(VideoExample([{"role": "user", "content": _question(r)}], frames, key))
    outputs = lm.generate(examples, GenerationSettings(max_new_tokens=32, temperature=0.0, batch_size=32))
    rows = []
    for r, out in zip(records, outputs):
        verdict = oracle.check(oracle.load_truth(world, r["toy"]["video_id"]), r["toy"], out.text)
        rows.append({"qtype": r["toy"]["qtype"], "question": _question(r), "answer": out.text,
                     "reference": r["conversations"][1]["value"], "correct": verdict.correct})
    by_type = defaultdict(list)
    for row in rows:
        by_type[row["qtype"]].append(row["correct"])
    correct = sum(row["correct"] for row in rows)
    return {
        "n": len(rows), "accuracy": correct / len(rows), "ci95": _rounded(wilson_interval(correct, len(rows))),
        "by_qtype": {q: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)} for q, v in sorted(by_type.items())},
        "samples": rows[:12],
    }


def clip_descriptions(lm, store, records: list[dict], oracle, world: Path, max_new_tokens: int) -> tuple[dict, dict]:
    """(summary, {video: [description per clip]}): the describe_clip prompt on every clip, greedy."""
    from vlm_rlaif.data.records import ClipSpec
    from vlm_rlaif.models import GenerationSettings, VideoExample
    from vlm_rlaif.prompts import load_prompt

    prompt = load_prompt("describe_clip").text
    examples = []
    for r in records:
        frames, key = store.clip(r["video"], ClipSpec(**r["clip"]))
        examples.append(VideoExample([{"role": "user", "content": prompt}], frames, key))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=32, seed=0)
    outputs = lm.generate(examples, settings)
    rows, by_video = [], defaultdict(dict)
    for r, out in zip(records, outputs):
        verdict = oracle.check(oracle.load_truth(world, r["toy"]["video_id"]), r["toy"], out.text)
        supported = sum(f.status == "supported" for f in verdict.facts)
        contradicted = sum(f.status == "contradicted" for f in verdict.facts)
        rows.append({"correct": verdict.correct, "hallucinations": verdict.hallucinations,
                     "coverage": verdict.coverage, "supported": supported, "contradicted": contradicted,
                     "answer": out.text, "reference": r["conversations"][1]["value"]})
        by_video[r["video"]][r["clip"]["index"]] = out.text
    n = len(rows)
    claims = sum(row["supported"] + row["contradicted"] for row in rows)
    summary = {
        "n": n,
        "correct": sum(row["correct"] for row in rows) / n,
        "hallucination_free": sum(row["hallucinations"] == 0 for row in rows) / n,
        "mean_coverage": sum(row["coverage"] for row in rows) / n,
        "claims_supported_share": sum(row["supported"] for row in rows) / claims if claims else None,
        "ended": sum(bool(row["answer"]) for row in rows) / n,
        "samples": rows[:6],
    }
    contexts = {video: [clips[i] for i in sorted(clips)] for video, clips in by_video.items()}
    return summary, contexts


def judge_pairs(lm, store, records: list[dict], own: dict, true_context, oracle, world: Path, judge_settings) -> dict:
    """Held-out judge-skill pairs, both orders, under the three CONDITIONS, judged as the recipe's
    feedback judge does (its form and scale)."""
    from vlm_rlaif.feedback.judges import JudgeItem, LocalJudge
    from vlm_rlaif.prompts import format_context

    judge = LocalJudge(lm, judge_settings, "measure", "measure")
    items, meta = [], []
    for r in records:
        params = r["toy"]["params"]
        question = re.search(r"Question: (.*)\n", r["conversations"][0]["value"]).group(1)
        frames, key = store.video(r["video"])
        base = {"video_id": r["toy"]["video_id"], "qtype": params["base_qtype"], "params": params["base_params"]}
        truth = oracle.load_truth(world, base["video_id"])
        reference = oracle.compare(truth, base, *params["answers"])
        contexts = {"no_context": None, "own_context": format_context(own[r["video"]]),
                    "true_context": format_context(true_context(truth))}
        for condition in CONDITIONS:
            a, b = params["answers"]
            items.append(JudgeItem(question, a, b, contexts[condition], frames, key))
            items.append(JudgeItem(question, b, a, contexts[condition], frames, key))
        meta.append({"reference": reference, "corruption": params["corruption"], "base_qtype": params["base_qtype"],
                     "kind": "long" if params["base_qtype"].startswith("describe") else "short"})
    verdicts = iter(judge.judge(items))
    for m in meta:
        for condition in CONDITIONS:
            first, second = next(verdicts), next(verdicts)
            m[condition] = 0.5 * (first.prob_a + (1.0 - second.prob_a))
            m[condition + "_orders_agree"] = (first.prob_a > 0.5) == (second.prob_a < 0.5)
    return summarise_judge(meta)


def summarise_judge(rows: list[dict]) -> dict:
    from vlm_rlaif.feedback.agreement import agreement, paired_difference

    def pref(p: float) -> int | None:
        return 1 if p > 0.5 else 2 if p < 0.5 else None

    out: dict = {"pairs": len(rows), "oracle_ties": sum(r["reference"] == 0 for r in rows)}
    for condition in CONDITIONS:
        out[condition] = agreement([pref(r[condition]) for r in rows], [r["reference"] for r in rows])
        out[condition]["order_agreement"] = sum(r[condition + "_orders_agree"] for r in rows) / len(rows)
    scored = [r for r in rows if r["reference"] != 0]
    for condition in ("own_context", "true_context"):
        out[f"{condition}_minus_no_context"] = paired_difference(
            [pref(r[condition]) == r["reference"] for r in scored], [pref(r["no_context"]) == r["reference"] for r in scored])
    groups = defaultdict(list)
    for r in scored:
        groups[f"kind={r['kind']}"].append(r)
        groups[f"corruption={r['corruption']}"].append(r)
    out["by_group"] = {
        name: {"n": len(g), **{c: round(sum(pref(r[c]) == r["reference"] for r in g) / len(g), 3) for c in CONDITIONS}}
        for name, g in sorted(groups.items())
    }
    return out


def true_descriptions(cfg):
    """Truth -> the true description of each clip (the toy world's own clip texts)."""
    from vlm_rlaif.toyworld.dataset import clip_descriptions as world_clip_descriptions

    return lambda truth: world_clip_descriptions(truth, np.random.default_rng([cfg.seed, truth.index, 7]), cfg.order_gap)


# ---------------------------------------------------------------------- (d) own sampled pairs


class TruthDescriber:
    """The feedback stage's describer interface, answering with the true clip descriptions."""

    id = "toy-truth"

    def __init__(self, world: Path, describe):
        from vlm_rlaif.toyworld.world import Truth

        self.world, self.describe_truth, self.truth_cls = world, describe, Truth

    def describe(self, clips):
        out = []
        for _, key in clips:
            video_id, clip = re.fullmatch(r"videos/(\w+)\.mp4@u\d+/clip(\d+)of\d+", key).groups()
            truth = self.truth_cls.from_dict(json.loads((self.world / "truth" / f"{video_id}.json").read_text()))
            out.append(self.describe_truth(truth)[int(clip)])
        return out


def recipe_feedback(args, work: Path):
    from vlm_rlaif.config import load_config
    from vlm_rlaif.feedback import FeedbackConfig

    return load_config(FeedbackConfig, args.recipe, [], section="feedback", variables=_variables(args, work))


def own_sampled_pairs(args, work: Path, world: Path, describe_truth) -> dict:
    """measure_context on the feedback prompts (the recipe's feedback settings), plus true context."""
    from vlm_rlaif.config import load_config
    from vlm_rlaif.feedback import FeedbackConfig, measure_context
    from vlm_rlaif.feedback.agreement import agreement, paired_difference
    from vlm_rlaif.feedback.context import ClipContexts
    from vlm_rlaif.feedback.measure import _mean_side
    from vlm_rlaif.feedback.pipeline import FeedbackRunner, load_prompts

    out = work / "own_pairs"
    config = load_config(FeedbackConfig, args.recipe, [f"out={out}", f"model_dir={work / 'sft' / 'model'}",
                                                      f"prompts={world / 'feedback' / 'prompts.json'}",
                                                      f"video_root={world}", f"toy_root={world}",
                                                      f"max_prompts={args.feedback_prompts}"],
                         section="feedback", variables=_variables(args, work))
    if not (out / "summary.json").exists():
        measure_context(config)
    rows = [json.loads(line) for line in (out / "measure_context.jsonl").read_text().splitlines() if line.strip()]
    # The same pairs and judge, reading the true clip descriptions.
    runner = FeedbackRunner(config, out)
    runner.contexts = ClipContexts(TruthDescriber(world, describe_truth), runner.frames)
    pair_of = {p.id: p for prompt in load_prompts(config.prompts, config.max_prompts) for p in runner.pairs_of(prompt)
               if prompt.id in runner.candidates}
    pairs = [pair_of[r["id"]] for r in rows]
    for row, pair, verdicts in zip(rows, pairs, runner.judge_pairs(pairs, with_context=True)):
        row["true_context"] = runner.judgment(pair, *verdicts, True, runner.judge)
    oracle = [r["oracle"] for r in rows]
    result = {"prompts": config.max_prompts, "pairs": len(rows), "oracle_ties": sum(o == 0 for o in oracle),
              "by_kind": {}}
    names = {"no_context": "no_context", "own_context": "context", "true_context": "true_context"}
    for condition, key in names.items():
        result[condition] = agreement([_mean_side(r[key]) for r in rows], oracle)
    scored = [r for r in rows if r["oracle"] != 0 and all(_mean_side(r[k]) for k in names.values())]
    for condition in ("own_context", "true_context"):
        result[f"{condition}_minus_no_context"] = paired_difference(
            [_mean_side(r[names[condition]]) == r["oracle"] for r in scored],
            [_mean_side(r["no_context"]) == r["oracle"] for r in scored])
    for kind in ("short", "long"):
        group = [r for r in rows if (r["qtype"] or "").startswith("describe") == (kind == "long")]
        result["by_kind"][kind] = {c: agreement([_mean_side(r[k]) for r in group], [r["oracle"] for r in group])
                                   for c, k in names.items()}
    return result


# ---------------------------------------------------------------------- helpers, main


def _question(record: dict) -> str:
    return record["conversations"][0]["value"].replace("<video>\n", "", 1)


def _rounded(interval) -> list[float]:
    return [round(x, 4) for x in interval]


def _line(name: str, a: dict) -> str:
    rate = "n/a" if a.get("rate") is None else f"{a['rate']:.3f}"
    return f"  {name:<14} {rate} (n={a['n']}, 95% CI {a['ci95']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toyworld", nargs="*", default=[], help="toyworld section overrides KEY=VALUE")
    parser.add_argument("--sft", nargs="*", default=[], help="sft section overrides KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--processes", type=int, default=1, help="SFT processes (accelerate launch when > 1)")
    parser.add_argument("--eval-videos", type=int, default=100, help="held-out (eval split) videos measured")
    parser.add_argument("--judge-per-video", type=int, default=6, help="held-out judge pairs per video")
    parser.add_argument("--describe-tokens", type=int, default=80, help="max new tokens per clip description")
    parser.add_argument("--feedback-prompts", type=int, default=96, help="feedback prompts for (d); 0: skip (d)")
    parser.add_argument("--note", default="", help="free text stored with the result")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.models import load_adapter_model
    from vlm_rlaif.toyworld import Oracle

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cfg, world = make_world(args, work)
    sft = run_sft_timed(args, work)
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "sft": {k: sft.get(k) for k in ("steps", "wall_seconds", "train_seconds", "threads", "processes",
                                               "train_loss", "eval_loss_before", "eval_loss_after",
                                               "trainable_parameters", "train_examples")}}
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_adapter_model(work / "sft" / "model")
    store = FrameStore(world, FrameSampling(lm.processor.num_frames, cfg.clip_max_frames,
                                            clip_frames=recipe_feedback(args, work).clip_frames),
                       max_videos=100_000)
    oracle = Oracle(order_gap=cfg.order_gap)
    held = held_out_records(cfg, world, args.judge_per_video, args.eval_videos)
    report["short"] = short_answers(lm, store, held["SFT_short.json"], oracle, world)
    report["clips"], own = clip_descriptions(lm, store, held["SFT_clips.json"], oracle, world, args.describe_tokens)
    describe_truth = true_descriptions(cfg)
    report["judge_held_out"] = judge_pairs(lm, store, held["SFT_judge.json"], own, describe_truth, oracle, world,
                                           recipe_feedback(args, work).judge)
    if args.feedback_prompts:
        report["judge_own_pairs"] = own_sampled_pairs(args, work, world, describe_truth)
    report["measure_seconds"] = round(time.perf_counter() - started, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))

    s, c, j = report["short"], report["clips"], report["judge_held_out"]
    print(f"SFT: {report['sft']['steps']} steps, {report['sft']['wall_seconds']} s wall "
          f"({args.processes} process(es) x {args.threads} thread(s)), eval loss {report['sft']['eval_loss_after']}")
    print(f"(a) short answers: {s['accuracy']:.3f} (n={s['n']}, 95% CI {s['ci95']})")
    print(f"(b) clip descriptions: correct {c['correct']:.3f}, hallucination-free {c['hallucination_free']:.3f}, "
          f"coverage {c['mean_coverage']:.3f}, supported claims {c['claims_supported_share']} (n={c['n']})")
    print("(c) held-out judge pairs (mean of both orders):")
    for condition in CONDITIONS:
        print(_line(condition, j[condition]))
    if "judge_own_pairs" in report:
        d = report["judge_own_pairs"]
        print(f"(d) own sampled pairs ({d['pairs']} pairs, {d['oracle_ties']} oracle ties):")
        for condition in CONDITIONS:
            print(_line(condition, d[condition]))
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOG_FILE.open("a") as f:
        slim = {k: v for k, v in report.items()}
        slim["short"] = {k: v for k, v in s.items() if k != "samples"}
        slim["clips"] = {k: v for k, v in c.items() if k != "samples"}
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.platform(),
                            "note": args.note, **slim}) + "\n")


if __name__ == "__main__":
    main()
