"""The `llava-next-video` family: transformers' LlavaNextVideoForConditionalGeneration behind VideoLM.

Each frame is resized and centre-cropped by the stock video processor, encoded by the CLIP tower
(one layer, CLS dropped), average-pooled 2x2 (spatial_pool_stride) and projected: every frame
becomes the same number of tokens, and frames never mix, so a video's features are its frames'
features in order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import LlavaNextVideoForConditionalGeneration

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.hf_native.base import HFNativeVideoLM, frames_as_numpy
from vlm_rlaif.models.registry import register_family


@register_family
class LlavaNextVideoLM(HFNativeVideoLM):
    family = "llava-next-video"
    model_types = ("llava_next_video",)
    model_class = LlavaNextVideoForConditionalGeneration
    unquantized_modules = ("vision_tower", "multi_modal_projector", "lm_head")

    def __init__(self, model: nn.Module, processor, feature_cache=True):
        config = model.config
        if config.spatial_pool_mode == "conv":
            # Its pooling weights would belong to neither the tower nor the projector.
            raise UserError("llava-next-video with spatial_pool_mode 'conv' is not supported (use 'average' or 'max')")
        if config.vision_feature_select_strategy != "default":
            raise UserError("llava-next-video needs vision_feature_select_strategy 'default' (CLS dropped)")
        super().__init__(model, processor, feature_cache)
        side = config.vision_config.image_size // config.vision_config.patch_size // config.spatial_pool_stride
        self.tokens_per_frame = side * side

    def _shape_mismatches(self) -> list[str]:
        vision = self.base_model.config.vision_config
        crop = self.processor.video_processor.crop_size
        size = (crop["height"], crop["width"]) if self.processor.video_processor.do_center_crop else None
        problems = []
        if size != (vision.image_size, vision.image_size):
            problems.append(
                f"the video processor must centre-crop frames to the tower's {vision.image_size} px square, "
                f"its crop is {size}"
            )
        if self.processor.patch_size not in (None, vision.patch_size):
            problems.append(f"patch_size: processor {self.processor.patch_size}, tower {vision.patch_size}")
        return problems

    def visual_modules(self) -> dict[str, nn.Module]:
        inner = self._inner()
        return {"vision_tower": inner.vision_tower, "projector": inner.multi_modal_projector}

    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float (T, 3, S, S), as the stock video processor makes them."""
        pixels = self.processor.video_processor(videos=[frames_as_numpy(frames)], return_tensors="pt")
        return pixels["pixel_values_videos"][0]

    def num_video_tokens(self, frames: np.ndarray | torch.Tensor) -> int:
        return len(frames) * self.tokens_per_frame

    def _features_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._inner().get_video_features(pixels.unsqueeze(0)).pooler_output[0]

    def _frames_inputs(self, pixels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # All videos' frames as one pseudo-video: features are per frame, in order, so this fills the
        # video tokens of each row exactly as separate videos would, and videos of the batch may
        # have different frame counts.
        return {"pixel_values_videos": torch.cat(pixels).unsqueeze(0)}

    def _fingerprint_extra(self) -> str:
        c = self.base_model.config
        return (
            f"{super()._fingerprint_extra()};layer={c.vision_feature_layer};"
            f"pool={c.spatial_pool_mode}{c.spatial_pool_stride}"
        )


__all__ = ["LlavaNextVideoLM"]
