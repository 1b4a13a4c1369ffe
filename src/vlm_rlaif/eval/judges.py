"""Judges behind one interface: `judge(tasks)` yields one `Judgement` per task as each finishes.

- OpenAIJudge: any OpenAI-compatible endpoint through ChatClient (concurrency, retries, on-disk
  cache, strict validation with re-asking are the client's). Every judgement records the model name
  asked for, the model name and fingerprint the server reported, and the prompt template id.
- LocalJudge: a saved model directory run as the judge through VideoLM.generate (greedy), with the
  same prompts and the same strict parsers.
- OracleJudge: the toy world only. The oracle's verdict on each answer becomes a judgement by the
  rule below (ORACLE_RULE), and its hallucination count is kept.

A reply that does not parse is a judgement with status "invalid" (after the client's re-asks for
OpenAIJudge); a request the server rejects is "failed". Neither is ever turned into a score.

ORACLE_RULE (oracle_rule_v1). For one answer, the oracle (toyworld.oracle) gives `correct`,
`coverage` (the share of the facts the question asks for that the answer states; 1 or 0 for a short
answer) and `hallucinations` h (contradicted facts and invented objects or events):
    quality = floor(5 * coverage + 0.5) - h, clamped to [3, 5] when the oracle calls the answer
              correct and to [0, 2] when it does not
    correctness, contextual understanding, temporal understanding and the QA score = quality
    (the oracle cannot tell those criteria apart); QA yes = `correct`
    detail orientation = floor(5 * coverage + 0.5)
    consistency = min(quality of answer 1, quality of answer 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from vlm_rlaif.clients.parsing import InvalidReply
from vlm_rlaif.errors import RecordError, UserError
from vlm_rlaif.eval.criteria import JudgeTask, parse_judge_reply

ORACLE_RULE = "oracle_rule_v1"


@dataclass
class Judgement:
    key: str  # "<item id>|<criterion>"
    id: str
    criterion: str
    status: Literal["ok", "invalid", "failed"]
    score: int | None = None  # 0-5
    yes: bool | None = None  # QA only
    reply: str | None = None  # the judge's raw reply
    error: str | None = None
    hallucinations: list[int] | None = None  # oracle: per judged answer
    judge: str = ""  # the judge asked for: model name, model directory or "oracle"
    judge_version: str | None = None  # what answered: server-reported model name, ...
    judge_fingerprint: str | None = None  # the server's system_fingerprint, when it sends one
    prompt: str | None = None  # prompt template id (or the oracle rule id)
    cached: bool = False

    def to_json_dict(self) -> dict:
        return asdict(self)


def _judgement(task: JudgeTask, **fields: Any) -> Judgement:
    return Judgement(key=task.key, id=task.item.id, criterion=task.criterion, **fields)


class Judge(Protocol):
    kind: str
    name: str

    def judge(self, tasks: Sequence[JudgeTask]) -> Iterator[Judgement]:
        """One judgement per task, in the order they finish."""
        ...

    def info(self) -> dict:
        """What identifies this judge in summary.json."""
        ...


def _by_criterion(tasks: Sequence[JudgeTask]) -> list[list[JudgeTask]]:
    groups: dict[str, list[JudgeTask]] = {}
    for task in tasks:
        groups.setdefault(task.criterion, []).append(task)
    return list(groups.values())


class OpenAIJudge:
    """A judge behind an OpenAI-compatible endpoint (`client` is a ChatClient for one model)."""

    kind = "openai"

    def __init__(self, client, *, temperature: float = 0.0, max_tokens: int = 128):
        self.client = client
        self.name = client.model
        self.temperature = temperature
        self.max_tokens = max_tokens

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "model": self.name,
            "base_url": self.client.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "client": self.client.stats.as_dict(),
        }

    def judge(self, tasks: Sequence[JudgeTask]) -> Iterator[Judgement]:
        from vlm_rlaif.clients.openai_compat import ChatRequest

        # One validator per criterion: the client validates a reply without knowing its task.
        for group in _by_criterion(tasks):
            criterion = group[0].criterion
            requests = [
                ChatRequest([{"role": "user", "content": task.prompt()}], temperature=self.temperature, max_tokens=self.max_tokens)
                for task in group
            ]
            for index, result in self.client.iter_complete(requests, lambda r: parse_judge_reply(criterion, r.text)):
                task = group[index]
                fields = dict(
                    reply=result.text,
                    judge=self.name,
                    judge_version=result.model,
                    judge_fingerprint=result.system_fingerprint,
                    prompt=task.template().id,
                    cached=result.cached,
                )
                if result.invalid:
                    yield _judgement(task, status="invalid", error=result.error, **fields)
                elif not result.ok:
                    yield _judgement(task, status="failed", error=result.error, **fields)
                else:
                    yield _judgement(task, status="ok", score=result.parsed["score"], yes=result.parsed["yes"], **fields)


class LocalJudge:
    """A local model directory as the judge: text-only prompts, greedy decoding, strict parsing."""

    kind = "local"

    def __init__(self, lm, name: str, *, batch_size: int = 8, max_new_tokens: int = 64):
        self.lm = lm
        self.name = name
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def info(self) -> dict:
        return {"kind": self.kind, "model": self.name, "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def judge(self, tasks: Sequence[JudgeTask]) -> Iterator[Judgement]:
        from vlm_rlaif.models import GenerationSettings, VideoExample

        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0.0, batch_size=self.batch_size)
        for start in range(0, len(tasks), self.batch_size):
            chunk = tasks[start : start + self.batch_size]
            examples = [VideoExample([{"role": "user", "content": task.prompt()}]) for task in chunk]
            for generation in self.lm.generate(examples, settings):
                task = chunk[generation.example_index]
                fields = dict(reply=generation.text, judge=self.name, judge_version=self.name, prompt=task.template().id)
                try:
                    parsed = parse_judge_reply(task.criterion, generation.text)
                except InvalidReply as err:
                    yield _judgement(task, status="invalid", error=str(err), **fields)
                    continue
                yield _judgement(task, status="ok", score=parsed["score"], yes=parsed["yes"], **fields)


class OracleVerdict(Protocol):
    """What the toy world's oracle says about one answer (toyworld.oracle.Verdict)."""

    correct: bool
    coverage: float
    hallucinations: int


