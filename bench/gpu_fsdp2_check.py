"""GPU-only checks of FSDP2 training (issue 19) that tests/test_fsdp.py cannot make on CPUs: NCCL,
bf16 mixed precision (accelerate's fp32 master weights, bf16 compute and reduction), CPU offload, and
the measured peak memory next to the printed estimate.

STATUS: NOT YET RUN ON A GPU (written where no GPU was lent; its CPU twins, tests/test_fsdp.py and
tests/test_fsdp_rl.py, run the same code in fp32 on 2 gloo processes; the PPO/GRPO worker ran in
bf16 on 2 CPU processes through the tests' shim: all three runs and their checks passed).

    python bench/gpu_fsdp2_check.py --out DIR [--budget-s 600] [--only loop|rl]   # one JSON line; exit 1 if a check failed

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

PPO and GRPO (train/rollouts.py; CPU twin: tests/test_fsdp_rl.py, fp32), LoRA on the same model in
bf16 (runtime.mixed_precision and dtype), 2 iterations on 16 prompts about random videos, N processes:
    ppo_ddp     recipes/accelerate/ddp-8gpu.yaml, the policy initialised first, reward "red" in the answer
    ppo_fsdp2   the same under fsdp2-8gpu.yaml (a sharded initialisation, the HF engine sampling
                with gathered parameters, NCCL)
    grpo_fsdp2  GRPO under fsdp2-8gpu.yaml, killed in iteration 2 and resumed from its sharded checkpoint
Checks: every run ends with finite metrics and saves a policy adapter that loads; ppo_fsdp2's
first-iteration reward within 0.35 of ppo_ddp's (bf16 sampling may pick other tokens); grpo_fsdp2
resumed from iteration 1. The JSON holds each run's printed estimate, peak memory and the largest
difference between the two PPO adapters. --only loop|rl runs one group.
"""

from __future__ import annotations

import argparse
import json
import math
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

    from vlm_rlaif.models.examples import VideoExample
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


REWARDS = """
import os, signal
CALLS = [0]

def says_red(record, text):
    CALLS[0] += 1
    if CALLS[0] == int(os.environ.get("GPU_CHECK_KILL_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return float("red" in text)
"""


def write_rl_world(root: Path) -> None:
    """16 RL prompts about 4 random videos (rl/prompts.json), with answers (rl/PPO_init.json)."""
    import numpy as np

    from vlm_rlaif.video import write_video

    rng = np.random.default_rng(0)
    prompts, init = [], []
    for v in range(4):
        write_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), root / "videos" / f"v{v}.mp4")
        for k in range(4):
            human = {"from": "human", "value": "<video>\nWhat colour is the video?"}
            prompts.append({"id": f"v{v}_{k}", "video": f"videos/v{v}.mp4", "conversations": [human]})
            answer = {"from": "gpt", "value": f"The video is {'red' if (v + k) % 2 else 'blue'}."}
            init.append({"id": f"v{v}_{k}", "video": f"videos/v{v}.mp4", "conversations": [human, answer]})
    (root / "rl").mkdir(parents=True, exist_ok=True)
    (root / "rl" / "prompts.json").write_text(json.dumps(prompts))
    (root / "rl" / "PPO_init.json").write_text(json.dumps(init))
    (root / "gpu_check_rewards.py").write_text(REWARDS)


def rl_worker(args) -> None:
    """One PPO or GRPO run (under accelerate launch): LoRA on args.model, bf16, 2 iterations."""
    import torch

    from vlm_rlaif.config import from_dict
    from vlm_rlaif.train import grpo, ppo

    world = Path(args.world)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    lora = {"r": 8, "alpha": 16}
    common = {"out": args.run, "policy": {"model": args.model, "lora": lora},
              "data": {"root": str(world), "num_frames": 8},
              "runtime": {"mixed_precision": "bf16", "dtype": "bfloat16"}}
    if args.rl == "ppo":
        config = from_dict(ppo.PPOConfig, {**common, "reward": {"value_init": "fresh", "value_lora": lora},
            "init": {"train": {"batch_size": 2, "lr": 1e-4, "save_every": 0, "mixed_precision": "bf16"}},
            "ppo": {"rollout_batch_size": 2 * processes, "minibatch_size": processes, "micro_batch_size": 1,
                    "forward_batch_size": 4, "generation_batch_size": 4, "max_new_tokens": 16, "max_iterations": 2,
                    "warmup_iterations": 0, "lr": 1e-4, "save_every": 1}})
        summary = ppo.run_ppo(config, reward_fn=lambda examples, texts: torch.tensor([float("red" in t) for t in texts]))
    else:
        config = from_dict(grpo.GRPOConfig, {**common, "init": {"enabled": False},
            "rewards": [{"kind": "python", "function": "gpu_check_rewards:says_red"}],
            "grpo": {"prompts_per_iteration": processes, "group_size": 2, "minibatch_size": 2 * processes,
                     "micro_batch_size": 2, "forward_batch_size": 4, "generation_batch_size": 4,
                     "max_new_tokens": 16, "max_iterations": 2, "lr": 1e-4, "save_every": 1}})
        summary = grpo.run_grpo(config)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [json.loads(line) for line in (Path(args.run) / "metrics.jsonl").read_text().splitlines()]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        (Path(args.run) / "result.json").write_text(json.dumps({
            "rewards": [r["reward_score"] for r in rows], "resumed_from": summary["resumed_from_iteration"],
            "finite": all(math.isfinite(r[k]) for r in rows for k in ("reward_score", "response_length")), "peak_gib": peak,
            "processes": processes,
        }))


