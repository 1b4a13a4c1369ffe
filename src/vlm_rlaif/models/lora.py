"""LoRA settings and 4-bit quantization settings, independent of the model family.

The paper puts LoRA on all attention and MLP projections of the language model ("attn_mlp"): r=32,
alpha=32 for SFT; r=64, alpha=16 for the reward model and the policy. Which module names a preset
means is family-specific: VideoLM.lora_targets(preset) resolves it. The vision tower is never a LoRA
target (its attention layers have the same names as the LM's, so targets are always anchored under
the language model).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vlm_rlaif.errors import ConfigError, UserError

LORA_PRESETS = ("attn", "attn_mlp", "all-linear")


@dataclass
class LoraSettings:
    """One named LoRA adapter.

    targets: a preset from LORA_PRESETS ("attn": q/k/v/o projections; "attn_mlp": those plus the MLP
        projections, as the paper; "all-linear": every linear layer of the language model's blocks).
    train_projector / train_vision_tower: also train (and save with the adapter) a full copy of the
        projector / vision tower (peft modules_to_save); only toy models train the tower.
    dropout: 0 by default so that PPO's old and new log-probabilities agree.
    """

    r: int = 64
    alpha: int = 16
    dropout: float = 0.0
    targets: str = "attn_mlp"
    train_projector: bool = False
    train_vision_tower: bool = False

    def __post_init__(self):
        if self.targets not in LORA_PRESETS:
            raise ConfigError(f"unknown LoRA target preset {self.targets!r}; known: {', '.join(LORA_PRESETS)}")
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"LoRA r and alpha must be positive, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def peft_lora_config(settings: LoraSettings, target_modules: str, modules_to_save: list[str]):
    """A peft LoraConfig for a causal LM with the resolved target regex."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


QUANTIZATION_MODES = ("4bit",)


def quantization_config(mode: str, skip_modules: list[str]):
    """transformers BitsAndBytesConfig for QLoRA (NF4, double quantization, bf16 compute).

    skip_modules stay in full precision (the vision tower and projector, whose features are cached,
    and the LM head). Raises a UserError when bitsandbytes or a CUDA GPU is missing.
    """
    if mode not in QUANTIZATION_MODES:
        raise ConfigError(f"unknown quantization {mode!r}; known: {', '.join(QUANTIZATION_MODES)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "4-bit quantization (QLoRA) needs bitsandbytes, which is not installed: "
            "pip install 'vlm-rlaif[quant]' (needs a CUDA GPU)"
        )
    if not torch.cuda.is_available():
        raise UserError("4-bit quantization (QLoRA) needs a CUDA GPU; none is visible to torch")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip_modules,
    )


@contextmanager
def wrapping_in_peft() -> Iterator[None]:
    """Around the one call that wraps a model in a PeftModel: peft (0.21) reads the model's
    `is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on every read
    (once per policy, value and reward model of a run). We never read it ourselves; only that
    warning, only there, is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


__all__ = [
    "LORA_PRESETS", "QUANTIZATION_MODES", "LoraSettings", "peft_lora_config", "quantization_config", "wrapping_in_peft",
]
