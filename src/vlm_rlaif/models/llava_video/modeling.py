"""`llava-video`: the paper's video LMM as a transformers model (docs/method.md, stage 0).

frames -> CLIP vision tower -> hidden states of one layer, CLS dropped -> projector -> spatio-temporal
mean pooling -> written over the `<video>` tokens of the prompt -> Llama language model.

The forward takes the video either as frames (`pixel_values_videos`, all videos' frames stacked, with
`video_num_frames` saying how many belong to each video) or as already pooled features
(`video_features`, e.g. from the feature cache). Videos in one batch may have different frame counts;
the processor has already expanded each video's placeholder into the right number of tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from vlm_rlaif.models.llava_video.configuration import LlavaVideoConfig

# transformers 5.2x renamed the KV cache's argument and output field `past_key_values` to `cache`;
# the forwards take either name and hand the cache on under the installed version's.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


class VideoProjector(nn.Module):
    """Maps vision-tower features into the language model's embedding space."""

    def __init__(self, config: LlavaVideoConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_width, text_width)
        # "linear" is LLaVA-1's projector; "mlp2x_gelu" (Linear, GELU, Linear) is LLaVA-1.5's.
        self.act = nn.GELU() if config.projector_type == "mlp2x_gelu" else None
        self.linear_2 = nn.Linear(text_width, text_width) if config.projector_type == "mlp2x_gelu" else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)
        if self.linear_2 is not None:
            hidden = self.linear_2(self.act(hidden))
        return hidden


def pool_video_features(frame_features: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool one video's per-frame features (T, P, D) into its visual tokens.

    "spatiotemporal" (Video-ChatGPT): T temporal tokens (each frame averaged over its P positions)
    followed by P spatial tokens (each position averaged over the T frames): (T + P, D).
    "none": every frame's tokens in frame order: (T * P, D).
    """
    if frame_features.dim() != 3:
        raise ValueError(f"expected per-frame features of shape (T, P, D), got {tuple(frame_features.shape)}")
    if pooling == "none":
        return frame_features.reshape(-1, frame_features.shape[-1])
    if pooling == "spatiotemporal":
        temporal = frame_features.mean(dim=1)
        spatial = frame_features.mean(dim=0)
        return torch.cat([temporal, spatial], dim=0)
    raise ValueError(f"unknown video pooling {pooling!r}")


class VideoTokenSplicer(nn.Module):
    """Writes visual features over the embeddings of the video placeholder tokens.

    A module (without parameters) rather than a function so that probes can hook the one place where
    a video enters the language model, whichever way it was given (frames or cached features).
    """

    def forward(
        self, inputs_embeds: torch.Tensor, video_token_mask: torch.Tensor, video_features: torch.Tensor
    ) -> torch.Tensor:
        num_tokens = int(video_token_mask.sum())
        if num_tokens != video_features.shape[0]:
            raise ValueError(
                f"the prompts hold {num_tokens} video tokens but {video_features.shape[0]} visual features "
                "were given; the processor must expand each video placeholder for that video's frame count"
            )
        features = video_features.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(video_token_mask.unsqueeze(-1), features)


class LlavaVideoPreTrainedModel(PreTrainedModel):
    config_class = LlavaVideoConfig
    config: LlavaVideoConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class LlavaVideoModel(LlavaVideoPreTrainedModel):
    """Vision tower, projector and language model, without the LM head."""

    def __init__(self, config: LlavaVideoConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = VideoProjector(config)
        self.video_splicer = VideoTokenSplicer()
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_num_frames: torch.Tensor | list[int]
    ) -> list[torch.Tensor]:
        """Frames of several videos, stacked (sum T, 3, S, S) -> one pooled (N_i, D) tensor per video."""
        num_frames = [int(n) for n in video_num_frames]
        if sum(num_frames) != pixel_values_videos.shape[0]:
            raise ValueError(
                f"video_num_frames {num_frames} sums to {sum(num_frames)} but {pixel_values_videos.shape[0]} "
                "frames were given"
            )
        pixels = pixel_values_videos.to(self.vision_tower.dtype)
        tower_out = self.vision_tower(pixels, output_hidden_states=True)
        patch_features = tower_out.hidden_states[self.config.vision_feature_layer][:, 1:]  # drop CLS
        projected = self.multi_modal_projector(patch_features)
        per_video = torch.split(projected, num_frames, dim=0)
        return [pool_video_features(frames, self.config.video_pooling) for frames in per_video]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | list[int] | None = None,
        video_features: torch.Tensor | list[torch.Tensor] | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if pixel_values_videos is not None and video_features is not None:
            raise ValueError("give the video either as pixel_values_videos or as video_features, not both")
        if pixel_values_videos is not None:
            if video_num_frames is None:
                raise ValueError("pixel_values_videos needs video_num_frames (frames per video)")
            video_features = self.get_video_features(pixel_values_videos, video_num_frames)
        if isinstance(video_features, (list, tuple)):
            video_features = torch.cat(list(video_features), dim=0)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if input_ids is not None:
            video_token_mask = input_ids == self.config.video_token_id
            if video_features is not None:
                inputs_embeds = self.video_splicer(inputs_embeds, video_token_mask, video_features)
            elif bool(video_token_mask.any()):
                raise ValueError(
                    f"input_ids hold {int(video_token_mask.sum())} video tokens but no video was given "
                    "(pixel_values_videos or video_features)"
                )
        elif video_features is not None:
            raise ValueError("a video needs input_ids to locate its video tokens")

        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: cache if cache is not None else past_key_values},
            **kwargs,
        )


class LlavaVideoForCausalLM(LlavaVideoPreTrainedModel, GenerationMixin):
    """`llava-video` with its LM head; registered with AutoModelForCausalLM and AutoModelForImageTextToText."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: LlavaVideoConfig):
        super().__init__(config)
        self.model = LlavaVideoModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_num_frames: torch.Tensor | list[int]
    ) -> list[torch.Tensor]:
        """Tower -> selected layer -> CLS dropped -> projector -> pooling; one (N_i, D) tensor per video."""
        return self.model.get_video_features(pixel_values_videos, video_num_frames)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | list[int] | None = None,
        video_features: torch.Tensor | list[torch.Tensor] | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward. `labels` (-100 = ignored) give the usual shifted cross-entropy loss.

        `logits_to_keep` (int n > 0: only the last n positions) avoids the vocabulary projection over the
        long visual prefix when only the tail is needed (scoring responses, next-token judging).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames,
            video_features=video_features,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # 0 keeps every position; n the last n (generate asks for 1); a tensor names the positions.
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # The video is spliced into the prompt once (prefill); decoding steps only feed new tokens, so
        # the video inputs must not reach them (transformers drops pixel inputs, but not ours).
        if not is_first_iteration and model_inputs.get("use_cache", True):
            for key in ("video_features", "video_num_frames", "pixel_values_videos"):
                model_inputs.pop(key, None)
        return model_inputs


__all__ = [
    "LlavaVideoForCausalLM",
    "LlavaVideoModel",
    "LlavaVideoPreTrainedModel",
    "VideoProjector",
    "VideoTokenSplicer",
    "pool_video_features",
]