def launch(config: str, processes: int, run: Path, model: Path, grad_accum: int, *extra: str, kill_at: int = 0,
           timeout: float = 120, rl: str = "", world: Path | None = None):
    """One worker run under accelerate launch; a run past `timeout` seconds counts as exit code 124.
    rl: "ppo" or "grpo" runs rl_worker on `world` (kill_at: the reward call that kills GRPO)."""
    worker_args = ["--rl", rl, "--world", str(world)] if rl else ["--grad-accum", str(grad_accum), "--kill-at", str(kill_at)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", str(processes), *extra, __file__, "--worker", "--model", str(model),
               "--run", str(run), *worker_args]
    paths = [str(REPO / "src")] + ([str(world)] if world else [])  # world: GRPO's reward module
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(paths)}
    if rl and kill_at:
        env["GPU_CHECK_KILL_AT_CALL"] = str(kill_at)
    try:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as err:
        def text(value):
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")
        return subprocess.CompletedProcess(command, 124, text(err.stdout), text(err.stderr) + "\n(timed out)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_fsdp2"))
    parser.add_argument("--budget-s", type=float, default=600, help="seconds for all runs together")
    parser.add_argument("--only", choices=("loop", "rl"), help="run only the loop's or only PPO/GRPO's checks")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--grad-accum", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rl", default="", help=argparse.SUPPRESS)
    parser.add_argument("--world", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rl_worker(args) if args.rl else worker(args)
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

    def check(condition: bool, what: str) -> None:
        if not condition:
            report["failures"].append(what)

    if args.only != "rl":
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
    if args.only != "loop":
        rl_checks(out, model, gpus, left, record, check, report)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


def rl_checks(out: Path, model: Path, gpus: int, left, record, check, report: dict) -> None:
    """PPO data parallel and sharded, GRPO sharded killed and resumed (see the module docstring)."""
    world = out / "rl_world"
    if not (world / "rl" / "prompts.json").is_file():
        write_rl_world(world)
    runs = {name: out / name for name in ("ppo_ddp", "ppo_fsdp2", "grpo_fsdp2")}
    for run in runs.values():
        subprocess.run(["rm", "-rf", str(run)], check=True)

    def rl_launch(name: str, config: str, rl: str, kill_at: int = 0):
        return launch(config, gpus, runs[name], model, 1, timeout=left(), rl=rl, world=world, kill_at=kill_at)

    ddp = record("ppo_ddp", rl_launch("ppo_ddp", "ddp-8gpu.yaml", "ppo"), runs["ppo_ddp"])
    fsdp2 = record("ppo_fsdp2", rl_launch("ppo_fsdp2", "fsdp2-8gpu.yaml", "ppo"), runs["ppo_fsdp2"])
    # Each process calls the reward once per rollout: 2 per iteration, so call 3 is in iteration 2.
    report["runs"]["grpo_fsdp2_killed_returncode"] = rl_launch("grpo_fsdp2", "fsdp2-8gpu.yaml", "grpo", kill_at=3).returncode
    grpo = record("grpo_fsdp2", rl_launch("grpo_fsdp2", "fsdp2-8gpu.yaml", "grpo"), runs["grpo_fsdp2"])
    for name, entry in (("ppo_ddp", ddp), ("ppo_fsdp2", fsdp2), ("grpo_fsdp2", grpo)):
        if entry is None:
            continue
        check(entry["finite"] and len(entry["rewards"]) == 2, f"{name}: metrics missing or not finite")
        try:
            from vlm_rlaif.models.registry import load_adapter_model

            load_adapter_model(model).load_lora(runs[name] / "policy_adapter", "policy")
        except Exception as err:  # noqa: BLE001
            check(False, f"{name}: the policy adapter does not load: {err!r}"[:500])
    if grpo is not None:
        check(grpo["resumed_from"] == 1, f"grpo_fsdp2: resumed from {grpo['resumed_from']}, not iteration 1")
    if ddp is not None and fsdp2 is not None:
        check(abs(ddp["rewards"][0] - fsdp2["rewards"][0]) <= 0.35,
              f"ppo_fsdp2: first reward {fsdp2['rewards'][0]:.3f} vs data parallel {ddp['rewards'][0]:.3f}")
        from safetensors.torch import load_file

        adapters = [load_file(runs[name] / "policy_adapter" / "adapter_model.safetensors") for name in ("ppo_ddp", "ppo_fsdp2")]
        report["runs"]["ppo_fsdp2"]["max_adapter_difference"] = max(
            float((adapters[0][k].float() - v.float()).abs().max()) for k, v in adapters[1].items())


if __name__ == "__main__":
    sys.exit(main())
