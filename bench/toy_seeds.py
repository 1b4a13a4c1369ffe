"""The demo's science over several seeds: does RLAIF beat SFT, and does the clip context help the judge?

    python bench/toy_seeds.py --work runs/seeds [--seeds 0 1 2] [--parallel 2] [--oracle-control]
        [--recipe recipes/toy.yaml]

1. `vlm-rlaif demo --seed S --out WORK/seedS` for each seed (a finished demo is reused; an
   interrupted one resumes), --parallel of them at a time, one torch thread each.
2. With --oracle-control, a control arm per seed that isolates the RL machinery from the quality of
   the AI feedback: the same world and SFT model (linked), but the pairs are labelled by the toy
   world's oracle instead of the SFT model's judge, then the same RM, PPO and evaluation
   (WORK/seedS-oracle). This is a measurement, never the demo's path.
3. A table per seed and across seeds: the judge's agreement with the oracle with vs without context
   (paired difference), the RM's agreement with the oracle, and RLAIF minus SFT on every oracle
   measure (paired over the same benchmark items). Across seeds: the mean of the per-seed values
   with a t interval (n = number of seeds), and the pooled paired items with a bootstrap interval.
4. With --arms, more RL arms per seed on the same AI preference data and the same rollout budget,
   each in WORK/seedS-<arm> with the demo's world, SFT model, feedback and reward model linked in:
   grpo (GRPO against the demo's reward model, the recipe's grpo section: 24 x 32 rollouts, PPO's),
   dpo (DPO on the demo's preference pairs; no rollouts) and grpo_oracle (GRPO with the toy oracle
   as a verifiable reward: a measurement arm, never the demo's path). Each arm's policy is
   evaluated alone (eval `models` overridden to it) and compared, paired over the same items, with
   the demo's SFT judgements; the table gives RLAIF - SFT per arm on the oracle's measures with
   intervals (t across seeds, bootstrap over the pooled items) and each arm's wall time.
Writes WORK/seeds.md and WORK/seeds.json and appends one line to bench/out/toy_seeds.jsonl.

    python bench/toy_seeds.py --work runs/arms --seeds 0 1 2 --parallel 2 --arms grpo dpo grpo_oracle
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_FILE = REPO / "bench" / "out" / "toy_seeds.jsonl"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _run(command: list[str], log_path: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    with log_path.open("a") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def run_demo(work: Path, seed: int, recipe: Path, quick: bool = False) -> float:
    cli = [sys.executable, "-m", "vlm_rlaif.cli"]
    return _run([*cli, "demo", "--seed", str(seed), "--out", str(work / f"seed{seed}"), "--recipe", str(recipe),
                 *(["--quick"] if quick else [])], work / f"seed{seed}.log")


def run_oracle_control(work: Path, seed: int, recipe: Path) -> float:
    source, control = work / f"seed{seed}", work / f"seed{seed}-oracle"
    control.mkdir(parents=True, exist_ok=True)
    for shared in ("world", "sft"):
        link = control / shared
        if not link.exists():
            link.symlink_to((source / shared).resolve(), target_is_directory=True)
    cli = [sys.executable, "-m", "vlm_rlaif.cli"]
    command = [*cli, "pipeline", "feedback.judge.kind=oracle", "--recipe", str(recipe), "--run-dir", str(control),
               "--seed", str(seed), "--stages", "feedback", "rm", "ppo", "eval"]
    return _run(command, work / f"seed{seed}-oracle.log")


ARMS = ("grpo", "dpo", "grpo_oracle")


def _linked_arm(work: Path, seed: int, arm: str, shared: tuple[str, ...]) -> Path:
    """WORK/seedS-<arm> with the demo's `shared` stage directories linked in."""
    source, directory = work / f"seed{seed}", work / f"seed{seed}-{arm}"
    directory.mkdir(parents=True, exist_ok=True)
    for name in shared:
        link = directory / name
        if not link.exists():
            link.symlink_to((source / name).resolve(), target_is_directory=True)
    return directory


