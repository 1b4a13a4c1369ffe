"""How often a judge agrees with the toy world's oracle, with confidence intervals.

The oracle (vlm_rlaif.toyworld.oracle) knows the truth of every toy video; it only measures. Pairs the
oracle calls a tie (both answers right, or both wrong) say nothing about the judge and are left out;
n is always reported with the rate.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from vlm_rlaif.errors import UserError


class OracleReference:
    """The oracle's preference between two answers to a toy prompt, truth read from <toy_root>/truth/."""

    def __init__(self, toy_root: str | Path):
        from vlm_rlaif.toyworld.oracle import Oracle  # the toy world is only needed when measuring

        self.toy_root = Path(toy_root)
        if not (self.toy_root / "truth").is_dir():
            raise UserError(f"{self.toy_root} is not a toy world directory (no truth/ folder)")
        # The oracle must use the world's own order_gap ("which came first" only for events this far apart).
        manifest = self.toy_root / "manifest.json"
        config = json.loads(manifest.read_text()).get("config", {}) if manifest.is_file() else {}
        self.oracle = Oracle(order_gap=config.get("order_gap", 3))
        self.version = f"toyworld-oracle;order_gap={self.oracle.order_gap}"

    def compare(self, toy: dict, answer_1: str, answer_2: str) -> int:
        """1 or 2: the better answer by the truth; 0: a tie."""
        if "video_id" not in toy:
            raise UserError(f"toy metadata without 'video_id': {toy}")
        truth = self.oracle.load_truth(self.toy_root, toy["video_id"])
        return int(self.oracle.compare(truth, toy, answer_1, answer_2))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement(judge_prefs: Sequence[int | None], oracle_prefs: Sequence[int]) -> dict:
    """Agreement of judge preferences (1, 2, or None when the judge gave none) with the oracle's
    (1, 2, 0 = tie) on the same pairs. Oracle ties and pairs without a judge preference are out."""
    if len(judge_prefs) != len(oracle_prefs):
        raise ValueError(f"{len(judge_prefs)} judge preferences but {len(oracle_prefs)} oracle preferences")
    scored = [(j, o) for j, o in zip(judge_prefs, oracle_prefs) if o != 0 and j is not None]
    agree = sum(j == o for j, o in scored)
    low, high = wilson_interval(agree, len(scored))
    return {
        "n": len(scored),
        "agree": agree,
        "rate": agree / len(scored) if scored else None,
        "ci95": [round(low, 4), round(high, 4)],
        "oracle_ties": sum(o == 0 for o in oracle_prefs),
        "judge_undecided": sum(j is None and o != 0 for j, o in zip(judge_prefs, oracle_prefs)),
    }


def paired_difference(
    agree_a: Sequence[bool], agree_b: Sequence[bool], resamples: int = 2000, seed: int = 0
) -> dict:
    """Mean of agree_a minus mean of agree_b over the same pairs, with a percentile bootstrap 95%
    interval (pairs resampled together, so the pairing is kept)."""
    if len(agree_a) != len(agree_b):
        raise ValueError("paired samples must have the same length")
    n = len(agree_a)
    if n == 0:
        return {"n": 0, "difference": None, "ci95": None}
    diffs = [int(a) - int(b) for a, b in zip(agree_a, agree_b)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]
    return {"n": n, "difference": sum(diffs) / n, "ci95": [round(low, 4), round(high, 4)]}


__all__ = ["OracleReference", "agreement", "paired_difference", "wilson_interval"]
