"""One-shot GPU check: one PPO iteration of each 7B family on random weights, and one JSON line.

    bash bench/gpu_check.sh            # on the GPU machine: installs carried wheels, then runs this
    python bench/gpu_check.py --tiny   # the same code path on the CPU with tiny shapes (a test runs it)

NOT YET RUN ON A GPU: written and checked only in --tiny mode on a CPU (no GPU was lent to the
session that wrote it). The first GPU run is its real test; put its JSON line in README when there is one.

Sections, each in its own process with its own time limit (a crash, an out-of-memory error or a hang
in one is that section's error in the JSON line, and the others still run):
  llava-video/bf16   the paper's architecture at LLaVA-1.5-7B shapes (CLIP ViT-L/14-336, Vicuna-7B),
                     50 frames a video -> 626 pooled video tokens (bench/gpu_llava_video_7b.py's model)
  qwen2.5-vl/bf16    Qwen2.5-VL-7B's real shapes (models/hf_native/tiny.py size "7b"), 16 frames of
                     336 px -> 1,152 video tokens (recipes/qwen2.5-vl-7b.yaml samples 16 frames)
  */qlora            the same with both bases loaded in 4 bit (NF4), run only where bitsandbytes is
                     importable (the lent H200's image has none: reported as skipped)
Nothing is downloaded: weights are random (initialised on the GPU), tokenizers are trained locally on a
few sentences (the models' embeddings keep their real row counts; ids the tokenizer lacks decode to
nothing). Each section builds two bases, as run_ppo does (policy with LoRA "policy" and a frozen
copy "reference"; value base with the reward model's LoRA and head and LoRA "value"; the paper's LoRA
r=64, alpha=16 on attention and MLP), sharing one feature cache, and measures in one process:
  plain_generate   collate (frames) + the bare transformers model's generate on the same prompts, the
                   same sampling (temperature 1, no top-k/top-p), no LoRA, no feature cache;
  rollout          PPOTrainer.generate: the policy LoRA through the "hf" rollout engine;
  scoring          PPOTrainer.score_rollouts (+ advantages) inside the iteration: policy, reference,
                   value and reward passes, features from the cache the rollout filled;
  update           PPOTrainer.update: ppo_epochs passes of policy + value forward/backward, AdamW;
  scoring_cached / scoring_frames: score_rollouts again on the same rollouts, with the cache and
                   with none (every pass re-runs preprocessing, the vision tower and the projector).
Rates: rollout and plain_generate count new tokens; scoring counts the rollouts' prompt + response
tokens once (all four passes inside the time); update counts them once per PPO epoch. Ratios:
rollout / plain_generate tokens/s, and scoring_frames / scoring_cached seconds. peak_gib is the peak
of allocated GPU memory inside each phase (null on the CPU).
Output: exactly one JSON line on stdout (progress goes to stderr), also appended to --out.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched, ever
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two 7B bases, their LoRAs and activations of varying length: segments that grow avoid fragmentation.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from bench_ppo_iteration import QUESTIONS, prompts, trainer_on
    from gpu_llava_video_7b import ANSWER, QUESTION, on_device, timed
    from gpu_llava_video_7b import build as build_llava_video

    from vlm_rlaif.models import FeatureCache, LoraSettings, VideoExample, VideoLM, count_visual_calls
    from vlm_rlaif.train.ppo import PPOSettings, PPOTrainer, Rollouts

    IMPORT_ERROR = None
except ImportError as err:  # e.g. a module the GPU image lacks and no carried wheel gave: in the JSON line
    IMPORT_ERROR = f"{type(err).__name__}: {err}"

OUT_FILE = Path(__file__).resolve().parent / "out" / "gpu_check.jsonl"
FAMILIES = ("llava-video", "qwen2.5-vl")
MODES = ("bf16", "qlora")
SECTIONS = tuple(f"{family}/{mode}" for mode in MODES for family in FAMILIES)  # bf16 first: they matter most
# Seconds per section (the whole run is also held to --budget-s): a 7B bf16 section is expected to
# take about a minute (two bases built on the GPU, one small iteration); QLoRA first writes one base to
# disk and loads it twice in 4 bit.
SECTION_LIMIT_S = {"bf16": 170, "qlora": 150}
TINY_SECTION_LIMIT_S = 120


@dataclass
class Shapes:
    """What one section runs; --tiny and the 7B defaults differ only here."""

    tiny: bool
    rollouts: int  # prompts per iteration = the generation and forward batch
    micro_batch: int  # rollouts per backward
    new_tokens: int
    llava_frames: int
    qwen_frames: int
    qwen_image_size: int
    lora_r: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Shapes:
        tiny = args.tiny
        return cls(
            tiny=tiny,
            rollouts=args.rollouts or (4 if tiny else 8),
            micro_batch=args.micro_batch or (2 if tiny else 4),
            new_tokens=args.new_tokens or (6 if tiny else 64),
            llava_frames=args.llava_frames or (8 if tiny else 50),
            qwen_frames=args.qwen_frames or (4 if tiny else 16),
            qwen_image_size=args.qwen_image_size or (32 if tiny else 336),
            lora_r=8 if tiny else 64,
        )


# ---------------------------------------------------------------------------- one section (child process)


def build_base(family: str, shapes: Shapes, device: torch.device, dtype: torch.dtype) -> VideoLM:
    """A base with random weights: llava-video through gpu_llava_video_7b.build (the paper's 7B shapes),
    qwen2.5-vl through the tiny builder's "7b" size, both initialised straight on `device`. Seeded: the
    policy and value bases get the same weights, as run_ppo's both start from the SFT model, so their
    visual features share cache entries (the cache key holds a fingerprint of the visual weights)."""
    torch.manual_seed(0)
    if family == "llava-video":
        return build_llava_video(shapes.tiny, device, dtype, shapes.llava_frames)
    from vlm_rlaif.models.hf_native import build_tiny_hf_model

    with on_device(device, dtype):
        lm = build_tiny_hf_model(
            "qwen2.5-vl", [QUESTION, ANSWER, *QUESTIONS] * 20, size="tiny" if shapes.tiny else "7b",
            vocab_size=1000, frames=shapes.qwen_frames, image_size=shapes.qwen_image_size,
        )
    lm.model.to(dtype)  # a no-op unless the model chose its own default dtype
    return lm


def frame_shape(lm: VideoLM, family: str, shapes: Shapes) -> tuple[int, int]:
    """(frames, side in px) of the section's videos: what the model's processor expects."""
    if family == "llava-video":
        return shapes.llava_frames, lm.processor.image_size
    return shapes.qwen_frames, shapes.qwen_image_size


def prompt_tokens(lm: VideoLM, example: VideoExample) -> int:
    """Tokens of a generation prompt, its video expanded (prompt_length counts the video as one token)."""
    return lm.prompt_length(example.conversation) - 1 + lm.num_video_tokens(example.video)


def new_token_count(rows: torch.Tensor, eos: int) -> int:
    """Tokens generate produced per row up to and including the first EOS (padding after it excluded)."""
    total = 0
    for row in rows.tolist():
        total += row.index(eos) + 1 if eos in row else len(row)
    return total


def plain_generate(lm: VideoLM, examples: list[VideoExample], new_tokens: int) -> Callable[[], int]:
    """Plain transformers generation on the same prompts: collate the frames, call the bare model's
    generate with the rollouts' sampling (temperature 1, top-k and top-p off). Returns new tokens."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
        eos_token_id=lm.eos_token_id, pad_token_id=lm.pad_token_id,
    )  # fmt: skip

    def run() -> int:
        batch = lm.collate(examples, add_generation_prompt=True, visual="frames")
        inputs = lm.model_inputs(batch)
        inputs.pop("position_ids")  # generate derives them step by step, as VideoLM.generate lets it
        with torch.no_grad():
            sequences = lm.base_model.generate(**inputs, generation_config=config)
        return new_token_count(sequences[:, batch["input_ids"].shape[1] :], lm.eos_token_id)

    return run