def dpo_config(recipe: Path, arm: Path, seed: int) -> Path:
    """A DPO config on the demo's pairs, split and read as the recipe's reward model reads them, with
    the policy's LoRA size and learning rate (the toy recipe has no dpo section; untuned)."""
    import dataclasses

    import yaml

    from vlm_rlaif.config import load_config, to_dict
    from vlm_rlaif.train.preference_data import PreferenceDataSettings
    from vlm_rlaif.train.rm import RMConfig

    rm = load_config(RMConfig, recipe, section="rm", variables={"run_dir": str(arm), "seed": seed})
    fields = {f.name for f in dataclasses.fields(PreferenceDataSettings)}
    section = {
        "out": str(arm / "dpo"), "epochs": rm.epochs, "beta": 0.1,
        "model": {"path": str(arm / "sft" / "model")},
        "data": {k: v for k, v in to_dict(rm.data).items() if k in fields},
        "tune": {"method": "lora", "lora_r": 16, "lora_alpha": 16, "lora_targets": "attn_mlp"},
        "train": {"batch_size": 16, "lr": 5.0e-4, "schedule": "cosine", "warmup_ratio": 0.03, "eval_every": 0,
                  "save_every": 50, "log_every": 5, "cpu": True, "seed": seed},
    }
    path = arm / "dpo.yaml"
    path.write_text(yaml.safe_dump({"dpo": section}, sort_keys=False))
    return path


def run_arm(work: Path, seed: int, recipe: Path, arm: str, quick: bool = False) -> float:
    """One arm of --arms (see the module docstring): train, then evaluate its policy alone. quick:
    the recipe's `quick` overrides (a smoke run whose numbers mean nothing)."""
    from vlm_rlaif.pipeline import quick_overrides

    smoke = quick_overrides(recipe) if quick else {}
    cli = [sys.executable, "-m", "vlm_rlaif.cli"]
    log = work / f"seed{seed}-{arm}.log"
    variables = ["--var", f"seed={seed}"]
    if arm == "dpo":
        directory = _linked_arm(work, seed, arm, ("world", "sft", "feedback"))
        seconds = _run([*cli, "dpo", "--config", str(dpo_config(recipe, directory, seed)),
                        *(["train.max_steps=5"] if quick else [])], log)
        policy = {"name": "rlaif", "path": str(directory / "dpo" / "model")}
    else:
        shared = ("world", "sft", "feedback", "rm") if arm == "grpo" else ("world", "sft")
        directory = _linked_arm(work, seed, arm, shared)
        oracle = ["rewards.0.kind=oracle", f"rewards.0.toy_dir={directory / 'world'}", "rewards.0.model=null"]
        seconds = _run([*cli, "grpo", "--config", str(recipe), "--var", f"run_dir={directory}", *variables,
                        *(oracle if arm == "grpo_oracle" else []), *smoke.get("grpo", [])], log)
        policy = {"name": "rlaif", "path": str(directory / "sft" / "model"), "lora": str(directory / "grpo" / "policy_adapter")}
    models = json.dumps([policy])
    seconds += _run([*cli, "eval", "--config", str(recipe), "--var", f"run_dir={directory}", *variables,
                     f"models={models}", *smoke.get("eval", [])], log)
    return seconds


def arm_results(work: Path, seed: int, arm: str) -> dict:
    """RLAIF - SFT per oracle measure, the arm's policy (ppo: the demo's) vs the demo's SFT
    judgements (same items)."""
    from vlm_rlaif.demo.report import ITEM_MEASURES, _eval_items
    from vlm_rlaif.eval.stats import estimate_mean

    demo = work / f"seed{seed}"
    out = {}
    for bench, criterion, label, read, _ in ITEM_MEASURES:
        base = _eval_items(demo, "sft", bench, criterion)
        other = _eval_items(demo if arm == "ppo" else work / f"seed{seed}-{arm}", "rlaif", bench, criterion)
        diffs = [read(other[i]) - read(base[i]) for i in sorted(set(base) & set(other))]
        if diffs:
            out[label] = {"diffs": diffs, **estimate_mean(diffs, resamples=2000, confidence=0.95, seed=0).to_dict()}
    return out


