"""Candidate answers: K distinct sampled answers per prompt (docs/method.md, stage 2a step 1).

Two answers that read the same carry no preference, so an answer identical to an earlier one of the
same prompt (after case and whitespace normalisation), or empty, is sampled again, up to
`max_resample_rounds` rounds; a prompt still short of K distinct answers is dropped. Both are counted.
Generation is batched over prompts, and each video's features come through the feature cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vlm_rlaif.clients.generator import OpenAIGenerator
from vlm_rlaif.feedback.config import CandidateSettings
from vlm_rlaif.models import GenerationSettings, VideoExample, VideoLM

# sample(prompt indices, samples per prompt, round) -> that many answers for each of those prompts
SampleFn = Callable[[list[int], int, int], list[list[str]]]


@dataclass
class PromptCandidates:
    prompt_id: str
    answers: list[str]  # K distinct answers; empty when the prompt was dropped
    resampled: int  # answers drawn again because they repeated an earlier one or were empty
    dropped: bool
    skipped: str | None = None  # on_bad_video "skip": why the prompt's video could not be used
    video_warnings: list[str] = field(default_factory=list)  # data.frames.SINGLE_FRAME / NON_IMAGE_FILES


def normalise(answer: str) -> str:
    """What "identical" means: the same words, ignoring case and whitespace."""
    return " ".join(answer.lower().split())


def collect_distinct(
    prompt_ids: Sequence[str], sample: SampleFn, k: int, max_resample_rounds: int
) -> list[PromptCandidates]:
    """K distinct answers per prompt: one batched draw of K each, then redraws of only what is missing."""
    kept: list[list[str]] = [[] for _ in prompt_ids]
    resampled = [0] * len(prompt_ids)
    needed = {i: k for i in range(len(prompt_ids))}
    for round_index in range(max_resample_rounds + 1):
        # One call per distinct count keeps each call a uniform batch (VideoLM samples n per example).
        for count in sorted(set(needed.values())):
            indices = [i for i, n in needed.items() if n == count]
            for i, answers in zip(indices, sample(indices, count, round_index)):
                if round_index > 0:
                    resampled[i] += len(answers)
                seen = {normalise(a) for a in kept[i]}
                for answer in answers:
                    key = normalise(answer)
                    if key and key not in seen:
                        kept[i].append(answer.strip())
                        seen.add(key)
        needed = {i: k - len(kept[i]) for i in needed if len(kept[i]) < k}
        if not needed:
            break
    return [
        PromptCandidates(pid, [] if len(answers) < k else answers[:k], resampled[i], len(answers) < k)
        for i, (pid, answers) in enumerate(zip(prompt_ids, kept))
    ]


def sample_candidates(
    lm: VideoLM | OpenAIGenerator,
    examples: Sequence[VideoExample],
    prompt_ids: Sequence[str],
    settings: CandidateSettings,
    seed: int,
) -> list[PromptCandidates]:
    """K distinct answers from the policy for each example (a user turn about one video)."""

    def sample(indices: list[int], count: int, round_index: int) -> list[list[str]]:
        generation = GenerationSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            num_samples=count,
            batch_size=settings.batch_size,
            seed=seed + 7919 * round_index,  # another round must not redraw the same answers
        )
        outputs = lm.generate([examples[i] for i in indices], generation)
        answers: list[list[str]] = [[] for _ in indices]
        for output in outputs:
            answers[output.example_index].append(output.text)
        return answers

    return collect_distinct(prompt_ids, sample, settings.num_candidates, settings.max_resample_rounds)


def sampling_record(settings: CandidateSettings, seed: int) -> dict:
    """The sampling settings as stored with every preference record."""
    return {
        "num_candidates": settings.num_candidates,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "seed": seed,
    }


__all__ = ["PromptCandidates", "collect_distinct", "normalise", "sample_candidates", "sampling_record"]
