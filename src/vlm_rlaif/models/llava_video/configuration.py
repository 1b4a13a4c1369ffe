"""Configuration of `llava-video`, the paper's architecture (docs/method.md, stage 0).

A CLIP-style vision tower, a projector into the language model's width, spatio-temporal mean pooling
over the frames of one video, and a Llama-style language model. The defaults are the paper's 7B
shapes (CLIP ViT-L/14 at 336 px, second-to-last layer, 2-layer MLP projector, Vicuna-7B).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

# Our own model_type: prefixed so it can never collide with a model type transformers adds later.
MODEL_TYPE = "vlm_rlaif_llava_video"

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
POOLING_TYPES = ("spatiotemporal", "none")


def video_token_count(num_frames: int, patches_per_frame: int, pooling: str) -> int:
    """How many visual tokens a video of `num_frames` frames becomes (T + P pooled, T * P for "none")."""
    return num_frames * patches_per_frame if pooling == "none" else num_frames + patches_per_frame


# The paper's 7B shapes: CLIP ViT-L/14 at 336 px; Vicuna's 32,000 tokens plus `<video>` (id 32000).
VISION_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
}
TEXT_DEFAULTS = {"vocab_size": 32001}


def _sub_config(value, model_type: str, defaults: dict) -> PreTrainedConfig:
    """A sub-config from a dict (its model_type, else `model_type`), None (the defaults) or a config."""
    from transformers import CONFIG_MAPPING

    if value is None:
        return CONFIG_MAPPING[model_type](**defaults)
    if isinstance(value, dict):
        value = dict(value)
        return CONFIG_MAPPING[value.pop("model_type", model_type)](**value)
    return value


@strict
class LlavaVideoConfig(PreTrainedConfig):
    """Sub-configs plus the few choices that connect them.

    video_token_id: id of the `<video>` token in the tokenizer; the processor expands one placeholder into
        `num_video_tokens(T)` copies of it and the model overwrites those positions with visual features.
    projector_type: "linear" or "mlp2x_gelu" (Linear, GELU, Linear), LLaVA-1.5's choice.
    vision_feature_layer: index into the tower's hidden states (-2 = second-to-last layer); the CLS
        token is always dropped, only patch tokens are used.
    video_pooling: "spatiotemporal" (T temporal tokens, each frame averaged over its P positions,
        followed by P spatial tokens, each position averaged over the T frames) or "none" (all T*P).
    """

    model_type = MODEL_TYPE
    # The plain `sub_configs` mapping (filled in __post_init__) works on every transformers 5.x;
    # `sub_configs_defaults` / SubConfigSpec exist only from 5.2x.
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    video_token_id: int = 32000
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    video_pooling: str = "spatiotemporal"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _sub_config(self.vision_config, "clip_vision_model", VISION_DEFAULTS)
        self.text_config = _sub_config(self.text_config, "llama", TEXT_DEFAULTS)
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type {self.projector_type!r} is not one of {PROJECTOR_TYPES}")
        if self.video_pooling not in POOLING_TYPES:
            raise ValueError(f"video_pooling {self.video_pooling!r} is not one of {POOLING_TYPES}")
        num_states = self.vision_config.num_hidden_layers + 1  # embeddings output + one per layer
        if not -num_states <= self.vision_feature_layer < num_states:
            raise ValueError(
                f"vision_feature_layer {self.vision_feature_layer} is out of range for a vision tower "
                f"with {self.vision_config.num_hidden_layers} layers"
            )
        if not 0 <= self.video_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"video_token_id {self.video_token_id} is outside the language model's vocabulary "
                f"(vocab_size {self.text_config.vocab_size})"
            )

    @property
    def patches_per_frame(self) -> int:
        """P: patch positions per frame (CLS excluded)."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side * side

    def num_video_tokens(self, num_frames: int) -> int:
        """How many `<video>` tokens a video of `num_frames` frames becomes after pooling."""
        return video_token_count(num_frames, self.patches_per_frame, self.video_pooling)


__all__ = ["LlavaVideoConfig", "MODEL_TYPE", "POOLING_TYPES", "PROJECTOR_TYPES", "video_token_count"]
