"""Can the tiny model learn to judge by reading? A text-only probe of the judge skill.

    python bench/probe_judge_reading.py --world runs/seeds/seed0/world [--steps 2500] [--size tiny]

Trains a fresh tiny language model (no video: the frames are left out) only on the toy world's
judge-skill examples of short questions that carry the TRUE clip descriptions as context, and every
--every steps reports held-out verdict accuracy (P(" A") vs P(" B") after "Better answer:") per
corruption type. Corruptions visible in the text alone (an invented event, a repeated sentence) can
be learnt from form; the content ones (wrong colour, shape, count, ...) need the answer to be checked
against the context. If the content ones stay at chance here, the context-aware judge cannot work at
this size and budget, whatever the video path does.

--reason-first splits the skill in two: the target becomes "<the correct answer> Better answer: X."
(with --reason-copies-answers: "<the correct answer> Answer A: <A> Answer B: <B> Better answer: X."),
the probe generates that reason greedily and reads the verdict after it, and it also reports how often
the generated reason is right by the oracle (reason=<question type>): whether the model can read the
fact off the context at all, apart from comparing the two answers with it. One JSON line per run is
appended to bench/out/probe_judge_reading.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LOG_FILE = REPO / "bench" / "out" / "probe_judge_reading.jsonl"


def main() -> None:
    from vlm_rlaif.data.records import InstructionRecord, to_messages
    from vlm_rlaif.models import GenerationSettings, VideoExample, build_tiny_model, train_tokenizer
    from vlm_rlaif.prompts import load_prompt
    from vlm_rlaif.toyworld import Oracle
    from vlm_rlaif.toyworld.questions import SHORT_QTYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a toy world directory (vlm-rlaif toyworld)")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--test", type=int, default=400, help="held-out judge examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reason-first", action="store_true", help="state the correct answer, then the verdict")
    parser.add_argument("--reason-copies-answers", action="store_true",
                        help="with --reason-first: the reason also restates answers A and B before the verdict")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    sft = args.world / "sft"
    records = [InstructionRecord.model_validate(r) for r in json.loads((sft / "SFT_judge.json").read_text())]
    records = [r for r in records if r.model_extra["toy"]["params"]["context"]
               and r.model_extra["toy"]["params"]["base_qtype"] in SHORT_QTYPES]
    texts = [turn["value"] for name in ("SFT_short", "SFT_long", "SFT_clips", "SFT_judge")
             for r in json.loads((sft / f"{name}.json").read_text()) for turn in r["conversations"]]
    lm = build_tiny_model(args.size, train_tokenizer(texts, vocab_size=1024), seed=args.seed)
    lm.set_trainable(language_model=True)
    random.Random(args.seed).shuffle(records)
    test, train = records[: args.test], records[args.test :]
    prefix = load_prompt("judge_verdict_prefix").text
    manifest = json.loads((args.world / "manifest.json").read_text())
    oracle = Oracle(order_gap=manifest.get("config", {}).get("order_gap", 3))

    def right_answer(params: dict) -> str:
        return params["answers"][0 if params["better"] == "A" else 1]

    def example(record, with_answer: bool = True) -> VideoExample:
        turns = [{"role": m["role"], "content": m["content"]} for m in to_messages(record.conversations)]
        params = record.model_extra["toy"]["params"]
        if args.reason_first and with_answer:
            copies = f" Answer A: {params['answers'][0]} Answer B: {params['answers'][1]}" if args.reason_copies_answers else ""
            turns[1]["content"] = f"{right_answer(params)}{copies} {prefix} {params['better']}."
        return VideoExample([{"role": "system", "content": "A chat."}] + (turns if with_answer else turns[:1]))

    def evaluate() -> dict:
        lm.model.eval()
        by_kind = defaultdict(list)
        with torch.no_grad():
            for i in range(0, len(test), 50):
                batch = test[i : i + 50]
                if args.reason_first:
                    rows = []
                    greedy = GenerationSettings(max_new_tokens=40, temperature=0.0, batch_size=50)
                    for record, out in zip(batch, lm.generate([example(r, False) for r in batch], greedy)):
                        reason = out.text.split(prefix)[0].strip()
                        stated = reason.split(" Answer A:")[0]
                        params, toy = record.model_extra["toy"]["params"], record.model_extra["toy"]
                        meta = {"video_id": toy["video_id"], "qtype": params["base_qtype"], "params": params["base_params"]}
                        checked = oracle.check(oracle.load_truth(args.world, toy["video_id"]), meta, stated)
                        by_kind["reason=" + params["base_qtype"]].append(bool(checked.correct))
                        rows += lm.next_token_logprobs([example(record, False)], [" A", " B"],
                                                       assistant_prefix=f"{reason} {prefix}").tolist()
                else:
                    rows = lm.next_token_logprobs([example(r, False) for r in batch], [" A", " B"], assistant_prefix=prefix)
                for record, row in zip(batch, rows):
                    params = record.model_extra["toy"]["params"]
                    by_kind[params["corruption"]].append(("A" if row[0] > row[1] else "B") == params["better"])
        lm.model.train()
        every = [x for kind, v in by_kind.items() if not kind.startswith("reason=") for x in v]
        return {"accuracy": round(sum(every) / len(every), 3),
                "by_corruption": {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)} for k, v in sorted(by_kind.items())}}

    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = 50
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    curve = [{"step": 0, **evaluate()}]
    print(json.dumps(curve[-1]), flush=True)
    started, cursor = time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        batch = [example(train[(cursor + k) % len(train)]) for k in range(args.batch_size)]
        cursor += args.batch_size
        loss = lm.forward(lm.collate(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started, 1),
                          **evaluate()})
            print(json.dumps(curve[-1]), flush=True)
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOG_FILE.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": {k: str(v) for k, v in vars(args).items()},
                            "train": len(train), "test": len(test), "curve": curve}) + "\n")


if __name__ == "__main__":
    main()
