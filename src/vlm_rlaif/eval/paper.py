"""Published numbers of VLM-RLAIF (Ahn et al., ACL 2024; docs/method.md, "Headline results", 7B).

Keys are (paper benchmark, metric): ("vcg_bench", "correctness"), ..., ("msvd_qa", "accuracy").
VCG-Bench scores are 0-5; QA accuracies are percentages as printed. Every number was judged by
gpt-3.5-turbo, an unpinned alias: re-runs of the released VLM-RLAIF model with a later version got
MSVD/MSRVTT/ANet-QA accuracy 68.5/54.2/46.1 instead of 76.4/63.0/57.3 (REJUDGED below). Compare
models only under the same judge.
"""

from __future__ import annotations

PAPER_JUDGE = "gpt-3.5-turbo (unpinned alias, 2023-2024)"
PAPER_JUDGE_NOTE = (
    "The paper's numbers were judged by gpt-3.5-turbo, an unpinned alias; re-judging the released "
    "VLM-RLAIF model later gave MSVD/MSRVTT/ANet-QA accuracy 68.5/54.2/46.1 instead of 76.4/63.0/57.3. "
    "Compare models only under the same judge."
)

PAPER_BENCHMARKS = ("vcg_bench", "msvd_qa", "msrvtt_qa", "anet_qa")
VCG_CRITERIA = ("correctness", "detail", "context", "temporal", "consistency")


def _vcg(*scores: float) -> dict[tuple[str, str], float]:
    return {("vcg_bench", name): score for name, score in zip(VCG_CRITERIA, scores, strict=True)}


def _qa(msvd: float, msrvtt: float, anet: float) -> dict[tuple[str, str], float]:
    return {("msvd_qa", "accuracy"): msvd, ("msrvtt_qa", "accuracy"): msrvtt, ("anet_qa", "accuracy"): anet}


# The two models the paper is about, in the order of its headline table.
PAPER_RESULTS: dict[str, dict[tuple[str, str], float]] = {
    "VLM-SFT 7B (paper)": {**_vcg(2.79, 2.82, 3.37, 2.28, 2.49), **_qa(67.2, 52.4, 44.1)},
    "VLM-RLAIF 7B (paper)": {**_vcg(3.63, 3.25, 4.00, 3.23, 3.32), **_qa(76.4, 63.0, 57.3)},
}

# VCG-Bench baselines the paper compares against.
PAPER_BASELINES: dict[str, dict[tuple[str, str], float]] = {
    "Video-ChatGPT": _vcg(2.40, 2.52, 2.62, 1.98, 2.37),
    "Video-LLaVA": _vcg(2.84, 2.86, 3.44, 2.46, 2.57),
    "VideoChat2": _vcg(3.02, 2.88, 3.51, 2.66, 2.81),
    "LLaMA-VID-13B": _vcg(3.07, 3.05, 3.60, 2.58, 2.63),
}

# The released VLM-RLAIF model re-judged later by a newer gpt-3.5-turbo behind the same alias.
REJUDGED: dict[str, dict[tuple[str, str], float]] = {
    "VLM-RLAIF 7B (re-judged later)": _qa(68.5, 54.2, 46.1),
}


def paper_value(model: str, benchmark: str, metric: str) -> float | None:
    """A published number, or None where the paper has none."""
    table = PAPER_RESULTS.get(model) or PAPER_BASELINES.get(model) or REJUDGED.get(model) or {}
    return table.get((benchmark, metric))


__all__ = [
    "PAPER_BASELINES",
    "PAPER_BENCHMARKS",
    "PAPER_JUDGE",
    "PAPER_JUDGE_NOTE",
    "PAPER_RESULTS",
    "REJUDGED",
    "VCG_CRITERIA",
    "paper_value",
]