def summarize_arms(work: Path, seeds: list[int], arms: list[str], seconds: dict[str, float]) -> tuple[dict, list[str]]:
    """RLAIF - SFT per arm and measure (ppo: the demo itself) and wall time per arm."""
    from vlm_rlaif.demo.report import ITEM_MEASURES
    from vlm_rlaif.eval.stats import estimate_mean

    per_arm = {arm: {s: arm_results(work, s, arm) for s in seeds} for arm in ["ppo", *arms]}
    lines = ["## RL arms on the same AI preference data and rollout budget", "",
             "RLAIF - SFT on the oracle's measures (vs the demo's SFT judgements, paired over the same items): mean "
             "of the per-seed differences with a t interval over seeds; pooled: all seeds' items with a bootstrap "
             "interval. grpo_oracle trains on the oracle (a measurement arm).", "",
             "| measure | " + " | ".join(["ppo", *arms]) + " |", "|---" * (2 + len(arms)) + "|"]
    result: dict = {"measures": {}, "seconds": {}}
    for _, _, label, _, _ in ITEM_MEASURES:
        cells = []
        for arm, by_seed in per_arm.items():
            values = [r[label]["value"] if label in r else None for r in by_seed.values()]
            pooled = [d for r in by_seed.values() if label in r for d in r[label]["diffs"]]
            pool = estimate_mean(pooled, resamples=2000, confidence=0.95, seed=0).to_dict() if pooled else {}
            across = t_interval(values)
            result["measures"].setdefault(label, {})[arm] = {"per_seed": values, "across": across, "pooled": pool}
            cells.append(f"{_ci(across, 2, sign=True)}; pooled {_ci(pool, 2, sign=True) if pool else 'n/a'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time per arm and seed, seconds (ppo: the whole demo, feedback and RM included; the other "
              "arms reuse its feedback and reward model):", "", "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---" * (1 + len(seeds)) + "|"]
    for arm in ["ppo", *arms]:
        suffix = "" if arm == "ppo" else f"-{arm}"
        times = [seconds.get(f"seed{s}{suffix}") for s in seeds]
        result["seconds"][arm] = times
        lines.append(f"| {arm} | " + " | ".join(_f(t, 0) for t in times) + " |")
    lines += ["", "Training alone, seconds (the stage's summary.json: policy initialisation + the RL loop; DPO: its "
              "training loop), same processes and threads:", "", "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---" * (1 + len(seeds)) + "|"]
    for arm in ["ppo", *arms]:
        stage = {"ppo": "ppo", "dpo": "dpo"}.get(arm, "grpo")
        times = [training_seconds(work / (f"seed{s}" if arm == "ppo" else f"seed{s}-{arm}") / stage) for s in seeds]
        result["seconds"][f"{arm}_training"] = times
        lines.append(f"| {arm} | " + " | ".join(_f(t, 0) for t in times) + " |")
    return result, lines


def training_seconds(stage_dir: Path) -> float | None:
    summary = _load(stage_dir / "summary.json")
    seconds = summary.get("seconds") or summary.get("train_seconds")  # train_seconds: DPO's
    if seconds is None:
        return None
    return seconds + ((summary.get("init") or {}).get("seconds") or 0.0)


