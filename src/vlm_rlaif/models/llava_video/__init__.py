"""`llava-video`: the paper's architecture as a transformers config/model/processor trio.

Importing this package registers it with the Auto classes (AutoConfig, AutoModelForCausalLM,
AutoModelForImageTextToText, AutoProcessor), so `from_pretrained` on a saved directory works once
`vlm_rlaif.models` has been imported.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from vlm_rlaif.models.llava_video.configuration import MODEL_TYPE, LlavaVideoConfig
from vlm_rlaif.models.llava_video.modeling import (
    LlavaVideoForCausalLM,
    LlavaVideoModel,
    pool_video_features,
)
from vlm_rlaif.models.llava_video.processing import (
    IGNORE_INDEX,
    VIDEO_TOKEN,
    LlavaVideoProcessor,
    VideoInputError,
    preprocess_frames,
    render_conversation,
)

AutoConfig.register(MODEL_TYPE, LlavaVideoConfig)
AutoModelForCausalLM.register(LlavaVideoConfig, LlavaVideoForCausalLM)
AutoModelForImageTextToText.register(LlavaVideoConfig, LlavaVideoForCausalLM)
AutoProcessor.register(LlavaVideoConfig, LlavaVideoProcessor)

__all__ = [
    "IGNORE_INDEX",
    "MODEL_TYPE",
    "VIDEO_TOKEN",
    "LlavaVideoConfig",
    "LlavaVideoForCausalLM",
    "LlavaVideoModel",
    "LlavaVideoProcessor",
    "VideoInputError",
    "pool_video_features",
    "preprocess_frames",
    "render_conversation",
]
