"""ChatClient against a real HTTP server (tests/fake_openai_server.py), and the reply parsers."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, FakeReply, fake_openai_server  # noqa: F401 (fixture)
from PIL import Image

from vlm_rlaif.clients.cache import ReplyCache
from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.clients.openai_compat import (
    ChatClient,
    ChatRequest,
    JudgeUnavailableError,
    _retry_after_s,
)
from vlm_rlaif.clients.parsing import (
    InvalidReply,
    YesNoScore,
    choice_probabilities,
    parse_choice,
    parse_score,
    parse_yes_no_score,
)
from vlm_rlaif.errors import UserError


def make_client(server: FakeOpenAIServer, **overrides) -> ChatClient:
    options = dict(
        model="judge-model",
        api_key_env=None,
        max_concurrency=4,
        max_retries=3,
        timeout_s=2.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    options.update(overrides)
    return ChatClient(server.url, **options)


def ask(text: str, **fields) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **fields)


def user_text(request: dict) -> str:
    return request["messages"][-1]["content"]


# -- concurrency and order --------------------------------------------------------------------------


def test_results_keep_input_order_while_finishing_out_of_order(fake_openai_server):
    def slow_first(request: dict) -> str:
        index = int(user_text(request)[1:])
        time.sleep(0.05 * (7 - index))  # q0 is the slowest: replies finish in reverse order
        return f"answer {index}"

    fake_openai_server.reply = slow_first
    requests = [ask(f"q{i}") for i in range(8)]
    with make_client(fake_openai_server, max_concurrency=8) as client:
        finished = [index for index, _ in client.iter_complete(requests)]
        results = client.complete(requests)
    assert finished != sorted(finished), "replies should arrive out of order"
    assert sorted(finished) == list(range(8))
    assert [r.text for r in results] == [f"answer {i}" for i in range(8)]
    assert all(r.ok and not r.cached and r.attempts == 1 for r in results)


def test_concurrency_is_bounded_and_real(fake_openai_server):
    def slow(request: dict) -> str:
        time.sleep(0.1)
        return "ok"

    fake_openai_server.reply = slow
    with make_client(fake_openai_server, max_concurrency=3) as client:
        start = time.monotonic()
        results = client.complete([ask(f"q{i}") for i in range(9)])
        elapsed = time.monotonic() - start
    assert all(r.text == "ok" for r in results)
    assert fake_openai_server.max_in_flight == 3
    assert elapsed < 0.9 * 9 * 0.1  # three at a time, not one by one


# -- retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "503", "hang", "drop", "garbage"])
def test_transient_faults_are_retried_then_succeed(fake_openai_server, fault):
    fake_openai_server.fail_next(fault, times=2)
    with make_client(fake_openai_server, timeout_s=0.3) as client:
        [result] = client.complete([ask("hello")])
        assert client.stats.retries == 2
    assert result.ok, result.error
    assert result.text == "echo: hello"
    assert result.attempts == 3
    assert len(fake_openai_server.requests) == 3


def test_retry_after_is_honoured(fake_openai_server):
    fake_openai_server.fail_next("429", times=1, retry_after=0.4)
    with make_client(fake_openai_server) as client:  # own backoff is at most 0.05 s
        start = time.monotonic()
        [result] = client.complete([ask("hello")])
        elapsed = time.monotonic() - start
    assert result.ok
    assert elapsed >= 0.4


def test_retry_after_header_forms():
    assert _retry_after_s({"retry-after": "3"}) == 3.0
    assert _retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_two_minutes = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < _retry_after_s({"retry-after": in_two_minutes}) <= 120
    assert _retry_after_s({"retry-after": "soon"}) is None
    assert _retry_after_s({}) is None


def test_bad_request_fails_that_request_only_without_retry(fake_openai_server):
    fake_openai_server.fault_for = lambda request: "400" if user_text(request) == "bad" else None
    with make_client(fake_openai_server) as client:
        results = client.complete([ask("a"), ask("bad"), ask("c")])
        stats = client.stats.as_dict()
    assert [r.ok for r in results] == [True, False, True]
    assert stats["failed_requests"] == 1 and stats["http_requests"] == 3 and stats["retries"] == 0
    # Token counts come from the server's usage of the two replies it sent.
    assert stats["completion_tokens"] == sum(r.usage["completion_tokens"] for r in results if r.ok) == 4
    assert "HTTP 400" in results[1].error
    assert len(fake_openai_server.requests) == 3  # the bad one was sent once


@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_endpoint_level_errors_raise_at_once(fake_openai_server, status):
    fake_openai_server.fault_for = lambda request: status
    with make_client(fake_openai_server, max_concurrency=1) as client:
        with pytest.raises(JudgeUnavailableError) as caught:
            client.complete([ask("a"), ask("b")])
    assert isinstance(caught.value, UserError)
    assert fake_openai_server.url in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert len(fake_openai_server.requests) == 1  # no retries, the second request never sent


def test_dead_endpoint_keeps_finished_results_and_cache_resumes(fake_openai_server, tmp_path):
    fake_openai_server.fault_for = lambda request: "500" if user_text(request) == "q3" else None
    requests = [ask(f"q{i}") for i in range(6)]
    # One at a time makes the outcome exact: q0..q2 finish, q3 dies, q4 and q5 are never sent.
    with make_client(fake_openai_server, max_concurrency=1, max_retries=2, cache_dir=tmp_path) as client:
        with pytest.raises(JudgeUnavailableError) as caught:
            client.complete(requests)
    message = str(caught.value)
    assert fake_openai_server.url in message and "HTTP 500" in message and "after 3 attempts" in message
    results = caught.value.results
    texts = [r.text if r else None for r in results]
    assert texts == ["echo: q0", "echo: q1", "echo: q2", None, None, None]
    sent = [user_text(r) for r in fake_openai_server.requests]
    assert sent == ["q0", "q1", "q2", "q3", "q3", "q3"]

    # The endpoint recovers: a rerun asks only for what did not finish.
    fake_openai_server.fault_for = None
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        results = client.complete(requests)
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(6)]
    assert [r.cached for r in results] == [True, True, True, False, False, False]
    assert sorted(user_text(r) for r in fake_openai_server.requests[6:]) == ["q3", "q4", "q5"]


def test_iterator_yields_finished_results_before_raising(fake_openai_server):
    fake_openai_server.fault_for = lambda request: "503" if user_text(request) == "q2" else None
    seen = []
    with make_client(fake_openai_server, max_concurrency=1, max_retries=1) as client:
        with pytest.raises(JudgeUnavailableError):
            for index, result in client.iter_complete([ask(f"q{i}") for i in range(5)]):
                seen.append((index, result.text))
    assert seen == [(0, "echo: q0"), (1, "echo: q1")]


def test_unreachable_endpoint_raises_naming_the_url():
    with FakeOpenAIServer() as server:
        url = server.url
    client = ChatClient(url, "m", api_key_env=None, max_retries=2, backoff_base_s=0.01, timeout_s=1)
    with pytest.raises(JudgeUnavailableError, match="connection failed") as caught:
        client.complete([ask("hello")])
    assert url in str(caught.value)
    assert client.stats.http_requests == 3


# -- cache ------------------------------------------------------------------------------------------


def test_cache_hit_on_rerun_makes_zero_http_requests(fake_openai_server, tmp_path):
    fake_openai_server.reply = lambda request: FakeReply(text="A", top_logprobs=[{"A": -0.1, "B": -2.4}])
    requests = [ask(f"q{i}", top_logprobs=2, seed=i) for i in range(5)]
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        first = client.complete(requests)
    assert len(fake_openai_server.requests) == 5

    with FakeOpenAIServer() as other_host:  # the key ignores the host: same model, same replies
        with make_client(other_host, cache_dir=tmp_path) as client:
            again = client.complete(requests)
            assert client.stats.cache_hits == 5 and client.stats.http_requests == 0
        assert other_host.requests == []
    assert len(fake_openai_server.requests) == 5
    assert all(r.cached and r.attempts == 0 for r in again)
    for before, after in zip(first, again):
        for name in ("text", "tokens", "top_logprobs", "usage", "model", "system_fingerprint"):
            assert getattr(before, name) == getattr(after, name)

    files = sorted(tmp_path.rglob("*"))
    entries = [p for p in files if p.is_file()]
    assert len(entries) == 5 and all(p.suffix == ".json" and len(p.parent.name) == 2 for p in entries)

    # Any field that shapes the reply is part of the key.
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        client.complete([ask("q0", top_logprobs=2, seed=99)])
        client.complete([ask("q0", top_logprobs=2, seed=0, temperature=0.7)])
        client.complete([ask("q0", top_logprobs=2, seed=0, extra={"stop": ["\n"]})])
    with make_client(fake_openai_server, cache_dir=tmp_path, model="another-judge") as client:
        client.complete([ask("q0", top_logprobs=2, seed=0)])
    assert len(fake_openai_server.requests) == 9


def test_corrupt_cache_entry_is_refetched_with_a_warning(fake_openai_server, tmp_path, caplog):
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        client.complete([ask("hello")])
    [entry] = [p for p in tmp_path.rglob("*.json")]
    entry.write_text("{truncated")
    with caplog.at_level(logging.WARNING, logger="vlm_rlaif"):
        with make_client(fake_openai_server, cache_dir=tmp_path) as client:
            [result] = client.complete([ask("hello")])
    assert result.ok and not result.cached
    assert str(entry) in caplog.text
    assert json.loads(entry.read_text())["text"] == "echo: hello"


def test_invalid_replies_are_retried_then_marked_invalid_and_not_cached(fake_openai_server, tmp_path):
    fake_openai_server.reply = lambda request: "Both answers have merit."
    verdict = lambda result: parse_choice(result.text)  # noqa: E731
    with make_client(fake_openai_server, cache_dir=tmp_path, max_invalid_retries=2) as client:
        [result] = client.complete([ask("which?")], validate=verdict)
        assert client.stats.invalid_replies == 3
    assert result.invalid and not result.ok
    assert "invalid reply after 3 tries" in result.error
    assert result.text == "Both answers have merit."  # kept for inspection, never turned into a verdict
    assert result.parsed is None
    assert result.attempts == 3 and len(fake_openai_server.requests) == 3
    assert len(ReplyCache(tmp_path)) == 0


def test_invalid_then_valid_reply_is_parsed_and_cached(fake_openai_server, tmp_path):
    replies = iter(["I cannot decide.", "Answer: B"])
    fake_openai_server.reply = lambda request: next(replies)
    verdict = lambda result: parse_choice(result.text)  # noqa: E731
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        [result] = client.complete([ask("which?")], validate=verdict)
    assert result.ok and result.parsed == "B" and result.attempts == 2
    with make_client(fake_openai_server, cache_dir=tmp_path) as client:
        [again] = client.complete([ask("which?")], validate=verdict)
    assert again.cached and again.parsed == "B"
    assert len(fake_openai_server.requests) == 2


# -- request fields, logprobs, metadata, images -----------------------------------------------------


def test_request_fields_logprobs_and_server_metadata(tmp_path):
    reply = FakeReply(
        text="A because", top_logprobs=[{"A": -0.1, " B": -2.4, "B": -3.0}, {" because": -0.5}]
    )
    server = FakeOpenAIServer(
        lambda request: reply, served_model="judge-2026-01-15", system_fingerprint="fp_42"
    )
    with server:
        with make_client(server) as client:
            [result] = client.complete(
                [ask("q", temperature=0.7, max_tokens=16, top_logprobs=3, seed=7, extra={"top_p": 0.9})]
            )
        sent = server.requests[0]
    assert sent["model"] == "judge-model"
    assert (sent["temperature"], sent["max_tokens"], sent["seed"], sent["top_p"]) == (0.7, 16, 7, 0.9)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 3
    assert result.model == "judge-2026-01-15" and result.system_fingerprint == "fp_42"
    assert result.finish_reason == "stop"
    assert result.tokens == ["A", " because"]
    assert result.top_logprobs[0] == {"A": -0.1, " B": -2.4, "B": -3.0}
    assert set(result.usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    probs = choice_probabilities(result.top_logprobs[0])
    expected_a = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.4) + math.exp(-3.0))
    assert probs["A"] == pytest.approx(expected_a) and probs["A"] + probs["B"] == pytest.approx(1.0)


def test_bad_requests_are_rejected_before_sending():
    with pytest.raises(ValueError, match="non-empty"):
        ChatRequest(messages=[])
    with pytest.raises(ValueError, match="role"):
        ChatRequest(messages=[{"content": "no role"}])
    with pytest.raises(ValueError, match="model"):
        ask("q", extra={"model": "sneaky"})
    with pytest.raises(ValueError, match="n"):
        ask("q", extra={"n": 2})


def test_frames_become_jpeg_image_parts_the_server_receives(fake_openai_server):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)
    parts = frames_to_image_parts(frames, max_side=32, detail="low")
    assert len(parts) == 3
    for part in parts:
        assert part["type"] == "image_url" and part["image_url"]["detail"] == "low"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.format == "JPEG" and image.size == (32, 24)  # longer side capped, aspect kept

    small = frames_to_image_parts(frames[:1, :20, :10], max_side=512)[0]["image_url"]["url"]
    small_image = Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1])))
    assert small_image.size == (10, 20)  # never enlarged

    flat = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        frames_to_image_parts(flat)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_image_parts(frames.astype(np.float32))

    content = [{"type": "text", "text": "Describe the video."}, *parts]
    with make_client(fake_openai_server) as client:
        [result] = client.complete([ChatRequest(messages=[{"role": "user", "content": content}])])
    assert result.text == "echo: Describe the video."
    assert fake_openai_server.requests[0]["messages"][0]["content"] == content


# -- secrets ----------------------------------------------------------------------------------------


def test_api_key_never_reaches_logs_repr_errors_or_cache(tmp_path, caplog, monkeypatch):
    secret = "sk-test-Zq7SECRETvalue-0123456789"
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", secret)
    caplog.set_level(logging.DEBUG)  # every logger, the openai and HTTP libraries' included
    texts = []
    with FakeOpenAIServer(api_key=secret) as server:
        server.fault_for = lambda request: "500" if user_text(request) == "dies" else None
        server.fail_next("429", times=1, retry_after=0.01)
        client = make_client(server, api_key_env="JUDGE_KEY_FOR_TEST", cache_dir=tmp_path, max_retries=1)
        with client:
            texts.append(repr(client))
            [result] = client.complete([ask("hello")])
            assert result.ok
            with pytest.raises(JudgeUnavailableError) as caught:
                client.complete([ask("dies")])
            texts.append(str(caught.value))
        assert server.headers[0]["authorization"] == f"Bearer {secret}"  # the key was really used

        monkeypatch.setenv("JUDGE_KEY_FOR_TEST", secret[::-1])
        with make_client(server, api_key_env="JUDGE_KEY_FOR_TEST") as client:
            with pytest.raises(JudgeUnavailableError, match="JUDGE_KEY_FOR_TEST") as refused:
                client.complete([ask("hello again")])
            texts.append(str(refused.value))
    texts.append(caplog.text)
    texts.extend(p.read_text() for p in tmp_path.rglob("*.json"))
    assert "HTTP 429" in caplog.text  # the logs were captured, the retry logged
    for text in texts:
        assert secret not in text and secret[::-1] not in text


# -- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("(B)", "B"),
        ("**A**.", "A"),
        ("Answer: B", "B"),
        ("Response B.", "B"),
        ("Reasoning: both mention a ball.\nFinal verdict: (A)", "A"),
        ("**Verdict:** B\nReason: Answer A invents a red ball.", "B"),  # the labelled line decides
        ("Response A is more accurate than the other.", "A"),
        ("The better answer is B.", "B"),
        ("I prefer Output (B) because it is concise.", "B"),
    ],
)
def test_parse_choice_accepts_clear_verdicts(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "A or B",
        "A man walks a dog.",  # the article is not a verdict
        "Both answers are equally good.",
        "Answer A is not accurate.",
        "Answer: A\nAnswer: B",
        "Response A is better. On reflection, Response B is better.",
        "C",
    ],
)
def test_parse_choice_rejects_unclear_replies(text):
    with pytest.raises(InvalidReply):
        parse_choice(text)


def test_parse_choice_other_choices_and_case():
    assert parse_choice("Answer 2 is better.", choices=("1", "2")) == "2"
    assert parse_choice("yes", choices=("Yes", "No"), case_sensitive=False) == "Yes"
    with pytest.raises(InvalidReply):
        parse_choice("a", choices=("A", "B"))
    with pytest.raises(ValueError):
        parse_choice("A", choices=("A", "A"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4", 4),
        ("Score: 4", 4),
        ("**Score**: 3/5", 3),
        ("The score is 0.", 0),
        ('{"score": 4}', 4),
        ("{'score': 5}", 5),
        ("Here it is: {'score': '2'}", 2),
        ("Score: 4\nReason: accurate. Score: 4", 4),
        ("Rating: 2 out of 5", 2),
    ],
)
def test_parse_score_accepts(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("4 or 5", "no score"),
        ("Score: 4 or 5", "range"),
        ("Score: 3-4", "range"),
        ("Score: 6", "outside"),
        ("Score: -1", "outside"),
        ("Score: 8/10", "out of 10"),
        ("Score: 3.5", "not an integer"),
        ("Score: 2. Score: 4.", "several"),
        ("{'pred': 'yes'}", "no 'score'"),
        ("{'score': True}", "number"),
        ("{'score': 4} {'score': 5}", "not one valid dict"),
        ("good answer", "no score"),
    ],
)
def test_parse_score_rejects(text, reason):
    with pytest.raises(InvalidReply, match=reason):
        parse_score(text)


def test_parse_score_non_integer_scale():
    assert parse_score("Score: 3.5", lo=0, hi=10, integer=False) == 3.5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{'pred': 'yes', 'score': 4}", YesNoScore(True, 4)),
        ('{"pred": "no", "score": 1}', YesNoScore(False, 1)),
        ("Evaluation: {'pred': 'Yes', 'score': 5, 'reason': 'matches'}", YesNoScore(True, 5)),
    ],
)
def test_parse_yes_no_score_accepts(text, expected):
    assert parse_yes_no_score(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("yes, 4", "no {...} dict"),
        ("{'pred': 'maybe', 'score': 3}", "'yes' or 'no'"),
        ("{'pred': 'yes'}", "no 'score'"),
        ("{'score': 3}", "no 'pred'"),
        ("{'pred': 'yes', 'score': 7}", "outside"),
        ("{'pred': 'yes', 'score': 2.5}", "not an integer"),
        ("{'pred': 'yes', 'score': 4", "no {...} dict"),
    ],
)
def test_parse_yes_no_score_rejects(text, reason):
    with pytest.raises(InvalidReply, match=reason):
        parse_yes_no_score(text)


def test_choice_probabilities_needs_a_choice_among_the_top_tokens():
    with pytest.raises(InvalidReply, match="none of"):
        choice_probabilities({"The": -0.1, "I": -1.0})
    assert choice_probabilities({"B": 0.0}) == {"A": 0.0, "B": 1.0}
