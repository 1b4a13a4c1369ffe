"""Rollouts from OpenAI-compatible servers that hot-load the policy's LoRA adapter (vLLM's runtime
LoRA API, also served by `vlm-rlaif serve --lora-root`).

After every PPO iteration the policy adapter is saved to `workdir/<name>` and each server is asked
to load it (POST {base_url}/load_lora_adapter {"lora_name", "lora_path"}); the previous version is
unloaded. Rollout requests then name the adapter as their `model`. The trainer scores the returned
answers itself (their ids are the reply text tokenised again), so only sampling moves to the servers.

The servers must read `workdir` at the same path (a shared filesystem), and run the policy's base
model with runtime LoRA updates on: vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, --enable-lora
and a --max-lora-rank of at least the policy's rank; `vlm-rlaif serve` with a --lora-root that holds
workdir. Only the language-model LoRA weights matter to vLLM (it ignores vision-tower LoRA weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import httpx

from vlm_rlaif.clients.generator import GeneratorSettings, OpenAIGenerator
from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, GenerationSettings, VideoExample


class OpenAIEngine:
    name = "openai"

    def __init__(self, lm: VideoLM, adapter: str | None, workdir: str | Path, settings: GeneratorSettings):
        if adapter is None:
            raise UserError("rollout engine 'openai' samples from a LoRA policy; full fine-tuning needs engine 'hf'")
        self.lm = lm
        self.adapter = adapter
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Replies of one adapter name are not reused: after a resume the same name is new weights.
        self.settings = dataclasses.replace(settings, cache=False)
        self.generator = OpenAIGenerator(self.settings, tokenizer=lm.tokenizer, eos_token_id=lm.eos_token_id)
        # Runs sharing a server must not overwrite each other's adapters: the name carries the run's directory.
        self.prefix = "policy-" + hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        self.version = 0
        self.lora_name: str | None = None
        api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=settings.timeout_s, headers=headers)
        self.update_policy()

    def update_policy(self) -> None:
        previous = self.lora_name
        self.version += 1
        name = f"{self.prefix}-v{self.version}"
        path = self.workdir / name
        self.lm.save_lora(path, self.adapter)
        for base_url in self.settings.base_urls:
            self._post(base_url, "load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self.lora_name = name
        if previous is not None:
            for base_url in self.settings.base_urls:
                self._post(base_url, "unload_lora_adapter", {"lora_name": previous})
            shutil.rmtree(self.workdir / previous, ignore_errors=True)

    def generate(self, examples: Sequence[VideoExample], settings: GenerationSettings) -> list[Generation]:
        return self.generator.generate(examples, settings, model=self.lora_name)

    def close(self) -> None:
        self.generator.close()
        self._http.close()

    def _post(self, base_url: str, route: str, body: dict) -> None:
        url = f"{base_url.rstrip('/')}/{route}"
        try:
            response = self._http.post(url, json=body)
        except httpx.HTTPError as err:
            raise UserError(f"rollout server {url}: {err}") from None
        if response.status_code != 200:
            hint = ""
            if response.status_code == 404:
                hint = " (is runtime LoRA updating on? vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; vlm-rlaif serve: --lora-root)"
            raise UserError(f"rollout server {url} answered {response.status_code}: {response.text[:300]}{hint}")


__all__ = ["OpenAIEngine"]
