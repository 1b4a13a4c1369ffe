"""Processor of `llava-video`: frames -> pixel tensors, conversations -> token ids and training labels.

Two jobs, both deterministic and torch-only:
- Frames (uint8 (T, H, W, 3), numpy or torch; any T >= 1) are padded to a square with the CLIP mean
  colour, resized (antialiased bicubic or bilinear) and normalised with the CLIP mean/std.
- A conversation is rendered with the Vicuna v1 template, tokenized once, and its single `<video>`
  placeholder expanded into exactly `num_video_tokens(T)` video tokens, so input_ids have their final
  length before the model sees them (masks, batching, KV cache and generation need nothing special).
  Labels are -100 everywhere except the assistant answers and their closing `</s>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.llava_video.configuration import video_token_count

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_TOKEN = "<video>"
IGNORE_INDEX = -100

# Vicuna v1 (LLaVA's conv_vicuna_v1): "{system} USER: {q} ASSISTANT: {a}</s>USER: ... ASSISTANT:"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER_ROLE = "USER"
ASSISTANT_ROLE = "ASSISTANT"

# The same template in Jinja, for transformers' `apply_chat_template` (string contents only). Our own
# code renders with `render_conversation`; a test keeps the two identical.
VICUNA_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
    "{%- set messages = messages[1:] -%}{%- else -%}{%- set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- endif -%}{{ system + ' ' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + message['content'] + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + message['content'] + '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


# Stands in for a literal video placeholder in message text while a conversation is rendered: as
# long as the placeholder (character offsets hold) and never part of the template's own text.
_LITERAL_MARK = "\ue000"


class VideoInputError(UserError, ValueError):
    """Frames or a conversation that the processor cannot use; the message says what is wrong."""


def hide_literal_placeholders(
    conversation: Sequence[dict], video_token: str, *, keep_first_user: bool
) -> list[dict]:
    """The conversation with every video placeholder in message text masked, except in the first
    user turn when keep_first_user (the Vicuna renderer honours a placeholder there). A masked one is
    text, e.g. "<video>" in a sampled answer, and must not become the video's tokens."""
    mask = _LITERAL_MARK * len(video_token)
    first_user = next((i for i, m in enumerate(conversation) if m.get("role") == "user"), None)
    hidden = []
    for i, message in enumerate(conversation):
        content = message.get("content")
        if isinstance(content, str) and not (keep_first_user and i == first_user):
            message = {**message, "content": content.replace(video_token, mask)}
        hidden.append(message)
    return hidden


def restore_literal_placeholders(text: str, video_token: str) -> tuple[str, int | None]:
    """Rendered text of a hide_literal_placeholders conversation -> (the text with the literal
    placeholders back, the character offset of the one real placeholder or None)."""
    at = text.find(video_token)
    return text.replace(_LITERAL_MARK * len(video_token), video_token), (at if at >= 0 else None)


