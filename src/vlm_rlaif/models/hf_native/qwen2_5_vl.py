"""The `qwen2.5-vl` family: transformers' Qwen2_5_VLForConditionalGeneration behind VideoLM.

Frames are resized (aspect kept, sides multiples of patch x merge, pixel budget from the video
processor), cut into patches of 2 frames (temporal_patch_size; an odd last frame is repeated) and
encoded by the windowed ViT, whose merger (the projector) joins 2x2 patches into one token.

Positions are 3-D (multimodal RoPE): a video token's position depends on its (t, h, w) place in the
video's grid. We compute them from input_ids + each video's grid for every forward
(`get_rope_index`), so cached features splice in exactly like frames. The grid of cached features is
read from the example's frames (shape only: a cache hit skips preprocessing and the tower), so on
this family an example needs its frames even when its features are cached.
Every video is given transformers' default time spacing (second_per_grid_ts = 1), what the stock
processor uses for frames sampled at its default 2 fps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

from vlm_rlaif.models.examples import ModelInputError
from vlm_rlaif.models.hf_native.base import HFNativeVideoLM, frames_as_numpy
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.models.registry import register_family

VIDEO_TOKEN_TYPE = 2  # mm_token_type_ids: text 0, image 1, video 2


@register_family
class Qwen25VLVideoLM(HFNativeVideoLM):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    model_class = Qwen2_5_VLForConditionalGeneration
    unquantized_modules = ("visual", "lm_head")

    def _shape_mismatches(self) -> list[str]:
        vision = self.base_model.config.vision_config
        video = self.processor.video_processor
        return [
            f"{name}: video processor {ours}, vision tower {theirs}"
            for name, ours, theirs in (
                ("patch_size", video.patch_size, vision.patch_size),
                ("temporal_patch_size", video.temporal_patch_size, vision.temporal_patch_size),
                ("merge_size", video.merge_size, vision.spatial_merge_size),
            )
            if ours != theirs
        ]

    def visual_modules(self) -> dict[str, nn.Module]:
        visual = self._inner().visual
        return {"vision_tower": visual, "projector": visual.merger}

    def set_trainable(
        self, *, language_model: bool = True, projector: bool = False, vision_tower: bool = False
    ) -> None:
        super().set_trainable(language_model=language_model, projector=projector, vision_tower=vision_tower)
        # The merger (projector) lives inside the vision tower: the tower's setting must not override it.
        for param in self.visual_modules()["projector"].parameters():
            param.requires_grad_(projector)

    def _peft_config(self, settings: LoraSettings):
        if settings.train_projector and settings.train_vision_tower:
            # The tower's trainable copy already holds the merger; peft cannot nest the two copies.
            settings = dataclasses.replace(settings, train_projector=False)
        return super()._peft_config(settings)

    # ------------------------------------------------------------ frames, grids, features

    def video_grid(self, frames: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
        """(t, h, w) patch grid these raw frames (T, H, W, 3) become, from their shape alone, by the
        video processor's rules (resize budget, optional per-frame cap, temporal padding)."""
        processor = self.processor.video_processor
        num_frames, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
        factor = processor.patch_size * processor.merge_size
        if processor.do_resize:
            max_pixels = processor.size["longest_edge"]
            if processor.cap_pixels_per_frame:
                total = int(processor.max_video_tokens * factor * factor * 0.9)
                max_pixels = max(
                    min(max_pixels, total * processor.temporal_patch_size // num_frames),
                    int(processor.size["shortest_edge"] * 1.05),
                )
            height, width = smart_resize(
                height, width, factor=factor, min_pixels=processor.size["shortest_edge"], max_pixels=max_pixels
            )
        grid_t = math.ceil(num_frames / processor.temporal_patch_size)
        return grid_t, height // processor.patch_size, width // processor.patch_size

    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> the processor's flat patch rows, viewed as (t, h, w, patch_dim) so
        the tensor carries its own grid."""
        out = self.processor.video_processor(videos=[frames_as_numpy(frames)], return_tensors="pt")
        grid_t, grid_h, grid_w = out["video_grid_thw"][0].tolist()
        return out["pixel_values_videos"].view(grid_t, grid_h, grid_w, -1)

    def num_video_tokens(self, frames: np.ndarray | torch.Tensor) -> int:
        grid_t, grid_h, grid_w = self.video_grid(frames)
        return grid_t * grid_h * grid_w // self.processor.video_processor.merge_size**2

    def _features_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = torch.tensor([pixels.shape[:3]], device=pixels.device)
        flat = pixels.reshape(-1, pixels.shape[-1])
        return self._inner().get_video_features(flat, grid).pooler_output[0]

    def _frames_inputs(self, pixels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values_videos": torch.cat([p.reshape(-1, p.shape[-1]) for p in pixels]),
            "video_grid_thw": torch.tensor([p.shape[:3] for p in pixels], dtype=torch.long),
        }

    def _build_batch(self, examples, items, mode, *args, **kwargs) -> dict[str, torch.Tensor]:
        batch = super()._build_batch(examples, items, mode, *args, **kwargs)
        if mode == "features":
            grids = []
            for index, (example, features) in enumerate(zip(examples, items)):
                if features is None:
                    continue
                if example.video is None:
                    raise ModelInputError(
                        f"example {index} (video_key {example.video_key!r}): qwen2.5-vl places cached "
                        "features by the video's grid, read from the frames' shape: pass the frames too "
                        "(they are not re-encoded)"
                    )
                grids.append(self.video_grid(example.video))
            if grids:
                batch["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return batch

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict:
        inputs = super().model_inputs(batch)
        input_ids = inputs["input_ids"]
        token_types = (input_ids == self.video_token_id).int() * VIDEO_TOKEN_TYPE
        # 3-D positions from the tokens and the grids (left or right padding alike); generate derives
        # its own from the same inputs, which is why mm_token_type_ids travel along.
        positions, _ = self._inner().get_rope_index(
            input_ids, token_types, video_grid_thw=inputs.get("video_grid_thw"), attention_mask=inputs["attention_mask"]
        )
        inputs["mm_token_type_ids"] = token_types
        inputs["position_ids"] = positions
        return inputs


__all__ = ["Qwen25VLVideoLM", "VIDEO_TOKEN_TYPE"]
