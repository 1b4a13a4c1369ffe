"""HF-native video families behind VideoLM (transformers' own models through
AutoModelForImageTextToText + AutoProcessor): `llava-next-video` and `qwen2.5-vl`.

Importing this package registers both families (models.registry imports it on demand), so
`load_adapter_model(dir)` opens a saved VideoLM directory or a plain transformers checkpoint of
either model type.
"""

from vlm_rlaif.models.hf_native.base import HFNativeVideoLM, VideoEntry
from vlm_rlaif.models.hf_native.llava_next_video import LlavaNextVideoLM
from vlm_rlaif.models.hf_native.qwen2_5_vl import Qwen25VLVideoLM
from vlm_rlaif.models.hf_native.tiny import HF_NATIVE_ARCHES, build_tiny_hf_model, train_family_tokenizer

__all__ = [
    "HF_NATIVE_ARCHES",
    "HFNativeVideoLM",
    "LlavaNextVideoLM",
    "Qwen25VLVideoLM",
    "VideoEntry",
    "build_tiny_hf_model",
    "train_family_tokenizer",
]
