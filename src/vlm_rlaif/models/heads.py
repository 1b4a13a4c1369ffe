"""Scalar heads on any VideoLM backbone: the reward model and the value model.

The paper's reward model is the SFT model + LoRA + a linear head reading the hidden state of the last
token; its value model starts from the reward model (backbone + LoRA) with a new, zero-initialised
head. `ScalarModel` is that pairing, family-independent: it only needs `VideoLM.hidden_states`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import VideoExample
from vlm_rlaif.models.registry import load_adapter_model

HEAD_FILE = "scalar_head.safetensors"
INFO_FILE = "scalar_model.json"


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of the last real (mask 1) token of each row, for left and right padding alike."""
    if not bool(attention_mask.any(dim=1).all()):
        raise ValueError("a row of the batch has no real token")
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.long().flip(dims=[1]).argmax(dim=1)


class ScalarHead(nn.Module):
    """Linear(hidden_size -> 1), computed in float32 whatever the backbone's dtype.

    zero_init=True starts at exactly 0 (the paper's fresh value head); otherwise small normal weights.
    """

    def __init__(self, hidden_size: int, zero_init: bool = False):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
        else:
            nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., hidden_size) -> (...)."""
        return self.linear(hidden_states.float()).squeeze(-1)


class ScalarModel:
    """A VideoLM backbone plus a ScalarHead.

    lora_name: the named LoRA adapter this model runs with (several ScalarModels may share one base,
        e.g. "reward" and "value"); it is made active before every forward. None: the backbone as is.
    """

    def __init__(
        self, lm: VideoLM, head: ScalarHead | None = None, *, lora_name: str | None = None, zero_init: bool = False
    ):
        self.lm = lm
        self.head = (head or ScalarHead(lm.hidden_size, zero_init=zero_init)).to(lm.device)
        self.lora_name = lora_name

    def _activate(self) -> None:
        if self.lora_name is not None:
            self.lm.set_adapter(self.lora_name)

    def values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head at every position (B, L) (value model); grad follows the caller."""
        self._activate()
        return self.head(self.lm.hidden_states(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head at each row's last real token (B,) (reward model)."""
        values = self.values(batch)
        positions = last_token_positions(batch["attention_mask"]).to(values.device)
        return values.gather(1, positions.unsqueeze(1)).squeeze(1)

    __call__ = forward

    @torch.no_grad()
    def score(
        self,
        examples: Sequence[VideoExample],
        *,
        add_generation_prompt: bool = False,
        assistant_prefix: str | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Scores (B,) (float32, CPU) of whole conversations, in eval mode, batch by batch.

        The reward stage decides the input: e.g. (video, question, answer, evaluation question) with a
        generation prompt, so the last token is the one before the score."""
        scores = [torch.zeros(0)]
        with self.lm.eval_mode():
            for start in range(0, len(examples), batch_size):
                batch = self.lm.collate(
                    examples[start : start + batch_size],
                    add_generation_prompt=add_generation_prompt,
                    with_labels=False,
                    assistant_prefix=assistant_prefix,
                    visual="features",
                )
                scores.append(self.forward(batch).cpu())
        return torch.cat(scores)

    def parameters(self) -> list[nn.Parameter]:
        """What trains: the head and the backbone's trainable parameters (LoRA or full)."""
        return list(self.head.parameters()) + self.lm.trainable_parameters()

    def save(self, directory: str | os.PathLike) -> None:
        """Head + its LoRA adapter (under lora/) or the whole backbone (under model/)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora_name is not None:
            self.lm.save_lora(directory / "lora", self.lora_name)
        else:
            self.lm.save(directory / "model")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, directory / HEAD_FILE)
        info = {
            "hidden_size": self.lm.hidden_size,
            "lora_name": self.lora_name,
            "base_model": str(self.lm.base_model.name_or_path or "") or None,
        }
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        lm: VideoLM | None = None,
        *,
        lora_name: str | None = None,
        trainable: bool = False,
        **load_kwargs,
    ) -> ScalarModel:
        """Load a saved ScalarModel.

        A LoRA scalar model goes onto `lm` (its base; shared with other adapters) under `lora_name`
        (default: the saved name); without `lm`, the base is loaded from the path recorded at save time.
        trainable: keep training the LoRA adapter (the value model starts as a trainable copy of the
        reward model's adapter; give it a fresh head with ScalarModel(lm, ScalarHead(.., zero_init=True))).
        """
        directory = Path(directory)
        info_file = directory / INFO_FILE
        if not info_file.is_file():
            raise UserError(f"{directory} is not a saved scalar model (no {INFO_FILE})")
        info = json.loads(info_file.read_text())
        if info["lora_name"] is None:
            if lm is not None:
                raise UserError(f"{directory} holds a full backbone; do not pass lm")
            lm = load_adapter_model(directory / "model", **load_kwargs)
        else:
            if lm is None:
                if not info.get("base_model"):
                    raise UserError(f"{directory}: the base model path was not recorded; pass lm=<its base model>")
                lm = load_adapter_model(info["base_model"], **load_kwargs)
            lora_name = lora_name or info["lora_name"]
            lm.load_lora(directory / "lora", lora_name, trainable=trainable)
        if lm.hidden_size != info["hidden_size"]:
            raise UserError(f"{directory}: head width {info['hidden_size']} but the backbone's is {lm.hidden_size}")
        head = ScalarHead(info["hidden_size"])
        head.load_state_dict(load_file(directory / HEAD_FILE))
        return cls(lm, head, lora_name=lora_name if info["lora_name"] is not None else None)


__all__ = ["HEAD_FILE", "INFO_FILE", "ScalarHead", "ScalarModel", "last_token_positions"]
