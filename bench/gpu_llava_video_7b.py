"""Benchmark: llava-video at the paper's 7B shapes on one GPU, with and without the feature cache.

    python bench/gpu_llava_video_7b.py [--batch 8] [--new-tokens 128] [--lora-batch 4] [--repeats 3]
    python bench/gpu_llava_video_7b.py --tiny     # a tiny model on the CPU, seconds: checks the script

Random weights (nothing is downloaded) at LLaVA-1.5-7B shapes: CLIP ViT-L/14-336 (24 layers, width
1024, 576 patches a frame), the 2-layer MLP projector, Vicuna-7B (32 layers, width 4096), bf16.
Each video is 50 frames -> 50 + 576 = 626 pooled tokens, after a Vicuna prompt of about 80 text
tokens. Phases, each timed with the visual path run every time ("frames": no cache) and with the
pooled features read from a warm feature cache ("cached"):
  encode    CLIP + projector + pooling, one video at a time (what the cache saves)
  forward   scoring forward over the batch's prompts, no grad (reward / reference / value passes)
  generate  greedy generation of --new-tokens tokens per video (rollouts)
  lora      one LoRA SFT step (r=64, alpha=16, attention + MLP, activation checkpointing, AdamW)
It prints seconds (median over --repeats, after one warm-up), throughput and peak GPU memory per
phase, and appends one JSON line per phase to --out (default bench/out/gpu_llava_video_7b.jsonl).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vlm_rlaif.models import (
    FeatureCache,
    GenerationSettings,
    LlavaVideoLM,
    LoraSettings,
    VideoExample,
    build_tiny_model,
    train_tokenizer,
)
from vlm_rlaif.models.llava_video import LlavaVideoConfig, LlavaVideoForCausalLM, LlavaVideoProcessor

OUT_FILE = Path(__file__).resolve().parent / "out" / "gpu_llava_video_7b.jsonl"
QUESTION = (
    "Describe in detail what happens in this video, in the order it happens: who or what appears, "
    "where they move, how the scene changes, and what the most likely purpose of the activity is."
)
ANSWER = (
    "A person walks into a kitchen, takes a pan from the shelf, puts it on the stove and cracks two "
    "eggs into it. The eggs are stirred until they set, then served on a plate with bread."
)


@contextmanager
def on_device(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Models built inside are randomly initialised straight on `device` in `dtype`: a 7B model is
    never materialised on the CPU in float32 (32 GB and minutes), and its init runs on the GPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(tiny: bool, device: torch.device, dtype: torch.dtype, num_frames: int) -> LlavaVideoLM:
    tokenizer = train_tokenizer([QUESTION, ANSWER] * 50, vocab_size=1000)
    if tiny:
        lm = build_tiny_model("tiny", tokenizer, frames=num_frames)
        lm.model.to(device)
        return lm
    processor = LlavaVideoProcessor(tokenizer, image_size=336, patch_size=14, num_frames=num_frames)
    config = LlavaVideoConfig(video_token_id=processor.video_token_id)  # the paper's 7B shapes by default
    with on_device(device, dtype):
        model = LlavaVideoForCausalLM(config)
    model = model.to(dtype)  # a no-op unless the model chose its own default dtype
    for target in (model.config, model.generation_config):
        target.eos_token_id, target.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    return LlavaVideoLM(model.eval(), processor, feature_cache=FeatureCache(max_bytes=8 << 30))


def timed(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True
) -> tuple[float, float | None, object]:
    """(median seconds, peak GPU memory GiB (None on the CPU), last result) over `repeats` runs after
    one warm-up (warmup=False: the caller has already run the same kernels)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if warmup:
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(seconds), peak, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (checks the script in seconds)")
    parser.add_argument("--batch", type=int, help="videos per forward / generate batch (default 8; tiny 2)")
    parser.add_argument("--lora-batch", type=int, help="examples per LoRA step (default 4; tiny 2)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per video (default 128; tiny 8)")
    parser.add_argument("--frames", type=int, help="frames per video (default 50, the paper's; tiny 8)")
    parser.add_argument("--repeats", type=int, help="timed runs per phase after a warm-up (default 3; tiny 1)")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="JSON lines to append to")
    args = parser.parse_args()
    tiny = args.tiny
    if tiny:
        torch.set_num_threads(1)  # tiny matmuls: threads only contend
    batch = args.batch or (2 if tiny else 8)
    lora_batch = args.lora_batch or (2 if tiny else 4)
    new_tokens = args.new_tokens or (8 if tiny else 128)
    repeats = args.repeats or (1 if tiny else 3)
    num_frames = args.frames or (8 if tiny else 50)
    if not tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run with --tiny to check the script on the CPU")
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16

    start = time.perf_counter()
    lm = build(tiny, device, dtype, num_frames)
    size = lm.processor.image_size
    print(f"built {'tiny' if tiny else '7B'} llava-video on {device} in {time.perf_counter() - start:.1f} s: "
          f"{sum(p.numel() for p in lm.model.parameters()) / 1e9:.3f} B parameters, "
          f"{lm.config.num_video_tokens(num_frames)} video tokens per {num_frames}-frame video")  # fmt: skip
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8) for _ in range(max(batch, lora_batch))]
    prompts = [VideoExample([{"role": "user", "content": QUESTION}], v, f"v{i}") for i, v in enumerate(videos[:batch])]
    answered = [
        VideoExample([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}], v, f"v{i}")
        for i, v in enumerate(videos[:lora_batch])
    ]
    prompt_tokens = int(lm.collate(prompts[:1], add_generation_prompt=True)["attention_mask"].sum())
    rows = []

    def report(phase: str, mode: str, seconds: float, peak: float | None, unit: str, amount: float) -> None:
        rate = amount / seconds
        memory = f"peak {peak:6.2f} GiB" if peak is not None else ""
        print(f"{phase:9s} {mode:7s} {seconds * 1e3:10.1f} ms {rate:12.1f} {unit:18s} {memory}")
        rows.append(dict(phase=phase, mode=mode, seconds=seconds, rate=rate, unit=unit, peak_gib=peak))

    cache = lm.feature_cache
    with torch.no_grad():
        seconds, peak, _ = timed(lambda: [lm.encode_video(v) for v in videos[:batch]], device, repeats)
        report("encode", "frames", seconds, peak, "videos/s", batch)
        for v, example in zip(videos, prompts):  # warm the cache for the "cached" runs
            lm.encode_video(v, example.video_key)

        for mode, visual in (("frames", "frames"), ("cached", "features")):
            def score() -> None:
                lm.forward(lm.collate(prompts, add_generation_prompt=True, visual=visual), logits_to_keep=1)

            seconds, peak, _ = timed(score, device, repeats)
            report("forward", mode, seconds, peak, "tokens/s", batch * prompt_tokens)

    greedy = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, batch_size=batch)
    for mode, feature_cache in (("frames", None), ("cached", cache)):
        lm.feature_cache = feature_cache  # None: the visual path runs on every call
        seconds, peak, generations = timed(lambda: lm.generate(prompts, greedy), device, repeats)
        report("generate", mode, seconds, peak, "new tokens/s", sum(len(g.token_ids) for g in generations))
    lm.feature_cache = cache

    lm.add_lora("bench", LoraSettings(r=64, alpha=16, targets="attn_mlp"))
    lm.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=1e-5)
    lm.model.train()
    train_tokens = int(lm.collate(answered[:1])["attention_mask"].sum()) * lora_batch
    for mode, visual in (("frames", "frames"), ("cached", "features")):
        def step() -> None:
            loss = lm.forward(lm.collate(answered, visual=visual)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds, peak, _ = timed(step, device, repeats)
        report("lora", mode, seconds, peak, "tokens/s", train_tokens)

    seconds_of = {(row["phase"], row["mode"]): row["seconds"] for row in rows}
    speedups = [
        f"{phase} x{seconds_of[phase, 'frames'] / seconds_of[phase, 'cached']:.2f}"
        for phase in ("forward", "generate", "lora")
    ]
    print("feature cache speed-up (frames time / cached time): " + ", ".join(speedups))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    context = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        tiny=tiny, batch=batch, lora_batch=lora_batch, frames=num_frames, new_tokens=new_tokens,
        prompt_tokens=prompt_tokens, repeats=repeats, dtype=str(dtype), torch=torch.__version__,
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )  # fmt: skip
    with open(args.out, "a") as f:
        for row in rows:
            f.write(json.dumps({**context, **row}) + "\n")
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
