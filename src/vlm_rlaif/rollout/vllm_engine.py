"""Rollouts with vLLM, for model families vLLM serves (HF-native video models such as Qwen2.5-VL).

vLLM holds its own copy of the base weights; the policy's LoRA adapter is saved to `workdir` after
every PPO iteration and handed to vLLM as a new LoRARequest, so sampling follows the training
weights. Prompts are rendered with the processor's chat template (the HF-native families build their
training inputs with the same template), the video goes in as decoded frames.

Not usable with the llava-video family (vLLM does not know the architecture), and not exercised by
the test suite: vllm pins a transformers older than this project's (docs/platform.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import Generation, GenerationSettings, VideoExample


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        lm: VideoLM,
        model_dir: str | Path,
        adapter: str | None,
        workdir: str | Path,
        *,
        seed: int = 0,
        gpu_memory_utilization: float = 0.3,
    ):
        from vllm import LLM

        if lm.family == "llava-video":
            raise UserError("vLLM cannot serve the llava-video architecture; use rollout engine 'hf'")
        if adapter is None:
            raise UserError("the vllm engine samples from a LoRA policy; full fine-tuning needs engine 'hf'")
        self.lm = lm
        self.adapter = adapter
        self.workdir = Path(workdir)
        rank = lm.model.peft_config[adapter].r
        self.llm = LLM(
            model=str(model_dir),
            enable_lora=True,
            max_lora_rank=rank,
            limit_mm_per_prompt={"video": 1},
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
        )
        self.version = 0
        self.lora_request = None
        self.update_policy()

    def update_policy(self) -> None:
        from vllm.lora.request import LoRARequest

        self.version += 1
        path = self.workdir / f"policy_v{self.version}"
        self.lm.save_lora(path, self.adapter)
        self.lora_request = LoRARequest(f"policy_v{self.version}", self.version, str(path))
        shutil.rmtree(self.workdir / f"policy_v{self.version - 1}", ignore_errors=True)

    def generate(self, examples: Sequence[VideoExample], settings: GenerationSettings) -> list[Generation]:
        from vllm import SamplingParams

        requests = []
        for example in examples:
            request = {"prompt": self._prompt_text(example)}
            if example.video is not None:
                request["multi_modal_data"] = {"video": np.asarray(example.video)}
            requests.append(request)
        params = SamplingParams(
            n=settings.num_samples,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k or -1,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
            stop_token_ids=[self.lm.eos_token_id],
        )
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        eos = self.lm.eos_token_id
        results = []
        for example_index, output in enumerate(outputs):
            for sample_index, completion in enumerate(output.outputs):
                tokens = list(completion.token_ids)
                if eos in tokens:
                    tokens = tokens[: tokens.index(eos) + 1]
                elif completion.finish_reason == "stop":
                    tokens.append(eos)  # stopped on EOS without reporting it: score it as PPO expects
                ended = bool(tokens) and tokens[-1] == eos
                text = self.lm.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True).strip()
                results.append(Generation(example_index, sample_index, text, tokens, ended))
        return results

    def _prompt_text(self, example: VideoExample) -> str:
        messages = []
        video_placed = example.video is None
        for turn in example.conversation:
            content = [{"type": "text", "text": turn["content"]}]
            if turn["role"] == "user" and not video_placed:
                content.insert(0, {"type": "video"})
                video_placed = True
            messages.append({"role": turn["role"], "content": content})
        return self.lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


__all__ = ["VLLMEngine"]
