"""Conversations -> token ids and assistant-only labels through a processor's own Jinja chat template.

HF-native checkpoints ship their chat template; we keep it, so prompts are exactly what the model
was trained on. Three steps:
- Render with `processor.apply_chat_template(..., tokenize=False)`, the video as a {"type": "video"}
  part first in the first user turn (every stock video template prints its placeholder there).
- Find each assistant answer in the text by rendering turn by turn: the text up to an answer with a
  generation prompt is a prefix of the text with the answer, and the difference is the answer's turn.
  The trained span runs from there through the first EOS token; what follows it (e.g. a newline) is
  not trained. A template that closes an answer without the EOS token (LLaVA-NeXT-Video ends it with
  a space) gets the EOS text inserted after the answer, so the model learns to stop; every prompt
  renders earlier answers the same way, so training and generation agree.
- Tokenize the whole text once, with offsets (the same ids the stock processor gives for this text),
  mark the tokens that overlap a trained span, and expand the one video token into as many copies as
  the video has visual tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlm_rlaif.models.llava_video.processing import (
    VideoInputError,
    check_conversation,
    expand_and_label,
    hide_literal_placeholders,
    literal_placeholder_ids,
    restore_literal_placeholders,
)

_PROBE_QUESTION = "q"
_PROBE_ANSWER = "probe answer"


class ChatTemplateCodec:
    """Renders and tokenizes conversations for one processor (tokenizer + chat template).

    video_token / video_token_id: the placeholder the template prints for a {"type": "video"} part.
    """

    def __init__(self, processor, video_token: str, video_token_id: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.video_token = video_token
        self.video_token_id = video_token_id
        self.literal_video_ids = literal_placeholder_ids(self.tokenizer, video_token, video_token_id)
        if not getattr(processor, "chat_template", None):
            raise VideoInputError("the processor has no chat template (chat_template.jinja)")
        eos = self.tokenizer.eos_token
        if not eos:
            raise VideoInputError("the tokenizer has no EOS token: answers could never end")
        self.eos_text = eos
        # What every generation prompt ends with, and what the template puts between that and an
        # answer (LLaVA-NeXT: "ASSISTANT:" and " "; ChatML: "<|im_start|>assistant\n" and "").
        user = [{"role": "user", "content": _PROBE_QUESTION}]
        closed = self._render(user, has_video=False, add_generation_prompt=False)
        opened = self._render(user, has_video=False, add_generation_prompt=True)
        if not opened.startswith(closed):
            raise VideoInputError("chat template: the generation prompt does not extend the conversation text")
        self.generation_suffix = opened[len(closed) :]
        answered = self._render(
            user + [{"role": "assistant", "content": _PROBE_ANSWER}], has_video=False, add_generation_prompt=False
        )
        if not answered.startswith(opened) or _PROBE_ANSWER not in answered[len(opened) :]:
            raise VideoInputError(
                "chat template: an answer is not rendered right after the generation prompt, so answers "
                "cannot be located for training labels"
            )
        turn = answered[len(opened) :]
        self.answer_lead = turn[: turn.index(_PROBE_ANSWER)]

    def prompt_tail(self, assistant_prefix: str | None) -> str:
        """The text every generation prompt (opened with `assistant_prefix`) ends with."""
        return self.generation_suffix + (self.answer_lead + assistant_prefix if assistant_prefix else "")

    def _render(self, conversation: Sequence[dict], *, has_video: bool, add_generation_prompt: bool) -> str:
        messages = []
        video_placed = not has_video
        for message in conversation:
            parts = [{"type": "text", "text": message["content"]}]
            if message["role"] == "user" and not video_placed:
                parts.insert(0, {"type": "video"})
                video_placed = True
            messages.append({"role": message["role"], "content": parts})
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def render(
        self,
        conversation: Sequence[dict],
        *,
        has_video: bool,
        add_generation_prompt: bool,
        assistant_prefix: str | None = None,
        where: str = "conversation",
    ) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character spans that are trained (answer through EOS)."""
        check_conversation(conversation, add_generation_prompt=add_generation_prompt, where=where)
        if assistant_prefix is not None and not add_generation_prompt:
            raise VideoInputError(f"{where}: assistant_prefix needs add_generation_prompt=True")
        turns = list(conversation)
        full = self._render(turns, has_video=has_video, add_generation_prompt=add_generation_prompt)
        # (end of the answer's trained text in `full`, whether the EOS text must be inserted there)
        answers: list[tuple[int, int, bool]] = []
        for index, message in enumerate(turns):
            if message["role"] != "assistant":
                continue
            before = self._render(turns[:index], has_video=has_video, add_generation_prompt=True)
            after = self._render(turns[: index + 1], has_video=has_video, add_generation_prompt=False)
            if not after.startswith(before) or not full.startswith(after):
                raise VideoInputError(
                    f"{where}: the chat template renders turn {index} differently depending on what follows, "
                    "so its answer cannot be located for training labels"
                )
            eos_at = after.find(self.eos_text, len(before))
            if eos_at >= 0:
                answers.append((len(before), eos_at + len(self.eos_text), False))
            else:
                answers.append((len(before), len(after), True))

        pieces, spans, cursor, shift = [], [], 0, 0
        for start, end, insert_eos in answers:
            pieces.append(full[cursor:end])
            closing = self.eos_text if insert_eos else ""
            pieces.append(closing)
            spans.append((start + shift, end + shift + len(closing)))
            shift += len(closing)
            cursor = end
        pieces.append(full[cursor:])
        if assistant_prefix:
            pieces.append(self.answer_lead + assistant_prefix)
        return "".join(pieces), spans

    def encode(
        self,
        conversation: Sequence[dict],
        *,
        num_video_tokens: int | None,
        add_generation_prompt: bool,
        assistant_prefix: str | None = None,
        where: str = "conversation",
    ) -> tuple[list[int], list[int]]:
        """Token ids (video placeholder expanded to num_video_tokens; None = no video) and labels
        (IGNORE_INDEX except the tokens of each answer through its EOS)."""
        has_video = num_video_tokens is not None
        # The template prints the video's placeholder; one in message text (e.g. a sampled answer)
        # is text and is written as ordinary tokens.
        text, spans = self.render(
            hide_literal_placeholders(conversation, self.video_token, keep_first_user=False),
            has_video=has_video,
            add_generation_prompt=add_generation_prompt,
            assistant_prefix=assistant_prefix,
            where=where,
        )
        placeholders = text.count(self.video_token)
        if placeholders != int(has_video):
            raise VideoInputError(
                f"{where}: the chat template printed {placeholders} video placeholder(s) {self.video_token!r} "
                f"for {int(has_video)} video(s)"
            )
        text, video_at = restore_literal_placeholders(text, self.video_token)
        # The stock processors tokenize rendered text with the tokenizer's special tokens (LLaMA's BOS)
        # unless the template already wrote them.
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        encoded = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        return expand_and_label(
            encoded["input_ids"], encoded["offset_mapping"], spans, self.video_token_id, num_video_tokens,
            video_at, self.literal_video_ids,
        )


__all__ = ["ChatTemplateCodec"]
