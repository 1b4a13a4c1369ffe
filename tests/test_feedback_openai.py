"""The openai judge and describer against the real local HTTP fake server: verdicts from top_logprobs
or strict parsing, bad replies recorded as invalid (never guessed), a dead endpoint failing the run
with everything finished kept."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fake_openai_server import FakeReply
from test_feedback_helpers import make_config, make_model_dir, make_video_root

from vlm_rlaif.clients.openai_compat import ChatClient, JudgeUnavailableError
from vlm_rlaif.feedback import run_feedback
from vlm_rlaif.feedback.config import ContextSettings, JudgeSettings, OpenAISettings
from vlm_rlaif.feedback.judges import JudgeItem, OpenAIJudge, verdict_position
from vlm_rlaif.feedback.pipeline import FeedbackRunner


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_video_root(tmp_path_factory.mktemp("videos"))


def _text(request: dict) -> str:
    content = request["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if part["type"] == "text")
    return content


def _answers(request: dict) -> tuple[str, str]:
    text = _text(request)
    return re.search(r"Answer A: (.*)", text).group(1), re.search(r"Answer B: (.*)", text).group(1)


def verdict_reply(letter: str, prob: float = 0.8) -> FakeReply:
    """'Better answer: X. ...' with the verdict token's top_logprobs (prob on X)."""
    other = "B" if letter == "A" else "A"
    return FakeReply(
        text=f"Better answer: {letter}. It matches the video.",
        top_logprobs=[
            {"Better": 0.0},
            {" answer": 0.0},
            {":": 0.0},
            {f" {letter}": math.log(prob), f" {other}": math.log(1 - prob)},
            {".": 0.0},
        ],
    )


def good_answer_wins(request: dict) -> FakeReply:
    """Prefers the answer that says 'good' (when none does: answer A)."""
    answer_a, answer_b = _answers(request)
    return verdict_reply("B" if "good" in answer_b and "good" not in answer_a else "A")


def _judge(server, **settings) -> OpenAIJudge:
    options = OpenAISettings(base_url=server.url, model="judge-1", api_key_env=None, backoff_base_s=0.01, **settings)
    client = ChatClient(
        options.base_url, options.model, api_key_env=None, max_retries=options.max_retries,
        max_invalid_retries=options.max_invalid_retries, backoff_base_s=0.01, timeout_s=5,
    )
    return OpenAIJudge(client, options)


