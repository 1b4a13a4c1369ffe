"""GRPO's rewards: pluggable components, summed with weights (train/grpo.py).

    rewards:
      - {kind: reward_model, model: runs/toy/rm}                 # the RM stage's output, through reward.score
      - {kind: oracle, toy_dir: runs/toy/world}                  # the toy world's verifiable answers
      - {kind: python, function: my_rewards:exact_match}         # f(prompt record, response text) -> float | None
      - {kind: judge, judge: {base_url: http://..., model: m}}   # an OpenAI-compatible judge, score 0-5 -> 0-1

- reward_model: the reward model's score of (video, question, answer) through its own input builder,
  on its own base, sharing the run's feature cache.
- oracle: a verifiable reward, for comparison arms only (never the RLAIF path): 1 if the toy world's
  oracle calls a short answer correct, else 0; a prompt record with `candidates` (multiple choice,
  `answer` the correct option's text or letter) gets 1 when the reply picks that option (strictly, as
  evaluation parses it), else 0. Descriptions have no verifiable answer: None, unless
  descriptions: quality (the oracle's 0-5 quality rule of evaluation, divided by 5).
- python: `module:function` (importable, e.g. on PYTHONPATH) called with the prompt record as a dict
  (the RL prompt file's fields) and the response text; it returns a float, or None to abstain.
- judge: the feedback stage's endpoint settings and ChatClient (concurrency, retries, on-disk cache
  in <out>/judge_cache), the video as frames; the reply's score (prompt grpo_judge_score) / 5, None
  when the reply does not parse or the request fails.

A response's reward is the weighted sum of its components, or None when any component gave None:
GRPO drops it from its group's statistics and from the loss, and counts it.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.feedback.config import OpenAISettings
from vlm_rlaif.models.examples import VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.train.ppo_setup import Prompt, share_feature_cache

RewardKind = Literal["reward_model", "oracle", "python", "judge"]
JUDGE_PROMPT = "grpo_judge_score"


@dataclass
class RewardSpec:
    """One reward component (see the module docstring). name: its metrics key (default: kind)."""

    kind: RewardKind
    weight: float = 1.0
    name: str = ""
    model: str | None = None  # reward_model: a `vlm-rlaif rm` output (its directory or run directory)
    toy_dir: str | None = None  # oracle: the toy world
    descriptions: Literal["none", "quality"] = "none"  # oracle: what a description scores
    function: str | None = None  # python: "module:function"
    judge: OpenAISettings = field(default_factory=lambda: OpenAISettings(top_logprobs=None))

    def __post_init__(self):
        self.name = self.name or self.kind
        needs = {"reward_model": ("model", self.model), "oracle": ("toy_dir", self.toy_dir),
                 "python": ("function", self.function)}
        if self.kind in needs and not needs[self.kind][1]:
            raise ConfigError(f"rewards: a {self.kind} reward needs {needs[self.kind][0]}")
        if self.kind == "python" and ":" not in self.function:
            raise ConfigError(f"rewards: python function {self.function!r} must be 'module:function'")
        if self.kind == "judge":
            self.judge.check("rewards: judge")
        if not math.isfinite(self.weight):
            raise ConfigError(f"rewards: weight of {self.name} must be a finite number")


class Reward(Protocol):
    """One component: a value or None per response."""

    def __call__(self, prompts: Sequence[Prompt], examples: Sequence[VideoExample], texts: Sequence[str]) -> list[float | None]: ...


@dataclass
class Component:
    spec: RewardSpec
    score: Reward
    info: dict


class WeightedRewards:
    """The weighted sum of the components; see the module docstring."""

    def __init__(self, components: Sequence[Component]):
        if not components:
            raise ConfigError("rewards: list at least one reward")
        names = [c.spec.name for c in components]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards: names must differ (give each a name): {names}")
        self.components = list(components)

    def __call__(
        self, prompts: Sequence[Prompt], examples: Sequence[VideoExample], texts: Sequence[str]
    ) -> tuple[list[float | None], dict[str, list[float | None]]]:
        """(total per response, each component's values by name)."""
        parts = {}
        for c in self.components:
            values = list(c.score(prompts, examples, texts))
            if len(values) != len(texts):
                raise UserError(f"reward {c.spec.name} returned {len(values)} values for {len(texts)} responses")
            parts[c.spec.name] = values
        totals = []
        for i in range(len(texts)):
            values = [parts[c.spec.name][i] for c in self.components]
            totals.append(None if any(v is None for v in values) else
                          sum(c.spec.weight * v for c, v in zip(self.components, values)))
        return totals, parts

    def info(self) -> list[dict]:
        return [{"name": c.spec.name, "kind": c.spec.kind, "weight": c.spec.weight, **c.info} for c in self.components]


def build_rewards(
    specs: Sequence[RewardSpec], *, accelerator, runtime, cache: FeatureCache | None, batch_size: int, out: Path
) -> WeightedRewards:
    """The components of `specs`, loaded (reward models on the accelerator's device)."""
    builders: dict[str, Callable[[RewardSpec], tuple[Reward, dict]]] = {
        "reward_model": lambda s: reward_model_reward(s, accelerator, runtime, cache, batch_size),
        "oracle": oracle_reward,
        "python": python_reward,
        "judge": lambda s: judge_reward(s, out / "judge_cache"),
    }
    return WeightedRewards([Component(s, *builders[s.kind](s)) for s in specs])


# ---------------------------------------------------------------------------- the components


def reward_model_reward(spec: RewardSpec, accelerator, runtime, cache: FeatureCache | None, batch_size: int):
    from vlm_rlaif.reward import RewardModel

    rm = RewardModel.load(spec.model, device=accelerator.device, dtype=runtime.dtype, quantization=runtime.quantization)
    share_feature_cache(rm.lm, cache)

    def score(prompts, examples, texts):
        with torch.no_grad(), accelerator.autocast():
            return [float(x) for x in rm.score(examples, texts, batch_size=batch_size)]

    frames = rm.frames.num_frames if rm.frames is not None else None
    return score, {"model": str(spec.model), "frames": frames}


def oracle_reward(spec: RewardSpec):
    from vlm_rlaif.eval.judges import oracle_quality
    from vlm_rlaif.toyworld.oracle import LONG_QTYPES, Oracle

    manifest = Path(spec.toy_dir) / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"rewards: {spec.toy_dir} is not a toy world directory (no manifest.json)")
    oracle = Oracle(order_gap=json.loads(manifest.read_text()).get("config", {}).get("order_gap", 3))

    def one(prompt: Prompt, text: str) -> float | None:
        record = prompt.sourced.record
        candidates = getattr(record, "candidates", None)
        if candidates:
            return multiple_choice_reward(text, list(candidates), str(getattr(record, "answer", "") or ""), prompt.sourced.where)
        toy = getattr(record, "toy", None)
        if not isinstance(toy, dict) or "video_id" not in toy:
            raise RecordError(f"{prompt.sourced.where}: no 'toy' metadata, so the oracle reward cannot check it")
        verdict = oracle.check(oracle.load_truth(spec.toy_dir, toy["video_id"]), toy, text)
        if toy["qtype"] in LONG_QTYPES:
            return oracle_quality(verdict) / 5 if spec.descriptions == "quality" else None
        return float(verdict.correct)

    def score(prompts, examples, texts):
        return [one(p, t) for p, t in zip(prompts, texts)]

    return score, {"toy_dir": str(spec.toy_dir), "descriptions": spec.descriptions}


