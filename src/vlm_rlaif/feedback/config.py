"""FeedbackConfig: every setting of the AI-feedback stage (`vlm-rlaif feedback`, recipe section
`feedback`).

Choices the paper left open, and what we picked (docs/method.md, stage 2a):
- candidates: temperature 1.0, top_p 1.0 (the paper's own PPO rollout setting, the top of the usual
  0.7-1.0 range: diverse enough that two samples differ, and it is the distribution PPO later
  optimises); K = 2 answers per prompt as in the paper;
- clip descriptions: greedy (temperature 0), so the context is the model's most likely reading of
  each clip and a rerun gives the same context;
- position bias: every pair is judged in both orders; policy `consistent` (keep a pair only when both
  orders agree) by default, `average` as the alternative;
- the verdict: next-token probabilities of " A" vs " B" after the fixed prefix (local judge), the
  first verdict token's top_logprobs or a strict parse of the reply (openai judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlm_rlaif.clients.generator import GeneratorSettings
from vlm_rlaif.data.frames import check_on_bad_video
from vlm_rlaif.errors import ConfigError


@dataclass
class OpenAISettings:
    """An OpenAI-compatible endpoint (our `serve`, vLLM, a hosted API); see clients.ChatClient."""

    base_url: str = ""
    model: str = ""
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    max_invalid_retries: int = 2
    timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    temperature: float = 0.0
    max_tokens: int = 96
    top_logprobs: int | None = 5  # None: the server gives no logprobs; parse the reply text
    send_frames: bool = True  # the video as images (uniformly subsampled to max_frames)
    max_frames: int = 8
    image_max_side: int = 336

    def check(self, where: str) -> None:
        if not self.base_url or not self.model:
            raise ConfigError(f"{where}: an openai endpoint needs base_url and model")
        if self.max_frames < 1 or self.image_max_side < 1 or self.max_tokens < 1:
            raise ConfigError(f"{where}: max_frames, image_max_side and max_tokens must be >= 1")


@dataclass
class CandidateSettings:
    num_candidates: int = 2  # K answers per prompt; every pair of them is judged
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    max_resample_rounds: int = 3  # identical answers are resampled up to this often, then dropped
    batch_size: int = 16


@dataclass
class ContextSettings:
    """Who describes the clips: the policy itself (the paper), another model dir, or an endpoint."""

    describer: Literal["policy", "model", "openai"] = "policy"
    model_dir: Path | None = None  # describer "model"
    temperature: float = 0.0
    max_new_tokens: int = 128
    batch_size: int = 16
    openai: OpenAISettings = field(default_factory=OpenAISettings)


@dataclass
class JudgeSettings:
    kind: Literal["local", "openai", "oracle"] = "local"
    # local: "verdict" (the paper's pairwise judge: P(" A") vs P(" B") after the verdict prefix) or
    # "likelihood" (each answer scored on its own: its mean log-probability per token when the judge
    # is asked the question with the clip context in front, prompt answer_with_context; without
    # context, the bare question). P(A) = sigmoid(likelihood_scale * (score A - score B)). It needs
    # only reading the context, not comparing two answers, and has no position bias. Or "verify"
    # (each answer checked against the context on its own: log P("Yes") - log P("No") as the first
    # reply token to judge_verify_context, judge_verify without context; P(A) = sigmoid(verify_scale
    # * (score A - score B))): a yes/no check per answer, no comparison, no position bias.
    form: Literal["verdict", "likelihood", "verify"] = "verdict"
    likelihood_scale: float = 4.0
    verify_scale: float = 1.0
    model_dir: Path | None = None  # local: default the policy (the paper: the SFT model judges itself)
    batch_size: int = 8
    rationale: bool = False  # local: also generate the judge's reply (greedy) and store it
    rationale_max_new_tokens: int = 48
    min_verdict_mass: float = 0.0  # local: P(" A") + P(" B") below this -> invalid (judge off-format)
    openai: OpenAISettings = field(default_factory=OpenAISettings)


@dataclass
class FeedbackConfig:
    model_dir: Path | None = None  # the policy (SFT model): samples candidates
    prompts: Path | None = None  # instruction records (JSON array or JSONL), questions without answers
    video_root: Path | None = None  # record video paths are relative to it (required)
    out: Path | None = None
    seed: int = 0
    num_frames: int | None = None  # default: the policy's own (processor.num_frames)
    clip_max_frames: int = 20  # paper: 50 frames at most 20 a clip -> 3 clips
    clip_frames: int | None = None  # frames the clips are cut from (default num_frames; more: denser clips)
    context: bool = True  # False: the paper's no-context ablation (judge_pairwise template)
    position_policy: Literal["consistent", "average"] = "consistent"
    margin: float = 0.0  # a verdict within margin of 0.5 is a tie
    chunk_size: int = 16  # prompts per chunk; every finished chunk is on disk
    max_prompts: int | None = None
    device: str = "cpu"
    dtype: str | None = None
    toy_root: Path | None = None  # toy world directory (truth/) for oracle agreement; default video_root
    feature_cache_bytes: int = 1 << 30
    # A prompt's video that is missing or does not decode: "fail" stops the run (the error names the
    # prompts file, the record and the video); "skip" records the prompt as skipped and goes on.
    on_bad_video: str = "fail"
    # Where candidates and the policy's clip descriptions are sampled: the policy here ("local") or
    # OpenAI-compatible servers serving it ("openai", e.g. vLLM; clients.generator).
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    describe: ContextSettings = field(default_factory=ContextSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)

    def check(self) -> None:
        """Errors for settings that cannot work together (called before any model is loaded)."""
        for name in ("model_dir", "prompts", "video_root", "out"):
            if getattr(self, name) is None:
                raise ConfigError(f"feedback: '{name}' is required")
        if self.candidates.num_candidates < 2:
            raise ConfigError(f"feedback: candidates.num_candidates must be >= 2, got {self.candidates.num_candidates}")
        if self.candidates.max_resample_rounds < 0:
            raise ConfigError("feedback: candidates.max_resample_rounds must be >= 0")
        if not 0.0 <= self.margin < 0.5:
            raise ConfigError(f"feedback: margin must be in [0, 0.5), got {self.margin}")
        if self.chunk_size < 1 or self.clip_max_frames < 1:
            raise ConfigError("feedback: chunk_size and clip_max_frames must be >= 1")
        if self.context and self.describe.describer == "model" and self.describe.model_dir is None:
            raise ConfigError("feedback: describe.describer 'model' needs describe.model_dir")
        if self.context and self.describe.describer == "openai":
            self.describe.openai.check("feedback.describe.openai")
        if self.judge.kind == "openai":
            self.judge.openai.check("feedback.judge.openai")
        check_on_bad_video(self.on_bad_video, "feedback")
        self.generator.check("feedback.generator")
        if not 0.0 <= self.judge.min_verdict_mass <= 1.0:
            raise ConfigError("feedback: judge.min_verdict_mass must be in [0, 1]")

    def inputs(self) -> dict[str, Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        describes = self.context and self.describe.describer == "model"
        return {
            "model_dir": self.model_dir,
            "prompts": self.prompts,
            "video_root": self.video_root,
            "toy_root": self.toy_root,
            "describe.model_dir": self.describe.model_dir if describes else None,
            "judge.model_dir": self.judge.model_dir if self.judge.kind == "local" else None,
        }


__all__ = ["CandidateSettings", "ContextSettings", "FeedbackConfig", "JudgeSettings", "OpenAISettings"]
