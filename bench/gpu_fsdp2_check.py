"""GPU-only checks of FSDP2 training (issue 19) that tests/test_fsdp.py cannot make on CPUs: NCCL,
bf16 mixed precision (accelerate's fp32 master weights, bf16 compute and reduction), CPU offload, and
the measured peak memory next to the printed estimate.

STATUS: NOT YET RUN ON A GPU (written where no GPU was lent; its CPU twin, tests/test_fsdp.py, runs
the same loop code in fp32 on 2 gloo processes).

    python bench/gpu_fsdp2_check.py --out DIR [--budget-s 300]   # one JSON line; exit 1 if a check failed

It builds the "small" tiny llava-video model (random weights, nothing downloaded) and 16 examples of
random frames, and trains 4 steps of full fine-tuning in bf16 with train/loop.py, each run its own
`accelerate launch` on all visible GPUs (N = torch.cuda.device_count()):
    reference  recipes/accelerate/1gpu.yaml, 1 process, grad_accum N (the same steps as N processes)
    fsdp2      recipes/accelerate/fsdp2-8gpu.yaml with N processes, killed in step 3 and resumed from
               its sharded checkpoint
    offload    the same config with --fsdp_offload_params true
Checks: every run ends; fsdp2's and offload's final losses within 3% of the reference's (bf16
arithmetic differs in order); the consolidated models load with from_pretrained and their weights
are within bf16 tolerance of the reference's; offload's peak GPU memory is below fsdp2's; with N >= 2
fsdp2's peak is below the reference's. The JSON holds each run's loss, printed estimate and peak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src" / "vlm_rlaif" / "recipes" / "accelerate"
STEPS = 4


def worker(args) -> None:
    """One training run (under accelerate launch): the model at args.model, 4 steps, full fine-tuning."""
    import numpy as np

    from vlm_rlaif.models.adapter import VideoExample
    from vlm_rlaif.models.registry import load_adapter_model
    from vlm_rlaif.rundir import RunDir
    from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train

    settings = TrainSettings(batch_size=2, grad_accum=args.grad_accum, max_steps=STEPS, lr=1e-4, schedule="constant",
                             mixed_precision="bf16", save_every=1, keep_checkpoints=1)
    accelerator = accelerator_for(settings)
    lm = load_adapter_model(args.model, device=accelerator.device, dtype="bfloat16")
    lm.set_trainable(language_model=True, projector=True)
    rng = np.random.default_rng(0)
    examples = [
        VideoExample([{"role": "user", "content": "What colour is the video?"},
                      {"role": "assistant", "content": f"The video is {'red' if i % 2 else 'blue'}. " * (1 + i % 3)}],
                     video=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), video_key=f"v{i}")
        for i in range(16)
    ]
    batches = [lm.collate(examples[i : i + 2]) for i in range(0, len(examples), 2)]
    calls = []

    def loss_fn(batch):
        calls.append(1)
        if args.kill_at and len(calls) == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        output = lm.forward(batch)
        return output.loss, {}

    run = RunDir.open_on_main(accelerator, args.run, "gpu-fsdp2-check", {}, 0)
    result = train(lm.model, loss_fn, batches, settings, run=run, accelerator=accelerator,
                   keep_whole=list(lm.visual_modules().values()))
    if result.consolidated is not None:
        lm.model = result.consolidated
    if accelerator.is_main_process:
        lm.save(Path(args.run) / "model")
        (Path(args.run) / "result.json").write_text(json.dumps({
            "loss": result.train_metrics["loss"], "peak_gib": (result.peak_memory_bytes or 0) / 2**30,
            "resumed_from": result.resumed_from_step, "processes": accelerator.num_processes,
            "sharded": result.consolidated is not None,
        }))
    accelerator.wait_for_everyone()


def launch(config: str, processes: int, run: Path, model: Path, grad_accum: int, *extra: str, kill_at: int = 0,
           timeout: float = 120):
    """One worker run under accelerate launch; a run past `timeout` seconds counts as exit code 124."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", str(processes), *extra, __file__, "--worker", "--model", str(model),
               "--run", str(run), "--grad-accum", str(grad_accum), "--kill-at", str(kill_at)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    try:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as err:
        def text(value):
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")
        return subprocess.CompletedProcess(command, 124, text(err.stdout), text(err.stderr) + "\n(timed out)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_fsdp2"))
    parser.add_argument("--budget-s", type=float, default=300, help="seconds for all four runs together")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--grad-accum", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    import torch

    sys.path.insert(0, str(REPO / "src"))
    from vlm_rlaif.models import build_tiny_model, train_tokenizer

    started = time.time()
    gpus = torch.cuda.device_count()
    report: dict = {"check": "gpu_fsdp2", "gpus": gpus, "runs": {}, "failures": []}
    if gpus == 0:
        report["failures"].append("no GPU visible")
        print(json.dumps(report))
        return 1
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = out / "base"
    if not model.is_dir():
        texts = ["What colour is the video?", "The video is red.", "The video is blue."]
        build_tiny_model("small", train_tokenizer(texts * 20, vocab_size=400), frames=8, seed=0).save(model)

    def record(name: str, done: subprocess.CompletedProcess, run: Path) -> dict | None:
        estimate = re.search(r"expected memory per GPU \(.*", done.stdout)
        entry = {"returncode": done.returncode, "estimate": estimate.group(0) if estimate else None}
        if (run / "result.json").is_file():
            entry.update(json.loads((run / "result.json").read_text()))
        if done.returncode != 0:
            entry["stderr_tail"] = done.stderr[-1500:]
            report["failures"].append(f"{name}: exit {done.returncode}")
        report["runs"][name] = entry
        return entry if done.returncode == 0 else None

    deadline = started + args.budget_s

    def left() -> float:  # each run gets at most 120 s of what is left
        return min(120.0, deadline - time.time())

    runs = {name: out / name for name in ("reference", "fsdp2", "offload")}
    for run in runs.values():
        subprocess.run(["rm", "-rf", str(run)], check=True)
    reference = record("reference", launch("1gpu.yaml", 1, runs["reference"], model, gpus, timeout=left()),
                       runs["reference"])
    killed = launch("fsdp2-8gpu.yaml", gpus, runs["fsdp2"], model, 1, kill_at=3, timeout=left())
    report["runs"]["fsdp2_killed_returncode"] = killed.returncode
    fsdp2 = record("fsdp2", launch("fsdp2-8gpu.yaml", gpus, runs["fsdp2"], model, 1, timeout=left()), runs["fsdp2"])
    offload = record("offload", launch("fsdp2-8gpu.yaml", gpus, runs["offload"], model, 1,
                                       "--fsdp_offload_params", "true", timeout=left()), runs["offload"])

    def check(condition: bool, what: str) -> None:
        if not condition:
            report["failures"].append(what)

    if fsdp2 is not None:
        check(fsdp2["sharded"] and fsdp2["resumed_from"] == 2, "fsdp2: not sharded or did not resume from step 2")
    if reference is not None:
        from safetensors.torch import load_file
        from transformers import AutoModelForImageTextToText

        import vlm_rlaif.models  # noqa: F401  (registers llava-video with the Auto classes)

        expected = load_file(runs["reference"] / "model" / "model.safetensors")
        for name, entry in (("fsdp2", fsdp2), ("offload", offload)):
            if entry is None:
                continue
            check(abs(entry["loss"] - reference["loss"]) <= 0.03 * abs(reference["loss"]),
                  f"{name}: loss {entry['loss']:.4f} vs reference {reference['loss']:.4f}")
            try:  # a model that does not load is a failed check, and the JSON line still comes
                AutoModelForImageTextToText.from_pretrained(runs[name] / "model")
                saved = load_file(runs[name] / "model" / "model.safetensors")
                worst = max(float((saved[k].float() - v.float()).abs().max()) for k, v in expected.items())
            except Exception as err:  # noqa: BLE001
                check(False, f"{name}: the consolidated model does not load: {err!r}"[:500])
                continue
            report["runs"][name]["max_weight_difference"] = worst
            check(worst < 2e-2, f"{name}: weights differ from the reference by up to {worst:.3g}")
    if fsdp2 is not None and offload is not None:
        check(offload["peak_gib"] < fsdp2["peak_gib"], "offload: peak GPU memory not below fsdp2's")
    if fsdp2 is not None and reference is not None and gpus >= 2:
        check(fsdp2["peak_gib"] < reference["peak_gib"], "fsdp2: peak GPU memory not below one process's")
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