# ---------------------------------------------------------------------- reading the results


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def seed_results(run_dir: Path) -> dict:
    from vlm_rlaif.demo.report import compare_models

    judge = _load(run_dir / "judge_context" / "summary.json")
    rm = _load(run_dir / "rm" / "summary.json")
    feedback = _load(run_dir / "feedback" / "summary.json")
    held = (rm.get("eval") or {}).get("heldout") or {}
    out = {
        "feedback": {k: feedback.get(k) for k in ("pairs_judged", "pairs_kept", "pairs_tie", "pairs_inconsistent")},
        "feedback_oracle": (feedback.get("oracle") or {}),
        "rm_accuracy_on_labels": held.get("accuracy"),
        "rm_oracle": ((held.get("oracle") or {}).get("reward_model") or {}),
        "eval": compare_models(run_dir, ["sft", "policy_init", "rlaif"]),
    }
    if judge:
        out["judge"] = {
            "context": judge["context"]["mean_of_orders"],
            "no_context": judge["no_context"]["mean_of_orders"],
            "difference": judge["difference_context_minus_no_context"],
        }
    return out


def paired_items(run_dir: Path, label: str, model: str = "rlaif") -> list[float]:
    """The per-item differences model - sft for one measure (for pooling across seeds)."""
    from vlm_rlaif.demo.report import ITEM_MEASURES, _eval_items

    for bench, criterion, name, read, _ in ITEM_MEASURES:
        if name == label:
            base, other = _eval_items(run_dir, "sft", bench, criterion), _eval_items(run_dir, model, bench, criterion)
            return [read(other[i]) - read(base[i]) for i in sorted(set(base) & set(other))]
    return []