def literal_placeholder_ids(tokenizer: PreTrainedTokenizerBase, video_token: str, video_token_id: int) -> list[int]:
    """The placeholder's text as ordinary tokens (how a literal "<video>" in message text is written)."""
    ids = tokenizer(video_token, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if not ids or video_token_id in ids:
        raise VideoInputError(f"the tokenizer cannot write {video_token!r} as ordinary text")
    return ids


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: str = "bicubic",
) -> torch.Tensor:
    """uint8 RGB frames (T, H, W, 3) -> normalised float32 (T, 3, image_size, image_size).

    Each frame is centred on a square canvas of the CLIP mean colour (LLaVA's "pad" aspect mode), then
    resized with antialiasing, so nothing is cropped away.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise VideoInputError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        pixels = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise VideoInputError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        pixels = frames.cpu()
    else:
        raise VideoInputError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise VideoInputError(f"frames must have shape (T, H, W, 3), got {tuple(pixels.shape)}")
    num_frames, height, width, _ = pixels.shape
    if num_frames == 0 or height == 0 or width == 0:
        raise VideoInputError(f"frames must be non-empty, got shape {tuple(pixels.shape)}")
    if resample not in ("bicubic", "bilinear"):
        raise VideoInputError(f"resample must be 'bicubic' or 'bilinear', got {resample!r}")

    side = max(height, width)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    # LLaVA's expand2square fills with tuple(int(x * 255) for x in image_mean): truncated, not rounded.
    canvas = (mean_t * 255).floor().expand(num_frames, 3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, :, top : top + height, left : left + width] = pixels.permute(0, 3, 1, 2).float()
    if side != image_size:
        canvas = F.interpolate(canvas, size=(image_size, image_size), mode=resample, antialias=True)
        canvas = canvas.clamp(0, 255)  # bicubic overshoots
    return (canvas / 255 - mean_t) / std_t


def check_conversation(
    conversation: Sequence[dict], *, add_generation_prompt: bool, where: str = "conversation"
) -> None:
    """Roles: an optional first "system", then "user"/"assistant" alternating from "user".

    A generation prompt needs the conversation to end with a user turn; a training example (no
    generation prompt) must end with an assistant turn.
    """
    if not conversation:
        raise VideoInputError(f"{where}: empty conversation")
    turns = list(conversation)
    for i, message in enumerate(turns):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise VideoInputError(f"{where}: message {i} must be a dict with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise VideoInputError(f"{where}: message {i} content must be a string")
    if turns[0]["role"] == "system":
        turns = turns[1:]
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise VideoInputError(
                f"{where}: expected role {expected!r} at turn {i}, got {message['role']!r} "
                "(an optional first 'system', then 'user' and 'assistant' alternating)"
            )
    if not turns:
        raise VideoInputError(f"{where}: no user turn")
    last = turns[-1]["role"]
    if add_generation_prompt and last != "user":
        raise VideoInputError(f"{where}: a generation prompt needs the conversation to end with a user turn")
    if not add_generation_prompt and last != "assistant":
        raise VideoInputError(f"{where}: a training example must end with an assistant turn")


def render_conversation(
    conversation: Sequence[dict],
    *,
    has_video: bool,
    add_generation_prompt: bool,
    assistant_prefix: str | None = None,
    video_token: str = VIDEO_TOKEN,
    where: str = "conversation",
) -> tuple[str, list[tuple[int, int]]]:
    """Vicuna v1 text of a conversation and the character spans that are trained on.

    The video placeholder goes first in the first user turn ("<video>\\n{question}") unless that
    turn already holds exactly one placeholder; placeholders in later turns are left as they are
    (encode_conversation writes them as text, never as the video). With `assistant_prefix`, the text ends inside
    an open assistant turn ("... ASSISTANT: {prefix}"), for reading the next token after a fixed
    prefix. Each trained span covers " {answer}</s>" of one assistant turn.
    """
    check_conversation(conversation, add_generation_prompt=add_generation_prompt, where=where)
    if assistant_prefix is not None and not add_generation_prompt:
        raise VideoInputError(f"{where}: assistant_prefix needs add_generation_prompt=True")
    # Only the first user turn's placeholder can be the video.
    first_user = next(message for message in conversation if message["role"] == "user")
    placeholders = first_user["content"].count(video_token)
    if placeholders > 1 or (placeholders == 1 and not has_video):
        raise VideoInputError(
            f"{where}: found {placeholders} {video_token} placeholder(s) for {int(has_video)} video(s)"
        )

    turns = list(conversation)
    system = VICUNA_SYSTEM
    if turns[0]["role"] == "system":
        system = turns[0]["content"]
        turns = turns[1:]
    text = system + " "
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(turns):
        content = message["content"]
        if message["role"] == "user":
            if i == 0 and has_video and placeholders == 0:
                content = f"{video_token}\n{content}"
            text += f"{USER_ROLE}: {content} "
        else:
            text += f"{ASSISTANT_ROLE}:"
            start = len(text)
            text += f" {content}</s>"
            spans.append((start, len(text)))
    if add_generation_prompt:
        text += f"{ASSISTANT_ROLE}:"
        if assistant_prefix:
            text += f" {assistant_prefix}"
    return text, spans


def expand_and_label(
    token_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    video_token_id: int,
    num_video_tokens: int | None,
    video_at: int | None = None,
    literal_ids: Sequence[int] = (),
) -> tuple[list[int], list[int]]:
    """Tokens of rendered text (with their character offsets) -> input ids, the video placeholder
    expanded to num_video_tokens copies, and labels: a token's own id where it overlaps a trained
    character span, IGNORE_INDEX elsewhere (video tokens included). Both chat-template paths use it.

    Only the video token starting at character `video_at` is the video; any other one is a literal
    placeholder in message text and is written as `literal_ids` (its text as ordinary tokens)."""
    input_ids: list[int] = []
    labels: list[int] = []
    for token_id, (start, end) in zip(token_ids, offsets):
        if token_id == video_token_id and start == video_at and num_video_tokens is not None:
            input_ids.extend([token_id] * num_video_tokens)
            labels.extend([IGNORE_INDEX] * num_video_tokens)
            continue
        trained = any(start < span_end and end > span_start for span_start, span_end in spans)
        pieces = list(literal_ids) if token_id == video_token_id else [token_id]
        if not pieces:
            raise VideoInputError("a literal video placeholder in the text, and no ordinary tokens to write it with")
        input_ids.extend(pieces)
        labels.extend(pieces if trained else [IGNORE_INDEX] * len(pieces))
    return input_ids, labels


class LlavaVideoProcessor(ProcessorMixin):
    """Tokenizer plus frame preprocessing for `llava-video`; registered with AutoProcessor.

    image_size, patch_size, video_pooling: must match the model (LlavaVideoLM checks);
        they fix how many tokens one video becomes.
    num_frames: how many frames the model was trained with (what loaders should sample by default).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 336,
        patch_size: int = 14,
        video_pooling: str = "spatiotemporal",
        num_frames: int = 50,
        resample: str = "bicubic",
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        video_token: str = VIDEO_TOKEN,
        chat_template: str | None = VICUNA_CHAT_TEMPLATE,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.video_pooling = video_pooling
        self.num_frames = num_frames
        self.resample = resample
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.video_token = video_token
        super().__init__(tokenizer, chat_template=chat_template)
        self.video_token_id = video_token_id_of(tokenizer, video_token)
        self.literal_video_ids = literal_placeholder_ids(tokenizer, video_token, self.video_token_id)

    @property
    def patches_per_frame(self) -> int:
        side = self.image_size // self.patch_size
        return side * side

    def num_video_tokens(self, num_frames: int) -> int:
        return video_token_count(num_frames, self.patches_per_frame, self.video_pooling)

    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float32 (T, 3, image_size, image_size)."""
        return preprocess_frames(frames, self.image_size, self.image_mean, self.image_std, self.resample)

    def encode_conversation(
        self,
        conversation: Sequence[dict],
        *,
        num_video_tokens: int | None,
        add_generation_prompt: bool,
        assistant_prefix: str | None = None,
        where: str = "conversation",
    ) -> tuple[list[int], list[int]]:
        """Token ids (BOS first, video placeholder expanded) and labels of one conversation.

        num_video_tokens: how many tokens the conversation's video becomes (`num_video_tokens(T)` for
            T frames, or the row count of cached features); None for a text-only conversation.
        Labels mark the tokens that overlap an assistant answer span (" {answer}</s>") of any turn; all
        others, video tokens and the open assistant turn of a generation prompt included, are IGNORE_INDEX.
        """
        text, spans = render_conversation(
            hide_literal_placeholders(conversation, self.video_token, keep_first_user=True),
            has_video=num_video_tokens is not None,
            add_generation_prompt=add_generation_prompt,
            assistant_prefix=assistant_prefix,
            video_token=self.video_token,
            where=where,
        )
        text, video_at = restore_literal_placeholders(text, self.video_token)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, labels = expand_and_label(
            encoded["input_ids"], encoded["offset_mapping"], spans, self.video_token_id, num_video_tokens,
            video_at, self.literal_video_ids,
        )
        if self.tokenizer.bos_token_id is not None:
            return [self.tokenizer.bos_token_id, *input_ids], [IGNORE_INDEX, *labels]
        return input_ids, labels

    def __call__(
        self,
        text: str | list[str],
        videos: Sequence[np.ndarray | torch.Tensor] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """transformers-style call on already rendered text: one `<video>` per video, in order.

        Returns input_ids (BOS first, as encode_conversation) and attention_mask (padded on the
        tokenizer's padding side), and for videos pixel_values_videos (all frames stacked) with
        video_num_frames.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        texts = [text] if isinstance(text, str) else list(text)
        videos = list(videos or [])
        video_iter = iter(videos)
        rows: list[list[int]] = []
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        for sample in texts:
            ids: list[int] = list(bos)
            for token_id in self.tokenizer(sample, add_special_tokens=False)["input_ids"]:
                if token_id == self.video_token_id:
                    frames = next(video_iter, None)
                    if frames is None:
                        raise VideoInputError(f"more {self.video_token} placeholders than videos ({len(videos)})")
                    ids.extend([token_id] * self.num_video_tokens(len(frames)))
                else:
                    ids.append(token_id)
            rows.append(ids)
        if next(video_iter, None) is not None:
            raise VideoInputError(f"more videos ({len(videos)}) than {self.video_token} placeholders")

        width = max(len(ids) for ids in rows)
        pad_id = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        input_ids, attention_mask = [], []
        for ids in rows:
            padding = width - len(ids)
            input_ids.append([pad_id] * padding + ids if left else ids + [pad_id] * padding)
            ones, zeros = [1] * len(ids), [0] * padding
            attention_mask.append(zeros + ones if left else ones + zeros)
        data: dict = {"input_ids": input_ids, "attention_mask": attention_mask}
        if videos:
            processed = [self.preprocess_video(frames) for frames in videos]
            data["pixel_values_videos"] = torch.cat(processed).numpy()
            data["video_num_frames"] = [p.shape[0] for p in processed]
        return BatchFeature(data, tensor_type=return_tensors)


def video_token_id_of(tokenizer: PreTrainedTokenizerBase, video_token: str = VIDEO_TOKEN) -> int:
    """The id of the video token, which must encode as exactly that one token."""
    ids = tokenizer(video_token, add_special_tokens=False)["input_ids"]
    token_id = tokenizer.convert_tokens_to_ids(video_token)
    if len(ids) != 1 or token_id is None or ids[0] != token_id or token_id == tokenizer.unk_token_id:
        raise VideoInputError(
            f"the tokenizer has no {video_token} token (it encodes as {ids}); add it as a special token"
        )
    return token_id


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORE_INDEX",
    "LlavaVideoProcessor",
    "VICUNA_SYSTEM",
    "VIDEO_TOKEN",
    "VideoInputError",
    "check_conversation",
    "expand_and_label",
    "hide_literal_placeholders",
    "literal_placeholder_ids",
    "preprocess_frames",
    "render_conversation",
    "restore_literal_placeholders",
    "video_token_id_of",
]
