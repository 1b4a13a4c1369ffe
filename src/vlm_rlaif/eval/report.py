"""results.md: one markdown table with the models side by side, and the paper's numbers beside them
where a benchmark is the paper's (VCG-Bench, MSVD/MSRVTT/ActivityNet-QA), with both judges named."""

from __future__ import annotations

from vlm_rlaif.eval.paper import PAPER_JUDGE, PAPER_JUDGE_NOTE, PAPER_RESULTS, paper_value

PERCENT_METRICS = ("accuracy",)  # shown in %, as the paper prints them


def _cell(estimate: dict | None, metric: str) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    digits = 1 if metric in PERCENT_METRICS else 2
    text = f"{estimate['value'] * scale:.{digits}f}"
    if estimate.get("low") is not None:
        text += f" [{estimate['low'] * scale:.{digits}f}, {estimate['high'] * scale:.{digits}f}]"
    return text


def results_markdown(
    results: dict[str, dict[str, dict]],
    benchmarks: list[dict],
    judge: dict,
    bootstrap: dict,
) -> str:
    """results: model -> benchmark name -> aggregate() output; benchmarks: [{name, kind, paper}] in
    table order; judge: the run's judge record (kind, model, versions, prompts)."""
    models = list(results)
    with_paper = any(b.get("paper") for b in benchmarks)
    paper_models = list(PAPER_RESULTS) if with_paper else []

    lines = ["# Evaluation results", ""]
    versions = ", ".join(judge.get("versions") or []) or "n/a"
    lines.append(f"Judge (ours): {judge['kind']} `{judge['model']}` (answered as: {versions}); prompts: {', '.join(judge.get('prompts') or []) or 'n/a'}.")
    lines.append(
        f"Intervals: {bootstrap['confidence'] * 100:g}% percentile bootstrap over items, "
        f"{bootstrap['resamples']} resamples, seed {bootstrap['seed']}. Accuracy in %, scores 0-5."
    )
    if with_paper:
        lines.append(f"Paper columns: judge {PAPER_JUDGE}. {PAPER_JUDGE_NOTE}")
    lines.append("")

    header = ["benchmark", "metric", *models, *paper_models]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for bench in benchmarks:
        metrics: list[str] = []
        for model in models:
            for metric in results[model].get(bench["name"], {}).get("metrics", {}):
                if metric not in metrics:
                    metrics.append(metric)
        for metric in metrics:
            row = [bench["name"], metric]
            row += [_cell(results[model].get(bench["name"], {}).get("metrics", {}).get(metric), metric) for model in models]
            for paper_model in paper_models:
                value = paper_value(paper_model, bench["paper"], metric) if bench.get("paper") else None
                row.append("" if value is None else (f"{value:.1f}" if metric in PERCENT_METRICS else f"{value:.2f}"))
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Counts", "", "| benchmark | model | items | judged | invalid | failed | skipped (bad video) | video warnings |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for bench in benchmarks:
        for model in models:
            agg = results[model].get(bench["name"])
            if agg is None:
                continue
            judged = ", ".join(f"{c} {n}" for c, n in agg["judged"].items())
            invalid = ", ".join(f"{c} {n}" for c, n in agg["invalid"].items())
            failed = ", ".join(f"{c} {n}" for c, n in agg["failed"].items())
            warnings = ", ".join(f"{kind} {n}" for kind, n in (agg.get("video_warnings") or {}).items() if n) or "none"
            lines.append(f"| {bench['name']} | {model} | {agg.get('items', '')} | {judged} | {invalid} | {failed} | {agg.get('skipped', 0)} | {warnings} |")
    return "\n".join(lines) + "\n"


__all__ = ["results_markdown"]