def test_verdict_from_top_logprobs_and_from_text(fake_openai_server):
    fake_openai_server.reply = good_answer_wins
    frames = np.full((12, 32, 32, 3), 90, np.uint8)
    items = [
        JudgeItem("What colour?", "A good red.", "Blue.", "Clip 1: red", frames, "v@u12"),
        JudgeItem("What colour?", "Blue.", "A good red.", "Clip 1: red", frames, "v@u12"),
    ]
    judge = _judge(fake_openai_server, max_frames=3)
    verdicts = judge.judge(items)
    assert [v.prob_a for v in verdicts] == [pytest.approx(0.8), pytest.approx(0.2)]
    assert judge.version == "judge-1;fp_fake_0001"
    request = fake_openai_server.requests[0]
    parts = request["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]  # frames subsampled to max_frames
    assert "Clip 1: red" in parts[-1]["text"] and "Reply with 'Better answer: A'" in parts[-1]["text"]
    assert request["logprobs"] is True and request["top_logprobs"] == 5

    text_only = _judge(fake_openai_server, top_logprobs=None, send_frames=False)
    assert [v.prob_a for v in text_only.judge(items)] == [1.0, 0.0]  # strict parse of "Better answer: X"
    assert isinstance(fake_openai_server.requests[-1]["messages"][0]["content"], str)


def test_verdict_position_is_strict():
    prefix = "Better answer:"
    assert verdict_position(["Better", " answer", ":", " B", "."], prefix) == 3
    assert verdict_position(["**", "Better", " answer", ":**", " A"], prefix) == 4
    assert verdict_position(["A", ".", " It"], prefix) == 0
    assert verdict_position(["A", " good", " answer"], prefix) is None  # an article, not a verdict
    assert verdict_position(["I", " think", " A"], prefix) is None
    assert verdict_position(["Better", " answer", ":", " C"], prefix) is None


BAD_REPLIES = {
    "garbage": FakeReply("I like both of them, honestly."),
    "wrong letter": FakeReply("Better answer: C. Neither fits."),
    "truncated": FakeReply("Better answer:", finish_reason="length"),
    "article": FakeReply("A good answer would name the colour.", top_logprobs=[{"A": -0.1}, {" good": 0.0}]),
    "both": FakeReply("Answer A is better. Answer B is better."),
}


def test_bad_replies_are_invalid_not_guessed_and_not_cached(fake_openai_server, tmp_path):
    def reply(request):
        return BAD_REPLIES.get(_answers(request)[0]) or verdict_reply("A")

    fake_openai_server.reply = reply
    fake_openai_server.fail_next("500")  # a transient failure on the first request is retried
    options = OpenAISettings(base_url=fake_openai_server.url, model="judge-1", api_key_env=None, max_invalid_retries=1)
    client = ChatClient(options.base_url, options.model, api_key_env=None, max_invalid_retries=1, backoff_base_s=0.01, cache_dir=tmp_path)
    judge = OpenAIJudge(client, options)
    items = [JudgeItem("Q?", name, "B.") for name in BAD_REPLIES] + [JudgeItem("Q?", "fine", "B.")]
    verdicts = judge.judge(items)
    assert verdicts[-1].prob_a == pytest.approx(0.8) and verdicts[-1].invalid is None
    for name, verdict in zip(BAD_REPLIES, verdicts):
        assert verdict.prob_a is None, name
        assert "invalid reply after 2 tries" in verdict.invalid, name
    assert "cut off" in verdicts[list(BAD_REPLIES).index("truncated")].invalid
    assert client.stats.retries == 1 and client.stats.invalid_replies == 2 * len(BAD_REPLIES)

    before = len(fake_openai_server.requests)
    again = judge.judge(items)
    # the valid verdict comes from the cache; every invalid one is asked again (twice)
    assert len(fake_openai_server.requests) - before == 2 * len(BAD_REPLIES)
    assert [v.prob_a for v in again] == [v.prob_a for v in verdicts]


def test_run_with_openai_judge_survives_a_dead_endpoint(fake_openai_server, model_dir, root, tmp_path, monkeypatch):
    fake_openai_server.reply = good_answer_wins
    healthy = {"on": True}
    fake_openai_server.fault_for = lambda request: None if healthy["on"] else "503"
    judge = JudgeSettings(
        kind="openai",
        openai=OpenAISettings(
            base_url=fake_openai_server.url, model="judge-1", api_key_env=None, max_retries=1, backoff_base_s=0.01, send_frames=False
        ),
    )
    config = make_config(model_dir, root, tmp_path / "run", judge=judge, chunk_size=2)

    original = FeedbackRunner.judge_pairs
    chunks = {"n": 0}

    def endpoint_dies_after_first_chunk(self, pairs, with_context, judge=None):
        chunks["n"] += 1
        healthy["on"] = chunks["n"] == 1
        return original(self, pairs, with_context, judge)

    monkeypatch.setattr(FeedbackRunner, "judge_pairs", endpoint_dies_after_first_chunk)
    with pytest.raises(JudgeUnavailableError, match=f"{fake_openai_server.url}.*503"):
        run_feedback(config)
    monkeypatch.setattr(FeedbackRunner, "judge_pairs", original)
    judged = [json.loads(line) for line in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
    assert len(judged) == 2 and not (tmp_path / "run" / "summary.json").exists()  # the first chunk is kept
    assert all(j["judge_prompt"] == "judge_pairwise_context_v1+openai_judge_reply_v1" for j in judged)
    sent = [_text(r) for r in fake_openai_server.requests[:4]]
    assert all("Clip 1: " in text for text in sent)  # the policy's clip context reached the endpoint

    healthy["on"] = True
    requests_before = len(fake_openai_server.requests)
    summary = run_feedback(config)
    assert summary["pairs_judged"] == 6 and summary["this_run"]["pairs_judged"] == 4
    assert len(fake_openai_server.requests) - requests_before == 8  # 4 pairs x 2 orders, nothing redone
    assert summary["judge"] == "openai:judge-1" and summary["judge_version"] == "judge-1;fp_fake_0001"
    assert summary["order_agreement"]["rate"] is not None


def test_openai_describer_sends_each_clip_as_images(fake_openai_server, model_dir, root, tmp_path):
    def reply(request):
        parts = request["messages"][0]["content"]
        if isinstance(parts, list) and parts[-1]["text"].startswith("Describe"):
            return f"A clip of {sum(p['type'] == 'image_url' for p in parts)} frames."
        return verdict_reply("A")

    fake_openai_server.reply = reply
    endpoint = OpenAISettings(base_url=fake_openai_server.url, model="describer-1", api_key_env=None, max_frames=3)
    config = make_config(
        model_dir, root, tmp_path / "run", max_prompts=2,
        describe=ContextSettings(describer="openai", openai=endpoint),
    )
    summary = run_feedback(config)
    contexts = [json.loads(line) for line in (tmp_path / "run" / "contexts.jsonl").read_text().splitlines()]
    assert summary["describer"] == "openai:describer-1" and len(contexts) == 1  # both prompts share video v0
    assert contexts[0]["descriptions"] == ["A clip of 3 frames."] * 3  # 4 frames per clip, at most 3 sent


def test_a_clip_that_cannot_be_described_leaves_its_pairs_invalid(fake_openai_server, model_dir, root, tmp_path):
    fake_openai_server.reply = lambda request: "   "  # an empty description, every time
    endpoint = OpenAISettings(base_url=fake_openai_server.url, model="describer-1", api_key_env=None, max_invalid_retries=1)
    config = make_config(
        model_dir, root, tmp_path / "run", max_prompts=2, describe=ContextSettings(describer="openai", openai=endpoint)
    )
    summary = run_feedback(config)
    assert summary["pairs_invalid"] == summary["pairs_without_context"] == 2 and summary["invalid_replies"] == 0
    assert len(fake_openai_server.requests) == 3 * 2  # 3 clips, each asked twice, then given up
    assert (tmp_path / "run" / "contexts.jsonl").read_text() == ""  # not stored: a later run asks again
