import pytest

from vlm_rlaif.prompts import format_context, load_prompt


def test_templates_render_strictly():
    t = load_prompt("judge_pairwise_context")
    assert t.id == "judge_pairwise_context_v1"
    text = t.render(context="Clip 1: x", question="q?", answer_a="a", answer_b="b")
    assert "Answer A: a" in text and "Clip 1: x" in text
    with pytest.raises(KeyError, match="missing"):
        t.render(question="q", answer_a="a", answer_b="b")
    with pytest.raises(KeyError, match="unexpected"):
        load_prompt("judge_pairwise").render(context="c", question="q", answer_a="a", answer_b="b")


def test_unknown_prompt_and_version():
    with pytest.raises(KeyError, match="known:"):
        load_prompt("nope")
    with pytest.raises(KeyError, match="no version 9"):
        load_prompt("judge_pairwise", 9)


def test_format_context_orders_clips():
    assert format_context([" a red ball moves. ", "it stops."]) == "Clip 1: a red ball moves.\nClip 2: it stops."
