"""Generation through OpenAI-compatible servers: the way large runs scale sampling out (vLLM in
production, `vlm-rlaif serve` on a laptop and in the tests).

    generator = make_generator(GeneratorSettings(kind="openai", base_url=["http://a:8000/v1", "http://b:8000/v1"],
                                                 model="qwen2.5-vl-7b"), cache_dir=out / "generator_cache")
    generations = generator.generate(examples, GenerationSettings(temperature=1.0, num_samples=2, seed=0))

`OpenAIGenerator.generate` takes what `VideoLM.generate` takes and returns the same Generation
records, so the feedback stage's candidates and clip descriptions, eval's predictions and PPO's
rollouts (rollout/openai_engine.py) call either one. Each sample is one request (n=1, the common
denominator of servers); requests are spread round-robin over the servers, each with the bounded
concurrency, retries with backoff and on-disk reply cache of clients.ChatClient. A request's seed is
derived from the settings' seed and the sample's index, so a resumed run asks for, and the cache
returns, the same samples; without a seed nothing is cached (every call must sample anew).

The video travels as `video_as` says:
- "frames": one image_url part per frame (JPEG data URLs), the way hosted APIs and our `serve`
  take a video;
- "video": one mp4 data URL in a video_url part (the frames re-encoded losslessly enough, crf 18),
  the way vLLM's server takes video for Qwen2.5-VL and LLaVA-NeXT-Video (frames sent as images
  would reach those models as separate images, not as a video).
Token ids, when a tokenizer is given (PPO needs them), are the reply text tokenised again plus EOS
when the server stopped on it: the trainer recomputes every log-probability from these ids, so they
need not be the exact ids the server sampled.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.clients.openai_compat import ChatClient, ChatRequest, ChatResult
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models.examples import Generation, GenerationSettings, VideoExample

SAMPLE_SEED_STRIDE = 104_729  # a prime: sample s of seed k never asks for sample 0 of another seed


@dataclass
class GeneratorSettings:
    """Where a stage's answers are sampled: "local" (the stage's own model, transformers generate)
    or "openai" (one or several OpenAI-compatible servers serving that model)."""

    kind: Literal["local", "openai"] = "local"
    base_url: str | list[str] = ""  # one server, or several: requests are spread over them
    model: str = ""  # the served model's name (PPO rollouts name the policy's adapter instead)
    api_key_env: str | None = None  # local servers need no key; a hosted API: e.g. OPENAI_API_KEY
    max_concurrency: int = 8  # requests in flight per server
    max_retries: int = 5
    timeout_s: float = 300.0  # long answers of a 7B model at low batch take a while
    backoff_base_s: float = 1.0
    video_as: Literal["frames", "video"] = "frames"
    image_max_side: int = 512  # frames: the longer side of each JPEG
    cache: bool = True  # seeded requests' replies are kept on disk (resume asks them again)

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def check(self, where: str) -> None:
        if self.kind != "openai":
            return
        if not any(self.base_urls) or not self.model:
            raise ConfigError(f"{where}: generator kind 'openai' needs base_url (one or a list) and model")
        if self.max_concurrency < 1 or self.image_max_side < 1:
            raise ConfigError(f"{where}: max_concurrency and image_max_side must be >= 1")


class OpenAIGenerator:
    """Samples answers from OpenAI-compatible servers; `generate` is a drop-in for VideoLM.generate."""

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        cache_dir: str | Path | None = None,
        tokenizer=None,
        eos_token_id: int | None = None,
    ):
        settings.check("generator")
        self.settings = settings
        self.clients = [
            ChatClient(
                url,
                settings.model,
                api_key_env=settings.api_key_env,
                max_concurrency=settings.max_concurrency,
                max_retries=settings.max_retries,
                timeout_s=settings.timeout_s,
                backoff_base_s=settings.backoff_base_s,
                cache_dir=cache_dir if settings.cache else None,
                max_invalid_retries=0,
            )
            for url in settings.base_urls
        ]
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.id = f"openai:{settings.model}"

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def generate(
        self, examples: Sequence[VideoExample], settings: GenerationSettings | None = None, *, model: str | None = None
    ) -> list[Generation]:
        """`settings.num_samples` answers per example, example-major, as VideoLM.generate returns them.
        model: ask for this served name instead of settings.model (e.g. a LoRA adapter loaded at run time)."""
        settings = settings or GenerationSettings()
        if settings.top_k:
            raise ConfigError("generator kind 'openai': top_k is not part of the OpenAI API; use top_p")
        jobs = [(i, s) for i in range(len(examples)) for s in range(settings.num_samples)]
        media = [self._media(example) for example in examples]
        requests = [self._request(examples[i], media[i], settings, s) for i, s in jobs]
        results: list[ChatResult | None] = [None] * len(requests)
        shards = [list(range(k, len(requests), len(self.clients))) for k in range(len(self.clients))]

        def run(k: int) -> None:
            client = self.clients[k]
            if model is not None:
                client.model = model
            for index, result in zip(shards[k], client.complete([requests[j] for j in shards[k]])):
                results[index] = result

        with ThreadPoolExecutor(len(self.clients)) as pool:
            for future in [pool.submit(run, k) for k in range(len(self.clients)) if shards[k]]:
                future.result()  # a dead server raises JudgeUnavailableError (it names the URL) here
        return [self._generation(i, s, examples[i], result) for (i, s), result in zip(jobs, results)]

    # ------------------------------------------------------------------ requests and replies

    def _media(self, example: VideoExample) -> list[dict]:
        if example.video is None:
            return []
        frames = np.asarray(example.video)
        if self.settings.video_as == "frames":
            return frames_to_image_parts(frames, max_side=self.settings.image_max_side)
        return [{"type": "video_url", "video_url": {"url": mp4_data_url(frames)}}]

    def _request(self, example: VideoExample, media: list[dict], settings: GenerationSettings, sample: int) -> ChatRequest:
        messages = []
        placed = not media
        for turn in example.conversation:
            if turn["role"] == "user" and not placed:  # the video first in the first user turn
                messages.append({"role": "user", "content": [*media, {"type": "text", "text": turn["content"]}]})
                placed = True
            else:
                messages.append({"role": turn["role"], "content": turn["content"]})
        seed = None if settings.seed is None else settings.seed + SAMPLE_SEED_STRIDE * sample
        if seed is None and settings.temperature > 0:
            # Unseeded sampling must not be answered from the cache: the same payload would repeat.
            seed = int.from_bytes(np.random.default_rng().bytes(4), "little")
        return ChatRequest(
            messages,
            temperature=settings.temperature,
            max_tokens=settings.max_new_tokens,
            seed=seed,
            extra={"top_p": settings.top_p} if settings.top_p < 1 else {},
        )

    def _generation(self, example_index: int, sample_index: int, example: VideoExample, result: ChatResult) -> Generation:
        if not result.ok:
            where = example.where or f"example {example_index}"
            raise UserError(f"{where}: the generator server refused the request: {result.error}")
        text = (result.text or "").strip()
        ended = result.finish_reason == "stop"
        token_ids: list[int] = []
        if self.tokenizer is not None:
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if ended and self.eos_token_id is not None:
                token_ids.append(self.eos_token_id)
        return Generation(example_index, sample_index, text, token_ids, ended)


def mp4_data_url(frames: np.ndarray, fps: float = 8.0) -> str:
    """uint8 (T, H, W, 3) frames as a data:video/mp4;base64 URL (x264, crf 18)."""
    from vlm_rlaif.video import write_video

    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(frames, Path(tmp) / "video.mp4", fps=fps)
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:video/mp4;base64,{encoded}"


def make_generator(settings: GeneratorSettings, lm=None, *, cache_dir: str | Path | None = None):
    """What a stage samples with: `lm` itself (kind "local"), or servers (kind "openai"; the token ids
    of its replies are the tokenisation of `lm`'s tokenizer when lm is given)."""
    if settings.kind == "local":
        if lm is None:
            raise ConfigError("generator kind 'local' needs the stage's model")
        return lm
    tokenizer = getattr(lm, "tokenizer", None)
    return OpenAIGenerator(settings, cache_dir=cache_dir, tokenizer=tokenizer, eos_token_id=getattr(lm, "eos_token_id", None))


__all__ = ["GeneratorSettings", "OpenAIGenerator", "make_generator", "mp4_data_url"]
