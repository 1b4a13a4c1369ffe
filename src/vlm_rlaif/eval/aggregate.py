"""Per-benchmark scores from judgement lines, each with a bootstrap interval (eval.stats).

Metrics by benchmark kind:
- vcg_generic: correctness, detail, context (mean 0-5 score); vcg_temporal: temporal;
  vcg_consistency: consistency;
- qa: accuracy = yes / (yes + no), score = mean 0-5 score;
- mcq: accuracy = correct / all items (a reply naming no option counts as wrong);
- hallucinations (oracle judge only): mean hallucinations per answer.
Only "ok" judgements enter scores and QA accuracy: invalid replies and failed requests are counted,
never guessed.
"""

from __future__ import annotations

from vlm_rlaif.eval.criteria import CRITERIA, CRITERIA_OF_KIND
from vlm_rlaif.eval.stats import estimate_mean


def aggregate(kind: str, judgements: list[dict], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{"metrics": {name: Estimate dict}, "judged": {criterion: lines}, "invalid": {...}, "failed": {...}}."""
    latest = {row["key"]: row for row in judgements}  # one line per key; the last one wins
    rows = list(latest.values())

    def estimate(values: list[float]) -> dict:
        return estimate_mean(values, resamples=resamples, confidence=confidence, seed=seed).to_dict()

    result: dict = {"metrics": {}, "judged": {}, "invalid": {}, "failed": {}}
    for criterion in CRITERIA_OF_KIND[kind]:
        mine = [row for row in rows if row["criterion"] == criterion]
        ok = [row for row in mine if row["status"] == "ok"]
        result["judged"][criterion] = len(mine)
        result["invalid"][criterion] = sum(row["status"] == "invalid" for row in mine)
        result["failed"][criterion] = sum(row["status"] == "failed" for row in mine)
        form = CRITERIA[criterion].reply
        if form == "score":
            result["metrics"][criterion] = estimate([row["score"] for row in ok])
        elif form == "yes_no":
            result["metrics"]["accuracy"] = estimate([float(bool(row["yes"])) for row in ok])
            result["metrics"]["score"] = estimate([row["score"] for row in ok])
        else:  # choice: every item counts, unparsed replies as wrong
            result["metrics"]["accuracy"] = estimate([float(row["status"] == "ok" and bool(row["yes"])) for row in mine])
    # Hallucinations per answer, from one criterion only: the generic set judges each answer thrice.
    first = CRITERIA_OF_KIND[kind][0]
    counts = [n for row in rows if row["criterion"] == first for n in (row.get("hallucinations") or [])]
    if counts:
        result["metrics"]["hallucinations"] = estimate(counts)
    return result


__all__ = ["aggregate"]
