"""The likelihood judge's score, varied, on a measure_toy_sft.py work dir's own sampled pairs.

    python bench/probe_judge_likelihood.py --work runs/measure_sft

Reads WORK/own_pairs (measure_toy_sft's (d): the feedback prompts' sampled answer pairs, the
model's own clip descriptions) and scores each answer by its log-probability after the question
(no context), after answer_with_context with the model's own descriptions, and with the true ones.
Each context is also read on the blank video (the background only: the descriptions are then the
only source). Agreement with the oracle (its ties left out) for the mean per token (judge.form
likelihood), the sum (favours short answers), the context's pointwise mutual information (with
minus without context, on the video and on the blank video), and the video's mean plus the
blank-video PMI, overall and for short / long questions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "toy.yaml")
    args = parser.parse_args()

    import torch

    import measure_toy_sft as measure
    from vlm_rlaif.config import load_config
    from vlm_rlaif.data.frames import FrameSampling, FrameStore
    from vlm_rlaif.feedback.judges import JudgeItem, answer_logprobs, likelihood_examples
    from vlm_rlaif.models import load_adapter_model
    from vlm_rlaif.prompts import format_context
    from vlm_rlaif.toyworld import ToyWorldConfig
    from vlm_rlaif.toyworld.world import Truth

    torch.set_num_threads(1)
    world = args.work / "world"
    cfg = load_config(ToyWorldConfig, args.recipe, [], section="toyworld", variables={"seed": 0, "run_dir": "x"})
    describe_truth = measure.true_descriptions(cfg)
    lm = load_adapter_model(args.work / "sft" / "model")
    feedback = measure.recipe_feedback(argparse.Namespace(recipe=args.recipe, seed=0), args.work)
    store = FrameStore(world, FrameSampling(lm.processor.num_frames, cfg.clip_max_frames,
                                            clip_frames=feedback.clip_frames))
    blank, blank_key = store.video("videos/blank.mp4")
    prompts = {r["id"]: r for r in json.loads((world / "feedback" / "prompts.json").read_text())}
    own = {}
    for line in (args.work / "own_pairs" / "contexts.jsonl").read_text().splitlines():
        row = json.loads(line)
        own[row["video_key"]] = row["descriptions"]
    rows = [json.loads(line) for line in (args.work / "own_pairs" / "measure_context.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["oracle"] != 0]
    items = []
    for r in rows:
        prompt = prompts[r["prompt_id"]]
        question = prompt["conversations"][0]["value"].replace("<video>\n", "")
        frames, key = store.video(prompt["video"])
        truth = Truth.from_dict(json.loads((world / "truth" / f"{prompt['toy']['video_id']}.json").read_text()))
        contexts = (None, format_context(own[key]), format_context(describe_truth(truth)))
        for context in contexts:
            items.append(JudgeItem(question, r["output_1"], r["output_2"], context, frames, key))
        for context in contexts:
            items.append(JudgeItem(question, r["output_1"], r["output_2"], context, blank, blank_key))
    examples = likelihood_examples(items)
    scores = answer_logprobs(lm, examples, 16)
    sums, counts = [total for total, _ in scores], [count for _, count in scores]
    conditions = ("no_context", "own_context", "true_context", "blank", "own_blank", "true_blank")
    width = 2 * len(conditions)
    scored = []
    for i, r in enumerate(rows):
        kind = "long" if prompts[r["prompt_id"]]["toy"]["qtype"].startswith("describe") else "short"
        s = {c: (sums[width * i + 2 * k], counts[width * i + 2 * k], sums[width * i + 2 * k + 1],
                 counts[width * i + 2 * k + 1]) for k, c in enumerate(conditions)}
        scored.append((r["oracle"], kind, s))
    def mean(s, c):
        return s[c][0] / s[c][1] - s[c][2] / s[c][3]

    def pmi(s, c, base):
        return (s[c][0] - s[base][0]) - (s[c][2] - s[base][2])

    rules = {  # rule -> (score of a pair under condition c: > 0 prefers output_1, the conditions it reads)
        "mean": (mean, conditions),
        "sum": (lambda s, c: s[c][0] - s[c][2], conditions),
        "pmi_sum": (lambda s, c: pmi(s, c, "no_context"), ("own_context", "true_context")),
        "pmi_blank": (lambda s, c: pmi(s, c, "blank"), ("own_blank", "true_blank")),
        "mean+pmi_blank_mean": (lambda s, c: mean(s, "no_context") + mean(s, c) - mean(s, "blank"),
                                ("own_blank", "true_blank")),
    }
    result = {"work": str(args.work), "pairs": len(scored)}
    for rule, (score, reads) in rules.items():
        for c in reads:
            for kind in ("all", "short", "long"):
                picked = [(o, score(s, c)) for o, k, s in scored if kind in ("all", k)]
                decided = [(1 if v > 0 else 2) == o for o, v in picked if v != 0]
                rate = sum(decided) / len(decided) if decided else None
                result[f"{rule}/{c}/{kind}"] = [None if rate is None else round(rate, 3), len(decided)]
            print(rule, c, {k: result[f"{rule}/{c}/{k}"] for k in ("all", "short", "long")})
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "probe_judge_likelihood.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
