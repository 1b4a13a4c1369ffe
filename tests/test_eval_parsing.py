"""Benchmark layouts -> items, judge reply parsing and multiple-choice option parsing."""

import json

import pytest

from vlm_rlaif.clients.parsing import InvalidReply
from vlm_rlaif.errors import RecordError
from vlm_rlaif.eval.benchmarks import load_items, model_prompts, parse_option
from vlm_rlaif.eval.criteria import JudgeTask, parse_judge_reply, tasks_for


def write(path, records):
    path.write_text(json.dumps(records, indent=1))
    return path


# ------------------------------------------------------------------------------- benchmark layouts


def test_vcg_sets_get_positional_ids_and_keep_toy_metadata(tmp_path):
    generic = write(tmp_path / "generic.json", [
        {"video_name": "v1", "Q": "What happens?", "A": "A dog runs.", "toy": {"video_id": "toy_1", "qtype": "describe"}},
        {"video_name": "v2", "Q": "Who is there?", "A": "A cat."},
    ])
    items = load_items("vcg_generic", generic)
    assert [i.id for i in items] == ["0", "1"]
    assert items[0].questions == ["What happens?"] and items[0].answer == "A dog runs."
    assert items[0].meta == {"toy": {"video_id": "toy_1", "qtype": "describe"}}
    assert items[1].meta == {}
    consistency = write(tmp_path / "cons.json", [{"video_name": "v1", "Q1": "What runs?", "Q2": "Which animal runs?", "A": "A dog."}])
    (item,) = load_items("vcg_consistency", consistency)
    assert item.questions == ["What runs?", "Which animal runs?"]
    assert model_prompts(item) == ["What runs?", "Which animal runs?"]
    assert [t.key for t in tasks_for("vcg_generic", items, {"0": ["x"]})] == ["0|correctness", "0|detail", "0|context"]


def test_activitynet_original_split_joins_answers_by_question_id(tmp_path):
    questions = write(tmp_path / "test_q.json", [
        {"video_name": "abc", "question": "what is he doing", "question_id": "abc_0"},
        {"video_name": "def", "question": "is it day", "question_id": "def_1"},
    ])
    answers = write(tmp_path / "test_a.json", [
        {"answer": "yes", "type": 3, "question_id": "def_1"},
        {"answer": "dancing", "type": 0, "question_id": "abc_0"},
    ])
    items = load_items("qa", questions, answers_path=answers, video_prefix="v_")
    assert [(i.id, i.video_name, i.answer) for i in items] == [("abc_0", "v_abc", "dancing"), ("def_1", "v_def", "yes")]

    write(answers, [{"answer": "dancing", "type": 0, "question_id": "abc_0"}])
    with pytest.raises(RecordError, match=r"test_q.json:\d+ \(question_id def_1\): no answer with this question_id"):
        load_items("qa", questions, answers_path=answers)


