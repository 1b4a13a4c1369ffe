"""Tiny `llava-video` models and a locally trained tokenizer, for the toy world and for tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the given texts (any text still
encodes, byte by byte), the model is built from a config with random weights. Sizes:
- "tiny": about 1.5M parameters (fast CPU tests and the CPU demo),
- "small": about 25M parameters (a toy model that can actually learn the toy world).
Frames are 32 px with 8 px patches: 16 positions per frame, so 24 frames become 24 + 16 = 40 tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models.llava_video import LlavaVideoConfig, LlavaVideoForCausalLM, LlavaVideoProcessor
from vlm_rlaif.models.llava_video.processing import ASSISTANT_ROLE, USER_ROLE, VICUNA_SYSTEM, VIDEO_TOKEN
from vlm_rlaif.models.llava_video_adapter import LlavaVideoLM

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", VIDEO_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens
# The chat template's fixed text occurs once per example, so it is always part of the corpus.
TEMPLATE_TEXT = f"{VICUNA_SYSTEM} {USER_ROLE}: {VIDEO_TOKEN}\n {ASSISTANT_ROLE}:"
TEMPLATE_REPEATS = 100
CORPUS_SUFFIXES = (".json", ".jsonl", ".txt")

# (language model, vision tower) shapes per size.
SIZES = {
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


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, out_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` plus the chat template's fixed text, with <s>, </s>, <unk>,
    <pad> and <video> as special tokens.

    The vocabulary may come out smaller than vocab_size when the texts are few. Saved to out_dir
    when given.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_with_template(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=[VIDEO_TOKEN],
        model_max_length=4096,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _with_template(texts: Iterable[str]) -> Iterator[str]:
    yield from texts
    for _ in range(TEMPLATE_REPEATS):
        yield TEMPLATE_TEXT


def read_corpus(path: str | os.PathLike) -> list[str]:
    """Texts to train a tokenizer on: every "value" string of JSON / JSONL instruction records (any
    depth), or the lines of a .txt file; a directory is read recursively (those three suffixes)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise UserError(f"{path}: no {', '.join(CORPUS_SUFFIXES)} files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"{path}: no such corpus file or directory")
    texts = []
    for file in files:
        texts.extend(_read_corpus_file(file))
    if not texts:
        raise UserError(f"{path}: no texts found (JSON records need 'value' strings)")
    return texts


def _read_corpus_file(path: Path) -> list[str]:
    if path.suffix not in CORPUS_SUFFIXES:
        raise UserError(f"{path}: a corpus file must be {', '.join(CORPUS_SUFFIXES)}")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read as UTF-8 text ({err})") from err
    if path.suffix == ".txt":
        return [line for line in content.splitlines() if line.strip()]
    if path.suffix == ".json":
        try:
            return list(_value_strings(json.loads(content)))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    texts = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            texts.extend(_value_strings(json.loads(line)))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{line_number}: invalid JSON record: {err.msg}") from err
    return texts


def _value_strings(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "value" and isinstance(value, str):
                yield value
            else:
                yield from _value_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _value_strings(item)


def build_tiny_model(
    size: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    frames: int = 24,
    image_size: int = 32,
    patch_size: int = 8,
    video_pooling: str = "spatiotemporal",
    projector_type: str = "mlp2x_gelu",
    seed: int = 0,
) -> LlavaVideoLM:
    """A randomly initialised llava-video model of the given size, wrapped as a VideoLM.

    frames: the frame count the processor records as the model's default sampling.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown tiny model size {size!r}; known: {', '.join(SIZES)}")
    text_shape, vision_shape = SIZES[size]
    text_config = dict(
        text_shape,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(vision_shape, image_size=image_size, patch_size=patch_size)
    processor = LlavaVideoProcessor(
        tokenizer, image_size=image_size, patch_size=patch_size, video_pooling=video_pooling, num_frames=frames
    )
    config = LlavaVideoConfig(
        vision_config=vision_config,
        text_config=text_config,
        video_token_id=processor.video_token_id,
        video_pooling=video_pooling,
        projector_type=projector_type,
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaVideoForCausalLM(config)
    for target in (model.config, model.generation_config):
        target.bos_token_id = tokenizer.bos_token_id
        target.eos_token_id = tokenizer.eos_token_id
        target.pad_token_id = tokenizer.pad_token_id
    return LlavaVideoLM(model.eval(), processor)


def load_vision_tower(lm: LlavaVideoLM, path: str | os.PathLike) -> None:
    """Replace the model's vision tower weights with a saved CLIPVisionModel's (same shapes)."""
    from transformers import CLIPVisionModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a saved vision tower (no config.json); make one with `vlm-rlaif vision`")
    saved = CLIPVisionModel.from_pretrained(path).state_dict()
    tower = lm.model.model.vision_tower
    mine = tower.state_dict()
    wrong = [k for k in mine if k not in saved or saved[k].shape != mine[k].shape]
    if wrong:
        raise UserError(f"{path}: this vision tower does not fit the model ({len(wrong)} weights differ, e.g. {wrong[0]})")
    tower.load_state_dict({k: saved[k] for k in mine})


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "MIN_VOCAB_SIZE",
    "SIZES",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "count_parameters",
    "load_vision_tower",
    "read_corpus",
    "train_tokenizer",
]
