"""The `llava-video` family behind the VideoLM interface (the paper's architecture)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.adapter import VideoLM, resolve_dtype
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.llava_video import (
    MODEL_TYPE,
    LlavaVideoConfig,
    LlavaVideoForCausalLM,
    LlavaVideoProcessor,
)
from vlm_rlaif.models.llava_video.processing import ASSISTANT_ROLE
from vlm_rlaif.models.lora import quantization_config
from vlm_rlaif.models.registry import register_family

# Language-model module names per LoRA preset, under model.language_model.layers.<i>.
_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@register_family
class LlavaVideoLM(VideoLM):
    family = "llava-video"
    model_types = (MODEL_TYPE,)

    def __init__(self, model: nn.Module, processor: LlavaVideoProcessor, feature_cache: FeatureCache | bool = True):
        super().__init__(model, processor, feature_cache)
        _check_parts(self.base_model.config, processor)

    @property
    def config(self) -> LlavaVideoConfig:
        return self.base_model.config

    @property
    def video_token_id(self) -> int:
        return self.config.video_token_id

    def _inner(self) -> nn.Module:
        return self.base_model.model

    def visual_modules(self) -> dict[str, nn.Module]:
        inner = self._inner()
        return {"vision_tower": inner.vision_tower, "projector": inner.multi_modal_projector}

    def visual_probe_modules(self) -> dict[str, nn.Module]:
        return {**self.visual_modules(), "splice": self._inner().video_splicer}

    def lora_targets(self, preset: str) -> str:
        if preset == "attn":
            leaves = _ATTENTION
        elif preset == "attn_mlp":
            leaves = _ATTENTION + _MLP
        elif preset == "all-linear":
            leaves = self._language_model_linear_leaves()
        else:
            raise ConfigError(f"unknown LoRA target preset {preset!r}; known: attn, attn_mlp, all-linear")
        alternatives = "|".join(re.escape(leaf) for leaf in leaves)
        return rf".*language_model\.layers\.\d+\.(?:{alternatives})"

    def _language_model_linear_leaves(self) -> tuple[str, ...]:
        layers = self._inner().language_model.layers
        return tuple(sorted({name for name, m in layers[0].named_modules() if isinstance(m, nn.Linear)}))

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
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        feature_cache: FeatureCache | bool = True,
    ) -> LlavaVideoLM:
        kwargs = {}
        if dtype is not None:
            kwargs["dtype"] = resolve_dtype(dtype)
        if quantization is not None:
            kwargs["quantization_config"] = quantization_config(
                quantization, skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]
            )
            kwargs["device_map"] = {"": torch.device(device)}
        try:
            model = LlavaVideoForCausalLM.from_pretrained(directory, **kwargs)
            processor = LlavaVideoProcessor.from_pretrained(directory)
        except (OSError, ValueError) as err:
            raise UserError(f"{directory}: cannot load a llava-video model: {err}") from err
        if quantization is None:
            model = model.to(device)
        return cls(model.eval(), processor, feature_cache=feature_cache)


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
