"""Tiny HF-native models (LLaVA-NeXT-Video, Qwen2.5-VL) built offline, for tests and toy runs.

Everything a real checkpoint ships is made locally: a byte-level BPE tokenizer trained on the given
texts with the family's special tokens, the family's Jinja chat template (as its public checkpoints
ship it), the stock image and video processors, and a randomly initialised model from a config.
Frames are 32 px: LLaVA-NeXT-Video makes 16 tokens of each frame (4 px patches, 2x2 pooling),
Qwen2.5-VL 16 tokens of each pair of frames (4 px patches, 2x2 merge).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models.hf_native.base import HFNativeVideoLM

# LLaVA-NeXT-Video's template (llava-hf checkpoints): "USER: <video>\n{text} ASSISTANT: {answer} ".
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2.5-VL's ChatML template (Qwen checkpoints), default system prompt included.
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_NEXT_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<video>", "<image>")
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>",
)  # fmt: skip

# (language model, vision tower) shapes per size.
LLAVA_NEXT_SIZES = {
    "tiny": (
        dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    ),
    "small": (
        dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8
        ),
        dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    ),
}
QWEN_SIZES = {
    # head_dim 32 (128 / 4): mrope_section must sum to head_dim / 2.
    "tiny": (
        dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
        dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1]),
        [4, 6, 6],
    ),
    "small": (
        dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4
        ),
        dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, fullatt_block_indexes=[1, 3]),
        [8, 12, 12],
    ),
    # Qwen2.5-VL-7B-Instruct's own shapes (its config.json: 28 x 3584 language model, 32 x 1280
    # windowed ViT with 14 px patches, a 152,064-row embedding), for benchmarks with random weights
    # (bench/gpu_check.py). About 8.3B parameters: build it under torch.device("cuda") and a bf16
    # default dtype. Keys beyond the shapes override the tiny defaults (patch size, vocabulary, RoPE).
    "7b": (
        dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rope_theta=1000000.0,
        ),
        dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31],
            patch_size=14,
        ),
        [16, 24, 24],
    ),
}
HF_NATIVE_ARCHES = ("llava-next-video", "qwen2.5-vl")
PATCH_SIZE = 4


def train_family_tokenizer(arch: str, texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE on `texts` (plus the template's fixed text) with the family's special tokens."""
    llava = _arch(arch) == "llava-next-video"
    specials = LLAVA_NEXT_SPECIALS if llava else QWEN_SPECIALS
    if vocab_size < 256 + len(specials):
        raise ConfigError(f"vocab_size must be at least {256 + len(specials)}, got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    template_text = ["USER: ASSISTANT:"] if llava else ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    bpe.train_from_iterator([*texts, *template_text * 50], trainer)
    if llava:
        # LLaMA tokenizers put BOS first; the stock processor tokenizes the rendered prompt with it.
        bpe.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"video_token": "<video>", "image_token": "<image>"},
            model_max_length=4096,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"video_token": "<|video_pad|>", "image_token": "<|image_pad|>"},
        model_max_length=4096,
    )


def build_tiny_hf_model(
    arch: str,
    texts: Iterable[str],
    *,
    size: str = "tiny",
    vocab_size: int = 1024,
    frames: int = 8,
    image_size: int = 32,
    seed: int = 0,
) -> HFNativeVideoLM:
    """A randomly initialised HF-native model of `arch` ("llava-next-video" or "qwen2.5-vl"), its
    tokenizer trained on `texts`. frames: the frame count recorded as the model's default sampling."""
    arch = _arch(arch)
    tokenizer = train_family_tokenizer(arch, texts, vocab_size)
    torch.manual_seed(seed)
    if arch == "llava-next-video":
        return _build_llava_next_video(tokenizer, size, frames, image_size)
    return _build_qwen2_5_vl(tokenizer, size, frames, image_size)


def _arch(arch: str) -> str:
    if arch not in HF_NATIVE_ARCHES:
        raise ConfigError(f"unknown HF-native architecture {arch!r}; known: {', '.join(HF_NATIVE_ARCHES)}")
    return arch