def t_interval(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def _f(x, digits=3, sign=False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(e: dict, digits=3, sign=False) -> str:
    value = next((e[k] for k in ("value", "mean", "rate", "difference") if k in e), None)
    low, high = e.get("low"), e.get("high")
    if low is None and e.get("ci95"):
        low, high = e["ci95"]
    text = _f(value, digits, sign)
    return text if low is None else f"{text} [{_f(low, digits, sign)}, {_f(high, digits, sign)}]"


def summarize(work: Path, seeds: list[int], arms: list[str]) -> tuple[dict, str]:
    from vlm_rlaif.demo.report import ITEM_MEASURES
    from vlm_rlaif.eval.stats import estimate_mean

    result: dict = {"seeds": seeds, "arms": {}}
    lines = ["# The toy demo over seeds", ""]
    for arm in arms:
        suffix = "" if arm == "rlaif" else "-oracle"
        per_seed = {s: seed_results(work / f"seed{s}{suffix}") for s in seeds}
        title = "AI feedback (the demo)" if arm == "rlaif" else "oracle-labelled control"
        lines += [f"## {title}", ""]
        if arm == "rlaif":
            lines += ["Judge agreement with the oracle on the feedback pairs (mean of both orders, Wilson 95%):", "",
                      "| seed | with context | without | paired difference [bootstrap 95%] |", "|---|---|---|---|"]
            for s, r in per_seed.items():
                j = r.get("judge")
                if j:
                    lines.append(f"| {s} | {_ci(j['context'])} (n={j['context']['n']}) | {_ci(j['no_context'])} | "
                                 f"{_ci(j['difference'], sign=True)} (n={j['difference']['n']}) |")
            diffs = [r["judge"]["difference"]["difference"] for r in per_seed.values() if r.get("judge")]
            across = t_interval(diffs)
            lines += [f"| across seeds | | | {_ci(across, sign=True)} (t, n={across['n']}) |", ""]
        lines += ["| seed | pairs kept | AI labels agree with oracle | RM accuracy on AI labels | RM agrees with oracle |",
                  "|---|---|---|---|---|"]
        for s, r in per_seed.items():
            kept = (r["feedback_oracle"].get("kept_labels") or {})
            lines.append(f"| {s} | {r['feedback'].get('pairs_kept')} | {_ci(kept) if kept else 'n/a'} | "
                         f"{_f(r['rm_accuracy_on_labels'])} | {_ci(r['rm_oracle']) if r['rm_oracle'] else 'n/a'} |")
        lines += ["", "RLAIF minus SFT, paired over the same items (per seed: bootstrap 95%; across seeds: mean of the "
                  "per-seed differences with a t interval, and all seeds' items pooled with a bootstrap interval):", "",
                  "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | across seeds (t) | pooled items |",
                  "|---" * (3 + len(seeds)) + "|"]
        measures = {}
        for _, _, label, _, _ in ITEM_MEASURES:
            cells, values, pooled = [], [], []
            for s, r in per_seed.items():
                row = next((x for x in r["eval"] if x["measure"] == label), None)
                e = (row or {}).get("vs_baseline", {}).get("rlaif")
                cells.append(_ci(e, 2, sign=True) if e else "n/a")
                values.append(e["value"] if e else None)
                pooled += paired_items(work / f"seed{s}{suffix}", label)
            across = t_interval(values)
            pool = estimate_mean(pooled, resamples=2000, confidence=0.95, seed=0).to_dict() if pooled else {}
            measures[label] = {"per_seed": values, "across": across, "pooled": pool}
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_ci(across, 2, sign=True)} | "
                         f"{_ci(pool, 2, sign=True) if pool else 'n/a'} (n={len(pooled)}) |")
        lines += ["", "SFT and RLAIF levels (mean over seeds of the per-seed means):", "",
                  "| measure | sft | policy_init | rlaif |", "|---|---|---|---|"]
        for _, _, label, _, _ in ITEM_MEASURES:
            cells = []
            for model in ("sft", "policy_init", "rlaif"):
                vals = []
                for r in per_seed.values():
                    row = next((x for x in r["eval"] if x["measure"] == label), None)
                    e = (row or {}).get("models", {}).get(model)
                    vals.append(e["value"] if e else None)
                cells.append(_ci(t_interval(vals), 2))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        result["arms"][arm] = {"per_seed": per_seed, "measures": measures}
    return result, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="demos at a time (one torch thread each)")
    parser.add_argument("--oracle-control", action="store_true")
    parser.add_argument("--arms", nargs="*", default=[], choices=ARMS, help="more RL arms per seed (module docstring)")
    parser.add_argument("--quick", action="store_true", help="the recipe's quick overrides: a smoke run of every step")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "toy.yaml")
    parser.add_argument("--summarize-only", action="store_true", help="only read finished runs and write the tables")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    seconds: dict[str, float] = {}
    if not args.summarize_only:
        def one(seed: int) -> None:
            seconds[f"seed{seed}"] = round(run_demo(args.work, seed, args.recipe, args.quick), 1)
            if args.oracle_control:
                seconds[f"seed{seed}-oracle"] = round(run_oracle_control(args.work, seed, args.recipe), 1)
            for arm in args.arms:
                seconds[f"seed{seed}-{arm}"] = round(run_arm(args.work, seed, args.recipe, arm, args.quick), 1)

        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(one, args.seeds))

    arms = ["rlaif", "oracle"] if args.oracle_control else ["rlaif"]
    result, text = summarize(args.work, args.seeds, arms)
    if args.summarize_only:  # the times of the run that made the directories
        seconds = (_load(args.work / "seeds.json").get("seconds") or {}) | seconds
    if args.arms:
        result["rl_arms"], lines = summarize_arms(args.work, args.seeds, args.arms, seconds)
        text += "\n" + "\n".join(lines) + "\n"
    result["seconds"] = seconds
    (args.work / "seeds.json").write_text(json.dumps(result, indent=2, default=str))
    (args.work / "seeds.md").write_text(text)
    print(text)
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOG_FILE.open("a") as f:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "work": str(args.work), "seeds": args.seeds,
               "recipe": str(args.recipe), "seconds": seconds,
               "measures": {arm: v["measures"] for arm, v in result["arms"].items()},
               "rl_arms": (result.get("rl_arms") or {}).get("measures")}
        f.write(json.dumps(row, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