def multiple_choice_reward(reply: str, candidates: list[str], answer: str, where: str) -> float:
    """1.0 when the reply picks the correct option (the letter, or the option whose text is `answer`)."""
    from vlm_rlaif.clients.parsing import InvalidReply
    from vlm_rlaif.eval.benchmarks import parse_option
    from vlm_rlaif.prompts import OPTION_LETTERS

    letters = OPTION_LETTERS[: len(candidates)]
    expected = letters[candidates.index(answer)] if answer in candidates else answer
    if expected not in letters:
        raise RecordError(f"{where}: answer {answer!r} is neither an option's text nor one of the letters {letters}")
    try:
        return float(parse_option(reply, candidates) == expected)
    except InvalidReply:
        return 0.0  # a reply naming no option is wrong, as evaluation counts it


def python_reward(spec: RewardSpec):
    module_name, _, attribute = spec.function.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"rewards: cannot load the python reward {spec.function!r}: {err}") from err
    if not callable(function):
        raise ConfigError(f"rewards: {spec.function!r} is not callable")

    def one(prompt: Prompt, text: str) -> float | None:
        value = function(prompt.sourced.record.model_dump(mode="json", by_alias=True, exclude_none=True), text)
        if value is None:
            return None
        if isinstance(value, (bool, int, float, np.floating, np.integer)) and math.isfinite(float(value)):
            return float(value)
        raise UserError(f"reward {spec.function} returned {value!r} for {prompt.sourced.where}; expected a finite float or None")

    def score(prompts, examples, texts):
        return [one(p, t) for p, t in zip(prompts, texts)]

    return score, {"function": spec.function}


def judge_reward(spec: RewardSpec, cache_dir: Path):
    from vlm_rlaif.clients.images import frames_to_image_parts
    from vlm_rlaif.clients.openai_compat import ChatClient, ChatRequest
    from vlm_rlaif.clients.parsing import parse_score
    from vlm_rlaif.feedback.context import subsample
    from vlm_rlaif.prompts import load_prompt

    settings = spec.judge
    client = ChatClient(
        settings.base_url, settings.model, api_key_env=settings.api_key_env, max_concurrency=settings.max_concurrency,
        max_retries=settings.max_retries, max_invalid_retries=settings.max_invalid_retries, timeout_s=settings.timeout_s,
        backoff_base_s=settings.backoff_base_s, cache_dir=cache_dir,
    )
    template = load_prompt(JUDGE_PROMPT)

    def request(prompt: Prompt, example: VideoExample, text: str) -> ChatRequest:
        content: str | list[dict] = template.render(question=prompt.question, answer=text)
        if settings.send_frames and example.video is not None:
            frames = np.asarray(example.video)
            shown = frames[subsample(len(frames), settings.max_frames)]
            content = [*frames_to_image_parts(shown, max_side=settings.image_max_side), {"type": "text", "text": content}]
        return ChatRequest([{"role": "user", "content": content}], temperature=settings.temperature, max_tokens=settings.max_tokens)

    def score(prompts, examples, texts):
        requests = [request(p, e, t) for p, e, t in zip(prompts, examples, texts)]
        results = client.complete(requests, validate=lambda r: parse_score(r.text or ""))
        return [result.parsed / 5 if result.ok and not result.invalid else None for result in results]

    return score, {"model": settings.model, "base_url": settings.base_url, "prompt": template.id}


__all__ = ["Reward", "RewardSpec", "WeightedRewards", "build_rewards", "multiple_choice_reward"]
