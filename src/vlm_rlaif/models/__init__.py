"""Models behind one interface (`VideoLM`): the paper's llava-video architecture, tiny builders, scalar
heads, LoRA settings and the visual-feature cache. See adapter.py for how each stage uses them."""

from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import (
    IGNORE_INDEX,
    Generation,
    GenerationSettings,
    ModelInputError,
    VideoExample,
)
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.heads import ScalarHead, ScalarModel, last_token_positions
from vlm_rlaif.models.llava_video_adapter import LlavaVideoLM
from vlm_rlaif.models.lora import LORA_PRESETS, LoraSettings
from vlm_rlaif.models.probes import VisualCallCounts, count_visual_calls
from vlm_rlaif.models.registry import (
    family_of_directory,
    known_families,
    load_adapter_model,
)
from vlm_rlaif.models.tiny import build_tiny_model, train_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "LORA_PRESETS",
    "FeatureCache",
    "Generation",
    "GenerationSettings",
    "LlavaVideoLM",
    "LoraSettings",
    "ModelInputError",
    "ScalarHead",
    "ScalarModel",
    "VideoExample",
    "VideoLM",
    "VisualCallCounts",
    "build_tiny_model",
    "count_visual_calls",
    "family_of_directory",
    "known_families",
    "last_token_positions",
    "load_adapter_model",
    "train_tokenizer",
]
