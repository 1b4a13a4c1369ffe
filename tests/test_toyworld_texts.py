"""Texts from the truth: every question type is generated and the oracle agrees with the generator
(every reference answer correct, every corruption wrong, the reference always preferred)."""

from collections import Counter

import numpy as np
import pytest

from vlm_rlaif.data.records import VIDEO_PLACEHOLDER
from vlm_rlaif.prompts import format_context, load_prompt
from vlm_rlaif.toyworld import Oracle, ToyWorldConfig, make_records, sample_truth
from vlm_rlaif.toyworld.corrupt import LONG_CORRUPTIONS
from vlm_rlaif.toyworld.dataset import clip_descriptions, split_of
from vlm_rlaif.toyworld.describe import Speaker, span_facts
from vlm_rlaif.toyworld.questions import LONG_QTYPES, SHORT_QTYPES, Asker

CFG = ToyWorldConfig()
ORACLE = Oracle(order_gap=CFG.order_gap)


def _all_qas(n_videos: int, rounds: int = 2):
    for i in range(n_videos):
        truth = sample_truth(CFG, i)
        asker = Asker(truth, CFG, np.random.default_rng([99, i]))
        for build in list(SHORT_QTYPES.values()) + list(LONG_QTYPES.values()):
            for _ in range(rounds):
                qa = build(asker)
                if qa is not None:
                    yield truth, qa


QAS = list(_all_qas(50))


def test_every_question_type_and_corruption_is_generated():
    qtypes = Counter(qa.qtype for _, qa in QAS)
    assert set(qtypes) == set(SHORT_QTYPES) | set(LONG_QTYPES)
    assert min(qtypes.values()) >= 20, qtypes
    corruptions = {w.corruption for _, qa in QAS for w in qa.wrongs}
    assert set(LONG_CORRUPTIONS) <= corruptions
    assert {"flipped_yes_no", "wrong_count", "wrong_object", "wrong_time"} <= corruptions
    answers = Counter(qa.params["answer"] for _, qa in QAS if qa.qtype == "yes_no")
    assert answers["yes"] >= 20 and answers["no"] >= 20, "yes/no questions need both answers"
    rel = Counter(qa.params["answer"] for _, qa in QAS if qa.qtype == "event_order" and qa.params["ask"] == "before_after")
    assert rel["before"] >= 3 and rel["after"] >= 3, "before/after questions must not always be 'before'"


def test_oracle_accepts_every_reference_and_rejects_every_corruption():
    failures = []
    for truth, qa in QAS:
        meta = {"qtype": qa.qtype, "params": qa.params}
        verdict = ORACLE.check(truth, meta, qa.answer)
        if not verdict.correct or verdict.hallucinations:
            failures.append(("reference judged wrong", truth.video_id, qa.qtype, qa.answer))
        for k, wrong in enumerate(qa.wrongs):
            bad = ORACLE.check(truth, meta, wrong.answer)
            if bad.correct or ORACLE._rank(bad) >= ORACLE._rank(verdict):
                failures.append(("corruption judged right or not worse", truth.video_id, wrong.corruption, wrong.answer))
            if k == 0 and (ORACLE.compare(truth, meta, qa.answer, wrong.answer),
                           ORACLE.compare(truth, meta, wrong.answer, qa.answer)) != (1, 2):
                failures.append(("compare disagrees", truth.video_id, wrong.corruption, wrong.answer))
    assert not failures, failures[:5]


def test_clip_descriptions_are_correct_for_their_clip_only():
    checked = 0
    for i in range(40):
        truth = sample_truth(CFG, i)
        texts = clip_descriptions(truth, np.random.default_rng(i), CFG.order_gap)
        assert len(texts) == len(truth.clips) == 3
        for c, text in enumerate(texts):
            meta = {"qtype": "clip", "params": {"clip": c, "count": 3}}
            assert ORACLE.check(truth, meta, text).correct, (truth.video_id, c, text)
            # A clip's description judged against another clip is wrong whenever that clip differs.
            other = (c + 1) % 3
            if span_facts(truth, truth.span_of_clip(c)) and truth.events_in(truth.span_of_clip(other)):
                assert not ORACLE.check(truth, {"qtype": "clip", "params": {"clip": other, "count": 3}}, text).correct
                checked += 1
    assert checked >= 20


def _skeleton(text: str) -> str:
    """A sentence with its object words masked: what is left is the template."""
    words = []
    for w in text.lower().strip(".?!").split():
        w = w.strip(",:")
        words.append("_" if w in _OBJECT_WORDS or w.isdigit() else w)
    return " ".join(words)


_OBJECT_WORDS = set(CFG.colours) | {"circle", "ball", "square", "box", "triangle", "diamond", "circles", "balls",
                                     "squares", "boxes", "triangles", "diamonds", "left", "right", "up", "down",
                                     "upward", "downward", "top", "bottom", "one", "two", "three", "four", "zero",
                                     "a", "the", "to", "objects", "shapes", "object", "shape", "thing", "big", "small"}


def test_paraphrase_variety():
    # Each type is asked and answered in several ways; a model cannot match one template.
    for qtype in sorted(SHORT_QTYPES):
        questions = {_skeleton(qa.questions[0]) for _, qa in QAS if qa.qtype == qtype}
        answers = {_skeleton(qa.answer) for _, qa in QAS if qa.qtype == qtype}
        assert len(questions) >= 3 and len(answers) >= 3, (qtype, questions, answers)
    describe = [qa.answer for _, qa in QAS if qa.qtype == "describe"]
    openings = {" ".join(a.split()[:2]) for a in describe}
    assert len(openings) >= 4, openings
    consistency = [qa for _, qa in QAS if len(set(qa.questions)) >= 2]
    assert len(consistency) > 0.8 * len(QAS)


