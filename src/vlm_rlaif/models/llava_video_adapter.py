"""The `llava-video` family behind the VideoLM interface (the paper's architecture)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.llava_video import (
    MODEL_TYPE,
    LlavaVideoConfig,
    LlavaVideoForCausalLM,
    LlavaVideoProcessor,
)
from vlm_rlaif.models.llava_video.processing import ASSISTANT_ROLE
from vlm_rlaif.models.registry import register_family


@register_family
class LlavaVideoLM(VideoLM):
    family = "llava-video"
    model_types = (MODEL_TYPE,)
    unquantized_modules = ("vision_tower", "multi_modal_projector", "lm_head")

    def __init__(self, model: nn.Module, processor: LlavaVideoProcessor, feature_cache: FeatureCache | bool = True):
        super().__init__(model, processor, feature_cache)
        _check_parts(self.base_model.config, processor)

    @property
    def config(self) -> LlavaVideoConfig:
        return self.base_model.config

    @property
    def video_token_id(self) -> int:
        return self.config.video_token_id

    def visual_modules(self) -> dict[str, nn.Module]:
        inner = self._inner()
        return {"vision_tower": inner.vision_tower, "projector": inner.multi_modal_projector}

    def visual_probe_modules(self) -> dict[str, nn.Module]:
        return {**self.visual_modules(), "splice": self._inner().video_splicer}

    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.processor.preprocess_video(frames)

    def num_video_tokens(self, frames: np.ndarray | torch.Tensor) -> int:
        return self.config.num_video_tokens(len(frames))

    def _features_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base_model.get_video_features(pixels, [pixels.shape[0]])[0]

    def _frames_inputs(self, pixels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values_videos": torch.cat(pixels),
            "video_num_frames": torch.tensor([p.shape[0] for p in pixels], dtype=torch.long),
        }

    def _features_inputs(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"video_features": torch.cat(features)}

    def _encode_conversation(
        self,
        conversation: Sequence[dict],
        *,
        num_video_tokens: int | None,
        add_generation_prompt: bool,
        assistant_prefix: str | None,
        where: str,
    ) -> tuple[list[int], list[int]]:
        return self.processor.encode_conversation(
            conversation,
            num_video_tokens=num_video_tokens,
            add_generation_prompt=add_generation_prompt,
            assistant_prefix=assistant_prefix,
            where=where,
        )

    def _prompt_tail(self, assistant_prefix: str | None) -> str:
        # As in the prompt: a space, then the open assistant turn.
        return f" {ASSISTANT_ROLE}: {assistant_prefix}" if assistant_prefix else f" {ASSISTANT_ROLE}:"

    def _fingerprint_extra(self) -> str:
        c = self.config
        return f"{self.family};layer={c.vision_feature_layer};pool={c.video_pooling};proj={c.projector_type}"

    @classmethod
    def _from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> tuple[nn.Module, LlavaVideoProcessor]:
        return LlavaVideoForCausalLM.from_pretrained(directory, **kwargs), LlavaVideoProcessor.from_pretrained(directory)


def _check_parts(config: LlavaVideoConfig, processor: LlavaVideoProcessor) -> None:
    """Model and processor must agree on everything that sets the number and meaning of tokens."""
    vision = config.vision_config
    mismatches = [
        f"{name}: model {model_value!r}, processor {processor_value!r}"
        for name, model_value, processor_value in (
            ("image_size", vision.image_size, processor.image_size),
            ("patch_size", vision.patch_size, processor.patch_size),
            ("video_pooling", config.video_pooling, processor.video_pooling),
            ("video_token_id", config.video_token_id, processor.video_token_id),
        )
        if model_value != processor_value
    ]
    if len(processor.tokenizer) > config.text_config.vocab_size:
        mismatches.append(
            f"tokenizer has {len(processor.tokenizer)} tokens, model vocab_size {config.text_config.vocab_size}"
        )
    if mismatches:
        raise UserError("model and processor disagree: " + "; ".join(mismatches))


__all__ = ["LlavaVideoLM"]
