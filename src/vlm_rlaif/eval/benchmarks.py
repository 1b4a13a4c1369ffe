"""Benchmark files in their distributed layouts -> uniform `EvalItem`s.

Kinds (docs/method.md, "Evaluation"):
- vcg_generic, vcg_temporal: VCG-Bench, JSON arrays of {video_name, Q, A};
- vcg_consistency: {video_name, Q1, Q2, A} (two paraphrased questions, one reference answer);
- qa: zero-shot open-ended QA (MSVD, MSRVTT, ActivityNet, TGIF-QA) as {video_name, question_id,
  question, answer}, or ActivityNet-QA's original release: a question file {video_name, question,
  question_id} plus an answer file {answer, type, question_id}, joined by question_id;
- mcq: multiple choice (MVBench-style) {video_name, question_id, question, candidates, answer}.
The toy world writes the same layouts; its records carry an extra `toy` field kept in `meta`.

Items of the VCG sets have no id in the files: an item's id is its position in the file (0-based).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vlm_rlaif.clients.parsing import InvalidReply, parse_choice
from vlm_rlaif.data import MCQRecord, QARecord, VCGConsistencyRecord, VCGRecord, iter_raw
from vlm_rlaif.errors import RecordError
from vlm_rlaif.prompts import OPTION_LETTERS, format_mcq_question

KINDS = ("vcg_generic", "vcg_temporal", "vcg_consistency", "qa", "mcq")


@dataclass
class EvalItem:
    """One benchmark question (two for the consistency set) about one video."""

    id: str
    video_name: str
    questions: list[str]
    answer: str
    candidates: list[str] | None = None  # multiple choice only
    meta: dict = field(default_factory=dict)  # the record's extra fields (the toy world's `toy`)
    where: str = ""  # "file (record i)": for error messages

    @property
    def answer_letter(self) -> str:
        """The correct option's letter (multiple choice only)."""
        return OPTION_LETTERS[self.candidates.index(self.answer)]


def load_items(
    kind: str,
    path: str | Path,
    *,
    answers_path: str | Path | None = None,
    video_prefix: str = "",
    limit: int | None = None,
) -> list[EvalItem]:
    """Read a benchmark file of `kind`; errors name the file, the line and the field.

    answers_path: ActivityNet-QA's separate answer file (kind "qa" only). video_prefix is put in
    front of every video_name (ActivityNet-QA's original files name "abc" for the video "v_abc").
    limit: keep the first `limit` items.
    """
    path = Path(path)
    if kind not in KINDS:
        raise RecordError(f"{path}: unknown benchmark kind {kind!r}; known: {', '.join(KINDS)}")
    if answers_path is not None and kind != "qa":
        raise RecordError(f"{path}: a separate answer file is only read for kind 'qa', not {kind!r}")
    answers = _read_answers(Path(answers_path)) if answers_path is not None else None
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for index, (line, raw) in enumerate(iter_raw(path)):
        if limit is not None and len(items) >= limit:
            break
        if answers is not None:
            raw = _join_answer(raw, answers, path, line, Path(answers_path))
        item = _to_item(kind, index, raw, path, line)
        item.video_name = video_prefix + item.video_name
        if item.id in seen:
            raise RecordError(f"{path}:{line}: duplicate id {item.id!r} (first at line {seen[item.id]})")
        seen[item.id] = line
        items.append(item)
    if not items:
        raise RecordError(f"{path}: no records")
    return items


