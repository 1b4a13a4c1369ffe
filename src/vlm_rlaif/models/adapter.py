"""The one interface through which every stage reaches a video LMM: `VideoLM`.

Stages never branch on the model family. They hand over plain `VideoExample`s (a conversation plus a
video as uint8 frames, and a `video_key` naming the video and its frame sampling) and get back
batches, losses, samples, log-probabilities and hidden states. Family-specific work (chat template,
frame preprocessing, how the video enters the model, module names) lives in one subclass per family,
registered in `vlm_rlaif.models.registry`.

How each stage uses it:
- SFT: `collate(examples)` -> input_ids, attention_mask, position_ids, labels (assistant tokens only),
  video inputs; `forward(batch).loss`. What trains: `set_trainable(...)` (full fine-tuning) or
  `add_lora(name, LoraSettings(...))` (optionally with the projector / vision tower).
- AI feedback: `generate(examples, GenerationSettings(num_samples=K, temperature=...))` for candidate
  answers and clip descriptions (a clip is a VideoExample whose frames are a subset of the video's,
  with its own video_key, e.g. "v12@uniform50/clip0"); the judge reads
  `next_token_logprobs(examples, [" A", " B"], assistant_prefix="The better answer is")` (candidates
  written as they follow the prefix, here with their leading space).
- Reward / value model: `hidden_states(batch)` feeds `vlm_rlaif.models.heads.ScalarModel`.
- PPO: `generate` (the frozen visual path runs once per video through the feature cache), then
  `response_logprobs(examples, responses)` with grad for the policy and, for the reference, the same
  call inside `adapter_disabled()` (LoRA) or on `frozen_copy()` (full fine-tuning). Several named
  adapters share one base: `add_lora`/`load_lora`/`set_adapter`.
- Evaluation and chat: `generate(examples, GenerationSettings(temperature=0.2, max_new_tokens=512))`.

Batches are plain dicts of CPU tensors; `forward` moves them to the model's device. Visual inputs are
either frames (the trainable path: gradients reach the projector / tower) or pooled features
(the frozen path: computed once per video under no_grad and kept in `feature_cache`).

The plain data it takes and returns (VideoExample, GenerationSettings, Generation, its errors) lives in
`models.examples`; the named LoRA adapters (add / load / save / switch / disable / merge) in
`models.named_adapters`, which VideoLM inherits.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.examples import (
    Generation,
    GenerationSettings,
    ModelInputError,
    PromptTooLongError,
    VideoExample,
    pad_rows,
    position_ids,
    seeded,
    where_of,
)
from vlm_rlaif.models.feature_cache import FeatureCache, feature_key, module_fingerprint
from vlm_rlaif.models.lora import quantization_config
from vlm_rlaif.models.named_adapters import NamedAdapters

MODEL_INFO_FILE = "vlm_rlaif_model.json"
VisualMode = Literal["auto", "frames", "features"]

# Language-model module names per LoRA preset, under <...>.language_model.layers.<i> (the Llama and
# Qwen2 decoders of every family so far name them alike).
_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class VideoLM(NamedAdapters):
    """A video LMM behind the family-independent interface (see the module docstring).

    Attributes: `model` (the transformers model, or a peft model wrapping it once LoRA is added),
    `processor`, `tokenizer`, `family`, `feature_cache` (a FeatureCache, or None: no caching). A new VideoLM has
    every parameter frozen; `set_trainable` or `add_lora` choose what trains.

    A family subclass sets `family`, `model_types` (the transformers model_type values it loads) and
    `unquantized_modules` (module names kept out of 4-bit quantization), and implements the hooks
    marked "family hook" below.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    unquantized_modules: ClassVar[tuple[str, ...]] = ("lm_head",)

    features_input_supported = True  # the forward takes cached pooled features (see _takes_features)

    def __init__(self, model: nn.Module, processor, feature_cache: FeatureCache | bool = True):
        # Nothing trains until a stage says so (set_trainable or add_lora): inference, feature caching
        # and the reference policy are then safe by default.
        model.requires_grad_(False)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # True: a private in-memory cache; False: none; or a (shared, possibly on-disk) FeatureCache.
        # An empty FeatureCache is falsy (it has __len__): test the type, not the truth value.
        if isinstance(feature_cache, FeatureCache):
            self.feature_cache = feature_cache
        else:
            self.feature_cache = FeatureCache() if feature_cache else None
        self._lora_trainable: dict[str, bool] = {}  # adapter name -> trains when active
        self._fingerprint_memo: tuple[tuple, str] | None = None

    # ---------------------------------------------------------------- family hooks

    @property
    def video_token_id(self) -> int:
        """Family hook: id of the token whose positions receive visual features."""
        raise NotImplementedError

    def visual_modules(self) -> dict[str, nn.Module]:
        """Family hook: the frozen-in-RLAIF visual path by name ({"vision_tower": .., "projector": ..})."""
        raise NotImplementedError

    def visual_probe_modules(self) -> dict[str, nn.Module]:
        """Family hook: modules that run when a video enters a forward; must include "splice", the
        module called whether the video comes as frames or as cached features."""
        raise NotImplementedError

    def lora_targets(self, preset: str) -> str:
        """Family hook: peft target_modules regex for a LoRA preset (language model only). The default
        serves decoders at `_inner().language_model.layers` with Llama / Qwen2 module names."""
        if preset == "attn":
            leaves = _ATTENTION
        elif preset == "attn_mlp":
            leaves = _ATTENTION + _MLP
        elif preset == "all-linear":
            layer = self._inner().language_model.layers[0]
            leaves = tuple(sorted({name for name, m in layer.named_modules() if isinstance(m, nn.Linear)}))
        else:
            raise ConfigError(f"unknown LoRA target preset {preset!r}; known: attn, attn_mlp, all-linear")
        alternatives = "|".join(re.escape(leaf) for leaf in leaves)
        # Anchored under the language model: vision blocks reuse names like q_proj / gate_proj.
        return rf".*language_model\.layers\.\d+\.(?:{alternatives})"

    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Family hook: uint8 (T, H, W, 3) -> the model's pixel tensor for one video."""
        raise NotImplementedError

    def num_video_tokens(self, frames: np.ndarray | torch.Tensor) -> int:
        """Family hook: how many video tokens these raw frames (T, H, W, 3) become."""
        raise NotImplementedError

    def _features_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Family hook: preprocessed frames of one video -> pooled features (N, D) (caller sets no_grad)."""
        raise NotImplementedError

    def _frames_inputs(self, pixels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family hook: model kwargs for these videos given as frames (batch order)."""
        raise NotImplementedError

    def _features_inputs(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family hook: model kwargs for these videos given as pooled features (batch order)."""
        raise NotImplementedError

    def _encode_conversation(
        self,
        conversation: Sequence[dict],
        *,
        num_video_tokens: int | None,
        add_generation_prompt: bool,
        assistant_prefix: str | None,
        where: str,
    ) -> tuple[list[int], list[int]]:
        """Family hook: token ids (video placeholder expanded to num_video_tokens) and labels."""
        raise NotImplementedError

    def _prompt_tail(self, assistant_prefix: str | None) -> str:
        """Family hook: the text a generation prompt ends with (to tokenize candidates in context)."""
        raise NotImplementedError

    def _fingerprint_extra(self) -> str:
        """Family hook: settings besides the weights that change the pooled features."""
        return self.family

    def _inner(self) -> nn.Module:
        """Family hook: the transformers model without its LM head (vision tower, projector, language
        model)."""
        return self.base_model.model

    @classmethod
    def _from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> tuple[nn.Module, object]:
        """Family hook: (model, processor) loaded from a saved directory; kwargs go to the model's
        from_pretrained (dtype, quantization_config, device_map)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- basic properties

    @property
    def unwrapped_model(self) -> nn.Module:
        """`model` without a data-parallel wrapper (DDP / accelerate keep the model under `.module`).
        Add LoRA adapters before wrapping; `forward` goes through the wrapper (gradient sync)."""
        return getattr(self.model, "module", self.model)

    @property
    def base_model(self) -> nn.Module:
        """The transformers model, also when wrapped by peft or for data-parallel training."""
        model = self.unwrapped_model
        return model.get_base_model() if self.adapter_names else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    @property
    def hidden_size(self) -> int:
        """Width of the language model's hidden states (what a scalar head reads)."""
        return self.base_model.config.get_text_config().hidden_size

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id

    # ---------------------------------------------------------------- visual path

    @property
    def visual_path_frozen(self) -> bool:
        """True when no vision-tower or projector parameter trains (features may then be cached)."""
        return not any(p.requires_grad for m in self.visual_modules().values() for p in m.parameters())

    def vision_fingerprint(self) -> str:
        """Hash of the visual weights and settings; part of every feature-cache key.

        Recomputed only when a visual parameter changed (tensor identity or in-place version)."""
        tensors = [t for m in self.visual_modules().values() for t in (*m.parameters(), *m.buffers())]
        state = tuple((id(t), t._version) for t in tensors)
        if self._fingerprint_memo is None or self._fingerprint_memo[0] != state:
            self._fingerprint_memo = (state, module_fingerprint(self.visual_modules(), self._fingerprint_extra()))
        return self._fingerprint_memo[1]

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray | torch.Tensor, video_key: str | None = None) -> torch.Tensor:
        """Pooled visual features (N, D), on the CPU, of one video through the frozen visual path, no grad.

        With a video_key and a frozen visual path, the result is read from / stored in feature_cache.
        """
        return self._features_for(VideoExample(conversation=[], video=frames, video_key=video_key), "video")

    def _features_for(self, example: VideoExample, where: str) -> torch.Tensor | None:
        if example.video is None and example.video_key is None:
            return None
        video = example.video
        cache_key = None
        if example.video_key is not None and self.feature_cache is not None and self.visual_path_frozen:
            cache_key = feature_key(example.video_key, self.vision_fingerprint())
            cached = self.feature_cache.get(cache_key)
            # A hit whose token count disagrees with the frames means the key was reused for another
            # sampling: recompute rather than splice the wrong video. (A hit skips preprocessing too.)
            if cached is not None and (video is None or cached.shape[0] == self.num_video_tokens(video)):
                return cached
        if video is None:
            raise ModelInputError(
                f"{where}: video_key {example.video_key!r} is not in the feature cache and the example has no frames"
            )
        pixels = self._preprocess(video, where)
        with torch.no_grad():
            features = self._features_from_pixels(pixels.to(self.device, self.dtype)).cpu()
        if cache_key is not None:
            self.feature_cache.put(cache_key, features)
        return features

    def _preprocess(self, frames: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
        try:
            return self.preprocess_video(frames)
        except ValueError as err:
            raise ModelInputError(f"{where}: {err}") from err

    def _visual_items(self, examples: Sequence[VideoExample], mode: str) -> list[torch.Tensor | None]:
        """Per example: preprocessed frames ("frames") or pooled features ("features"); each distinct
        example object is processed once even when it repeats in the list (K samples per prompt)."""
        done: dict[int, torch.Tensor | None] = {}
        items = []
        for i, example in enumerate(examples):
            if id(example) not in done:
                where = where_of(i, example)
                if self._takes_features(mode):
                    done[id(example)] = self._features_for(example, where)
                elif example.video is not None:
                    done[id(example)] = self._preprocess(example.video, where)
                elif example.video_key is not None:
                    why = "the visual path trains" if mode == "frames" else "this transformers cannot take cached features"
                    raise ModelInputError(f"{where}: frames are needed ({why}) but video is None; pass the frames too")
                else:
                    done[id(example)] = None
            items.append(done[id(example)])
        return items

    # ---------------------------------------------------------------- prompt length

    @property
    def max_positions(self) -> int | None:
        """Positions the language model was built for (max_position_embeddings); None if unknown."""
        config = self.unwrapped_model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _longest_token(self) -> int:
        if getattr(self, "_longest_token_memo", None) is None:
            self._longest_token_memo = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._longest_token_memo

    def check_prompt_length(self, example: VideoExample, max_new_tokens: int, where: str, tokens: int | None = None) -> None:
        """Raise PromptTooLongError (naming `where`) when the prompt plus max_new_tokens exceeds
        max_positions. Every generation path calls it before the model allocates anything for the
        prompt: first without `tokens` (a bound from the text's length, so a huge text is refused
        before it is even tokenised), then with the tokenised prompt length, video tokens included."""
        limit = self.max_positions
        if limit is None:
            return
        room = limit - max_new_tokens
        if tokens is None:
            # No token is longer than the vocabulary's longest string: more characters than that
            # many tokens can hold cannot fit.
            chars = sum(len(turn.get("content") or "") for turn in example.conversation)
            if chars > max(room, 0) * self._longest_token():
                raise PromptTooLongError(
                    f"{where}: the prompt's text has {chars} characters, far more than the model's {limit} "
                    f"positions less max_new_tokens {max_new_tokens} can hold; shorten it"
                )
            return
        if tokens > room:
            raise PromptTooLongError(
                f"{where}: the prompt has {tokens} tokens (video included); with max_new_tokens {max_new_tokens} "
                f"that exceeds the model's {limit} positions; shorten it or lower max_new_tokens"
            )

    # ---------------------------------------------------------------- batches

    def collate(
        self,
        examples: Sequence[VideoExample],
        *,
        add_generation_prompt: bool = False,
        with_labels: bool | None = None,
        assistant_prefix: str | None = None,
        visual: VisualMode = "auto",
        padding_side: Literal["left", "right"] | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Examples -> a batch dict of CPU tensors.

        add_generation_prompt: end with an open assistant turn (conversations end with a user turn);
            otherwise conversations end with an assistant turn (training, reward scoring).
        with_labels: add labels, IGNORE_INDEX except assistant answer tokens and their EOS (default:
            when there is no generation prompt).
        assistant_prefix: text that opens the assistant turn (judging: read the next token after it).
        visual: "frames" (pixel tensors; gradients reach the visual path), "features" (pooled features,
            no grad, through the feature cache), "auto" = frames if the visual path trains.
        padding_side: default right for training, left for generation prompts.
        max_length: truncate training sequences on the right (never through the video tokens);
            prompts longer than this are an error.

        Keys: input_ids, attention_mask, position_ids, [labels], and the family's visual inputs.
        """
        if with_labels is None:
            with_labels = not add_generation_prompt
        if padding_side is None:
            padding_side = "left" if add_generation_prompt else "right"
        mode = self._resolve_mode(visual)
        items = self._visual_items(examples, mode)
        return self._build_batch(
            examples, items, mode, add_generation_prompt, with_labels, assistant_prefix, padding_side, max_length
        )

    def _build_batch(
        self, examples, items, mode, add_generation_prompt, with_labels, assistant_prefix, padding_side, max_length,
        max_new_tokens: int | None = None, indices: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """max_new_tokens: refuse prompts that leave less room than that (generation). indices: the
        examples' positions in the caller's list, for error messages."""
        rows, labels = [], []
        for i, (example, item) in enumerate(zip(examples, items)):
            where = where_of(indices[i] if indices is not None else i, example)
            if item is None:
                num_tokens = None
            else:
                num_tokens = item.shape[0] if self._takes_features(mode) else self.num_video_tokens(example.video)
            ids, row_labels = self._encode(example, num_tokens, add_generation_prompt, assistant_prefix, where)
            if max_new_tokens is not None:
                self.check_prompt_length(example, max_new_tokens, where, tokens=len(ids))
            if max_length is not None and len(ids) > max_length:
                ids, row_labels = self._truncate(ids, row_labels, max_length, add_generation_prompt, where)
            rows.append(ids)
            labels.append(row_labels)
        batch = pad_rows(rows, labels if with_labels else None, self.pad_token_id, padding_side)
        batch.update(self._visual_batch(items, mode))
        return batch

    def collate_with_responses(
        self, examples: Sequence[VideoExample], responses: Sequence[Sequence[int]], *, visual: VisualMode = "features"
    ) -> dict[str, torch.Tensor]:
        """Generation prompts (left-padded to width P) followed by the given response token ids
        (right-padded to width R): the layout of PPO scoring.

        Extra keys: response_mask (B, R) bool, True on real response tokens. Response token t of row b
        sits at column P + t of input_ids.
        """
        if len(examples) != len(responses):
            raise ModelInputError(f"{len(examples)} examples but {len(responses)} responses")
        batch = self.collate(
            examples, add_generation_prompt=True, with_labels=False, visual=visual, padding_side="left"
        )
        width = max(1, max(len(r) for r in responses))
        response_ids = torch.full((len(responses), width), self.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((len(responses), width), dtype=torch.bool)
        for row, response in enumerate(responses):
            response = torch.as_tensor(list(response), dtype=torch.long)
            if bool((response == self.video_token_id).any()):
                raise ModelInputError(f"{where_of(row, examples[row])}: the response holds the video token")
            response_ids[row, : len(response)] = response
            response_mask[row, : len(response)] = True
        batch["input_ids"] = torch.cat([batch["input_ids"], response_ids], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], response_mask.long()], dim=1)
        batch["position_ids"] = position_ids(batch["attention_mask"])
        batch["response_mask"] = response_mask
        return batch

    def prompt_length(self, conversation: Sequence[dict], *, video: bool = True, where: str = "prompt") -> int:
        """Tokens of the generation prompt of `conversation` as the model reads it (system sentence,
        template, BOS, question), its video placeholder counted as one token (video=True), the way
        the paper's code measures a query against its length limit."""
        example = VideoExample(list(conversation))
        ids, _ = self._encode(example, 1 if video else None, True, None, where)
        return len(ids)

    def _resolve_mode(self, visual: VisualMode) -> str:
        if visual == "auto":
            return "features" if self.visual_path_frozen else "frames"
        if visual not in ("frames", "features"):
            raise ConfigError(f"visual must be 'auto', 'frames' or 'features', got {visual!r}")
        return visual

    def _encode(self, example, num_tokens, add_generation_prompt, assistant_prefix, where):
        try:
            return self._encode_conversation(
                example.conversation,
                num_video_tokens=num_tokens,
                add_generation_prompt=add_generation_prompt,
                assistant_prefix=assistant_prefix,
                where=where,
            )
        except ValueError as err:  # the family's own error types become ModelInputError, named by example
            message = str(err) if str(err).startswith(where) else f"{where}: {err}"
            raise ModelInputError(message) from err

    def _truncate(self, ids, labels, max_length, is_prompt, where):
        if is_prompt:
            raise ModelInputError(f"{where}: the prompt has {len(ids)} tokens, more than max_length {max_length}")
        if self.video_token_id in ids[max_length:]:
            raise ModelInputError(
                f"{where}: {len(ids)} tokens exceed max_length {max_length} and truncating would cut the video"
            )
        return ids[:max_length], labels[:max_length]

    def _visual_batch(self, items: list[torch.Tensor | None], mode: str) -> dict[str, torch.Tensor]:
        present = [item for item in items if item is not None]
        if not present:
            return {}
        return self._features_inputs(present) if self._takes_features(mode) else self._frames_inputs(present)

    def _takes_features(self, mode: str) -> bool:
        """Whether a "features" batch really carries pooled features: a model whose forward cannot take
        them (HF-native families on transformers < 5.2x) gets the frames, and re-encodes them."""
        return mode == "features" and self.features_input_supported

    # ---------------------------------------------------------------- forward passes

    _NON_MODEL_KEYS = ("response_mask",)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's model arguments, on the model's device."""
        device = self.device
        return {k: v.to(device) for k, v in batch.items() if k not in self._NON_MODEL_KEYS}

    def forward(self, batch: dict[str, torch.Tensor], **kwargs):
        """The model's forward on a collated batch (loss when the batch has labels). No KV cache is
        built unless use_cache=True is passed."""
        kwargs.setdefault("use_cache", False)
        return self.model(**self.model_inputs(batch), **kwargs)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final-layer hidden states of the language model (B, L, hidden_size), after its final norm."""
        # logits_to_keep=1: the vocabulary projection is not needed, only the hidden states.
        # Labels would make the model compute a loss over the single kept logit: drop them.
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.forward(inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]

    def logprobs_of_responses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probabilities (B, R) of the response tokens of a `collate_with_responses` batch (0 on
        padding). Grad follows the caller (torch.no_grad or not)."""
        mask = batch["response_mask"]
        width = mask.shape[1]
        logits = self.forward(batch, logits_to_keep=width + 1).logits[:, :-1].float()
        targets = batch["input_ids"][:, -width:].to(logits.device)
        logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
        return logprobs * mask.to(logprobs.device)

    def response_logprobs(
        self, examples: Sequence[VideoExample], responses: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of the given responses after each example's generation prompt.

        Returns (logprobs (B, R), mask (B, R) bool); both on the model's device. Call with grad for the
        policy; for the LoRA reference call it inside `adapter_disabled()` under torch.no_grad().
        """
        batch = self.collate_with_responses(examples, responses)
        return self.logprobs_of_responses(batch), batch["response_mask"].to(self.device)

    def candidate_token_ids(self, candidates: Sequence[str], assistant_prefix: str | None = None) -> list[int]:
        """The single token each candidate string becomes right after the prompt's end.

        The candidate is tokenized in context (prompt tail + candidate), so with a prefix ending in a
        word, "A" may become " A" only if written so; a candidate that is not exactly one token there is
        an error that shows its tokens.
        """
        tail = self._prompt_tail(assistant_prefix)
        tail_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        ids = []
        for candidate in candidates:
            full = self.tokenizer(tail + candidate, add_special_tokens=False)["input_ids"]
            extra = full[len(tail_ids) :]
            if full[: len(tail_ids)] != tail_ids or len(extra) != 1:
                raise ModelInputError(
                    f"candidate {candidate!r} is not a single token after {tail!r} (together they tokenize "
                    f"as {self.tokenizer.convert_ids_to_tokens(full)}); write it as it follows the prompt, "
                    "e.g. with a leading space"
                )
            ids.append(extra[0])
        if len(set(ids)) != len(ids):
            raise ModelInputError(f"candidates {list(candidates)} do not map to distinct tokens")
        return ids

    @torch.no_grad()
    def next_token_logprobs(
        self,
        examples: Sequence[VideoExample],
        candidates: Sequence[str],
        *,
        assistant_prefix: str | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Log-probabilities (B, C) (float32, CPU) of each candidate as the next token after the
        generation prompt, opened with `assistant_prefix`. Over the full vocabulary, so the
        probabilities of the candidates sum to at most 1."""
        candidate_ids = torch.tensor(self.candidate_token_ids(candidates, assistant_prefix))
        rows = [torch.zeros((0, len(candidates)))]
        with self.eval_mode():
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = self.collate(
                    chunk, add_generation_prompt=True, assistant_prefix=assistant_prefix, visual="features"
                )
                logits = self.forward(batch, logits_to_keep=1).logits[:, -1].float()
                rows.append(torch.log_softmax(logits, dim=-1)[:, candidate_ids.to(logits.device)].cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def generate(
        self, examples: Sequence[VideoExample], settings: GenerationSettings | None = None
    ) -> list[Generation]:
        """Sample `settings.num_samples` answers per example (example-major order).

        The video of each example is encoded once (feature cache when video_key is set), however many
        samples. Runs in eval mode (dropout off) and restores the previous mode. The video token is
        never sampled.
        """
        settings = settings or GenerationSettings()
        config = self.generation_config(settings)
        for i, example in enumerate(examples):  # a huge text is refused before anything is encoded
            self.check_prompt_length(example, settings.max_new_tokens, where_of(i, example))
        features = self._visual_items(examples, "features")
        jobs = [(i, s) for i in range(len(examples)) for s in range(settings.num_samples)]
        results: list[Generation] = []
        with self.eval_mode(), seeded(settings.seed, self.device):
            for start in range(0, len(jobs), settings.batch_size):
                chunk = jobs[start : start + settings.batch_size]
                batch = self._build_batch(
                    [examples[i] for i, _ in chunk], [features[i] for i, _ in chunk], "features",
                    add_generation_prompt=True, with_labels=False, assistant_prefix=None, padding_side="left",
                    max_length=None, max_new_tokens=settings.max_new_tokens, indices=[i for i, _ in chunk],
                )
                inputs = self.model_inputs(batch)
                inputs.pop("position_ids")  # generate derives them from the mask, step by step
                sequences = self.unwrapped_model.generate(**inputs, generation_config=config)
                new_tokens = sequences[:, batch["input_ids"].shape[1] :].tolist()
                for (example_index, sample_index), tokens in zip(chunk, new_tokens):
                    results.append(self._to_generation(example_index, sample_index, tokens))
        return results

    def generation_config(self, settings: GenerationSettings, stop: Sequence[str] = ()):
        """The transformers GenerationConfig of these sampling settings (generate, chat and serve use
        it): greedy at temperature 0, the video token never sampled, optional stop strings."""
        from transformers import GenerationConfig

        sampling = settings.temperature > 0
        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            top_k=settings.top_k if sampling else None,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            # A sampled video placeholder could not be scored later (it would ask for a video).
            suppress_tokens=[self.video_token_id],
            cache_implementation=settings.cache_implementation,
            stop_strings=list(stop) or None,
        )

    def _to_generation(self, example_index: int, sample_index: int, tokens: list[int]) -> Generation:
        ended = self.eos_token_id in tokens
        if ended:
            tokens = tokens[: tokens.index(self.eos_token_id) + 1]
        text_ids = tokens[:-1] if ended else tokens
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        return Generation(example_index, sample_index, text, tokens, ended)

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Dropout off inside the block; the previous train/eval mode comes back after it."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    # ---------------------------------------------------------------- what trains

    def set_trainable(
        self, *, language_model: bool = True, projector: bool = False, vision_tower: bool = False
    ) -> None:
        """Full fine-tuning: choose which parts train (LoRA adapters decide this themselves)."""
        if self.adapter_names:
            raise UserError("LoRA adapters are attached; their LoraSettings decide what trains")
        for param in self.model.parameters():
            param.requires_grad_(language_model)
        visual = self.visual_modules()
        for param in visual["projector"].parameters():
            param.requires_grad_(projector)
        for param in visual["vision_tower"].parameters():
            param.requires_grad_(vision_tower)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass: far less memory, about a third
        more compute (non-reentrant, so frozen embeddings under LoRA need no special care)."""
        model = self.base_model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable()
        else:  # transformers < 5.2x: the older name
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def frozen_copy(self) -> VideoLM:
        """A frozen, eval-mode copy (the reference policy under full fine-tuning); shares the
        processor and the feature cache (same visual weights)."""
        if self.adapter_names:
            raise UserError(
                "with LoRA the reference is the same base with the adapter disabled: use adapter_disabled()"
            )
        model = copy.deepcopy(self.unwrapped_model).eval()
        model.requires_grad_(False)
        return type(self)(model, self.processor, feature_cache=self.feature_cache)

    # ---------------------------------------------------------------- save / load

    def save(self, directory: str | os.PathLike) -> None:
        """Save model, processor (tokenizer included) and the family marker; `load_adapter_model` reads it."""
        if self.adapter_names:
            raise UserError("LoRA adapters are attached: merge_lora() first, or save them with save_lora()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unwrapped_model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        info = {"family": self.family, "format": 1}
        (directory / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        feature_cache: FeatureCache | bool = True,
    ) -> VideoLM:
        """Load a saved model directory (no network: files must be local).

        dtype: e.g. "bfloat16" (default: as saved). quantization: "4bit" (QLoRA; needs bitsandbytes and
        CUDA; `unquantized_modules`, the visual path and LM head, stay unquantized). feature_cache: True
        (a private in-memory cache), False (none) or a FeatureCache to share (e.g. on disk, across stages)."""
        kwargs = {}
        if dtype is not None:
            kwargs["dtype"] = resolve_dtype(dtype)
        if quantization is not None:
            skip = list(cls.unquantized_modules)
            kwargs["quantization_config"] = quantization_config(quantization, skip_modules=skip)
            kwargs["device_map"] = {"": torch.device(device)}
        try:
            model, processor = cls._from_pretrained(directory, **kwargs)
        except (OSError, ValueError) as err:
            raise UserError(f"{directory}: cannot load a {cls.family} model: {err}") from err
        if quantization is None:
            model = model.to(device)
        return cls(model.eval(), processor, feature_cache=feature_cache)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"bfloat16" -> torch.bfloat16 (a torch.dtype passes through); anything else is a ConfigError."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use e.g. float32, bfloat16, float16")
    return value


__all__ = ["MODEL_INFO_FILE", "VideoLM", "resolve_dtype"]
