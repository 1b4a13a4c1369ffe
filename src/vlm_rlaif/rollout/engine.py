"""Rollout engines: how PPO samples the policy's answers, behind one small interface.

    engine = make_engine("hf", policy_lm, adapter="policy")
    generations = engine.generate(prompts, GenerationSettings(temperature=1.0, max_new_tokens=896))
    ...  # PPO updates the policy
    engine.update_policy()                  # the next generate samples from the updated policy

"hf" samples with transformers' generate through the VideoLM adapter: the very weights that train,
the same feature cache (a prompt's video is encoded once and reused by the scoring passes). "vllm"
(rollout/vllm_engine.py) is offered only when vllm is importable. "openai" (rollout/openai_engine.py)
asks OpenAI-compatible servers (vLLM's server, `vlm-rlaif serve`) that hot-load each iteration's
policy adapter.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from vlm_rlaif.clients.generator import GeneratorSettings
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, GenerationSettings, VideoExample

EngineKind = Literal["hf", "vllm", "openai"]


class RolloutEngine(Protocol):
    """Samples answers from the current policy. Generation.token_ids are cut after the first EOS."""

    name: str

    def generate(self, examples: Sequence[VideoExample], settings: GenerationSettings) -> list[Generation]: ...

    def update_policy(self) -> None:
        """Called after the policy's weights changed (once per PPO iteration)."""
        ...


class HFEngine:
    """transformers generate on the training model itself (nothing to synchronise).

    adapter: the LoRA adapter that is the policy (made active before sampling); None for a policy
    without adapters (full fine-tuning).
    """

    name = "hf"

    def __init__(self, lm: VideoLM, adapter: str | None = None):
        self.lm = lm
        self.adapter = adapter

    def generate(self, examples: Sequence[VideoExample], settings: GenerationSettings) -> list[Generation]:
        if self.adapter is not None:
            self.lm.set_adapter(self.adapter)
        return self.lm.generate(examples, settings)

    def update_policy(self) -> None:
        pass  # generate runs on the weights that train


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_engine(
    kind: EngineKind,
    lm: VideoLM,
    *,
    adapter: str | None = None,
    model_dir: str | Path | None = None,
    workdir: str | Path | None = None,
    seed: int = 0,
    gpu_memory_utilization: float = 0.3,
    server: GeneratorSettings | None = None,
) -> RolloutEngine:
    """The engine `kind` for the policy `lm` (vllm also needs the base model's directory and a
    working directory for the adapter it reloads; openai the servers and that working directory)."""
    if kind == "hf":
        return HFEngine(lm, adapter)
    if kind == "openai":
        from vlm_rlaif.rollout.openai_engine import OpenAIEngine

        if server is None or workdir is None:
            raise ConfigError("the openai rollout engine needs the servers (rollout_server) and workdir")
        server.check("rollout_server")
        return OpenAIEngine(lm, adapter, workdir, server)
    if kind == "vllm":
        if not vllm_available():
            raise UserError(
                "rollout engine 'vllm' needs vllm, which is not installed: pip install 'vlm-rlaif[vllm]' "
                "(or use engine 'hf')"
            )
        from vlm_rlaif.rollout.vllm_engine import VLLMEngine

        if model_dir is None or workdir is None:
            raise ConfigError("the vllm engine needs model_dir (the policy's base) and workdir")
        return VLLMEngine(lm, model_dir, adapter, workdir, seed=seed, gpu_memory_utilization=gpu_memory_utilization)
    raise ConfigError(f"unknown rollout engine {kind!r}; known: hf, vllm, openai")


__all__ = ["EngineKind", "HFEngine", "RolloutEngine", "make_engine", "vllm_available"]
