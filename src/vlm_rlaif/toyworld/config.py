"""ToyWorldConfig: every knob of the toy world, flat so `vlm-rlaif toyworld KEY=VALUE` reaches each.

Rates are probabilities per object; the difficulty knobs (brief_*, shared_attribute_prob,
order_gap) are the ones that make a whole-video model measurably imperfect while clip-level
descriptions keep the facts (see toyworld/__init__.py for why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.toyworld.lexicon import PALETTE, SHAPES


@dataclass
class ToyWorldConfig:
    seed: int = 0
    # ------------------------------------------------------------------ video
    frames: int = 24
    fps: float = 8.0
    size: int = 32  # frame height = width in pixels (32-64)
    supersample: int = 4  # render at size*supersample, then box-filter down (anti-aliasing)
    crf: int = 18  # h264 quality of the written mp4s
    clip_max_frames: int = 8  # feedback-context clip length: 24 frames -> 3 clips of 8
    # ------------------------------------------------------------------ objects
    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "purple", "white"])
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    min_objects: int = 1
    max_objects: int = 3
    small_radius: float = 0.11  # fraction of the frame size
    big_radius: float = 0.16
    min_speed: float = 0.025  # fraction of the frame size per frame (0.8 px at 32 px)
    max_speed: float = 0.04
    moving_prob: float = 0.6  # an object moves from its first frame (else it stands still)
    # ------------------------------------------------------------------ event rates
    appear_prob: float = 0.25  # the object enters after the first frame
    disappear_prob: float = 0.2  # the object leaves before the last frame
    colour_change_prob: float = 0.3
    stop_prob: float = 0.25  # a moving object stops
    start_prob: float = 0.4  # a still object starts moving
    min_visible_frames: int = 8  # an ordinary (not brief) object is visible at least this long
    # ------------------------------------------------------------------ difficulty knobs
    brief_object_prob: float = 0.15  # an object is visible for only brief_min..brief_max frames
    brief_colour_prob: float = 0.15  # a colour flash: change, then change back brief frames later
    brief_min_frames: int = 3
    brief_max_frames: int = 5
    shared_attribute_prob: float = 0.35  # a new object shares its colour or its shape with another
    min_event_gap: int = 2  # planned events of a video are at least this many frames apart
    order_gap: int = 3  # "which came first" only for events this many frames apart (oracle too)
    # ------------------------------------------------------------------ splits (by video)
    sft_fraction: float = 0.7
    feedback_fraction: float = 0.1
    rl_fraction: float = 0.1
    eval_fraction: float = 0.1
    # ------------------------------------------------------------------ texts per video
    short_per_video: int = 6  # SFT short-answer instructions
    long_per_video: int = 2  # SFT long-answer instructions
    judge_per_video: int = 3  # SFT judge-skill examples
    judge_long_fraction: float = 0.3  # judge examples built on long-answer questions
    context_per_video: int = 2  # SFT answers read off the true clip descriptions (the likelihood judge's skill)
    # Share of those shown with a blank video (videos/blank.mp4): the context is then the only source,
    # so the model must learn to read it (with the real video it can answer from the frames alone).
    context_blank_video_prob: float = 0.0
    # Short question types of those examples (empty: all): e.g. the ones the pooled video answers badly.
    context_qtypes: list[str] = field(default_factory=list)
    mcq_per_video: int = 1  # SFT questions with lettered options, answered with the letter
    verify_per_video: int = 2  # SFT answers checked Yes / No (the verify judge's skill), half with context
    feedback_per_video: int = 4  # feedback prompts (questions without answers)
    rl_per_video: int = 4  # RL prompts
    rl_long_fraction: float = 0.5  # share of long-answer RL / feedback prompts
    eval_per_video: int = 3  # questions per benchmark file per eval video

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"toyworld config: {message}")

        need(8 <= self.frames <= 512, f"frames must be in 8..512, got {self.frames}")
        need(self.fps > 0, f"fps must be positive, got {self.fps}")
        need(32 <= self.size <= 64 and self.size % 2 == 0, f"size must be even and in 32..64, got {self.size}")
        need(1 <= self.supersample <= 8, f"supersample must be in 1..8, got {self.supersample}")
        need(1 <= self.clip_max_frames <= self.frames, "clip_max_frames must be in 1..frames")
        unknown = [c for c in self.colours if c not in PALETTE]
        need(not unknown, f"unknown colours {unknown}; known: {sorted(PALETTE)}")
        need(len(set(self.colours)) >= 3, "need at least 3 distinct colours")
        unknown = [s for s in self.shapes if s not in SHAPES]
        need(not unknown, f"unknown shapes {unknown}; known: {list(SHAPES)}")
        need(len(set(self.shapes)) >= 2, "need at least 2 distinct shapes")
        need(1 <= self.min_objects <= self.max_objects <= 4, "need 1 <= min_objects <= max_objects <= 4")
        need(0 < self.small_radius < self.big_radius <= 0.2, "need 0 < small_radius < big_radius <= 0.2")
        need(0 < self.min_speed <= self.max_speed <= 0.1, "need 0 < min_speed <= max_speed <= 0.1")
        for name in ("moving_prob", "appear_prob", "disappear_prob", "colour_change_prob", "stop_prob",
                     "start_prob", "brief_object_prob", "brief_colour_prob", "shared_attribute_prob",
                     "judge_long_fraction", "rl_long_fraction", "context_blank_video_prob"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name} must be a probability, got {value}")
        need(1 <= self.brief_min_frames <= self.brief_max_frames < self.min_visible_frames,
             "need 1 <= brief_min_frames <= brief_max_frames < min_visible_frames")
        need(self.min_visible_frames <= self.frames // 2, "min_visible_frames must be at most frames/2")
        need(1 <= self.min_event_gap <= self.order_gap, "need 1 <= min_event_gap <= order_gap")
        fractions = [self.sft_fraction, self.feedback_fraction, self.rl_fraction, self.eval_fraction]
        need(all(f >= 0 for f in fractions) and abs(sum(fractions) - 1.0) < 1e-6,
             f"split fractions must be >= 0 and sum to 1, got {fractions}")
        for name in ("short_per_video", "long_per_video", "judge_per_video", "context_per_video", "mcq_per_video",
                     "verify_per_video", "feedback_per_video", "rl_per_video", "eval_per_video"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")

    @property
    def split_fractions(self) -> dict[str, float]:
        return {"sft": self.sft_fraction, "feedback": self.feedback_fraction,
                "rl": self.rl_fraction, "eval": self.eval_fraction}
