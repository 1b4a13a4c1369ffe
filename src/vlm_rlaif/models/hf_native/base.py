"""What every HF-native family shares: a transformers video model (AutoModelForImageTextToText) and its
AutoProcessor behind the VideoLM interface.

- Prompts use the checkpoint's own chat template (chat_template.ChatTemplateCodec).
- Frames go through the stock video processor and the model's own forward (`pixel_values_videos`).
- Cached pooled features go in through transformers' `mm_encoder_outputs` (precomputed encoder
  outputs, which forward and generate accept and which generate drops after the prefill), so the
  frozen visual path runs once per video. transformers before 5.2x has no such input: there every
  pass re-encodes its frames (correct, slower; features_input_supported is False).
- A parameterless `VideoEntry` module is called once per forward that carries a video, either way:
  the "splice" probe of count_visual_calls.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.hf_native.chat_template import ChatTemplateCodec


class VideoEntry(nn.Module):
    """Marks the one place a video enters the language model, whether as frames or as cached features.

    transformers splices the video inside its own forward; this module does no work, it is called
    (by a forward pre-hook on the inner model) once per forward whose inputs carry a video, so probes
    can hook it like llava-video's splicer. It has no parameters: nothing of it is saved.
    """

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def on_model_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        video = kwargs.get("pixel_values_videos")
        if video is None:
            encoded = (kwargs.get("mm_encoder_outputs") or {}).get("video")
            video = encoded.pooler_output if encoded is not None else None
        if video is not None:
            self(video)


class HFNativeVideoLM(VideoLM):
    """Base of the HF-native families. A family sets `family`, `model_types`, `model_class` and
    `unquantized_modules`, and implements the frame/feature hooks of VideoLM."""

    model_class: ClassVar[type]

    def __init__(self, model: nn.Module, processor, feature_cache: FeatureCache | bool = True):
        super().__init__(model, processor, feature_cache)
        inner = self._inner()
        # A deep copy (frozen_copy) carries the entry and its hook along: attach only once.
        if not isinstance(getattr(inner, "video_entry", None), VideoEntry):
            inner.video_entry = VideoEntry()
            inner.register_forward_pre_hook(inner.video_entry.on_model_forward, with_kwargs=True)
        self.features_input_supported = "mm_encoder_outputs" in inspect.signature(type(self.base_model).forward).parameters
        self.codec = ChatTemplateCodec(processor, processor.video_token, self.video_token_id)
        self._check_parts()

    def _check_parts(self) -> None:
        """Family hook: model and processor must agree on the video token and visual shapes."""
        config = self.base_model.config
        problems = []
        if self.processor.video_token_id != config.video_token_id:
            problems.append(
                f"video token id: processor {self.processor.video_token_id}, model {config.video_token_id}"
            )
        vocab_size = config.get_text_config().vocab_size
        if len(self.tokenizer) > vocab_size:
            problems.append(f"tokenizer has {len(self.tokenizer)} tokens, model vocab_size {vocab_size}")
        problems += self._shape_mismatches()
        if problems:
            raise UserError(f"{self.family}: model and processor disagree: " + "; ".join(problems))

    def _shape_mismatches(self) -> list[str]:
        """Family hook: visual settings on which model and processor disagree."""
        return []

    @property
    def video_token_id(self) -> int:
        return self.base_model.config.video_token_id

    def visual_probe_modules(self) -> dict[str, nn.Module]:
        return {**self.visual_modules(), "splice": self._inner().video_entry}

    def _encode_conversation(
        self, conversation, *, num_video_tokens, add_generation_prompt, assistant_prefix, where
    ) -> tuple[list[int], list[int]]:
        return self.codec.encode(
            conversation,
            num_video_tokens=num_video_tokens,
            add_generation_prompt=add_generation_prompt,
            assistant_prefix=assistant_prefix,
            where=where,
        )

    def _prompt_tail(self, assistant_prefix: str | None) -> str:
        return self.codec.prompt_tail(assistant_prefix)

    def _features_inputs(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # Kept as plain tensors in the batch; model_inputs turns them into mm_encoder_outputs.
        return {
            "video_features": torch.cat(features),
            "video_token_counts": torch.tensor([f.shape[0] for f in features], dtype=torch.long),
        }

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict:
        inputs = super().model_inputs(batch)
        features = inputs.pop("video_features", None)
        counts = inputs.pop("video_token_counts", None)
        if features is not None:
            per_video = torch.split(features, counts.tolist())
            inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=per_video)}
        return inputs

    def _fingerprint_extra(self) -> str:
        # The video processor's settings (size, crop, normalisation) change the features too.
        settings = self.processor.video_processor.to_json_string()
        return f"{self.family};{hashlib.sha256(settings.encode()).hexdigest()[:16]}"

    @classmethod
    def _from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> tuple[nn.Module, object]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(directory, **kwargs)
        processor = AutoProcessor.from_pretrained(directory)
        if not isinstance(model, cls.model_class):
            raise UserError(f"{directory}: expected a {cls.model_class.__name__}, found {type(model).__name__}")
        return model, processor


def frames_as_numpy(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (T, H, W, 3) frames as a numpy array; a ValueError (-> ModelInputError) otherwise."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got shape {frames.shape}")
    return frames


__all__ = ["HFNativeVideoLM", "VideoEntry", "frames_as_numpy"]
