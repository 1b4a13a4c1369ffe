"""The oracle judge and oracle agreement on real toy-world records (a small generated world)."""

from __future__ import annotations

import json

import pytest
from test_feedback_helpers import make_config, make_model_dir

from vlm_rlaif.feedback import measure_context, run_feedback
from vlm_rlaif.feedback.agreement import OracleReference, agreement, paired_difference, wilson_interval
from vlm_rlaif.feedback.candidates import PromptCandidates
from vlm_rlaif.feedback.config import JudgeSettings
from vlm_rlaif.feedback.judges import JudgeItem, OracleJudge
from vlm_rlaif.feedback.measure import compare_conditions
from vlm_rlaif.toyworld import ToyWorldConfig, generate


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate(ToyWorldConfig(seed=4), root, 20, workers=1)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


def test_oracle_judge_prefers_the_correct_answer_of_judge_records(toy):
    records = json.loads((toy / "sft" / "SFT_judge.json").read_text())
    judge = OracleJudge(OracleReference(toy))
    items = []
    for r in records:
        params = r["toy"]["params"]
        meta = {"video_id": r["toy"]["video_id"], "qtype": params["base_qtype"], "params": params["base_params"]}
        answer_a, answer_b = params["answers"]
        items += [JudgeItem("q", answer_a, answer_b, toy=meta), JudgeItem("q", answer_b, answer_a, toy=meta)]
    verdicts = judge.judge(items)
    decided = 0
    for r, first, second in zip(records, verdicts[::2], verdicts[1::2]):
        assert first.prob_a == 1.0 - second.prob_a  # the oracle has no position bias
        if first.prob_a != 0.5:
            decided += 1
            assert first.prob_a == (1.0 if r["toy"]["params"]["better"] == "A" else 0.0), r["id"]
    assert decided >= 0.9 * len(records) and len(records) >= 20
    assert judge.judge([JudgeItem("q", "a", "b")])[0].invalid  # no toy metadata: invalid, not guessed


def _scripted_candidates(toy):
    """RL prompts with their reference answer first and another video's reference answer second."""
    records = json.loads((toy / "rl" / "PPO_init.json").read_text())
    answers = {}
    for i, r in enumerate(records):
        other = next(o for o in records[i + 1 :] + records[:i] if o["toy"]["video_id"] != r["toy"]["video_id"])
        answers[r["id"]] = [r["conversations"][1]["value"], other["conversations"][1]["value"]]

    def sample(lm, examples, prompt_ids, settings, seed):
        return [PromptCandidates(pid, answers[pid], 0, answers[pid][0] == answers[pid][1]) for pid in prompt_ids]

    return sample


def test_oracle_judge_through_the_stage_and_the_measurement(toy, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("vlm_rlaif.feedback.pipeline.sample_candidates", _scripted_candidates(toy))
    oracle_judge = JudgeSettings(kind="oracle")
    config = make_config(model_dir, toy, tmp_path / "run", prompts=toy / "rl" / "prompts.json", judge=oracle_judge, context=False)
    summary = run_feedback(config)
    kept = summary["oracle"]["kept_labels"]
    assert summary["oracle"]["available"] and kept["n"] > 0 and kept["rate"] == 1.0
    assert summary["pairs_inconsistent"] == 0 and summary["pairs_kept"] + summary["pairs_tie"] == summary["pairs_judged"]
    assert summary["preference_counts"]["1"] >= summary["preference_counts"]["2"]  # references are mostly right
    assert summary["judge"] == "oracle" and summary["judge_version"].startswith("toyworld-oracle")

    measured = measure_context(make_config(model_dir, toy, tmp_path / "measure", prompts=config.prompts, judge=oracle_judge))
    for condition in ("context", "no_context"):
        assert measured[condition]["mean_of_orders"]["rate"] == 1.0
    assert measured["difference_context_minus_no_context"]["difference"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "measure" / "measure_context.jsonl").read_text().splitlines()]
    assert len(rows) == measured["pairs"] == summary["pairs_judged"]
    assert all(row["context"]["context_used"] and not row["no_context"]["context_used"] for row in rows)


