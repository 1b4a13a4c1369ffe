"""Judging one model's predictions on one benchmark, appended per judgement to a resumable JSONL.

`judge(items, predictions, kind=..., by=a_judge, out_path=...)` builds the benchmark's judge tasks
(eval.criteria), skips every task whose key is already in the file, writes each judgement as it
arrives (so a judge endpoint that dies mid-run loses nothing that finished) and returns them all.
Multiple choice needs no judge: the reply's option is matched exactly (`exact_match`); a reply
that names no option clearly is recorded as "invalid" and counts as wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from vlm_rlaif.clients.parsing import InvalidReply
from vlm_rlaif.data import JsonlWriter, done_ids, iter_raw
from vlm_rlaif.eval.benchmarks import EvalItem, parse_option
from vlm_rlaif.eval.criteria import JudgeTask, tasks_for
from vlm_rlaif.eval.judges import Judge, Judgement
from vlm_rlaif.prompts import MCQ_TEMPLATE, load_prompt

EXACT_MATCH = "exact_match"


def exact_match(tasks: Sequence[JudgeTask]) -> Iterator[Judgement]:
    """Multiple-choice judgements: yes when the reply picks the correct option."""
    prompt = load_prompt(MCQ_TEMPLATE).id
    for task in tasks:
        reply = task.predictions[0]
        fields = dict(key=task.key, id=task.item.id, criterion=task.criterion, reply=reply, judge=EXACT_MATCH, prompt=prompt)
        try:
            letter = parse_option(reply, task.item.candidates)
        except InvalidReply as err:
            yield Judgement(status="invalid", error=str(err), **fields)
            continue
        yield Judgement(status="ok", yes=letter == task.item.answer_letter, **fields)


def judge(
    items: list[EvalItem], predictions: dict[str, list[str]], *, kind: str, by: Judge | None, out_path: str | Path
) -> list[dict]:
    """Judge what is not yet judged in `out_path`, then return the judgements of these items.

    A line once written is final: a resumed run does not ask again about an invalid or failed one.

    by: the judge (unused, and may be None, for multiple choice).
    """
    tasks = tasks_for(kind, items, predictions)
    done = done_ids(out_path, key="key")
    pending = [task for task in tasks if task.key not in done]
    if pending:
        if kind != "mcq" and by is None:
            raise ValueError(f"benchmark kind {kind!r} needs a judge")
        stream = exact_match(pending) if kind == "mcq" else by.judge(pending)
        with JsonlWriter(out_path) as writer:
            for judgement in stream:
                writer.write(judgement)
    keys = {task.key for task in tasks}
    return [row for row in read_judgements(out_path) if row.get("key") in keys]


def read_judgements(path: str | Path) -> list[dict]:
    """Judgement lines of a file (a torn last line, from a killed run, is ignored)."""
    if not Path(path).exists():
        return []
    return [row for _, row in iter_raw(path, repair=True)]


__all__ = ["EXACT_MATCH", "exact_match", "judge", "read_judgements"]
