"""One answer to one conversation, with what `chat` and `serve` need beyond VideoLM.generate:
streamed text, stop strings, and the log-probabilities of each generated token and its top rivals.

The prompt is built by VideoLM (its chat template, its feature cache: a video asked about again is
not re-encoded); sampling uses VideoLM.generation_config, as VideoLM.generate does (the video token
is never sampled). Log-probabilities are those of the model's own distribution (before temperature
or top-p), over the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from vlm_rlaif.models import GenerationSettings, VideoExample, VideoLM
from vlm_rlaif.models.examples import seeded

DEFAULT_FRAMES = 8  # when the model records no frame count of its own


@dataclass
class TokenText:
    """One token as text, and as its own bytes (part of a UTF-8 character, for some tokens)."""

    token_id: int
    text: str
    utf8: bytes


@dataclass
class TokenLogprob:
    """A generated token, its log-probability and the most likely tokens at its position."""

    token: TokenText
    logprob: float
    top: list[tuple[TokenText, float]] = field(default_factory=list)  # best first


@dataclass
class Completion:
    text: str  # without the EOS token, cut before a stop string
    token_ids: list[int]  # generated ids, through the EOS token when it ended with one
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int  # video tokens included
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when asked for


def load_for_generation(
    model_dir: str, *, lora: str | None = None, device: str = "auto", dtype: str | None = None
) -> VideoLM:
    """A saved model (any family), optionally with a LoRA adapter on it, ready to answer.
    device "auto": the first CUDA GPU if there is one, else the CPU."""
    from vlm_rlaif.models import load_adapter_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_adapter_model(model_dir, device=device, dtype=dtype)
    if lora is not None:
        lm.load_lora(lora, "served")
    return lm


def default_num_frames(lm: VideoLM) -> int:
    """The frame count the model was built for (llava-video's processor, an HF video processor's
    num_frames), else DEFAULT_FRAMES."""
    video_processor = getattr(lm.processor, "video_processor", None)
    return getattr(lm.processor, "num_frames", None) or getattr(video_processor, "num_frames", None) or DEFAULT_FRAMES


@torch.no_grad()
def complete(
    lm: VideoLM,
    example: VideoExample,
    settings: GenerationSettings,
    *,
    top_logprobs: int | None = None,
    stop: Sequence[str] = (),
    streamer=None,
    where: str = "the conversation",
) -> Completion:
    """Generate one answer. top_logprobs: None = no log-probabilities; k >= 0 = each token's own and
    its k most likely rivals. streamer: a transformers streamer that receives the tokens as they come.
    A prompt that leaves fewer than settings.max_new_tokens positions raises PromptTooLongError
    naming `where`, before the model sees it."""
    lm.check_prompt_length(example, settings.max_new_tokens, where)  # a huge text: refused untokenised
    batch = lm.collate([example], add_generation_prompt=True, visual="features")
    lm.check_prompt_length(example, settings.max_new_tokens, where, tokens=batch["input_ids"].shape[1])
    inputs = lm.model_inputs(batch)
    inputs.pop("position_ids")  # generate derives them step by step
    config = lm.generation_config(settings, stop)
    config.return_dict_in_generate = True
    config.output_logits = top_logprobs is not None
    with lm.eval_mode(), seeded(settings.seed, lm.device):
        output = lm.unwrapped_model.generate(
            **inputs, generation_config=config, streamer=streamer, tokenizer=lm.tokenizer if stop else None
        )
    prompt_length = batch["input_ids"].shape[1]
    new_ids = output.sequences[0, prompt_length:].tolist()
    ended = lm.eos_token_id in new_ids
    if ended:
        new_ids = new_ids[: new_ids.index(lm.eos_token_id) + 1]
    text = lm.tokenizer.decode(new_ids[:-1] if ended else new_ids, skip_special_tokens=True)
    stopped_at = min((text.find(s) for s in stop if s and s in text), default=-1)
    if stopped_at >= 0:
        text = text[:stopped_at]
    finish = "stop" if ended or stopped_at >= 0 else "length"
    logprobs = None
    if top_logprobs is not None:
        logprobs = [
            _token_logprob(lm, step_logits[0], token_id, top_logprobs)
            for step_logits, token_id in zip(output.logits, new_ids)
        ]
    return Completion(text.strip(), new_ids, finish, int(batch["attention_mask"].sum()), logprobs)


def _token_logprob(lm: VideoLM, logits: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = []
    if k > 0:
        values, ids = logprobs.topk(k)
        top = [(token_text(lm.tokenizer, i), v) for i, v in zip(ids.tolist(), values.tolist())]
    return TokenLogprob(token_text(lm.tokenizer, token_id), float(logprobs[token_id]), top)


def token_text(tokenizer, token_id: int) -> TokenText:
    """A token's text (as decoded alone) and its bytes: byte-level BPE tokens (GPT-2, Qwen, ours) map
    back to their exact bytes, which may be part of a UTF-8 character; others give their text's UTF-8."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel" and token_id not in tokenizer.all_special_ids
    byte_of = _byte_decoder()
    if byte_level and all(c in byte_of for c in piece):
        return TokenText(token_id, text, bytes(byte_of[c] for c in piece))
    return TokenText(token_id, text, text.encode("utf-8"))


@cache
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {character: byte for byte, character in bytes_to_unicode().items()}


__all__ = [
    "Completion",
    "DEFAULT_FRAMES",
    "TokenLogprob",
    "TokenText",
    "complete",
    "default_num_frames",
    "load_for_generation",
    "token_text",
]
