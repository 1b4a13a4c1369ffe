"""From two verdicts (the pair shown in both orders) to a preference label, and the output record.

A judge may prefer whichever answer it reads first (position bias), so every pair is judged twice:
output_1 as answer A, then output_1 as answer B. Both verdicts are turned into P(output_1 is better)
(prob_1_first, prob_1_second), then one of two policies decides:
- consistent: each order's verdict must be clear (farther than `margin` from 0.5) and both must pick
  the same output; otherwise the pair is a tie (an unclear order) or inconsistent, and dropped;
- average: the mean of the two probabilities decides, kept when |p - 0.5| > margin, else a tie.
A pair with an invalid verdict in either order is dropped as invalid: nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlm_rlaif.data import InstructionRecord, PreferenceRecord

Status = Literal["kept", "inconsistent", "tie", "invalid"]
STATUSES: tuple[Status, ...] = ("kept", "inconsistent", "tie", "invalid")


@dataclass
class PairDecision:
    status: Status
    preference: int | None  # 1 or 2 when kept
    prob_1: float | None  # mean P(output_1 better) over the two orders
    orders_agree: bool | None  # both orders clear and the same winner; None when either is unclear


def side(prob_1: float, margin: float) -> int:
    """1 or 2: the output this probability picks; 0 within margin of 0.5 (a tie)."""
    if prob_1 > 0.5 + margin:
        return 1
    if prob_1 < 0.5 - margin:
        return 2
    return 0


def decide(
    prob_1_first: float | None,
    prob_1_second: float | None,
    policy: Literal["consistent", "average"],
    margin: float = 0.0,
) -> PairDecision:
    """The label of one pair from P(output_1 better) in the two orders (None = invalid verdict)."""
    if prob_1_first is None or prob_1_second is None:
        return PairDecision("invalid", None, None, None)
    mean = (prob_1_first + prob_1_second) / 2
    first, second = side(prob_1_first, margin), side(prob_1_second, margin)
    agree = first == second if first and second else None
    if policy == "consistent":
        if not first or not second:
            return PairDecision("tie", None, mean, agree)
        if first != second:
            return PairDecision("inconsistent", None, mean, agree)
        return PairDecision("kept", first, mean, agree)
    if policy == "average":
        winner = side(mean, margin)
        return PairDecision("kept" if winner else "tie", winner or None, mean, agree)
    raise ValueError(f"unknown position policy {policy!r}; use 'consistent' or 'average'")


def preference_record(
    prompt: InstructionRecord,
    pair_id: str,
    output_1: str,
    output_2: str,
    judgment: dict,
    *,
    context: str | None,
    judge: str,
    judge_version: str,
    sampling: dict,
) -> PreferenceRecord:
    """A kept pair in the public layout (id, conversations, video/images, output_1, output_2,
    preference) plus our fields; `judgment` is the pair's entry of judgments.jsonl."""
    extra = {
        "prompt_id": prompt.id,
        "judge_prompt": judgment["judge_prompt"],
        "position_policy": judgment["position_policy"],
        "prob_1": judgment["prob_1"],
    }
    for name in ("rationale_first", "rationale_second"):
        if judgment.get(name) is not None:
            extra[name] = judgment[name]
    toy = (prompt.model_extra or {}).get("toy")
    if toy is not None:
        extra["toy"] = toy
    return PreferenceRecord.model_validate(
        {
            "id": pair_id,
            "conversations": [prompt.conversations[0].to_json_dict()],
            "video": prompt.video,
            "images": prompt.images,
            "output_1": {"value": output_1},
            "output_2": {"value": output_2},
            "preference": judgment["preference"],
            "context": context,
            "judge": judge,
            "judge_version": judge_version,
            "prob_1_first": judgment["prob_1_first"],
            "prob_1_second": judgment["prob_1_second"],
            "sampling": sampling,
            **extra,
        }
    )


__all__ = ["STATUSES", "PairDecision", "Status", "decide", "preference_record", "side"]