def _sizes(table: dict, size: str):
    if size not in table:
        raise ConfigError(f"unknown tiny model size {size!r}; known: {', '.join(table)}")
    return table[size]


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}


def _set_token_ids(model, tokenizer: PreTrainedTokenizerFast) -> None:
    for target in (model.config, model.config.get_text_config(), model.generation_config):
        for name, value in _token_ids(tokenizer).items():
            setattr(target, name, value)


def _build_llava_next_video(tokenizer, size: str, frames: int, image_size: int) -> HFNativeVideoLM:
    from transformers import (
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
    )
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    from vlm_rlaif.models.hf_native.llava_next_video import LlavaNextVideoLM

    text_shape, vision_shape = _sizes(LLAVA_NEXT_SIZES, size)
    square = {"height": image_size, "width": image_size}
    video_processor = LlavaNextVideoVideoProcessor(
        size={"shortest_edge": image_size}, crop_size=square, num_frames=frames
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size}, crop_size=square, image_grid_pinpoints=[[image_size, image_size]]
    )
    processor = LlavaNextVideoProcessor(
        video_processor=video_processor,
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=LLAVA_NEXT_VIDEO_TEMPLATE,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
    )
    text_config = dict(
        text_shape, model_type="llama", vocab_size=len(tokenizer), max_position_embeddings=2048, **_token_ids(tokenizer)
    )
    vision_config = dict(
        vision_shape,
        model_type="clip_vision_model",
        image_size=image_size,
        patch_size=PATCH_SIZE,
        projection_dim=vision_shape["hidden_size"],
    )
    config = LlavaNextVideoConfig(
        text_config=text_config,
        vision_config=vision_config,
        video_token_index=processor.video_token_id,
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=[[image_size, image_size]],
        vision_feature_layer=-2,
        spatial_pool_stride=2,
    )
    model = LlavaNextVideoForConditionalGeneration(config)
    _set_token_ids(model, tokenizer)
    return LlavaNextVideoLM(model.eval(), processor)


def _build_qwen2_5_vl(tokenizer, size: str, frames: int, image_size: int) -> HFNativeVideoLM:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from vlm_rlaif.models.hf_native.qwen2_5_vl import Qwen25VLVideoLM

    text_shape, vision_shape, mrope_section = _sizes(QWEN_SIZES, size)
    # A size may set its own vocabulary (a real checkpoint's embedding has more rows than its tokenizer
    # has tokens), positions, RoPE base and patch size; the tiny sizes take these defaults.
    text_shape = {"vocab_size": len(tokenizer), "max_position_embeddings": 4096, "rope_theta": 10000.0, **text_shape}
    rope_theta = text_shape.pop("rope_theta")
    vision_shape = {"patch_size": PATCH_SIZE, **vision_shape}
    patch_size = vision_shape["patch_size"]
    # Pixel budget: at most the square frame; at least a quarter of it.
    budget = {"shortest_edge": image_size * image_size // 4, "longest_edge": image_size * image_size}
    patches = dict(patch_size=patch_size, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=budget, cap_pixels_per_frame=False, num_frames=frames, **patches)
    image_processor = Qwen2VLImageProcessor(size=budget, **patches)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            text_shape,
            rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": rope_theta},
            **_token_ids(tokenizer),
        ),
        vision_config=dict(
            vision_shape,
            temporal_patch_size=2,
            spatial_merge_size=2,
            out_hidden_size=text_shape["hidden_size"],
            window_size=4 * patch_size * 2,  # 112 px at 14 px patches, as Qwen2.5-VL-7B
            tokens_per_second=2,
        ),
        video_token_id=processor.video_token_id,
        image_token_id=processor.image_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_token_ids(model, tokenizer)
    return Qwen25VLVideoLM(model.eval(), processor)


__all__ = [
    "HF_NATIVE_ARCHES",
    "LLAVA_NEXT_VIDEO_TEMPLATE",
    "QWEN2_5_VL_TEMPLATE",
    "build_tiny_hf_model",
    "train_family_tokenizer",
]