# check(item, answer) -> the oracle's verdict on `answer` to the item's question.
OracleCheck = Callable[[Any, str], OracleVerdict]


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def oracle_quality(verdict: OracleVerdict) -> int:
    """The 0-5 score of ORACLE_RULE for correctness-like criteria."""
    raw = _half_up(5 * verdict.coverage) - verdict.hallucinations
    return min(5, max(3, raw)) if verdict.correct else min(2, max(0, raw))


class OracleJudge:
    """The toy world's oracle as a judge, by ORACLE_RULE (see the module docstring)."""

    kind = "oracle"
    name = "oracle"

    def __init__(self, check: OracleCheck):
        self.check = check

    def info(self) -> dict:
        return {"kind": self.kind, "model": self.name, "rule": ORACLE_RULE}

    def judge(self, tasks: Sequence[JudgeTask]) -> Iterator[Judgement]:
        for task in tasks:
            verdicts = [self.check(task.item, answer) for answer in task.predictions]
            first = verdicts[0]
            yes = None
            if task.criterion == "consistency":
                score = min(oracle_quality(v) for v in verdicts)
            elif task.criterion == "detail":
                score = _half_up(5 * first.coverage)
            else:
                score = oracle_quality(first)
                if task.criterion == "qa":
                    yes = bool(first.correct)
            yield _judgement(
                task,
                status="ok",
                score=score,
                yes=yes,
                hallucinations=[int(v.hallucinations) for v in verdicts],
                judge=self.name,
                judge_version=ORACLE_RULE,
                prompt=ORACLE_RULE,
            )


def toy_oracle_check(toy_dir: str | Path) -> OracleCheck:
    """check(item, answer) by the toy world's oracle, with the ground truth under toy_dir/truth and
    the oracle settings of the world's manifest."""
    from vlm_rlaif.toyworld.oracle import Oracle

    manifest = Path(toy_dir) / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{toy_dir}: not a toy world directory (no manifest.json); the oracle judges toy worlds only")
    world = json.loads(manifest.read_text()).get("config", {})
    oracle = Oracle(order_gap=world.get("order_gap", 3))

    def check(item, answer: str) -> OracleVerdict:
        toy = item.meta.get("toy")
        if not isinstance(toy, dict) or "video_id" not in toy:
            raise RecordError(f"{item.where}: no 'toy' metadata: the oracle judges toy-world benchmarks only")
        return oracle.check(oracle.load_truth(toy_dir, toy["video_id"]), toy, answer)

    return check


__all__ = [
    "ORACLE_RULE",
    "Judge",
    "Judgement",
    "LocalJudge",
    "OpenAIJudge",
    "OracleJudge",
    "OracleVerdict",
    "oracle_quality",
    "toy_oracle_check",
]