def test_vocabulary_is_small():
    words = Counter()
    for _, qa in QAS:
        for text in [qa.answer, *qa.questions, *(w.answer for w in qa.wrongs), *(w.reason for w in qa.wrongs)]:
            words.update(w.strip(".,:?!").lower() for w in text.split())
    assert len(words) < 300, f"{len(words)} distinct words: too many for a tiny model"


def test_long_descriptions_tell_events_in_temporal_order():
    for truth, qa in QAS:
        if qa.qtype != "describe_events":
            continue
        verdict = ORACLE.check(truth, {"qtype": "describe_events", "params": {}}, qa.answer)
        assert verdict.coverage == 1.0 and not any(f.fact.startswith("order") for f in verdict.facts)


def _records_of_split(split: str, n: int = 60):
    out = []
    for i in range(n):
        if split_of(i, CFG) == split:
            truth = sample_truth(CFG, i)
            truth.split = split
            out.append((truth, make_records(truth, CFG)))
    return out


def test_judge_examples_are_balanced_and_rendered_from_the_prompts():
    prefix = load_prompt("judge_verdict_prefix").text
    examples = [(t, r) for t, recs in _records_of_split("sft") for r in recs["sft/SFT_judge.json"]]
    assert len(examples) >= 90
    better = Counter(r["toy"]["params"]["better"] for _, r in examples)
    context = Counter(r["toy"]["params"]["context"] for _, r in examples)
    assert abs(better["A"] - better["B"]) <= 2 and abs(context[True] - context[False]) <= 2
    cells = Counter((r["toy"]["params"]["better"], r["toy"]["params"]["context"]) for _, r in examples)
    assert len(cells) == 4 and min(cells.values()) >= len(examples) // 4 - 2
    for truth, r in examples:
        human, gpt = r["conversations"][0]["value"], r["conversations"][1]["value"]
        p = r["toy"]["params"]
        assert human.startswith(VIDEO_PLACEHOLDER + "\n")
        assert gpt.startswith(f"{prefix} {p['better']}. Answer {'B' if p['better'] == 'A' else 'A'} ")
        a, b = p["answers"]
        assert f"Answer A: {a}\nAnswer B: {b}\n" in human
        assert ("Here are detailed descriptions of the video's clips" in human) == p["context"]
        if p["context"]:
            assert "Clip 1: " in human and "Clip 3: " in human
        # The oracle agrees with the label: the "better" answer really is better.
        meta = {"qtype": p["base_qtype"], "params": p["base_params"]}
        assert ORACLE.compare(truth, meta, a, b) == (1 if p["better"] == "A" else 2), (r["id"], a, b)
    corruptions = Counter(r["toy"]["params"]["corruption"] for _, r in examples)
    assert len(corruptions) >= 8


def test_context_format_is_the_feedback_stage_format():
    truth = sample_truth(CFG, 5)
    texts = clip_descriptions(truth, np.random.default_rng(0), CFG.order_gap)
    context = format_context(texts)
    assert context.splitlines()[0].startswith("Clip 1: ") and len(context.splitlines()) == 3


def test_records_of_each_split():
    sft = _records_of_split("sft", 20)[0][1]
    assert len(sft["sft/SFT_short.json"]) == CFG.short_per_video
    assert len(sft["sft/SFT_clips.json"]) == 3
    clip = sft["sft/SFT_clips.json"][1]
    assert clip["clip"] == {"index": 1, "count": 3} and clip["toy"]["params"]["first"] == 8
    assert all(not recs["rl/prompts.json"] for _, recs in _records_of_split("sft", 20))
    rl = _records_of_split("rl", 40)[0][1]
    prompts, init = rl["rl/prompts.json"], rl["rl/PPO_init.json"]
    assert len(prompts) == CFG.rl_per_video and [p["id"] for p in prompts] == [p["id"] for p in init]
    assert all(len(p["conversations"]) == 1 for p in prompts) and all(len(p["conversations"]) == 2 for p in init)
    ev = _records_of_split("eval", 40)[0][1]
    for name in ("eval/vcg_generic.json", "eval/qa.json", "eval/mcq.json", "eval/vcg_consistency.json"):
        assert len(ev[name]) == CFG.eval_per_video, name
    for rec in ev["eval/mcq.json"]:
        assert rec["answer"] in rec["candidates"] and len(set(rec["candidates"])) == len(rec["candidates"])
    for rec in ev["eval/vcg_consistency.json"]:
        assert rec["Q1"] != rec["Q2"]


@pytest.mark.parametrize("qtype", sorted(SHORT_QTYPES))
def test_terse_answers_are_short(qtype):
    terse = [qa.short for _, qa in QAS if qa.qtype == qtype]
    limit = 8 if qtype == "event_order" else 3  # an event is a clause: "the red square turns blue"
    assert terse and all(len(s.split()) <= limit for s in terse), terse


def test_speaker_is_deterministic_given_its_generator():
    truth = sample_truth(CFG, 8)
    facts = span_facts(truth, truth.whole)
    a = Speaker(np.random.default_rng(3)).describe(facts, truth.whole)
    b = Speaker(np.random.default_rng(3)).describe(facts, truth.whole)
    assert a == b