def _to_item(kind: str, index: int, raw: dict, path: Path, line: int) -> EvalItem:
    schema = {
        "vcg_generic": VCGRecord,
        "vcg_temporal": VCGRecord,
        "vcg_consistency": VCGConsistencyRecord,
        "qa": QARecord,
        "mcq": MCQRecord,
    }[kind]
    record = _validate(schema, raw, path, line)
    meta = dict(record.model_extra or {})
    if kind in ("vcg_generic", "vcg_temporal"):
        return EvalItem(str(index), record.video_name, [record.Q], record.A, meta=meta, where=f"{path}:{line}")
    if kind == "vcg_consistency":
        questions = [record.Q1, record.Q2]
        return EvalItem(str(index), record.video_name, questions, record.A, meta=meta, where=f"{path}:{line}")
    where = f"{path}:{line} (question_id {record.question_id})"
    if kind == "qa":
        return EvalItem(record.question_id, record.video_name, [record.question], record.answer, meta=meta, where=where)
    if len(record.candidates) > len(OPTION_LETTERS):
        raise RecordError(f"{where}: more than {len(OPTION_LETTERS)} candidates")
    return EvalItem(
        record.question_id, record.video_name, [record.question], record.answer,
        candidates=list(record.candidates), meta=meta, where=where,
    )


def _validate(schema: type[BaseModel], raw: dict, path: Path, line: int):
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        fields = "; ".join(f"field '{'.'.join(map(str, e['loc'])) or '<record>'}': {e['msg']}" for e in err.errors())
        raise RecordError(f"{path}:{line}: {fields}") from None


def _read_answers(path: Path) -> dict[str, str]:
    """ActivityNet-QA's answer file: question_id -> answer."""
    answers: dict[str, str] = {}
    for line, raw in iter_raw(path):
        qid, answer = raw.get("question_id"), raw.get("answer")
        if qid is None or not isinstance(answer, str):
            raise RecordError(f"{path}:{line}: an answer record needs 'question_id' and a string 'answer'")
        if str(qid) in answers:
            raise RecordError(f"{path}:{line}: duplicate question_id {qid!r}")
        answers[str(qid)] = answer
    return answers


def _join_answer(raw: dict, answers: dict[str, str], path: Path, line: int, answers_path: Path) -> dict:
    qid = raw.get("question_id")
    if qid is None:
        raise RecordError(f"{path}:{line}: field 'question_id': missing")
    if str(qid) not in answers:
        raise RecordError(f"{path}:{line} (question_id {qid}): no answer with this question_id in {answers_path}")
    if "answer" in raw:
        raise RecordError(f"{path}:{line} (question_id {qid}): has an 'answer' of its own and one in {answers_path}")
    return {**raw, "answer": answers[str(qid)]}


# ---------------------------------------------------------------------------------- model prompts


def model_prompts(item: EvalItem) -> list[str]:
    """What the evaluated model is asked: the question(s), or for multiple choice the question with
    its lettered options (template eval_mcq_question)."""
    if item.candidates is None:
        return list(item.questions)
    return [format_mcq_question(item.questions[0], item.candidates)]


def parse_option(reply: str, candidates: list[str]) -> str:
    """The letter of the option a multiple-choice reply picks, strictly; raises InvalidReply.

    Accepted: the letter alone or labelled ("B", "(B)", "Answer: B", "Option B"); the letter with its
    own option text ("(B) a red ball"); or exactly one option's text. Anything else, or forms that
    point at different options, is invalid.
    """
    letters = tuple(OPTION_LETTERS[: len(candidates)])
    try:
        return parse_choice(reply, letters)
    except InvalidReply:
        pass
    picks = set()
    lettered = re.fullmatch(r"[\s(\[*]*([A-Z])[)\].:*]*\s+(.+?)", reply.strip())
    if lettered and lettered.group(1) in letters:
        if _norm(lettered.group(2)) == _norm(candidates[letters.index(lettered.group(1))]):
            picks.add(lettered.group(1))
    picks |= {letters[i] for i, c in enumerate(candidates) if _norm(c) == _norm(reply)}
    if len(picks) == 1:
        return picks.pop()
    reason = "the reply points at several options" if picks else "no option letter or option text found"
    raise InvalidReply(reason, reply)


def _norm(text: str) -> str:
    """Lower case, words only: 'A red ball.' == 'a red ball'."""
    return " ".join(re.findall(r"\w+", text.lower()))


__all__ = ["KINDS", "EvalItem", "load_items", "model_prompts", "parse_option"]
