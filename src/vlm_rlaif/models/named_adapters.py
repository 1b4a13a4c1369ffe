"""Named LoRA adapters on one base model (peft), the part of `VideoLM` that PPO's policy, value and
reward adapters, DPO's reference (adapter off) and servers swapping policy versions share.

A mixin: the host class (`VideoLM`) provides `model`, `unwrapped_model`, `base_model`,
`visual_modules()` and `lora_targets(preset)`, and sets `_lora_trainable` (adapter name -> trains
when active) in its constructor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.lora import LoraSettings, peft_lora_config, wrapping_in_peft


class NamedAdapters:
    """Add, load, save, switch, disable and merge LoRA adapters by name; see the module docstring."""

    _lora_trainable: dict[str, bool]

    @property
    def adapter_names(self) -> list[str]:
        return list(self._lora_trainable)

    @property
    def active_adapter(self) -> str | None:
        return self.unwrapped_model.active_adapter if self.adapter_names else None

    def _peft_config(self, settings: LoraSettings):
        visual = self.visual_modules()
        names = {id(module): name for name, module in self.base_model.named_modules()}
        modules_to_save = []
        if settings.train_projector:
            modules_to_save.append(names[id(visual["projector"])].rsplit(".", 1)[-1])
        if settings.train_vision_tower:
            modules_to_save.append(names[id(visual["vision_tower"])].rsplit(".", 1)[-1])
        return peft_lora_config(settings, self.lora_targets(settings.targets), modules_to_save)

    def add_lora(self, name: str, settings: LoraSettings) -> None:
        """Add a new trainable LoRA adapter and make it the active one."""
        from peft import get_peft_model

        if name in self._lora_trainable:
            raise ConfigError(f"a LoRA adapter named {name!r} already exists")
        config = self._peft_config(settings)
        if getattr(self.base_model, "is_loaded_in_4bit", False) and not self.adapter_names:
            from peft import prepare_model_for_kbit_training

            self.model = prepare_model_for_kbit_training(self.model)
        if self.adapter_names:
            self.unwrapped_model.add_adapter(name, config)
        else:
            with wrapping_in_peft():
                self.model = get_peft_model(self.model, config, adapter_name=name)
        self._lora_trainable[name] = True
        self.set_adapter(name)

    def load_lora(self, directory: str | os.PathLike, name: str, *, trainable: bool = False) -> None:
        """Load a LoRA adapter saved by `save_lora` under `name` and make it active.

        trainable=True continues training it (e.g. the value model initialised from the reward model)."""
        from peft import PeftModel

        directory = Path(directory)
        if not (directory / "adapter_config.json").is_file():
            raise UserError(f"{directory} is not a LoRA adapter directory (no adapter_config.json)")
        if name in self._lora_trainable:
            raise ConfigError(f"a LoRA adapter named {name!r} already exists")
        if self.adapter_names:
            self.unwrapped_model.load_adapter(str(directory), adapter_name=name, is_trainable=trainable)
        else:
            with wrapping_in_peft():
                self.model = PeftModel.from_pretrained(
                    self.model, str(directory), adapter_name=name, is_trainable=trainable
                )
        self._lora_trainable[name] = trainable
        self.set_adapter(name)

    def save_lora(self, directory: str | os.PathLike, name: str | None = None) -> None:
        """Save one adapter (default: the active one) as adapter_config.json + adapter_model.safetensors.
        Under FSDP2 (sharded DTensor weights) each tensor is gathered whole first: a collective, so
        every process saves it together (PPO's rollout engines do)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        name = name or self.active_adapter
        if name not in self._lora_trainable:
            raise ConfigError(f"no LoRA adapter named {name!r}; attached: {self.adapter_names}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.unwrapped_model, adapter_name=name)
        save_file({k: whole_tensor(v).detach().cpu().contiguous() for k, v in state.items()}, directory / "adapter_model.safetensors")
        self.unwrapped_model.peft_config[name].save_pretrained(str(directory))

    def delete_lora(self, name: str) -> None:
        """Drop an adapter (e.g. a server's previous policy version); another one, if any, becomes active."""
        if name not in self._lora_trainable:
            raise ConfigError(f"no LoRA adapter named {name!r}; attached: {self.adapter_names}")
        del self._lora_trainable[name]
        if not self.adapter_names:  # the last one: back to the bare model (peft keeps empty LoRA layers)
            self.model = self.unwrapped_model.unload()
            return
        self.unwrapped_model.delete_adapter(name)
        self.set_adapter(self.adapter_names[-1])

    def set_adapter(self, name: str) -> None:
        """Make a named adapter the active one (trainable only if it was added or loaded trainable)."""
        if name not in self._lora_trainable:
            raise ConfigError(f"no LoRA adapter named {name!r}; attached: {self.adapter_names}")
        self.unwrapped_model.set_adapter(name, inference_mode=not self._lora_trainable[name])

    @contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the bare base model (the LoRA reference policy) inside this block."""
        if not self.adapter_names:
            raise UserError("no LoRA adapter is attached; under full fine-tuning use frozen_copy() as the reference")
        with self.unwrapped_model.disable_adapter():
            yield

    def merge_lora(self) -> None:
        """Fold the active adapter into the base weights and drop all adapters (e.g. after SFT)."""
        if not self.adapter_names:
            raise UserError("no LoRA adapter to merge")
        self.model = self.unwrapped_model.merge_and_unload(adapter_names=[self.active_adapter])
        self._lora_trainable.clear()


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2 shard (a DTensor; every process must ask for it), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


__all__ = ["NamedAdapters", "whole_tensor"]