def instrument(trainer: PPOTrainer, name: str, device: torch.device, phases: dict) -> None:
    """Wrap trainer.<name> (called by trainer.iteration) to record its seconds and peak memory: the
    iteration runs unchanged, and its phases are measured with the GPU synchronised around each."""
    original = getattr(trainer, name)

    def wrapper(*args, **kwargs):
        seconds, peak, result = timed(lambda: original(*args, **kwargs), device, 1, warmup=False)
        phases[name] = {"seconds": seconds, "peak_gib": peak}
        return result

    setattr(trainer, name, wrapper)


def rate(seconds: float, tokens: float, peak: float | None, **extra) -> dict:
    return {"seconds": round(seconds, 4), "tokens": int(tokens), "tokens_per_s": round(tokens / seconds, 2),
            "peak_gib": None if peak is None else round(peak, 2), **extra}  # fmt: skip


def quantized_pair(build: Callable[[], VideoLM], workdir: Path, device: torch.device) -> tuple[VideoLM, VideoLM, float]:
    """QLoRA bases as PPO loads them (runtime.quantization "4bit"): a bf16 base built, written once to
    local disk and freed, then loaded twice in NF4 (visual path and LM head kept in bf16). Returns them
    and the base's parameter count in billions (a 4-bit model's numel counts packed bytes)."""
    from vlm_rlaif.models.registry import load_adapter_model

    directory = workdir / "bf16_base"
    base = build()
    params_b = sum(p.numel() for p in base.base_model.parameters()) / 1e9
    base.save(directory)
    del base  # the only reference: its GPU memory is free before the 4-bit copies load
    gc.collect()
    torch.cuda.empty_cache()
    policy, value_lm = (load_adapter_model(directory, device=device, dtype="bfloat16", quantization="4bit") for _ in range(2))
    return policy, value_lm, params_b


