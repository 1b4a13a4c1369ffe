"""Judges: one interface, `judge(items) -> verdicts`, each verdict P(the answer shown first is better).

- `local`: a model directory (the paper: the SFT model itself) reads the clip context, the video, the
  question and answers A and B, rendered with judge_pairwise_context (judge_pairwise when context is
  off). The verdict is the next-token probability of " A" vs " B" after the fixed assistant prefix
  judge_verdict_prefix, renormalised over the two: cheaper and steadier than parsing free text, and
  exactly the format of the toy world's judge-skill examples (prefix + " A" or " B" + ". reason").
  With `form: likelihood` the local judge scores each answer on its own instead: the mean
  log-probability per token of the answer when the judge is asked the question after the clip
  context (answer_with_context; the bare question without context), and P(A) is a sigmoid of the
  difference. Reading a fact off the context is enough for it; comparing is not needed.
  With `form: verify` it checks each answer on its own against the context (judge_verify_context;
  judge_verify without context): the score is log P("Yes") - log P("No") as the reply's first
  token, and P(A) a sigmoid of the difference of the two answers' scores.
- `openai`: any OpenAI-compatible endpoint. The context goes as text, the frames optionally as images;
  the verdict comes from the top_logprobs at the verdict token when the server gives them, else from a
  strict parse of the reply. A reply without a clear verdict (garbage, truncated, a wrong letter) is
  asked again by the client and then recorded as invalid, never guessed.
- `oracle`: the toy world's ground truth (measurement only; never on the RLAIF path).
Which order a pair is shown in is the caller's business (preferences.py judges both).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.clients.openai_compat import ChatClient, ChatRequest, ChatResult
from vlm_rlaif.clients.parsing import InvalidReply, choice_probabilities, parse_choice
from vlm_rlaif.feedback.agreement import OracleReference
from vlm_rlaif.feedback.config import JudgeSettings, OpenAISettings
from vlm_rlaif.feedback.context import subsample
from vlm_rlaif.models import IGNORE_INDEX, GenerationSettings, VideoExample, VideoLM
from vlm_rlaif.prompts import PromptTemplate, load_prompt

VERDICT_TOKENS = (" A", " B")  # what follows the verdict prefix in the judge-skill data
VERIFY_TOKENS = (" Yes", " No")  # the first token of a verify reply (the toy world's verify examples)
# Chat endpoints cannot be handed an open assistant turn, so they are told the reply's form.
REPLY_FORMAT_PROMPT = "openai_judge_reply"


@dataclass
class JudgeItem:
    """One pair shown in one order. context None: judged without context (the ablation)."""

    question: str
    answer_a: str
    answer_b: str
    context: str | None = None
    frames: np.ndarray | None = None
    video_key: str | None = None
    toy: dict | None = None  # the toy world's metadata of the prompt (oracle judge only)


@dataclass
class Verdict:
    prob_a: float | None  # P(answer A is better); None when invalid
    invalid: str | None = None  # why no verdict could be read
    rationale: str | None = None  # the judge's own words, when asked for
    verdict_mass: float | None = None  # local: P(" A") + P(" B") over the whole vocabulary


class Judge(Protocol):
    id: str  # e.g. "local:runs/sft/model", "openai:gpt-4o-mini", "oracle"
    version: str  # weights digest, or the server-reported model and fingerprint

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


def judge_template(with_context: bool) -> PromptTemplate:
    return load_prompt("judge_pairwise_context" if with_context else "judge_pairwise")


def verify_template(with_context: bool) -> PromptTemplate:
    return load_prompt("judge_verify_context" if with_context else "judge_verify")


def render_judge_prompt(item: JudgeItem) -> str:
    values = {"question": item.question, "answer_a": item.answer_a, "answer_b": item.answer_b}
    if item.context is not None:
        values["context"] = item.context
    return judge_template(item.context is not None).render(**values)


def two_way_probability(logprob_a: float, logprob_b: float) -> float:
    """P(A) renormalised over {A, B} from their log-probabilities (a sigmoid that cannot overflow)."""
    difference = logprob_a - logprob_b
    if difference >= 0:
        return 1.0 / (1.0 + math.exp(-difference))
    return math.exp(difference) / (1.0 + math.exp(difference))


def model_dir_version(directory: str | Path) -> str:
    """A short digest of a model directory's config and weight files (names and sizes): cheap even
    for 7B checkpoints, and it changes when the weights are replaced."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(directory)}:{path.stat().st_size}".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def below_min_mass(mass: float, min_verdict_mass: float) -> bool:
    """A local verdict whose P(" A") + P(" B") is this small is off-format: invalid, not a label."""
    return mass <= 0.0 or mass < min_verdict_mass


