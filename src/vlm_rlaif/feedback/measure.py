"""The paper's central claim in miniature: does the clip context make the judge agree with the truth
more often?

The same pairs (same candidates, same judge) are judged with context and without, each in both
orders, and each condition's agreement with the toy world's oracle is reported with n and a Wilson
95% interval, plus the paired difference (bootstrap interval) over the pairs both conditions decide.
Agreement is measured two ways: the mean of the two orders on every pair (the judge's raw skill), and
the labels the position policy keeps (what the reward model would be trained on).

Resumable like the feedback stage: candidates and contexts are logged, and each pair's verdicts are
appended to measure_context.jsonl as soon as its chunk is judged.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

from vlm_rlaif.data import JsonlWriter, iter_raw
from vlm_rlaif.errors import RecordError
from vlm_rlaif.feedback.agreement import OracleReference, agreement, paired_difference
from vlm_rlaif.feedback.config import FeedbackConfig
from vlm_rlaif.feedback.pipeline import (
    CANDIDATES_FILE,
    CONTEXTS_FILE,
    FeedbackRunner,
    Pair,
    chunked,
    chunks_with_progress,
    load_prompts,
    toy_meta,
)
from vlm_rlaif.feedback.preferences import side
from vlm_rlaif.rundir import RunDir

log = logging.getLogger(__name__)

MEASURE_FILE = "measure_context.jsonl"
CONDITIONS = ("context", "no_context")


def measure_context(config: FeedbackConfig, *, overwrite: bool = False, reuse_from: str | Path | None = None) -> dict:
    """Judge every pair with and without context; summary.json holds the comparison.

    reuse_from: a finished feedback run with the same policy, prompts and sampling settings; its
    candidates and clip contexts are copied in first, so exactly the pairs that stage judged are
    measured (and nothing is sampled or described again).
    """
    config.check()
    prompts = load_prompts(config.prompts, config.max_prompts)
    run = RunDir.open(
        config.out, "feedback-measure-context", config, config.seed, overwrite=overwrite, inputs=config.inputs()
    )
    if reuse_from is not None and not run.resumed:
        for name in (CANDIDATES_FILE, CONTEXTS_FILE):
            if (Path(reuse_from) / name).exists():
                shutil.copyfile(Path(reuse_from) / name, run.path / name)
    started = time.perf_counter()
    runner = FeedbackRunner(config, run.path)
    reference = OracleReference(runner.toy_root())
    path = run.path / MEASURE_FILE
    rows = {obj["id"]: obj for _, obj in iter_raw(path, repair=True)} if path.exists() else {}
    new_pairs = 0
    with JsonlWriter(path) as writer:
        for chunk_index, chunk in enumerate(chunks_with_progress(chunked(prompts, config.chunk_size), "judge context")):
            runner.ensure_candidates(chunk, seed=config.seed * 1_000_003 + chunk_index)
            pairs = [pair for p in chunk for pair in runner.pairs_of(p) if pair.id not in rows]
            if not pairs:
                continue
            for row in judge_both_ways(runner, pairs, reference):
                writer.write(row)
                rows[row["id"]] = row
            new_pairs += len(pairs)
            log.debug("chunk %d: %d pairs judged with and without context", chunk_index, len(pairs))  # the bar shows progress
    elapsed = time.perf_counter() - started
    summary = compare_conditions(list(rows.values()))
    summary.update(
        judge=runner.judge.id,
        judge_version=runner.judge.version,
        describer=runner.contexts.describer.id,
        position_policy=config.position_policy,
        prompts=len(prompts),
        this_run={"pairs": new_pairs, "seconds": round(elapsed, 2), **{k: round(v, 2) for k, v in runner.timings.items()}},
    )
    return run.finish(summary)


def judge_both_ways(runner: FeedbackRunner, pairs: list[Pair], reference: OracleReference) -> list[dict]:
    """One row per pair: the oracle's preference and the judge's judgment with and without context."""
    by_condition = {c: runner.judge_pairs(pairs, with_context=c == "context") for c in CONDITIONS}
    rows = []
    for index, pair in enumerate(pairs):
        toy = toy_meta(pair.prompt)
        if toy is None:
            raise RecordError(f"{runner.config.prompts}: record {pair.prompt.id} has no toy metadata; the oracle needs it")
        row = {
            "id": pair.id,
            "prompt_id": pair.prompt.id,
            "qtype": toy.get("qtype"),
            "output_1": pair.output_1,
            "output_2": pair.output_2,
            "oracle": reference.compare(toy, pair.output_1, pair.output_2),
        }
        for condition in CONDITIONS:
            first, second = by_condition[condition][index]
            row[condition] = runner.judgment(pair, first, second, condition == "context", runner.judge)
        rows.append(row)
    return rows


def _mean_side(judgment: dict) -> int | None:
    return None if judgment["prob_1"] is None else (side(judgment["prob_1"], 0.0) or None)


def compare_conditions(rows: list[dict], conditions: tuple[str, ...] = CONDITIONS) -> dict:
    """Agreement with the oracle per condition, per question type, and the paired difference of
    context minus no context."""
    oracle = [row["oracle"] for row in rows]
    result: dict = {"pairs": len(rows), "oracle_ties": sum(o == 0 for o in oracle)}
    for condition in conditions:
        judgments = [row[condition] for row in rows]
        kept = [(j["preference"], o) for j, o in zip(judgments, oracle) if j["status"] == "kept"]
        orders = [j["orders_agree"] for j in judgments if j["orders_agree"] is not None]
        result[condition] = {
            "mean_of_orders": agreement([_mean_side(j) for j in judgments], oracle),
            "kept_labels": agreement([p for p, _ in kept], [o for _, o in kept]),
            "kept": len(kept),
            "order_agreement": sum(orders) / len(orders) if orders else None,
            "invalid_pairs": sum(j["status"] == "invalid" for j in judgments),
        }
    both = [
        (_mean_side(row["context"]) == row["oracle"], _mean_side(row["no_context"]) == row["oracle"])
        for row in rows
        if row["oracle"] != 0 and _mean_side(row["context"]) and _mean_side(row["no_context"])
    ]
    result["difference_context_minus_no_context"] = paired_difference([a for a, _ in both], [b for _, b in both])
    by_type: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_type[str(row["qtype"])].append(row)
    result["by_qtype"] = {
        qtype: {
            condition: agreement([_mean_side(r[condition]) for r in group], [r["oracle"] for r in group])
            for condition in conditions
        }
        for qtype, group in sorted(by_type.items())
    }
    return result


def format_report(summary: dict, conditions: tuple[str, ...] = CONDITIONS) -> str:
    """A few lines for the terminal."""
    lines = [f"pairs {summary['pairs']} (oracle ties {summary['oracle_ties']}), judge {summary.get('judge')}"]
    for condition in conditions:
        for way in ("mean_of_orders", "kept_labels"):
            a = summary[condition][way]
            rate = "n/a" if a["rate"] is None else f"{a['rate']:.3f}"
            lines.append(f"{condition:>12} {way:<15} agreement {rate} (n={a['n']}, 95% CI {a['ci95']})")
    d = summary["difference_context_minus_no_context"]
    lines.append(f"difference (context - no context), paired: {d['difference']} (n={d['n']}, 95% CI {d['ci95']})")
    return "\n".join(lines)


__all__ = ["CONDITIONS", "compare_conditions", "format_report", "judge_both_ways", "measure_context"]
