"""What a judge is asked about each benchmark item: criteria, their prompts, their reply forms.

VCG-Bench scores five criteria 0-5 (Video-ChatGPT): correctness, detail orientation and contextual
understanding on the generic set, temporal understanding on the temporal set, consistency on the
consistency set (both answers judged together). Zero-shot QA asks for yes/no plus a 0-5 score.
Multiple choice needs no judge: the chosen option is matched exactly ("choice").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlm_rlaif.clients.parsing import parse_score, parse_yes_no_score
from vlm_rlaif.eval.benchmarks import EvalItem
from vlm_rlaif.prompts import PromptTemplate, load_prompt


@dataclass(frozen=True)
class Criterion:
    name: str
    template: str | None  # prompt template name (None: no judge)
    reply: Literal["score", "yes_no", "choice"]


CRITERIA = {
    "correctness": Criterion("correctness", "eval_correctness", "score"),
    "detail": Criterion("detail", "eval_detail", "score"),
    "context": Criterion("context", "eval_context", "score"),
    "temporal": Criterion("temporal", "eval_temporal", "score"),
    "consistency": Criterion("consistency", "eval_consistency", "score"),
    "qa": Criterion("qa", "eval_qa", "yes_no"),
    "choice": Criterion("choice", None, "choice"),
}

CRITERIA_OF_KIND = {
    "vcg_generic": ("correctness", "detail", "context"),
    "vcg_temporal": ("temporal",),
    "vcg_consistency": ("consistency",),
    "qa": ("qa",),
    "mcq": ("choice",),
}


@dataclass
class JudgeTask:
    """One judgement to make: an item, one criterion, and the model's prediction(s) for the item."""

    item: EvalItem
    criterion: str
    predictions: list[str]

    @property
    def key(self) -> str:
        return f"{self.item.id}|{self.criterion}"

    def template(self) -> PromptTemplate:
        name = CRITERIA[self.criterion].template
        if name is None:
            raise ValueError(f"criterion {self.criterion!r} has no judge prompt")
        return load_prompt(name)

    def prompt(self) -> str:
        """The judge prompt, rendered."""
        item = self.item
        if self.criterion == "consistency":
            return self.template().render(
                question_1=item.questions[0],
                question_2=item.questions[1],
                answer=item.answer,
                prediction_1=self.predictions[0],
                prediction_2=self.predictions[1],
            )
        return self.template().render(question=item.questions[0], answer=item.answer, prediction=self.predictions[0])


def parse_judge_reply(criterion: str, text: str) -> dict:
    """{"score": int, "yes": bool | None} from a judge reply; raises InvalidReply (never guesses)."""
    form = CRITERIA[criterion].reply
    if form == "score":
        return {"score": int(parse_score(text, 0, 5)), "yes": None}
    if form == "yes_no":
        verdict = parse_yes_no_score(text, 0, 5)
        return {"score": verdict.score, "yes": verdict.yes}
    raise ValueError(f"criterion {criterion!r} is not judged from a reply")


def tasks_for(kind: str, items: list[EvalItem], predictions: dict[str, list[str]]) -> list[JudgeTask]:
    """Every judgement a benchmark of `kind` needs, for the items that have predictions."""
    return [
        JudgeTask(item, criterion, predictions[item.id])
        for item in items
        if item.id in predictions
        for criterion in CRITERIA_OF_KIND[kind]
    ]


__all__ = ["CRITERIA", "CRITERIA_OF_KIND", "Criterion", "JudgeTask", "parse_judge_reply", "tasks_for"]
