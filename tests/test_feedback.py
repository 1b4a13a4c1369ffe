"""Feedback stage: candidates, clip context, local judge, position-bias policies, resumable runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_feedback_helpers import CLIP_MAX, FRAMES, make_config, make_model_dir, make_video_root

from vlm_rlaif.data import PreferenceRecord, read_records
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, RecordError, RunDirError
from vlm_rlaif.feedback import run_feedback
from vlm_rlaif.feedback.candidates import collect_distinct, normalise, sample_candidates
from vlm_rlaif.feedback.config import CandidateSettings, JudgeSettings
from vlm_rlaif.feedback.context import ClipContexts, LocalDescriber
from vlm_rlaif.feedback.judges import JudgeItem, LocalJudge, render_judge_prompt, two_way_probability
from vlm_rlaif.feedback.pipeline import load_prompts
from vlm_rlaif.feedback.preferences import decide
from vlm_rlaif.models import GenerationSettings, VideoExample, load_adapter_model
from vlm_rlaif.prompts import format_context, load_prompt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_video_root(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_adapter_model(model_dir)


# ---------------------------------------------------------------------- candidates


def test_collect_distinct_resamples_duplicates_and_drops():
    # Scripted draws per prompt and round: p0 repeats itself once (case and spaces differ), p1 is
    # distinct at once, p2 never manages a second distinct answer, p3 gives an empty answer first.
    scripts = {
        0: [["Red.", "  red."], ["Blue."]],
        1: [["Left.", "Right."]],
        2: [["Same.", "same."], ["SAME."], ["same. "], ["Same."]],
        3: [["", "Two."], ["Three."]],
    }
    calls = []

    def sample(indices, count, round_index):
        calls.append((tuple(indices), count, round_index))
        out = []
        for i in indices:
            draw = scripts[i][round_index]
            assert len(draw) == count, (i, round_index)
            out.append(draw)
        return out

    results = collect_distinct(["p0", "p1", "p2", "p3"], sample, k=2, max_resample_rounds=3)
    assert [r.answers for r in results] == [["Red.", "Blue."], ["Left.", "Right."], [], ["Two.", "Three."]]
    assert [r.dropped for r in results] == [False, False, True, False]
    assert [r.resampled for r in results] == [1, 0, 3, 1]
    # round 0 draws K for everyone in one call; later rounds only the missing ones
    assert calls[0] == ((0, 1, 2, 3), 2, 0)
    assert calls[1] == ((0, 2, 3), 1, 1)
    assert all(round_index == 3 for _, _, round_index in calls[3:])
    assert normalise("  The RED\tsquare ") == "the red square"


def test_sample_candidates_with_tiny_model(lm, root):
    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    frames, key = store.video("videos/v0.mp4")
    examples = [VideoExample([{"role": "user", "content": q}], frames, key) for q in ("What colour?", "Which way?")]
    settings = CandidateSettings(num_candidates=3, max_new_tokens=5)
    first = sample_candidates(lm, examples, ["a", "b"], settings, seed=5)
    again = sample_candidates(lm, examples, ["a", "b"], settings, seed=5)
    assert [c.answers for c in first] == [c.answers for c in again]  # seeded
    for c in first:
        assert not c.dropped and len(c.answers) == 3
        assert len({normalise(a) for a in c.answers}) == 3


# ---------------------------------------------------------------------- clip context


class LevelDescriber:
    """Says which frames a clip holds (their grey levels), so order and clip split are checkable."""

    id = "levels"

    def __init__(self):
        self.calls = []

    def describe(self, clips):
        self.calls.append([key for _, key in clips])
        return [" ".join(str(round((f.mean() - 10) / 18)) for f in frames) for frames, _ in clips]


def test_context_clips_in_order_and_cached(root, tmp_path):
    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    describer = LevelDescriber()
    path = tmp_path / "contexts.jsonl"
    contexts = ClipContexts(describer, store, path)
    contexts.ensure([("videos/v0.mp4", "r0"), ("videos/v1.mp4", "r1"), ("videos/v0.mp4", "r2")])
    assert len(describer.calls) == 1 and len(describer.calls[0]) == 6  # 2 videos x 3 clips, one batch
    assert describer.calls[0][:3] == [f"videos/v0.mp4@u12/clip{i}of3" for i in range(3)]
    entry = contexts.get("videos/v0.mp4@u12")
    # frame t has grey level 10 + 18 t (h264 keeps it within rounding): clips hold 0-3, 4-7, 8-11
    levels = [[int(x) for x in d.split()] for d in entry.descriptions]
    assert levels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert entry.text == format_context(entry.descriptions) and entry.text.startswith("Clip 1: 0 1 2 3\nClip 2: 4")
    contexts.ensure([("videos/v1.mp4", "r3")])
    assert len(describer.calls) == 1  # in memory: not described again

    reloaded = ClipContexts(describer, store, path)  # a resumed run reads contexts.jsonl
    reloaded.ensure([("videos/v0.mp4", "r"), ("videos/v1.mp4", "r")])
    assert len(describer.calls) == 1 and reloaded.get("videos/v0.mp4@u12").text == entry.text
    other = LevelDescriber()
    other.id = "another-model"
    ClipContexts(other, store, path).ensure([("videos/v0.mp4", "r")])
    assert len(other.calls) == 1  # another describer's contexts are not reused


def test_local_describer_is_greedy_generation_per_clip(lm, root):
    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    clips = store.clips("videos/v2.mp4")
    settings = make_config(None, root, None).describe
    described = LocalDescriber(lm, settings, "policy").describe(clips)
    prompt = load_prompt("describe_clip").text
    for (frames, key), text in zip(clips, described):
        example = VideoExample([{"role": "user", "content": prompt}], frames, key)
        expected = lm.generate([example], GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=0.0))
        assert text == expected[0].text


# ---------------------------------------------------------------------- local judge


def test_local_judge_probabilities_match_next_token_logprobs(lm, root):
    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    frames, key = store.video("videos/v1.mp4")
    judge = LocalJudge(lm, JudgeSettings(), "local:tiny", "v")
    first = JudgeItem("What colour is the square?", "It is red.", "It is blue.", "Clip 1: a red square", frames, key)
    second = JudgeItem(first.question, first.answer_b, first.answer_a, first.context, frames, key)
    verdicts = judge.judge([first, second])

    prefix = load_prompt("judge_verdict_prefix").text
    for item, verdict in zip([first, second], verdicts):
        text = load_prompt("judge_pairwise_context").render(
            context=item.context, question=item.question, answer_a=item.answer_a, answer_b=item.answer_b
        )
        assert render_judge_prompt(item) == text
        manual = lm.next_token_logprobs(
            [VideoExample([{"role": "user", "content": text}], frames, key)], [" A", " B"], assistant_prefix=prefix
        )[0]
        expected = torch.softmax(manual, dim=0)[0].item()
        assert verdict.prob_a == pytest.approx(expected, abs=1e-5)
        assert verdict.verdict_mass == pytest.approx(manual.exp().sum().item(), rel=1e-4)
    # the second order shows the answers swapped, so it is a different forward, not 1 - first
    assert verdicts[0].prob_a != pytest.approx(1 - verdicts[1].prob_a, abs=1e-6)

    without = JudgeItem(first.question, first.answer_a, first.answer_b, None, frames, key)
    assert render_judge_prompt(without) == load_prompt("judge_pairwise").render(
        question=first.question, answer_a=first.answer_a, answer_b=first.answer_b
    )
    with_reason = LocalJudge(lm, JudgeSettings(rationale=True, rationale_max_new_tokens=4), "local:tiny", "v").judge([first])[0]
    example = LocalJudge(lm, JudgeSettings(), "local:tiny", "v").examples([first])
    greedy = lm.generate(example, GenerationSettings(max_new_tokens=4, temperature=0.0))[0].text
    assert with_reason.rationale == greedy and with_reason.prob_a == pytest.approx(verdicts[0].prob_a)
    strict = LocalJudge(lm, JudgeSettings(min_verdict_mass=0.9), "local:tiny", "v").judge([first])[0]
    assert strict.prob_a is None and "min_verdict_mass" in strict.invalid  # off-format judge: invalid, not guessed


def test_likelihood_judge_scores_each_answer_after_the_context(lm, root):
    """form: likelihood: P(A) = sigmoid(scale * (mean log-prob of A - of B)), each answer scored after
    answer_with_context (the bare question without context); symmetric in the order shown."""
    from vlm_rlaif.feedback.judges import mean_answer_logprobs

    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    frames, key = store.video("videos/v1.mp4")
    settings = JudgeSettings(form="likelihood", likelihood_scale=2.0)
    judge = LocalJudge(lm, settings, "local:tiny", "v")
    item = JudgeItem("What colour is the square?", "It is red.", "It is blue.", "Clip 1: a red square", frames, key)
    swapped = JudgeItem(item.question, item.answer_b, item.answer_a, item.context, frames, key)
    bare = JudgeItem(item.question, item.answer_a, item.answer_b, None, frames, key)
    first, second, without = judge.judge([item, swapped, bare])

    def score(question, answer):  # the answer's mean token log-prob, computed from response_logprobs
        example = VideoExample([{"role": "user", "content": question}], frames, key)
        ids = lm.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [lm.eos_token_id]
        logprobs, mask = lm.response_logprobs([example], [ids])
        return float(logprobs.sum() / mask.sum())

    asked = load_prompt("answer_with_context").render(context=item.context, question=item.question)
    expected = 1 / (1 + math.exp(-2.0 * (score(asked, "It is red.") - score(asked, "It is blue."))))
    assert first.prob_a == pytest.approx(expected, abs=1e-4)
    assert second.prob_a == pytest.approx(1 - first.prob_a, abs=1e-6)  # no position bias by construction
    plain = 1 / (1 + math.exp(-2.0 * (score(item.question, "It is red.") - score(item.question, "It is blue."))))
    assert without.prob_a == pytest.approx(plain, abs=1e-4) and without.prob_a != pytest.approx(first.prob_a, abs=1e-6)
    examples = [VideoExample([{"role": "user", "content": asked}, {"role": "assistant", "content": "It is red."}],
                             frames, key)]
    assert mean_answer_logprobs(lm, examples, 4)[0] == pytest.approx(score(asked, "It is red."), abs=1e-4)


def test_verify_judge_checks_each_answer_on_its_own(lm, root):
    """form: verify: each answer's score is log P("Yes") - log P("No") as the first reply token to
    judge_verify_context (judge_verify without context); P(A) = sigmoid(scale * (score A - score B))."""
    from vlm_rlaif.feedback.judges import VERIFY_TOKENS, verify_template

    store = FrameStore(root, FrameSampling(FRAMES, CLIP_MAX))
    frames, key = store.video("videos/v1.mp4")
    judge = LocalJudge(lm, JudgeSettings(form="verify", verify_scale=1.5), "local:tiny", "v")
    item = JudgeItem("What colour is the square?", "It is red.", "It is blue.", "Clip 1: a red square", frames, key)
    swapped = JudgeItem(item.question, item.answer_b, item.answer_a, item.context, frames, key)
    bare = JudgeItem(item.question, item.answer_a, item.answer_b, None, frames, key)
    first, second, without = judge.judge([item, swapped, bare])

    def score(with_context, answer):
        values = {"question": item.question, "answer": answer, **({"context": item.context} if with_context else {})}
        example = VideoExample([{"role": "user", "content": verify_template(with_context).render(**values)}], frames, key)
        yes, no = lm.next_token_logprobs([example], VERIFY_TOKENS)[0].tolist()
        return yes - no

    expected = 1 / (1 + math.exp(-1.5 * (score(True, "It is red.") - score(True, "It is blue."))))
    assert first.prob_a == pytest.approx(expected, abs=1e-4)
    assert second.prob_a == pytest.approx(1 - first.prob_a, abs=1e-6)  # no position bias by construction
    plain = 1 / (1 + math.exp(-1.5 * (score(False, "It is red.") - score(False, "It is blue."))))
    assert without.prob_a == pytest.approx(plain, abs=1e-4) and without.prob_a != pytest.approx(first.prob_a, abs=1e-6)
    assert 0 < first.verdict_mass <= 1
    strict = LocalJudge(lm, JudgeSettings(form="verify", min_verdict_mass=1.01), "local:tiny", "v").judge([item])[0]
    assert strict.prob_a is None and "P(Yes) + P(No)" in strict.invalid


# ---------------------------------------------------------------------- position-bias policies


@pytest.mark.parametrize(
    "first, second, policy, margin, status, preference",
    [
        (0.8, 0.7, "consistent", 0.0, "kept", 1),
        (0.2, 0.1, "consistent", 0.0, "kept", 2),
        (0.9, 0.3, "consistent", 0.0, "inconsistent", None),  # position bias: each order prefers answer A
        (0.9, 0.3, "average", 0.0, "kept", 1),  # mean 0.6
        (0.9, 0.3, "average", 0.15, "tie", None),  # |0.6 - 0.5| <= margin
        (0.7, 0.55, "consistent", 0.1, "tie", None),  # the second order is not clear enough
        (0.5, 0.5, "average", 0.0, "tie", None),
        (None, 0.8, "average", 0.0, "invalid", None),
        (0.8, None, "consistent", 0.0, "invalid", None),
    ],
)
def test_position_policies(first, second, policy, margin, status, preference):
    decision = decide(first, second, policy, margin)
    assert (decision.status, decision.preference) == (status, preference)
    if first is not None and second is not None:
        assert decision.prob_1 == pytest.approx((first + second) / 2)


def test_orders_agree_and_unknown_policy():
    assert decide(0.8, 0.7, "average").orders_agree is True
    assert decide(0.8, 0.3, "average").orders_agree is False
    assert decide(0.8, 0.5, "average").orders_agree is None
    with pytest.raises(ValueError, match="unknown position policy"):
        decide(0.8, 0.7, "vote")


# ---------------------------------------------------------------------- the stage


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_feedback_writes_public_layout_and_summary(model_dir, root, tmp_path):
    config = make_config(model_dir, root, tmp_path / "run")
    summary = run_feedback(config)
    prefs = read_records(tmp_path / "run" / "preferences.jsonl", PreferenceRecord)
    judgments = _lines(tmp_path / "run" / "judgments.jsonl")
    assert summary["prompts"] == 6 and summary["pairs_judged"] == len(judgments) == 6 - summary["prompts_dropped"]
    assert sum(summary[f"pairs_{s}"] for s in ("kept", "inconsistent", "tie", "invalid")) == 6
    assert len(prefs) == summary["pairs_kept"] == sum(summary["preference_counts"].values())
    assert summary["order_agreement"]["n"] == 6 and summary["this_run"]["pairs_per_minute"] > 0
    contexts = _lines(tmp_path / "run" / "contexts.jsonl")
    assert len(contexts) == 3 and all(len(c["descriptions"]) == 3 for c in contexts)  # 3 videos, 3 clips each
    for judgment in judgments:
        assert judgment["prob_1_second"] is not None and judgment["judge_prompt"] == "judge_pairwise_context_v1"
        expected = decide(judgment["prob_1_first"], judgment["prob_1_second"], "consistent")
        assert judgment["status"] == expected.status
    for pref in prefs:
        raw = pref.to_json_dict()
        assert {"id", "conversations", "video", "output_1", "output_2", "preference"} <= set(raw)
        assert pref.context.startswith("Clip 1: ") and pref.judge == f"local:{model_dir}"
        assert pref.sampling["temperature"] == 1.0 and pref.toy["video_id"] == pref.prompt_id[:2]
        assert (pref.prob_1_first > 0.5) == (pref.preference == 1) == (pref.prob_1_second > 0.5)
    assert summary["oracle"]["available"] is False  # no truth/ folder here
    with pytest.raises(RunDirError, match="finished"):
        run_feedback(config)


def test_summary_counts_the_verdicts_under_min_verdict_mass(model_dir, root, tmp_path):
    # A judge that puts too little probability on " A" / " B" gives no label; the summary says how often.
    strict = make_config(model_dir, root, tmp_path / "strict", max_prompts=2, judge=JudgeSettings(batch_size=8, min_verdict_mass=0.999))
    summary = run_feedback(strict)
    judgments = _lines(tmp_path / "strict" / "judgments.jsonl")
    masses = [j[f"verdict_mass_{order}"] for j in judgments for order in ("first", "second")]
    under = sum(m < 0.999 for m in masses)
    assert under > 0 and summary["verdicts_below_min_mass"] == under and summary["min_verdict_mass"] == 0.999
    assert summary["pairs_invalid"] == sum(j["verdict_mass_first"] < 0.999 or j["verdict_mass_second"] < 0.999 for j in judgments)
    lenient = run_feedback(make_config(model_dir, root, tmp_path / "lenient", max_prompts=2))
    assert lenient["verdicts_below_min_mass"] == 0 and lenient["min_verdict_mass"] == 0.0


def test_no_context_ablation_uses_the_plain_template(model_dir, root, tmp_path):
    config = make_config(model_dir, root, tmp_path / "run", context=False, max_prompts=2)
    summary = run_feedback(config)
    assert summary["judge_prompt"] == "judge_pairwise_v1" and summary["describer"] is None
    assert not (tmp_path / "run" / "contexts.jsonl").exists()
    assert all(j["context_used"] is False for j in _lines(tmp_path / "run" / "judgments.jsonl"))


def _final_state(directory):
    prefs = _lines(directory / "preferences.jsonl")
    judgments = _lines(directory / "judgments.jsonl")
    return prefs, judgments


def test_resume_after_a_crash_neither_redoes_nor_loses(model_dir, root, tmp_path, monkeypatch):
    # average: a random tiny judge keeps nearly every pair, so there are preference records to lose
    settings = dict(chunk_size=1, max_prompts=4, position_policy="average")
    reference_dir = tmp_path / "whole"
    run_feedback(make_config(model_dir, root, reference_dir, **settings))
    expected_prefs, expected_judgments = _final_state(reference_dir)

    calls = {"n": 0}
    original = LocalJudge.judge

    def crash_on_third_chunk(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, items)

    monkeypatch.setattr(LocalJudge, "judge", crash_on_third_chunk)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_feedback(make_config(model_dir, root, crashed, **settings))
    assert len(_lines(crashed / "judgments.jsonl")) == 2 and not (crashed / "summary.json").exists()
    monkeypatch.setattr(LocalJudge, "judge", original)

    # A kill between a judgment and its preference record: drop the last kept record, leave a torn line.
    prefs_path = crashed / "preferences.jsonl"
    kept_before = _lines(prefs_path)
    assert kept_before
    prefs_path.write_text("".join(json.dumps(p) + "\n" for p in kept_before[:-1]) + '{"id": "torn')

    summary = run_feedback(make_config(model_dir, root, crashed, **settings))
    prefs, judgments = _final_state(crashed)
    assert summary["this_run"]["pairs_judged"] == 2  # the 2 finished pairs were not judged again
    assert summary["this_run"]["preferences_restored"] == 1
    assert summary["pairs_judged"] == 4
    assert len({p["id"] for p in prefs}) == len(prefs) and len({j["id"] for j in judgments}) == len(judgments)
    by_id = lambda rows: {r["id"]: r for r in rows}  # noqa: E731
    assert by_id(prefs) == by_id(expected_prefs)
    assert by_id(judgments).keys() == by_id(expected_judgments).keys()
    for pid, judgment in by_id(judgments).items():
        assert judgment["prob_1_first"] == pytest.approx(by_id(expected_judgments)[pid]["prob_1_first"], abs=1e-6)


def test_bad_inputs_name_the_problem(model_dir, root, tmp_path):
    with pytest.raises(ConfigError, match="num_candidates must be >= 2"):
        run_feedback(make_config(model_dir, root, tmp_path / "a", candidates=CandidateSettings(num_candidates=1)))
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "x", "video": "videos/v0.mp4", "conversations": [{"from": "human", "value": "q"}]}\n{"id": "y"}\n')
    with pytest.raises(RecordError, match=r"prompts.jsonl:2 \(id y\)"):
        load_prompts(bad)
    bad.write_text('{"id": "x", "video": "videos/missing.mp4", "conversations": [{"from": "human", "value": "q"}]}\n')
    config = make_config(model_dir, root, tmp_path / "b", prompts=bad)
    with pytest.raises(RecordError, match="prompts.jsonl: record x: .*missing.mp4"):
        run_feedback(config)


def test_two_way_probability_is_stable():
    assert two_way_probability(-1.0, -1.0) == 0.5
    assert two_way_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert two_way_probability(-1.0, -2000.0) == 1.0 and two_way_probability(-2000.0, -1.0) == 0.0


def test_cli_reads_the_recipe_section(model_dir, root, tmp_path, capsys):
    from vlm_rlaif.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "sft: {out: elsewhere}\n"
        "feedback:\n"
        f"  model_dir: {model_dir}\n  prompts: {root / 'prompts.json'}\n  video_root: {root}\n"
        "  clip_max_frames: 4\n  candidates: {max_new_tokens: 4}\n  describe: {max_new_tokens: 4}\n"
    )
    assert main(["feedback", "--config", str(recipe), "--out", str(tmp_path / "run"), "max_prompts=2", "context=false"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompts"] == 2 and printed["pairs_judged"] == 2
    assert main(["feedback", "--config", str(recipe), "--out", str(tmp_path / "other"), "judge.knd=local"]) == 2


def test_a_killed_process_resumes_without_duplicates(model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = make_video_root(tmp_path / "videos", videos=3, prompts_per_video=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_dir: {model_dir}\nprompts: {root / 'prompts.json'}\nvideo_root: {root}\nout: {tmp_path / 'run'}\n"
        "clip_max_frames: 4\nchunk_size: 1\ncandidates: {max_new_tokens: 6}\ndescribe: {max_new_tokens: 6}\n"
    )
    judgments = tmp_path / "run" / "judgments.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vlm_rlaif.cli", "feedback", "--config", str(recipe)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (judgments.exists() and judgments.read_text().count("\n") >= 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "summary.json").exists(), "the run finished before it could be killed"
    before = [line for line in judgments.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert len(before) >= 2

    from vlm_rlaif.config import load_config
    from vlm_rlaif.feedback import FeedbackConfig

    summary = run_feedback(load_config(FeedbackConfig, recipe))
    after = judgments.read_text().splitlines(keepends=True)
    assert after[: len(before)] == before  # finished judgments were neither redone nor changed
    ids = [json.loads(line)["id"] for line in after]
    assert len(ids) == len(set(ids)) == summary["pairs_judged"] == 12 - summary["prompts_dropped"]
    prefs = _lines(tmp_path / "run" / "preferences.jsonl")
    assert len({p["id"] for p in prefs}) == len(prefs) == summary["pairs_kept"]
    candidates = _lines(tmp_path / "run" / "candidates.jsonl")
    assert sorted(c["prompt_id"] for c in candidates) == sorted({c["prompt_id"] for c in candidates})


def test_on_bad_video_fail_or_skip(model_dir, root, tmp_path, caplog):
    """Prompts about a corrupt video, an HLS playlist naming a video outside the root, a single-frame
    video and a frame folder holding a non-image file, beside a good one."""
    import numpy as np
    from PIL import Image

    from vlm_rlaif.video import write_video

    videos = tmp_path / "root" / "videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (videos / "good.mp4").write_bytes((root / "videos" / "v0.mp4").read_bytes())
    (videos / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{root / 'videos' / 'v1.mp4'}\n#EXT-X-ENDLIST\n"
    (videos / "playlist.m3u8").write_text(hls)
    write_video(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), videos / "still.mp4")
    (videos / "frames").mkdir()
    for i in range(FRAMES):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(videos / "frames" / f"{i}.png")
    (videos / "frames" / "notes.txt").write_text("not a frame")
    names = ["good.mp4", "corrupt.mp4", "playlist.m3u8", "still.mp4", "frames"]
    prompts = tmp_path / "root" / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"id": f"p{i}", "video": f"videos/{n}", "conversations": [{"from": "human", "value": "<video>\nWhat colour is it?"}]}) + "\n"
        for i, n in enumerate(names)
    ))  # fmt: skip

    with pytest.raises(RecordError, match=r"prompts.jsonl: record p1: video videos/corrupt.mp4: .*corrupt.mp4: cannot open"):
        run_feedback(make_config(model_dir, tmp_path / "root", tmp_path / "fail", prompts=prompts, chunk_size=8))

    config = make_config(model_dir, tmp_path / "root", tmp_path / "skip", prompts=prompts, chunk_size=8, on_bad_video="skip")
    with caplog.at_level("WARNING"):
        summary = run_feedback(config)
    assert summary["prompts"] == 5 and summary["prompts_skipped"] == 2
    assert [s["id"] for s in summary["skipped_prompts"]] == ["p1", "p2"]
    assert "cannot open as a video" in summary["skipped_prompts"][1]["reason"]  # the playlist is not followed
    judged = {j["prompt_id"] for j in _lines(tmp_path / "skip" / "judgments.jsonl")}
    assert judged <= {"p0", "p3", "p4"} and summary["pairs_judged"] == 3 - summary["prompts_dropped"]
    assert summary["video_warnings"] == {"single_frame": 1, "non_image_files": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("single frame" in w for w in warned) == 1 and sum("notes.txt" in w for w in warned) == 1
    with pytest.raises(ConfigError, match="on_bad_video must be"):
        run_feedback(make_config(model_dir, root, tmp_path / "x", on_bad_video="ignore"))
