"""Aggregation and bootstrap interval math against values computed by hand."""

import numpy as np
import pytest

from vlm_rlaif.eval.aggregate import aggregate
from vlm_rlaif.eval.report import results_markdown
from vlm_rlaif.eval.stats import bootstrap_means, estimate_mean, percentile_interval


def test_percentile_interval_by_hand():
    # 50% central interval of 1..5: the 25th and 75th percentiles, 2 and 4.
    assert percentile_interval([5, 1, 4, 2, 3], 0.5) == (2.0, 4.0)
    # 90% of 0..10: 5th percentile at position 0.05 * 10 = 0.5 -> 0.5; 95th -> 9.5.
    assert percentile_interval(list(range(11)), 0.9) == pytest.approx((0.5, 9.5))
    with pytest.raises(ValueError):
        percentile_interval([1, 2], 1.0)


def test_bootstrap_means_follow_the_seeded_resampling():
    values = [0.0, 1.0, 4.0]
    means = bootstrap_means(values, 300, seed=7)  # crosses a chunk boundary (256)
    rng = np.random.default_rng(7)
    first = np.asarray(values)[rng.integers(0, 3, size=(256, 3))].mean(axis=1)
    second = np.asarray(values)[rng.integers(0, 3, size=(44, 3))].mean(axis=1)
    np.testing.assert_array_equal(means, np.concatenate([first, second]))
    np.testing.assert_array_equal(bootstrap_means(values, 300, seed=7), means)  # same seed, same draws
    assert not np.array_equal(bootstrap_means(values, 300, seed=8), means)


def test_bootstrap_interval_of_two_values_matches_the_exact_distribution():
    # Resampling [0, 1] twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval
    # spans [0, 1] and the 40% interval (30th..70th percentile) sits on 0.5.
    wide = estimate_mean([0.0, 1.0], resamples=4000, confidence=0.95, seed=0)
    assert (wide.value, wide.low, wide.high, wide.n) == (0.5, 0.0, 1.0, 2)
    narrow = estimate_mean([0.0, 1.0], resamples=4000, confidence=0.4, seed=0)
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    assert estimate_mean([3, 3, 3], resamples=100, confidence=0.95, seed=0).to_dict() == {"value": 3.0, "low": 3.0, "high": 3.0, "n": 3}
    assert estimate_mean([], resamples=100, confidence=0.95, seed=0).to_dict() == {"value": None, "low": None, "high": None, "n": 0}
    assert estimate_mean([1, 2], resamples=0, confidence=0.95, seed=0).low is None


def row(item, criterion, status="ok", score=None, yes=None, hallucinations=None):
    return {"key": f"{item}|{criterion}", "id": item, "criterion": criterion, "status": status, "score": score, "yes": yes, "hallucinations": hallucinations}


def test_vcg_scores_average_valid_judgements_only():
    rows = [
        row("0", "correctness", score=4, hallucinations=[1]), row("1", "correctness", score=2, hallucinations=[0]),
        row("2", "correctness", status="invalid", hallucinations=None), row("3", "correctness", status="failed"),
        row("0", "detail", score=5, hallucinations=[1]), row("1", "detail", score=3, hallucinations=[0]),
        row("0", "context", score=1), row("1", "context", score=1),
    ]
    out = aggregate("vcg_generic", rows, resamples=0)
    assert out["metrics"]["correctness"]["value"] == 3.0 and out["metrics"]["correctness"]["n"] == 2
    assert out["metrics"]["detail"]["value"] == 4.0 and out["metrics"]["context"]["value"] == 1.0
    assert out["judged"] == {"correctness": 4, "detail": 2, "context": 2}
    assert out["invalid"]["correctness"] == 1 and out["failed"]["correctness"] == 1
    # Hallucinations are counted once per answer (from the first criterion), not once per criterion.
    assert out["metrics"]["hallucinations"]["value"] == 0.5 and out["metrics"]["hallucinations"]["n"] == 2


def test_qa_accuracy_is_yes_over_yes_plus_no():
    rows = [row(str(i), "qa", score=s, yes=y) for i, (y, s) in enumerate([(True, 5), (True, 4), (False, 1), (True, 3)])]
    rows.append(row("9", "qa", status="invalid"))
    out = aggregate("qa", rows, resamples=200, seed=1)
    assert out["metrics"]["accuracy"]["value"] == 0.75 and out["metrics"]["accuracy"]["n"] == 4
    assert out["metrics"]["score"]["value"] == 3.25
    acc = out["metrics"]["accuracy"]
    assert 0.0 <= acc["low"] <= 0.75 <= acc["high"] <= 1.0
    assert "hallucinations" not in out["metrics"]


def test_mcq_counts_unparsed_replies_as_wrong():
    rows = [row("a", "choice", yes=True), row("b", "choice", yes=False), row("c", "choice", status="invalid"), row("d", "choice", yes=True)]
    out = aggregate("mcq", rows, resamples=0)
    assert out["metrics"]["accuracy"]["value"] == 0.5 and out["metrics"]["accuracy"]["n"] == 4
    # A re-judged key counts once (the last line wins).
    assert aggregate("mcq", rows + [row("c", "choice", yes=True)], resamples=0)["metrics"]["accuracy"]["value"] == 0.75


def test_results_table_puts_models_and_paper_side_by_side():
    results = {
        "sft": {"msvd": {"items": 4, **aggregate("qa", [row("0", "qa", score=4, yes=True), row("1", "qa", score=0, yes=False)], resamples=0)}},
        "rlaif": {"msvd": {"items": 4, **aggregate("qa", [row("0", "qa", score=5, yes=True), row("1", "qa", score=4, yes=True)], resamples=0)}},
    }
    judge = {"kind": "openai", "model": "gpt-x", "versions": ["gpt-x-2025-01-01"], "prompts": ["eval_qa_v1"]}
    text = results_markdown(results, [{"name": "msvd", "kind": "qa", "paper": "msvd_qa"}], judge, {"resamples": 0, "confidence": 0.95, "seed": 0})
    assert "| benchmark | metric | sft | rlaif | VLM-SFT 7B (paper) | VLM-RLAIF 7B (paper) |" in text
    assert "| msvd | accuracy | 50.0 | 100.0 | 67.2 | 76.4 |" in text
    assert "| msvd | score | 2.00 | 4.50 |  |  |" in text
    assert "gpt-x-2025-01-01" in text and "unpinned" in text