def test_measurement_with_a_local_judge_through_the_cli(toy, model_dir, tmp_path, monkeypatch, capsys):
    from vlm_rlaif.cli import main

    monkeypatch.setattr("vlm_rlaif.feedback.pipeline.sample_candidates", _scripted_candidates(toy))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"feedback:\n  model_dir: {model_dir}\n  prompts: {toy / 'rl' / 'prompts.json'}\n  video_root: {toy}\n"
        "  clip_max_frames: 4\n  max_prompts: 6\n  describe: {max_new_tokens: 6}\n"
    )
    assert main(["feedback", "--config", str(recipe), "--out", str(tmp_path / "measure"), "--measure-context"]) == 0
    assert "difference (context - no context), paired" in capsys.readouterr().out
    measured = json.loads((tmp_path / "measure" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "measure" / "measure_context.jsonl").read_text().splitlines()]
    assert measured["stage"] == "feedback-measure-context" and measured["pairs"] == len(rows) == 6
    # The context reaches only the context condition's prompt, so the two verdicts differ.
    assert all(row["context"]["prob_1_first"] != row["no_context"]["prob_1_first"] for row in rows)
    assert measured["context"]["mean_of_orders"]["n"] + measured["oracle_ties"] == 6
    assert set(measured["by_qtype"]) == {row["qtype"] for row in rows}


def test_agreement_and_interval_math():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook Wilson 95% interval
    assert wilson_interval(0, 0) == (0.0, 1.0)
    a = agreement([1, 2, 1, None, 2, 1], [1, 1, 0, 2, 2, 1])
    assert (a["n"], a["agree"], a["oracle_ties"], a["judge_undecided"]) == (4, 3, 1, 1) and a["rate"] == 0.75
    d = paired_difference([True, True, False, True], [False, True, False, False], resamples=500)
    assert d["difference"] == 0.5 and d["ci95"][0] <= 0.5 <= d["ci95"][1] and d["n"] == 4
    rows = [
        {"oracle": 1, "qtype": "colour", "context": _judgment(0.9, 0.8), "no_context": _judgment(0.4, 0.3)},
        {"oracle": 2, "qtype": "colour", "context": _judgment(0.2, 0.1), "no_context": _judgment(0.6, 0.7)},
        {"oracle": 0, "qtype": "count", "context": _judgment(0.9, 0.9), "no_context": _judgment(0.9, 0.9)},
    ]
    compared = compare_conditions(rows)
    assert compared["context"]["mean_of_orders"]["rate"] == 1.0 and compared["no_context"]["mean_of_orders"]["rate"] == 0.0
    assert compared["difference_context_minus_no_context"]["difference"] == 1.0
    assert compared["by_qtype"]["count"]["context"]["n"] == 0


def _judgment(p_first, p_second):
    status = "kept" if (p_first > 0.5) == (p_second > 0.5) else "inconsistent"
    return {
        "prob_1": (p_first + p_second) / 2,
        "status": status,
        "preference": (1 if p_first > 0.5 else 2) if status == "kept" else None,
        "orders_agree": status == "kept",
    }


def test_measurement_reuses_the_feedback_stage_pairs(toy, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("vlm_rlaif.feedback.pipeline.sample_candidates", _scripted_candidates(toy))
    oracle_judge = JudgeSettings(kind="oracle")
    config = make_config(model_dir, toy, tmp_path / "run", prompts=toy / "rl" / "prompts.json", judge=oracle_judge)
    summary = run_feedback(config)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the measurement must reuse the feedback stage's candidates")

    monkeypatch.setattr("vlm_rlaif.feedback.pipeline.sample_candidates", no_sampling)
    measure_config = make_config(model_dir, toy, tmp_path / "measure", prompts=config.prompts, judge=oracle_judge)
    measured = measure_context(measure_config, reuse_from=tmp_path / "run")
    judged = {json.loads(line)["id"] for line in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()}
    rows = [json.loads(line) for line in (tmp_path / "measure" / "measure_context.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == judged and measured["pairs"] == summary["pairs_judged"]
