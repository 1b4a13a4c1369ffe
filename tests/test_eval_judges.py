"""Judges: the OpenAI judge against a real local HTTP server (faults included), the local judge,
and the oracle rule."""

import json
import re
import threading
from dataclasses import dataclass

import pytest
from fake_openai_server import FakeReply

from vlm_rlaif.clients.openai_compat import ChatClient, JudgeUnavailableError
from vlm_rlaif.eval.benchmarks import load_items
from vlm_rlaif.eval.judges import LocalJudge, OpenAIJudge, OracleJudge, oracle_quality
from vlm_rlaif.eval.judging import judge, read_judgements


def qa_items(tmp_path, n):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"video_name": f"v{i}", "question_id": f"q{i}", "question": f"question {i}?", "answer": "red"} for i in range(n)]))
    return load_items("qa", path)


def prediction_of(request):
    return re.search(r"Predicted answer: (.*)", request["messages"][0]["content"]).group(1)


def client(server, tmp_path, **kwargs):
    settings = dict(api_key_env=None, max_concurrency=1, max_retries=1, backoff_base_s=0.01, timeout_s=5, cache_dir=tmp_path / "cache")
    return ChatClient(server.url, "judge-alias", **{**settings, **kwargs})


def test_openai_judge_records_versions_and_handles_faults(fake_openai_server, tmp_path):
    server = fake_openai_server
    server.served_model = "judge-alias-2025-06-01"
    replies = {"red": "{'pred': 'yes', 'score': 5}", "blue": "{'pred': 'no', 'score': 0}", "rambling": "I think it is fine", "huge": "unused"}
    server.reply = lambda request: replies[prediction_of(request)]
    server.fault_for = lambda request: "400" if prediction_of(request) == "huge" else None
    server.fail_next("429", times=1, retry_after=0.01)  # retried, then answered
    items = qa_items(tmp_path, 4)
    predictions = {"q0": ["red"], "q1": ["blue"], "q2": ["rambling"], "q3": ["huge"]}
    with client(server, tmp_path, max_invalid_retries=1) as chat:
        rows = judge(items, predictions, kind="qa", by=OpenAIJudge(chat), out_path=tmp_path / "j.jsonl")
        assert chat.stats.retries == 1 and chat.stats.invalid_replies == 2  # asked twice, invalid both times
    by_id = {r["id"]: r for r in rows}
    assert (by_id["q0"]["status"], by_id["q0"]["yes"], by_id["q0"]["score"]) == ("ok", True, 5)
    assert (by_id["q1"]["status"], by_id["q1"]["yes"], by_id["q1"]["score"]) == ("ok", False, 0)
    assert by_id["q2"]["status"] == "invalid" and by_id["q2"]["score"] is None and by_id["q2"]["yes"] is None
    assert by_id["q2"]["reply"] == "I think it is fine"
    assert by_id["q3"]["status"] == "failed" and "400" in by_id["q3"]["error"]
    for r in rows:  # every result line names the judge asked for, what answered and the prompt
        assert r["judge"] == "judge-alias" and r["prompt"] == "eval_qa_v1"
    assert by_id["q0"]["judge_version"] == "judge-alias-2025-06-01" and by_id["q0"]["judge_fingerprint"] == "fp_fake_0001"
    # The prompt the server saw carries question, reference and prediction.
    (seen,) = {r["messages"][0]["content"] for r in server.requests if "Predicted answer: red" in r["messages"][0]["content"]}
    assert "Question: question 0?" in seen and "Correct answer: red" in seen

    # A second run elsewhere with the same cache asks the server only for what was not cached.
    before = len(server.requests)
    with client(server, tmp_path, max_invalid_retries=0) as chat:
        again = judge(items, predictions, kind="qa", by=OpenAIJudge(chat), out_path=tmp_path / "j2.jsonl")
        assert chat.stats.cache_hits == 2
    assert len(server.requests) - before == 2  # the invalid and the failed one, asked again
    assert {r["id"]: r["cached"] for r in again} == {"q0": True, "q1": True, "q2": False, "q3": False}


def test_dead_endpoint_keeps_finished_judgements_and_the_rerun_resumes(fake_openai_server, tmp_path):
    server = fake_openai_server
    dead = threading.Event()
    answered = []

    def reply(request):
        answered.append(prediction_of(request))
        if len(answered) == 2:
            dead.set()  # the endpoint goes down after its second answer
        return "{'pred': 'yes', 'score': 4}"

    server.reply = reply
    server.fault_for = lambda request: "503" if dead.is_set() else None
    items = qa_items(tmp_path, 5)
    predictions = {item.id: [f"answer {item.id}"] for item in items}
    out = tmp_path / "j.jsonl"
    with client(server, tmp_path, cache_dir=None) as chat, pytest.raises(JudgeUnavailableError):
        judge(items, predictions, kind="qa", by=OpenAIJudge(chat), out_path=out)
    assert [r["id"] for r in read_judgements(out)] == ["q0", "q1"]

    dead.clear()
    with client(server, tmp_path, cache_dir=None) as chat:
        rows = judge(items, predictions, kind="qa", by=OpenAIJudge(chat), out_path=out)
    assert sorted(r["id"] for r in rows) == ["q0", "q1", "q2", "q3", "q4"]
    assert answered == ["answer q0", "answer q1", "answer q2", "answer q3", "answer q4"]  # nothing judged twice


