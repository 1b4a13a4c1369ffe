"""The reward model: what it reads, how it scores, how it is saved and loaded (docs/method.md, 2b).

    rm = RewardModel.load("runs/rm")                      # base model + LoRA + head, one call
    scores = rm.score(prompts, answers)                    # (B,) float32 on the CPU

A reward model is a VideoLM (the SFT model) with a LoRA adapter and a linear head reading the hidden
state of the last token. Its input is the conversation (video, question, one answer) followed by a
fixed evaluation turn: the user asks the model to rate its last answer (prompt `rm_evaluation`) and
the assistant turn opens with the score prefix (`rm_score_prefix`, "Score:"); the last token of that
prefix is where the score would be written, and the head reads it there. The feedback context (clip
descriptions) is never part of the input, as in the paper: the reward model must see the video itself.

`RewardModel.collate` is the one input builder: training (train/rm.py), `vlm-rlaif rm score`, PPO and
evaluation all go through it, so the policy is scored on exactly the input the model was trained on.

Saved layout (a directory): lora/ (the adapter), scalar_head.safetensors and scalar_model.json (see
models/heads.py), and reward_model.json naming the base model directory, the prompt templates and the
frame sampling. The vision tower and projector are frozen: a video's pooled features come from the
feature cache, so the two answers of a pair (or the K samples of a PPO prompt) share one encode when
their examples carry the same video_key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import ModelInputError, VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.heads import INFO_FILE, ScalarHead, ScalarModel
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.prompts import PromptTemplate, load_prompt

REWARD_INFO_FILE = "reward_model.json"
ADAPTER_NAME = "reward"
MODEL_SUBDIR = "model"  # where `vlm-rlaif rm` saves the reward model inside its run directory
EVALUATION_PROMPT = "rm_evaluation"
SCORE_PREFIX_PROMPT = "rm_score_prefix"


@dataclass(frozen=True)
class RewardPrompts:
    """The fixed evaluation turn: the user's request to rate the last answer, and the text that opens
    the assistant's reply (the score would follow it)."""

    evaluation: PromptTemplate
    score_prefix: PromptTemplate

    @classmethod
    def default(cls) -> RewardPrompts:
        return cls(load_prompt(EVALUATION_PROMPT), load_prompt(SCORE_PREFIX_PROMPT))

    @classmethod
    def from_ids(cls, evaluation_id: str, score_prefix_id: str) -> RewardPrompts:
        """From template ids as saved ("rm_evaluation_v1")."""
        return cls(_template(evaluation_id), _template(score_prefix_id))

    def ids(self) -> dict[str, str]:
        return {"evaluation": self.evaluation.id, "score_prefix": self.score_prefix.id}


def _template(template_id: str) -> PromptTemplate:
    match = re.fullmatch(r"(.+)_v(\d+)", template_id)
    if not match:
        raise UserError(f"prompt template id {template_id!r} is not of the form <name>_v<version>")
    try:
        return load_prompt(match.group(1), int(match.group(2)))
    except KeyError as err:
        raise UserError(f"prompt template {template_id!r}: {err.args[0]}") from None


def prompt_example(
    question: str, video: np.ndarray | torch.Tensor | None = None, video_key: str | None = None
) -> VideoExample:
    """A one-question prompt about a video (what PPO and evaluation score answers to)."""
    return VideoExample([{"role": "user", "content": question}], video, video_key)


def reward_example(prompt: VideoExample, answer: str, evaluation: str) -> VideoExample:
    """The reward model's conversation for one answer: the prompt's turns (ending with the user's
    question), the answer, then the evaluation request. Same video and video_key as the prompt."""
    if not prompt.conversation or prompt.conversation[-1]["role"] != "user":
        raise ModelInputError("a reward-model prompt must end with a user turn (the question being answered)")
    conversation = [
        *prompt.conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": evaluation},
    ]
    return VideoExample(conversation, prompt.video, prompt.video_key)


@dataclass(frozen=True)
class FrameSettings:
    """The frame sampling the reward model was trained with (scoring should sample the same)."""

    num_frames: int
    clip_max_frames: int = 20