def test_bad_records_name_file_line_and_field(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text('[\n{"video_name": "a", "question_id": 1, "question": "q", "answer": "x"},\n{"video_name": "b", "question_id": 2, "question": "q"}\n]\n')
    with pytest.raises(RecordError, match=r"qa.json:3: field 'answer'"):
        load_items("qa", path)
    write(path, [{"video_name": "a", "question_id": 1, "question": "q", "answer": "x"}] * 2)
    with pytest.raises(RecordError, match="duplicate id '1'"):
        load_items("qa", path)
    write(path, [{"video_name": "a", "question_id": 1, "question": "q", "candidates": ["x", "y"], "answer": "z"}])
    with pytest.raises(RecordError, match="not one of the candidates"):
        load_items("mcq", path)
    with pytest.raises(RecordError, match="unknown benchmark kind"):
        load_items("vqa", path)


def test_limit_keeps_the_first_items(tmp_path):
    path = write(tmp_path / "g.json", [{"video_name": f"v{i}", "Q": "q", "A": "a"} for i in range(5)])
    assert [i.id for i in load_items("vcg_temporal", path, limit=2)] == ["0", "1"]


# ------------------------------------------------------------------------------- judge replies


@pytest.mark.parametrize(
    "criterion, reply, expected",
    [
        ("correctness", "{'score': 4}", {"score": 4, "yes": None}),
        ("detail", '{"score": 0}', {"score": 0, "yes": None}),
        ("temporal", "Sure. {'score': 5}", {"score": 5, "yes": None}),
        ("consistency", "3", {"score": 3, "yes": None}),
        ("qa", "{'pred': 'yes', 'score': 4}", {"score": 4, "yes": True}),
        ("qa", "{'pred': 'No', 'score': 1}", {"score": 1, "yes": False}),
    ],
)
def test_valid_judge_replies(criterion, reply, expected):
    assert parse_judge_reply(criterion, reply) == expected


@pytest.mark.parametrize(
    "criterion, reply, reason",
    [
        ("correctness", "{'score': 6}", "outside"),  # out of range
        ("correctness", "{'score': -1}", "outside"),
        ("correctness", "{'score': 3.5}", "not an integer"),
        ("correctness", "{'score': 4", "no {...} dict"),  # malformed
        ("correctness", "I would say 4 or 5", "no score"),
        ("correctness", "", "empty"),
        ("context", "{'rating': 4}", "no 'score' key"),
        ("qa", "{'pred': 'maybe', 'score': 3}", "'pred' must be"),
        ("qa", "{'pred': 'yes'}", "no 'score' key"),
        ("qa", "{'pred': 'yes', 'score': 9}", "outside"),
        ("qa", "yes, 4", "no {...} dict"),
    ],
)
def test_invalid_judge_replies_are_never_guessed(criterion, reply, reason):
    with pytest.raises(InvalidReply, match=reason):
        parse_judge_reply(criterion, reply)


def test_prompts_fill_every_field(tmp_path):
    path = write(tmp_path / "c.json", [{"video_name": "v", "Q1": "Q-one?", "Q2": "Q-two?", "A": "Ref."}])
    (item,) = load_items("vcg_consistency", path)
    text = JudgeTask(item, "consistency", ["P-one.", "P-two."]).prompt()
    assert all(s in text for s in ("Q-one?", "Q-two?", "Ref.", "P-one.", "P-two.", "{'score': 3}"))
    generic = write(tmp_path / "g.json", [{"video_name": "v", "Q": "Q?", "A": "Ref."}])
    task = JudgeTask(load_items("vcg_generic", generic)[0], "detail", ["Pred."])
    assert "Pred." in task.prompt() and task.template().id == "eval_detail_v1"


# ------------------------------------------------------------------------------- multiple choice

CANDIDATES = ["a red ball", "a blue box", "a green triangle"]


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("Answer: A", "A"),
        ("Option B.", "B"),
        ("(B) a blue box", "B"),
        ("A. a red ball", "A"),
        ("A blue box.", "B"),  # the option's own text; "A" here is an article
        ("a green triangle", "C"),
    ],
)
def test_option_parsing_accepts_clear_picks(reply, letter):
    assert parse_option(reply, CANDIDATES) == letter


@pytest.mark.parametrize(
    "reply",
    ["D", "(A) a blue box", "red", "It could be A or B", "Answer: A\nAnswer: B", "a ball"],
)
def test_option_parsing_rejects_unclear_picks(reply):
    with pytest.raises(InvalidReply):
        parse_option(reply, CANDIDATES)


def test_mcq_prompt_lists_lettered_options(tmp_path):
    path = write(tmp_path / "m.json", [{"video_name": "v", "question_id": "q1", "question": "What moves?", "candidates": CANDIDATES, "answer": "a blue box"}])
    (item,) = load_items("mcq", path)
    (prompt,) = model_prompts(item)
    assert prompt.startswith("What moves?\nOptions:\n(A) a red ball\n(B) a blue box\n(C) a green triangle\n")
    assert item.answer_letter == "B"
