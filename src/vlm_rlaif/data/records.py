"""Record schemas of the files that flow between stages.

The layouts are the ones the paper's data and the benchmarks are distributed in, so real files and the
toy world's files load through the same code:
- instruction records: LLaVA / VLM-RLAIF layout (id, conversations [{from, value}], video or images);
- preference records: the public layout (output_1, output_2, preference 1|2) plus our richer fields;
- benchmark records: VCG-Bench generic/temporal {video_name, Q, A}, consistency {video_name, Q1, Q2, A},
  zero-shot QA {video_name, question_id, question, answer}, multiple-choice QA.
Unknown extra fields are kept (extra="allow"), so a record read and written back loses nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VIDEO_PLACEHOLDER = "<video>"
# The public instruction files (SFT, PPO_init, RL prompts) open human turns with LLaVA's image
# placeholder instead; the model adapter places the video itself, so both are removed.
IMAGE_PLACEHOLDER = "<image>"


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json_dict(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True)


class Turn(_Record):
    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str


class ClipSpec(_Record):
    """Which clip of the sampled frames a record is about: clip `index` (0-based) of the `count`
    consecutive clips that video.split_clips makes of the sampled frames."""

    index: int = Field(ge=0)
    count: int = Field(ge=1)

    @model_validator(mode="after")
    def _index_in_range(self) -> "ClipSpec":
        if self.index >= self.count:
            raise ValueError(f"clip index {self.index} is not below clip count {self.count}")
        return self


class _VideoRecord(_Record):
    """A record about one video: a video file (`video`) or pre-extracted frames (`images`)."""

    video: str | None = None
    images: list[str] | None = None

    @model_validator(mode="after")
    def _has_video(self):
        if not self.video and not self.images:
            raise ValueError("record has neither 'video' nor 'images'")
        return self

    @property
    def video_source(self) -> str | list[str]:
        return self.video if self.video else list(self.images or [])


class InstructionRecord(_VideoRecord):
    id: str
    conversations: list[Turn] = Field(min_length=1)
    src_data: str | None = None
    clip: ClipSpec | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, v):
        return str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _starts_with_human(self) -> "InstructionRecord":
        if self.conversations[0].speaker != "human":
            raise ValueError("conversations must start with a 'human' turn")
        return self

    @property
    def question(self) -> str:
        """The first human turn without the video placeholder."""
        return strip_placeholder(self.conversations[0].value)

    @property
    def answer(self) -> str | None:
        """The first gpt turn, if any (RL and feedback prompts have none)."""
        for turn in self.conversations[1:]:
            if turn.speaker == "gpt":
                return turn.value
        return None


class Output(_Record):
    value: str


class PreferenceRecord(_VideoRecord):
    """One AI- (or human-) labelled pair. `conversations` holds the prompt (the human turn; a trailing
    gpt turn, as in some public files, is ignored). preference = 1 means output_1 is preferred."""

    id: str
    conversations: list[Turn] = Field(min_length=1)
    output_1: Output
    output_2: Output
    preference: Literal[1, 2]
    # Our richer fields (all optional so the public files load as they are).
    context: str | None = None
    judge: str | None = None
    judge_version: str | None = None
    prob_1_first: float | None = None  # P(output_1 better) when output_1 was shown as answer A
    prob_1_second: float | None = None  # P(output_1 better) when output_1 was shown as answer B
    sampling: dict | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, v):
        return str(v) if isinstance(v, int) else v

    @property
    def question(self) -> str:
        return strip_placeholder(self.conversations[0].value)

    @property
    def chosen(self) -> str:
        return (self.output_1 if self.preference == 1 else self.output_2).value

    @property
    def rejected(self) -> str:
        return (self.output_2 if self.preference == 1 else self.output_1).value


class VCGRecord(_Record):
    """VCG-Bench generic and temporal sets: {video_name, Q, A}."""

    video_name: str
    Q: str
    A: str


class VCGConsistencyRecord(_Record):
    """VCG-Bench consistency set: two paraphrased questions with one reference answer."""

    video_name: str
    Q1: str
    Q2: str
    A: str


class QARecord(_Record):
    """Zero-shot open-ended QA (MSVD/MSRVTT/ActivityNet/TGIF-QA as the paper preprocessed them)."""

    video_name: str
    question_id: str
    question: str
    answer: str

    @field_validator("question_id", mode="before")
    @classmethod
    def _qid_to_str(cls, v):
        return str(v) if isinstance(v, int) else v


class MCQRecord(_Record):
    """Multiple-choice video QA (MVBench-style): the answer is one of `candidates`."""

    video_name: str
    question_id: str
    question: str
    candidates: list[str] = Field(min_length=2)
    answer: str

    @field_validator("question_id", mode="before")
    @classmethod
    def _qid_to_str(cls, v):
        return str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _answer_is_candidate(self) -> "MCQRecord":
        if self.answer not in self.candidates:
            raise ValueError(f"answer {self.answer!r} is not one of the candidates")
        return self


def strip_placeholder(text: str) -> str:
    """The text without the video and image placeholders (and the whitespace around it)."""
    return text.replace(VIDEO_PLACEHOLDER, "").replace(IMAGE_PLACEHOLDER, "").strip()


def to_messages(conversations: list[Turn]) -> list[dict[str, str]]:
    """LLaVA turns ({from: human|gpt, value}) -> chat messages ({role: user|assistant, content}),
    without the video / image placeholders (the model adapter places the video itself)."""
    roles = {"human": "user", "gpt": "assistant"}
    return [{"role": roles[t.speaker], "content": strip_placeholder(t.value)} for t in conversations]