def test_judge_tasks_for_vcg_sets_send_each_criterion_its_prompt(fake_openai_server, tmp_path):
    server = fake_openai_server
    scores = {"correctness": 4, "detail": 3, "context": 5}

    def reply(request):
        text = request["messages"][0]["content"]
        criterion = next(c for c, word in (("correctness", "correctness"), ("detail", "detailed"), ("context", "contextual")) if word in text)
        return FakeReply(f"{{'score': {scores[criterion]}}}")

    server.reply = reply
    path = tmp_path / "g.json"
    path.write_text(json.dumps([{"video_name": "v", "Q": "What happens?", "A": "A ball rolls."}]))
    items = load_items("vcg_generic", path)
    with client(server, tmp_path, max_concurrency=3) as chat:
        rows = judge(items, {"0": ["A ball rolls left."]}, kind="vcg_generic", by=OpenAIJudge(chat), out_path=tmp_path / "j.jsonl")
    assert {r["criterion"]: (r["score"], r["prompt"]) for r in rows} == {
        "correctness": (4, "eval_correctness_v1"), "detail": (3, "eval_detail_v1"), "context": (5, "eval_context_v1")
    }


class ScriptedLM:
    """Stands in for VideoLM.generate: answers each prompt with the script's reply."""

    def __init__(self, script):
        self.script = script
        self.seen = []

    def generate(self, examples, settings):
        from vlm_rlaif.models import Generation

        assert settings.temperature == 0.0  # the local judge decodes greedily
        self.seen += examples
        replies = [self.script(e.conversation[0]["content"]) for e in examples]
        return [Generation(i, 0, text, [], True) for i, text in enumerate(replies)]


def test_local_judge_parses_strictly(tmp_path):
    lm = ScriptedLM(lambda prompt: "{'pred': 'yes', 'score': 3}" if "Predicted answer: red" in prompt else "yes, probably")
    items = qa_items(tmp_path, 3)
    rows = judge(items, {"q0": ["red"], "q1": ["blue"], "q2": ["red"]}, kind="qa", by=LocalJudge(lm, "models/judge", batch_size=2), out_path=tmp_path / "j.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert (by_id["q0"]["status"], by_id["q0"]["yes"], by_id["q0"]["score"]) == ("ok", True, 3)
    assert by_id["q1"]["status"] == "invalid" and by_id["q1"]["score"] is None and "no {...} dict" in by_id["q1"]["error"]
    assert all(e.video is None for e in lm.seen)  # text-only prompts
    assert by_id["q2"]["judge"] == "models/judge" and by_id["q2"]["prompt"] == "eval_qa_v1"


def test_local_judge_runs_a_tiny_model_through_generate(tmp_path):
    from vlm_rlaif.models import build_tiny_model, train_tokenizer

    lm = build_tiny_model("tiny", train_tokenizer(["{'pred': 'yes', 'score': 4}"] * 20, vocab_size=300), seed=0)
    items = qa_items(tmp_path, 2)
    rows = judge(items, {"q0": ["red"], "q1": ["blue"]}, kind="qa", by=LocalJudge(lm, "tiny", max_new_tokens=6), out_path=tmp_path / "j.jsonl")
    # A random model writes no valid verdict: every judgement is invalid, none is guessed.
    assert [r["status"] for r in rows] == ["invalid", "invalid"] and all(r["reply"] is not None for r in rows)


@dataclass
class Verdict:
    correct: bool
    coverage: float
    hallucinations: int = 0


def test_oracle_rule_by_hand():
    assert oracle_quality(Verdict(True, 1.0)) == 5
    assert oracle_quality(Verdict(True, 0.25)) == 3  # round(1.25) = 1, lifted to 3: correct answers get 3-5
    assert oracle_quality(Verdict(True, 0.75, hallucinations=1)) == 3  # round(3.75) - 1 = 3
    assert oracle_quality(Verdict(False, 1.0)) == 2  # incorrect answers get 0-2
    assert oracle_quality(Verdict(False, 0.5, hallucinations=3)) == 0  # round(2.5) = 3 (half up) - 3
    assert oracle_quality(Verdict(False, 0.5, hallucinations=2)) == 1
    assert oracle_quality(Verdict(False, 0.0)) == 0


def test_oracle_judge_scores_each_criterion_by_the_rule(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"video_name": "v", "Q1": "a?", "Q2": "b?", "A": "x", "toy": {"video_id": "t0"}}]))
    (item,) = load_items("vcg_consistency", path)
    verdicts = {"good": Verdict(True, 1.0), "partial": Verdict(True, 0.5, hallucinations=1), "bad": Verdict(False, 0.0, 2)}
    oracle = OracleJudge(lambda it, answer: verdicts[answer])
    (row,) = judge([item], {"0": ["good", "bad"]}, kind="vcg_consistency", by=oracle, out_path=tmp_path / "c.jsonl")
    assert (row["score"], row["hallucinations"], row["prompt"]) == (0, [0, 2], "oracle_rule_v1")

    generic = tmp_path / "g.json"
    generic.write_text(json.dumps([{"video_name": "v", "Q": "a?", "A": "x"}]))
    rows = judge(load_items("vcg_generic", generic), {"0": ["partial"]}, kind="vcg_generic", by=oracle, out_path=tmp_path / "g.jsonl")
    # partial: coverage 1/2 -> round 2.5 = 3, minus 1 hallucination = 2, lifted to 3 (correct); detail = 3.
    assert {r["criterion"]: r["score"] for r in rows} == {"correctness": 3, "detail": 3, "context": 3}
    (qa,) = judge(qa_items(tmp_path, 1), {"q0": ["bad"]}, kind="qa", by=oracle, out_path=tmp_path / "q.jsonl")
    assert (qa["yes"], qa["score"]) == (False, 0)