class LocalJudge:
    def __init__(self, lm: VideoLM, settings: JudgeSettings, judge_id: str, version: str):
        self.lm = lm
        self.settings = settings
        self.id = judge_id
        self.version = version
        self.prefix = load_prompt("judge_verdict_prefix").text

    def examples(self, items: Sequence[JudgeItem]) -> list[VideoExample]:
        return [
            VideoExample([{"role": "user", "content": render_judge_prompt(item)}], item.frames, item.video_key)
            for item in items
        ]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        if self.settings.form == "likelihood":
            return self.judge_by_likelihood(items)
        if self.settings.form == "verify":
            return self.judge_by_verification(items)
        examples = self.examples(items)
        logprobs = self.lm.next_token_logprobs(
            examples, VERDICT_TOKENS, assistant_prefix=self.prefix, batch_size=self.settings.batch_size
        )
        rationales = [None] * len(items)
        if self.settings.rationale:
            greedy = GenerationSettings(
                max_new_tokens=self.settings.rationale_max_new_tokens, temperature=0.0, batch_size=self.settings.batch_size
            )
            rationales = [output.text for output in self.lm.generate(examples, greedy)]
        verdicts = []
        for (logprob_a, logprob_b), rationale in zip(logprobs.tolist(), rationales):
            mass = math.exp(logprob_a) + math.exp(logprob_b)
            invalid = None
            if below_min_mass(mass, self.settings.min_verdict_mass):
                invalid = f"P(A) + P(B) = {mass:.3g} is below min_verdict_mass {self.settings.min_verdict_mass}"
            prob_a = None if invalid else two_way_probability(logprob_a, logprob_b)
            verdicts.append(Verdict(prob_a, invalid, rationale, mass))
        return verdicts

    def judge_by_likelihood(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        scores = mean_answer_logprobs(self.lm, likelihood_examples(items), self.settings.batch_size)
        verdicts = []
        for score_a, score_b in zip(scores[0::2], scores[1::2]):
            difference = self.settings.likelihood_scale * (score_a - score_b)
            verdicts.append(Verdict(two_way_probability(difference, 0.0)))
        return verdicts


    def judge_by_verification(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        logprobs = self.lm.next_token_logprobs(verify_examples(items), VERIFY_TOKENS, batch_size=self.settings.batch_size)
        scores = (logprobs[:, 0] - logprobs[:, 1]).tolist()
        masses = logprobs.exp().sum(1).tolist()
        verdicts = []
        for k in range(len(items)):
            mass = min(masses[2 * k], masses[2 * k + 1])
            if below_min_mass(mass, self.settings.min_verdict_mass):
                verdicts.append(Verdict(None, f"P(Yes) + P(No) = {mass:.3g} is below min_verdict_mass "
                                              f"{self.settings.min_verdict_mass}", verdict_mass=mass))
                continue
            difference = self.settings.verify_scale * (scores[2 * k] - scores[2 * k + 1])
            verdicts.append(Verdict(two_way_probability(difference, 0.0), verdict_mass=mass))
        return verdicts


def verify_examples(items: Sequence[JudgeItem]) -> list[VideoExample]:
    """What the verify judge reads: per item, answer A then answer B, each on its own in
    judge_verify_context (judge_verify when the item has no context)."""
    examples = []
    for item in items:
        template = verify_template(item.context is not None)
        for answer in (item.answer_a, item.answer_b):
            values = {"question": item.question, "answer": answer}
            if item.context is not None:
                values["context"] = item.context
            examples.append(VideoExample([{"role": "user", "content": template.render(**values)}],
                                         item.frames, item.video_key))
    return examples


def likelihood_examples(items: Sequence[JudgeItem]) -> list[VideoExample]:
    """What the likelihood judge scores: per item, answer A then answer B as the assistant turn after
    the question (answer_with_context with the item's context; the bare question without)."""
    examples = []
    for item in items:
        question = item.question if item.context is None else \
            load_prompt("answer_with_context").render(context=item.context, question=item.question)
        for answer in (item.answer_a, item.answer_b):
            examples.append(VideoExample(
                [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                item.frames, item.video_key,
            ))
    return examples


def mean_answer_logprobs(lm: VideoLM, examples: Sequence[VideoExample], batch_size: int) -> list[float]:
    """Mean log-probability per token of each example's assistant answer (its tokens and EOS, as the
    chat template writes them), given the conversation before it and the video."""
    return [total / max(count, 1) for total, count in answer_logprobs(lm, examples, batch_size)]


@torch.no_grad()
def answer_logprobs(lm: VideoLM, examples: Sequence[VideoExample], batch_size: int) -> list[tuple[float, int]]:
    """(sum of log-probabilities, number of tokens) of each example's assistant answer."""
    out = []
    with lm.eval_mode():
        for start in range(0, len(examples), batch_size):
            batch = lm.collate(examples[start : start + batch_size], with_labels=True, visual="features")
            labels = batch["labels"][:, 1:].to(lm.device)
            logits = lm.forward({k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
            mask = labels != IGNORE_INDEX
            token_logprobs = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out.extend(zip((token_logprobs * mask).sum(1).tolist(), mask.sum(1).tolist()))
    return out


class OpenAIJudge:
    def __init__(self, client: ChatClient, settings: OpenAISettings):
        self.client = client
        self.settings = settings
        self.id = f"openai:{settings.model}"
        self.version = ""  # filled from the first reply: the model name and fingerprint the server reports
        self.prefix = load_prompt("judge_verdict_prefix").text
        self.reply_format = load_prompt(REPLY_FORMAT_PROMPT)

    def request(self, item: JudgeItem) -> ChatRequest:
        text = render_judge_prompt(item) + "\n" + self.reply_format.render(prefix=self.prefix)
        content: str | list[dict] = text
        if self.settings.send_frames and item.frames is not None:
            shown = item.frames[subsample(len(item.frames), self.settings.max_frames)]
            content = [*frames_to_image_parts(shown, max_side=self.settings.image_max_side), {"type": "text", "text": text}]
        return ChatRequest(
            [{"role": "user", "content": content}],
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
            top_logprobs=self.settings.top_logprobs,
        )

    def read_verdict(self, result: ChatResult) -> float:
        """P(A better) from the reply; InvalidReply when it holds no clear verdict."""
        if result.tokens and result.top_logprobs:
            position = verdict_position(result.tokens, self.prefix)
            if position is not None:
                return choice_probabilities(result.top_logprobs[position])["A"]
        if result.finish_reason == "length" and not result.text:
            raise InvalidReply("the reply was cut off before any text", result.text)
        try:
            return 1.0 if parse_choice(result.text or "") == "A" else 0.0
        except InvalidReply as err:
            if result.finish_reason == "length":
                raise InvalidReply(f"{err.reason} (the reply was cut off at max_tokens)", result.text) from None
            raise

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        results = self.client.complete([self.request(item) for item in items], validate=self.read_verdict)
        verdicts = []
        for result in results:
            if not self.version and result.ok and result.model:
                self.version = f"{result.model};{result.system_fingerprint or '-'}"
            if result.ok:
                verdicts.append(Verdict(result.parsed, rationale=result.text))
            else:
                verdicts.append(Verdict(None, invalid=result.error or "no reply"))
        return verdicts


def verdict_position(tokens: Sequence[str], prefix: str) -> int | None:
    """Index of the token that carries the verdict: an "A"/"B" token right at the start of the reply
    or right after the verdict prefix (ignoring case, spaces and markdown), and not the first word
    of a sentence ("A good answer ..." has no verdict)."""
    wanted = ("", _plain(prefix))
    before = ""
    for index, token in enumerate(tokens):
        following = tokens[index + 1].lstrip(" ") if index + 1 < len(tokens) else ""
        ends_word = not following[:1].isalnum()
        if token.strip() in ("A", "B") and _plain(before) in wanted and ends_word:
            return index
        before += token
        if len(_plain(before)) > len(wanted[1]):
            return None
    return None


def _plain(text: str) -> str:
    return " ".join(text.replace("*", "").lower().split())


class OracleJudge:
    """The toy world's oracle as a judge: 1.0 / 0.0 for a clear winner, 0.5 for an oracle tie."""

    def __init__(self, reference: OracleReference):
        self.reference = reference
        self.id = "oracle"
        self.version = reference.version

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        verdicts = []
        for item in items:
            if item.toy is None:
                verdicts.append(Verdict(None, invalid="the prompt has no toy metadata for the oracle"))
                continue
            winner = self.reference.compare(item.toy, item.answer_a, item.answer_b)
            verdicts.append(Verdict({1: 1.0, 2: 0.0, 0: 0.5}[winner]))
        return verdicts


def reply_format_id(judge: Judge) -> str | None:
    """The id of the reply instruction a judge adds to the template (openai only)."""
    return judge.reply_format.id if isinstance(judge, OpenAIJudge) else None


__all__ = [
    "REPLY_FORMAT_PROMPT",
    "VERDICT_TOKENS",
    "VERIFY_TOKENS",
    "Judge",
    "JudgeItem",
    "LocalJudge",
    "OpenAIJudge",
    "OracleJudge",
    "Verdict",
    "answer_logprobs",
    "below_min_mass",
    "likelihood_examples",
    "mean_answer_logprobs",
    "judge_template",
    "model_dir_version",
    "render_judge_prompt",
    "two_way_probability",
    "verdict_position",
    "verify_examples",
    "verify_template",
]