class RewardModel:
    """A ScalarModel (VideoLM + LoRA adapter + head) that reads the reward-model input.

    base_model: the directory the backbone was loaded from (saved so `load` needs nothing else).
    frames: the training frame sampling, or None when unknown (e.g. a model built in memory).
    """

    def __init__(
        self,
        scalar: ScalarModel,
        prompts: RewardPrompts | None = None,
        *,
        base_model: str | os.PathLike | None = None,
        frames: FrameSettings | None = None,
    ):
        self.scalar = scalar
        self.prompts = prompts or RewardPrompts.default()
        self.base_model = str(Path(base_model).resolve()) if base_model is not None else None
        self.frames = frames
        if self.lm.feature_cache is None:
            # Without a cache every answer of a pair would run the frozen visual path again.
            self.lm.feature_cache = FeatureCache()

    @classmethod
    def create(
        cls,
        lm: VideoLM,
        lora: LoraSettings | None = None,
        *,
        base_model: str | os.PathLike | None = None,
        frames: FrameSettings | None = None,
        prompts: RewardPrompts | None = None,
        adapter_name: str = ADAPTER_NAME,
    ) -> RewardModel:
        """A new, trainable reward model on `lm`: a fresh LoRA adapter (default: the paper's r=64,
        alpha=16 on attention and MLP projections) and a new head. The visual path stays frozen."""
        lora = lora or LoraSettings(r=64, alpha=16, targets="attn_mlp")
        if lora.train_projector or lora.train_vision_tower or not lm.visual_path_frozen:
            raise UserError("the reward model keeps the vision tower and projector frozen; do not train them")
        lm.add_lora(adapter_name, lora)
        scalar = ScalarModel(lm, ScalarHead(lm.hidden_size).to(lm.device), lora_name=adapter_name)
        return cls(scalar, prompts, base_model=base_model, frames=frames)

    @property
    def lm(self) -> VideoLM:
        return self.scalar.lm

    @property
    def head(self) -> ScalarHead:
        return self.scalar.head

    # ------------------------------------------------------------------------------- input

    def inputs(self, prompts: Sequence[VideoExample], answers: Sequence[str]) -> list[VideoExample]:
        """The reward-model conversations of (prompt, answer) pairs."""
        if len(prompts) != len(answers):
            raise ModelInputError(f"{len(prompts)} prompts but {len(answers)} answers")
        evaluation = self.prompts.evaluation.render()
        examples = []
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            try:
                examples.append(reward_example(prompt, answer, evaluation))
            except ModelInputError as err:
                raise ModelInputError(f"example {i}: {err}") from None
        return examples

    def collate(self, prompts: Sequence[VideoExample], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The batch the reward model reads (the one input builder, see the module docstring):
        each row ends with the score prefix; videos enter as cached pooled features."""
        return self.lm.collate(
            self.inputs(prompts, answers),
            add_generation_prompt=True,
            with_labels=False,
            assistant_prefix=self.prompts.score_prefix.render(),
            visual="features",
        )

    # ------------------------------------------------------------------------------- scoring

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards (B,) float32 of a `collate` batch, on the model's device; grad follows the caller."""
        return self.scalar(batch)

    __call__ = forward

    @torch.no_grad()
    def score(self, prompts: Sequence[VideoExample], answers: Sequence[str], *, batch_size: int = 16) -> torch.Tensor:
        """Rewards (B,) float32 on the CPU of each answer to its prompt, in eval mode, batch by batch.

        prompts: conversations ending with the user's question, with the video as frames and/or a
        video_key already in the feature cache (a prompt repeated for several answers is encoded once
        when it has a video_key)."""
        if len(prompts) != len(answers):
            raise ModelInputError(f"{len(prompts)} prompts but {len(answers)} answers")
        scores = []
        with self.lm.eval_mode():
            for start in range(0, len(prompts), batch_size):
                batch = self.collate(prompts[start : start + batch_size], answers[start : start + batch_size])
                scores.append(self.forward(batch).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def score_questions(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        videos: Sequence[np.ndarray | torch.Tensor | None] | None = None,
        video_keys: Sequence[str | None] | None = None,
        *,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """`score` for single questions: the i-th answer to questions[i] about videos[i] (uint8 frames
        (T, H, W, 3)) and/or video_keys[i]."""
        count = len(questions)
        videos = list(videos) if videos is not None else [None] * count
        video_keys = list(video_keys) if video_keys is not None else [None] * count
        if not len(answers) == len(videos) == len(video_keys) == count:
            raise ModelInputError(
                f"{count} questions, {len(answers)} answers, {len(videos)} videos, {len(video_keys)} video keys"
            )
        prompts = [prompt_example(q, v, k) for q, v, k in zip(questions, videos, video_keys)]
        return self.score(prompts, answers, batch_size=batch_size)

    # ------------------------------------------------------------------------------- save / load

    def save(self, directory: str | os.PathLike) -> None:
        """Adapter + head (ScalarModel.save) and reward_model.json (base model, prompts, frames)."""
        directory = Path(directory)
        self.scalar.save(directory)
        info = {
            "format": 1,
            "base_model": self.base_model,
            "family": self.lm.family,
            "adapter_name": self.scalar.lora_name,
            "prompts": self.prompts.ids(),
            "frames": None if self.frames is None else vars(self.frames),
        }
        (directory / REWARD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        lm: VideoLM | None = None,
        *,
        base_model: str | os.PathLike | None = None,
        adapter_name: str = ADAPTER_NAME,
        trainable: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        feature_cache: FeatureCache | bool = True,
    ) -> RewardModel:
        """Load a saved reward model (its directory, or the `vlm-rlaif rm` run directory holding it).

        lm: put the adapter on this already loaded base (shared with other adapters, e.g. the value
            model's); otherwise the base is loaded from `base_model` (default: the saved path) with
            device / dtype / quantization / feature_cache (see VideoLM.load)."""
        from vlm_rlaif.models.registry import load_adapter_model

        directory = reward_model_directory(directory)
        info = _read_info(directory / REWARD_INFO_FILE)
        if lm is None:
            base = base_model or info.get("base_model")
            if not base:
                raise UserError(f"{directory}: no base model directory was recorded; pass base_model=")
            if not Path(base).is_dir():
                raise UserError(
                    f"{directory}: base model directory {base} does not exist (moved? pass base_model= / --base-model)"
                )
            lm = load_adapter_model(
                base, device=device, dtype=dtype, quantization=quantization, feature_cache=feature_cache
            )
        elif info.get("family") and lm.family != info["family"]:
            raise UserError(f"{directory}: trained on a {info['family']} model, got a {lm.family} model")
        scalar = ScalarModel.load(directory, lm, lora_name=adapter_name, trainable=trainable)
        prompts = info.get("prompts") or {}
        frames = info.get("frames")
        return cls(
            scalar,
            RewardPrompts.from_ids(prompts["evaluation"], prompts["score_prefix"]),
            base_model=base_model or info.get("base_model"),
            frames=FrameSettings(**frames) if frames else None,
        )


def reward_model_directory(directory: str | os.PathLike) -> Path:
    """A reward model's own directory: `directory` itself, or its model/ (a `vlm-rlaif rm` run)."""
    directory = Path(directory)
    if (directory / REWARD_INFO_FILE).is_file():
        return directory
    if (directory / MODEL_SUBDIR / REWARD_INFO_FILE).is_file():
        return directory / MODEL_SUBDIR
    if not directory.is_dir():
        raise UserError(f"{directory}: no such reward model directory")
    if (directory / "summary.json").is_file() or (directory / "run.json").is_file():
        raise UserError(
            f"{directory}: this run has not saved a reward model yet (no {MODEL_SUBDIR}/{REWARD_INFO_FILE})"
        )
    raise UserError(f"{directory} is not a reward model directory (no {REWARD_INFO_FILE}, no {INFO_FILE})")


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    prompts = info.get("prompts") if isinstance(info, dict) else None
    if not isinstance(prompts, dict) or not {"evaluation", "score_prefix"} <= set(prompts):
        raise UserError(f"{path}: expected 'prompts' with 'evaluation' and 'score_prefix' template ids")
    return info


__all__ = [
    "ADAPTER_NAME",
    "REWARD_INFO_FILE",
    "FrameSettings",
    "RewardModel",
    "RewardPrompts",
    "prompt_example",
    "reward_example",
    "reward_model_directory",
]