def run_section(section: str, shapes: Shapes, result_path: Path, workdir: Path) -> None:
    """One section; `result` is rewritten to result_path after every phase, so whatever finished before
    a crash or a timeout still reaches the JSON line."""
    family, mode = section.split("/")
    device = torch.device("cpu" if shapes.tiny else "cuda")
    dtype = torch.float32 if shapes.tiny else torch.bfloat16
    result: dict = {"status": "running", "dtype": str(dtype).removeprefix("torch.")}

    def save() -> None:
        result_path.write_text(json.dumps(result))

    def phase(name: str) -> None:
        result["phase"] = name  # the phase a timeout or crash happened in
        print(f"[{section}] {name} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
        save()

    started = time.perf_counter()
    phase("build")
    if mode == "qlora":
        policy, value_lm, params_b = quantized_pair(lambda: build_base(family, shapes, device, dtype), workdir, device)
    else:
        policy, value_lm = (build_base(family, shapes, device, dtype) for _ in range(2))
        params_b = sum(p.numel() for p in policy.base_model.parameters()) / 1e9
    result["build_s"] = round(time.perf_counter() - started, 1)
    result["params_b"] = round(params_b, 4)
    result["features_input_supported"] = bool(getattr(policy, "features_input_supported", True))
    frames, side = frame_shape(policy, family, shapes)
    examples = prompts(shapes.rollouts, frames, side)
    tokens = [prompt_tokens(policy, e) for e in examples]
    result.update(frames=frames, frame_px=side, video_tokens=policy.num_video_tokens(examples[0].video),
                  prompt_tokens=sum(tokens) / len(tokens))  # fmt: skip

    phase("plain_generate")  # before any LoRA: the bare model; the warm-up also warms the kernels
    seconds, peak, generated = timed(plain_generate(policy, examples, shapes.new_tokens), device, 1)
    result["plain_generate"] = rate(seconds, generated, peak)

    phase("ppo_iteration")
    cache = FeatureCache(max_bytes=8 << 30)
    settings = PPOSettings(
        rollout_batch_size=shapes.rollouts, minibatch_size=shapes.rollouts, micro_batch_size=shapes.micro_batch,
        forward_batch_size=shapes.rollouts, generation_batch_size=shapes.rollouts, max_new_tokens=shapes.new_tokens,
        warmup_iterations=0,
    )  # fmt: skip
    lora = LoraSettings(r=shapes.lora_r, alpha=16, targets="attn_mlp")
    trainer = trainer_on(policy, value_lm, workdir / "adapters", cache, settings, lora)
    for lm in (policy, value_lm):
        lm.enable_gradient_checkpointing()  # as the 7B recipes run PPO (after the LoRAs, as run_ppo)
    phases: dict = {}
    for name in ("generate", "score_rollouts", "update"):
        instrument(trainer, name, device, phases)
    rollouts, metrics = trainer.iteration(examples, 0)
    new_tokens = float(rollouts.mask.sum())
    scored_tokens = sum(tokens) + new_tokens
    result["rollout"] = rate(phases["generate"]["seconds"], new_tokens, phases["generate"]["peak_gib"])
    result["scoring"] = rate(phases["score_rollouts"]["seconds"], scored_tokens, phases["score_rollouts"]["peak_gib"])
    result["update"] = rate(
        phases["update"]["seconds"], scored_tokens * settings.ppo_epochs, phases["update"]["peak_gib"],
        ppo_epochs=settings.ppo_epochs,
    )  # fmt: skip
    result["iteration_s"] = round(metrics["iteration_s"], 3)
    result["ratios"] = {
        "rollout_over_plain_generate": round(result["rollout"]["tokens_per_s"] / result["plain_generate"]["tokens_per_s"], 3)
    }

    for label, feature_cache in (("scoring_cached", cache), ("scoring_frames", None)):
        phase(label)
        result[label] = score_again(trainer, rollouts, feature_cache, device, scored_tokens)
    cached_s, frames_s = result["scoring_cached"]["seconds"], result["scoring_frames"]["seconds"]
    result["ratios"]["scoring_frames_over_cached_seconds"] = round(frames_s / cached_s, 3)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["status"] = "ok"
    result.pop("phase")
    save()


def score_again(
    trainer: PPOTrainer, rollouts: Rollouts, cache: FeatureCache | None, device: torch.device, scored_tokens: float
) -> dict:
    """The scoring passes over the iteration's rollouts once more, both bases reading `cache` (None: the
    visual path runs in every pass); counts the vision tower's calls."""
    lms = (trainer.policy, trainer.value.lm)
    previous = [lm.feature_cache for lm in lms]
    for lm in lms:
        lm.feature_cache = cache
    try:
        # The class's method: the instance's own is wrapped by instrument().
        score = lambda: PPOTrainer.score_rollouts(trainer, rollouts.examples, rollouts.generations)  # noqa: E731
        with count_visual_calls(lms[0]) as policy_calls, count_visual_calls(lms[1]) as value_calls:
            seconds, peak, _ = timed(score, device, 1, warmup=False)
    finally:
        for lm, kept in zip(lms, previous):
            lm.feature_cache = kept
    calls = sum(c.calls_without_grad["vision_tower"] + c.calls_with_grad["vision_tower"] for c in (policy_calls, value_calls))
    return rate(seconds, scored_tokens, peak, vision_tower_calls=calls)


# ---------------------------------------------------------------------------- the driver (parent process)


def skip_reason(section: str, tiny: bool) -> str | None:
    if not section.endswith("/qlora"):
        return None
    if tiny:
        return "QLoRA needs CUDA (bitsandbytes 4-bit); --tiny runs on the CPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not importable"
    return None


def run_child(section: str, argv: list[str], limit: float, workdir: Path) -> dict:
    """Run one section in a fresh process (its GPU memory, CUDA context and any hang end with it)."""
    result_path = workdir / f"{section.replace('/', '_')}.json"
    log_path = workdir / f"{section.replace('/', '_')}.log"
    command = [sys.executable, __file__, *argv, "--section", section, "--result", str(result_path), "--workdir", str(workdir)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
            error = None if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            code, error = None, f"timed out after {limit:.0f} s (the section's limit)"
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    if error is not None:
        result["status"] = "timeout" if code is None else "error"
        if code is None or "error" not in result:  # else keep the child's own message (and traceback)
            result["error"] = error
        if "traceback" not in result:
            result["log_tail"] = log_path.read_text(errors="replace")[-1500:]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def versions() -> dict:
    import peft
    import transformers

    bnb = importlib.util.find_spec("bitsandbytes")
    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "bitsandbytes": None if bnb is None else _version("bitsandbytes"),
    }  # fmt: skip


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (checks the script)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=440.0, help="all sections together (default 440)")
    parser.add_argument(
        "--section-limit-s", type=float, help=f"each section's limit (default {SECTION_LIMIT_S}; tiny {TINY_SECTION_LIMIT_S})"
    )
    parser.add_argument("--rollouts", type=int, help="prompts in the iteration (default 8; tiny 4)")
    parser.add_argument("--micro-batch", type=int, help="rollouts per backward (default 4; tiny 2)")
    parser.add_argument("--new-tokens", type=int, help="max new tokens per rollout (default 64; tiny 6)")
    parser.add_argument("--llava-frames", type=int, help="llava-video frames (default 50, the paper's; tiny 8)")
    parser.add_argument("--qwen-frames", type=int, help="qwen2.5-vl frames (default 16; tiny 4)")
    parser.add_argument("--qwen-image-size", type=int, help="qwen2.5-vl frame side in px (default 336; tiny 32)")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="JSON lines file the result is appended to")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # the child's: run this one section
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = Shapes.of(args)
    if args.tiny:
        torch.set_num_threads(1)  # tiny matmuls: threads only contend (and the CI machine is shared)

    if args.section:  # child
        try:
            if IMPORT_ERROR is not None:
                raise ImportError(IMPORT_ERROR)
            run_section(args.section, shapes, args.result, args.workdir)
        except BaseException as err:  # recorded for the JSON line, then the exit status says it failed
            result = json.loads(args.result.read_text()) if args.result.exists() else {}
            result.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
            args.result.write_text(json.dumps(result))
            raise
        return 0

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    cuda = torch.cuda.is_available()
    line: dict = {
        "check": "gpu_check", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "tiny": args.tiny,
        "device": torch.cuda.get_device_name(0) if cuda and not args.tiny else platform.processor() or "cpu",
        **versions(), "shapes": asdict(shapes), "sections": {},
    }  # fmt: skip
    if IMPORT_ERROR is not None:
        line["error"] = f"the package does not import: {IMPORT_ERROR}"
    elif not args.tiny and not cuda:
        line["error"] = "no CUDA GPU visible to torch (run with --tiny to check the script on the CPU)"
    started = time.perf_counter()
    # The child gets the parent's shape flags (not --sections/--out/--budget-s): one source of truth.
    child_argv = _drop_options(sys.argv[1:], ("--sections", "--out", "--budget-s", "--section-limit-s"))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for section in sections:
            reason = skip_reason(section, args.tiny)
            left = args.budget_s - (time.perf_counter() - started)
            if "error" in line:
                reason = "not run: see the top-level error"
            elif reason is None and left < 20:
                reason = f"the run's budget ({args.budget_s:.0f} s) was spent"
            if reason is not None:
                line["sections"][section] = {"status": "skipped", "skipped": reason}
                continue
            limit = args.section_limit_s or (TINY_SECTION_LIMIT_S if args.tiny else SECTION_LIMIT_S[section.split("/")[1]])
            limit = min(limit, left)
            print(f"gpu_check: {section} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
            workdir = Path(tmp) / section.replace("/", "_")
            workdir.mkdir()
            line["sections"][section] = result = run_child(section, child_argv, limit, workdir)
            print(f"gpu_check: {section}: {result.get('status')} in {result['wall_s']} s", file=sys.stderr, flush=True)
    line["seconds"] = round(time.perf_counter() - started, 1)
    statuses = [s["status"] for s in line["sections"].values()]
    line["ok"] = "error" not in line and all(s in ("ok", "skipped") for s in statuses) and "ok" in statuses
    text = json.dumps(line)
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0 if line["ok"] else 1


def _drop_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv without the named options and their values (either `--name value` or `--name=value`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(name + "=") for name in names):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    raise SystemExit(main())
