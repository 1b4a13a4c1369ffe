"""report.md and its plots for a toy-world run: what each stage did and what RLAIF changed.

Everything here is read back from the stages' own files (summary.json, metrics.jsonl, the eval's
per-item judgements), so a report can be rebuilt from a run directory at any time:

    python -c "from vlm_rlaif.demo.report import write_report; write_report('demo_runs/seed0')"
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from vlm_rlaif.demo.plots import plot_eval, plot_judge, plot_ppo
from vlm_rlaif.eval.benchmarks import load_items
from vlm_rlaif.eval.stats import estimate_mean
from vlm_rlaif.rundir import read_metrics

# The per-item measures the SFT-vs-RLAIF comparison reports: (benchmark, criterion, label, how to
# read one judgement line, higher is better).
ITEM_MEASURES = [
    ("qa", "qa", "QA accuracy (oracle), %", lambda j: 100.0 * bool(j["yes"]), True),
    ("mcq", "choice", "multiple-choice accuracy, %", lambda j: 100.0 * bool(j["yes"]), True),
    ("vcg_generic", "correctness", "VCG-style correctness (0-5)", lambda j: float(j["score"]), True),
    ("vcg_temporal", "temporal", "VCG-style temporal (0-5)", lambda j: float(j["score"]), True),
    ("vcg_consistency", "consistency", "VCG-style consistency (0-5)", lambda j: float(j["score"]), True),
    ("qa", "qa", "hallucinations per QA answer", lambda j: _mean(j.get("hallucinations") or [0]), False),
    ("vcg_generic", "correctness", "hallucinations per description", lambda j: _mean(j.get("hallucinations") or [0]), False),
]


QA_MEASURE, MCQ_MEASURE = ITEM_MEASURES[0][2], ITEM_MEASURES[1][2]


def _mean(values: list[float]) -> float:
    return float(sum(values)) / len(values)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _rate(estimate: dict) -> str:
    """"0.452 [0.410, 0.494]" from an agreement estimate (rate and ci95; either may be missing)."""
    return _fmt(estimate.get("rate")) + _ci(*(estimate.get("ci95") or (None, None)))


def _ci(low: float | None, high: float | None, digits: int = 3) -> str:
    return "" if low is None or high is None else f" [{low:.{digits}f}, {high:.{digits}f}]"


def write_report(
    run_dir: str | Path, results: list | None = None, *, quick: bool = False, seed: int | None = None,
    seconds: float | None = None,
) -> Path:
    """Write run_dir/report.md (+ PNG plots beside it) and return its path."""
    run_dir = Path(run_dir)
    evals = _load(run_dir / "eval" / "summary.json")
    # The paired comparison (bootstrap intervals) is computed once, for the verdicts and section 5.
    models = list(evals["results"]) if evals else []
    comparison = compare_models(run_dir, models) if evals else []
    # What PPO itself changed: the RLAIF policy against the policy it started from.
    ppo_comparison = compare_models(run_dir, ["policy_init", "rlaif"], baseline="policy_init") if "policy_init" in models else []
    lines: list[str] = ["# vlm-rlaif demo report", ""]
    lines += _header(run_dir, results, quick=quick, seed=seed, seconds=seconds)
    lines += verdict_lines(run_dir, comparison)
    lines += _judge_section(run_dir)
    lines += _feedback_section(run_dir)
    lines += _rm_section(run_dir)
    lines += _ppo_section(run_dir, ppo_comparison)
    lines += _eval_section(run_dir, evals, comparison)
    lines += _samples_section(run_dir, models)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _header(run_dir: Path, results: list | None, *, quick: bool, seed: int | None, seconds: float | None) -> list[str]:
    lines = []
    if quick:
        lines += ["> **Quick run** (a smoke test of every stage at toy size): its numbers carry no meaning.", ""]
    env = next((e for e in (_load(run_dir / stage / "env.json") for stage in ("sft", "feedback", "eval")) if e), {})
    lines += [
        f"Run directory `{run_dir}`, seed {seed if seed is not None else 'n/a'}. torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, vlm-rlaif {env.get('vlm_rlaif', '?')} "
        f"(commit {str(env.get('git_commit') or '?')[:10]}).",
        "",
    ]
    sft = _load(run_dir / "sft" / "summary.json") or {}
    if sft.get("foundation"):
        lines += [
            f"The SFT model is the shipped toy foundation (`{sft.get('made_by')}`, {sft.get('steps')} SFT steps "
            "after vision pretraining), as a real run starts from a released SFT checkpoint; "
            "`vlm-rlaif demo --from-scratch` builds it too.",
            "",
        ]
    vision = _load(run_dir / "vision" / "summary.json")
    if vision:
        lines += [
            f"Vision pretraining: held-out frame/caption retrieval {_fmt(vision.get('heldout_accuracy'))} "
            f"(random tower {_fmt(vision.get('heldout_accuracy_before'))}, {vision.get('pairs')} pairs).",
            "",
        ]
    if not results:
        return lines
    made = stage_seconds(run_dir, results)
    reused = [r.name for r in results if r.status == "reused"]
    worked = [f"{r.name} ({r.status})" for r in results if r.status != "reused"]
    unknown = [name for name, value in made.items() if value is None]
    # Times carry the word "seconds": the fresh-process determinism test leaves such lines out.
    lines += [
        f"Making these stages took {_seconds(sum(v for v in made.values() if v is not None))} seconds in all"
        + (f" (not counting {', '.join(unknown)}: made by an invocation that was interrupted)" if unknown else "")
        + (f"; this invocation took {_seconds(seconds)} seconds" if seconds is not None else "")
        + (f", reused {', '.join(reused)}" if reused else "")
        + (f" and did {', '.join(worked)}" if worked else "") + ".",
        "",
    ]
    if any(r.status in ("resumed", "reused") for r in results):
        lines += [
            f"This invocation continued earlier work in this directory (invocations so far: {len(_history(run_dir))}): "
            "a reused stage had finished before, a resumed one was interrupted before.",
            "",
        ]
    lines += ["| stage | this invocation | seconds to make it |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {_seconds(made[r.name])} |" for r in results]
    return lines + [""]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def stage_seconds(run_dir: Path, results: list) -> dict[str, float | None]:
    """stage -> the seconds of the invocations that made what is in its directory, read from
    demo_history.jsonl: the last one that ran (or redid, or shipped) it, plus any that resumed it
    after; a reused stage keeps the time it took then, not the 0.1 s of reusing it. Time spent by an
    invocation that was killed is not in the history. Without a history: this invocation's seconds."""
    made: dict[str, float | None] = {r.name: (None if r.status == "reused" else r.seconds) for r in results}
    history = _history(run_dir)
    if not history:
        return made
    made = {r.name: None for r in results}
    for row in history:
        for name, stage in row.get("stages", {}).items():
            if name not in made or stage["status"] == "reused":
                continue
            resumed = stage["status"] == "resumed" and made[name] is not None
            made[name] = (made[name] if resumed else 0.0) + stage["seconds"]
    return made


# Phrases of the pairwise judge's prompts and verdicts: in a policy's answer they mean the judge
# examples of SFT leaked into answering.
JUDGE_PHRASES = ("answer a", "answer b", "better answer", "a says", "b says")
# (measure label of compare_models, unit, what "better" is called)
VERDICT_MEASURES = (
    ("QA accuracy (oracle), %", " points", "QA accuracy"),
    ("hallucinations per description", "", "hallucinations per description"),
    ("VCG-style correctness (0-5)", "", "VCG correctness"),
    ("multiple-choice accuracy, %", " points", "multiple-choice accuracy"),
)


def _interval_word(low: float | None, high: float | None, null: float) -> str:
    """"above" / "below" when the interval excludes `null`, else "within"."""
    if low is None or high is None:
        return "within"
    return "above" if low > null else "below" if high < null else "within"


def verdict_lines(run_dir: Path, comparison: list[dict] = ()) -> list[str]:
    """The report's opening: every section's verdicts, each read off an interval: is the judge
    better than chance and did the context help it, do the preference labels and the reward model
    agree with the truth, did RLAIF beat SFT (`comparison`: compare_models' rows against SFT).
    What PPO itself changed (against the initialised policy) leads section 4 only: here it would
    repeat every measure."""
    lines = judge_verdicts(run_dir) + feedback_verdicts(run_dir) + rm_verdicts(run_dir)
    lines += difference_verdicts(comparison, "SFT")
    lines += format_verdicts(run_dir)
    return (["## Verdicts", "", *lines, ""] if lines else [])


def judge_verdicts(run_dir: Path) -> list[str]:
    judge = _load(run_dir / "judge_context" / "summary.json")
    if not judge:
        return []
    m = judge["context"]["mean_of_orders"]
    low, high = m.get("ci95") or (None, None)
    verb = {"above": "beats", "within": "is not measurably better than", "below": "is worse than"}
    lines = [f"- The self-judge with its clip context {verb[_interval_word(low, high, 0.5)]} chance: "
             f"agreement with the oracle {_rate(m)}."]
    d = judge["difference_context_minus_no_context"]
    low, high = d.get("ci95") or (None, None)
    head = {"above": "Context helped the judge", "below": "Context hurt the judge",
            "within": "No measurable effect of context on the judge"}[_interval_word(low, high, 0.0)]
    lines.append(f"- {head}: {d['difference']:+.3f}{_ci(low, high)} (context minus no context)." if d.get("difference") is not None
                 else f"- {head}.")
    return lines


def feedback_verdicts(run_dir: Path) -> list[str]:
    s = _load(run_dir / "feedback" / "summary.json")
    oracle = ((s or {}).get("oracle") or {}).get("kept_labels") or {}
    if oracle.get("rate") is None:
        return []
    low, high = oracle.get("ci95") or (None, None)
    verb = {"above": "agree with the oracle more often than chance", "within": "are not measurably better than chance",
            "below": "disagree with the oracle more often than not"}[_interval_word(low, high, 0.5)]
    return [f"- The kept preference labels {verb}: {_rate(oracle)} of {oracle.get('n', 0)} pairs."]


def rm_verdicts(run_dir: Path) -> list[str]:
    rm = _load(run_dir / "rm" / "summary.json")
    if not rm:
        return []
    oracle = (((rm.get("eval") or {}).get("heldout") or {}).get("oracle") or {}).get("reward_model") or {}
    low, high = oracle.get("ci95") or (None, None)
    side = _interval_word(low, high, 0.5)
    return [f"- The reward model {'learnt' if side == 'above' else 'did not measurably learn'} the true preferences: "
            f"it agrees with the oracle on {_rate(oracle)} of held-out pairs."]


def difference_verdicts(comparison: list[dict], baseline: str) -> list[str]:
    """One line per VERDICT_MEASURES row of `comparison`: RLAIF minus its baseline (named
    `baseline`), paired over the same items."""
    table = {row["measure"]: row for row in comparison}
    lines = []
    for label, unit, name in VERDICT_MEASURES:
        e = (table.get(label) or {}).get("vs_baseline", {}).get("rlaif")
        if not e or e["value"] is None:
            continue
        side = _interval_word(e["low"], e["high"], 0.0)
        better = side == ("above" if table[label]["higher_is_better"] else "below")
        head = "No measurable difference in" if side == "within" else f"RLAIF {'beat' if better else 'fell below'} {baseline} on"
        lines.append(f"- {head} {name}: {e['value']:+.2f}{_ci(e['low'], e['high'], 2)}{unit} (RLAIF minus {baseline}, paired).")
    return lines


def format_verdicts(run_dir: Path) -> list[str]:
    """Replies off the asked format: multiple choice naming no option (counted wrong), judge phrasing."""
    lines = []
    off = {m: mcq_off_format(run_dir, m) for m in ("sft", "rlaif")}
    if all(off.values()):
        lines.append("- Multiple-choice replies that name no option (counted as wrong): "
                     + ", ".join(f"{name} {_share(*off[m])}" for m, name in (("sft", "SFT"), ("rlaif", "RLAIF"))) + ".")
    leaks = {m: judge_phrasing(run_dir, m) for m in ("sft", "rlaif")}
    if all(v is not None for v in leaks.values()):
        lines.append(f"- Answers with judge phrasing: SFT {leaks['sft'][0]} of {leaks['sft'][1]}, "
                     f"RLAIF {leaks['rlaif'][0]} of {leaks['rlaif'][1]}.")
    return lines


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({100 * count / total:.0f}%)" if total else "0 of 0"


def mcq_off_format(run_dir: Path, model: str) -> tuple[int, int] | None:
    """(multiple-choice replies that name no option, replies) of a model's eval."""
    items = _eval_items(run_dir, model, "mcq", "choice")
    return (sum(j["status"] == "invalid" for j in items.values()), len(items)) if items else None


def judge_phrasing(run_dir: Path, model: str) -> tuple[int, int] | None:
    """(answers holding a JUDGE_PHRASES phrase, answers) over a model's eval predictions."""
    folder = run_dir / "eval" / "predictions" / model
    if not folder.is_dir():
        return None
    answers = [a for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines() if line.strip()
               for a in (json.loads(line).get("predictions") or [])]
    return sum(any(p in a.lower() for p in JUDGE_PHRASES) for a in answers), len(answers)


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "demo_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _judge_section(run_dir: Path) -> list[str]:
    s = _load(run_dir / "judge_context" / "summary.json")
    if not s:
        return []
    lines = [
        "## 1. Does the clip context make the judge agree with the truth more often?",
        "",
        *judge_verdicts(run_dir),
        "",
        f"The SFT model judged the feedback stage's {s['pairs']} pairs of its own sampled answers twice: "
        "reading its own descriptions of the video's clips (the paper's context-aware judge) and without "
        f"them (the paper's ablation), each in both orders. Agreement is with the toy world's oracle "
        f"({s['oracle_ties']} pairs the oracle calls a tie are left out); 95% Wilson intervals.",
        "",
        "| judge | agreement, mean of both orders | n | agreement of kept labels | kept | orders agree |",
        "|---|---|---|---|---|---|",
    ]
    for condition, label in (("context", "with clip context"), ("no_context", "without context")):
        c = s[condition]
        m, k = c["mean_of_orders"], c["kept_labels"]
        lines.append(
            f"| {label} | {_rate(m)} | {m['n']} | {_rate(k)} | {c['kept']} | {_fmt(c['order_agreement'])} |"
        )
    d = s["difference_context_minus_no_context"]
    lines += [
        "",
        f"Paired difference (context minus no context) over {d['n']} pairs both decide: "
        f"**{_fmt(d['difference'])}**{_ci(*(d['ci95'] or (None, None)))} (bootstrap 95%).",
        "",
    ]
    low, _ = s["context"]["mean_of_orders"]["ci95"] or (None, None)
    if low is not None and low <= 0.5:
        lines += [
            "**The judge is not measurably better than chance here** (the lower end of its interval is at or "
            "below 0.5): the preference labels carry no usable signal for the reward model, and RLAIF cannot be expected to beat SFT. To tell that "
            "apart from a fault in the later stages, rerun with the pairs labelled by the oracle "
            "(`bench/toy_seeds.py --oracle-control`).",
            "",
        ]
    if plot_judge(s, run_dir / "judge_context.png"):
        lines += ["![judge agreement with the oracle](judge_context.png)", ""]
    return lines


def _feedback_section(run_dir: Path) -> list[str]:
    s = _load(run_dir / "feedback" / "summary.json")
    if not s:
        return []
    oracle = (s.get("oracle") or {}).get("kept_labels") or {}
    return [
        "## 2. AI feedback: the preference data",
        "",
        *feedback_verdicts(run_dir),
        "",
        f"{s['prompts']} prompts, {s['pairs_judged']} pairs judged; kept {s['pairs_kept']} "
        f"(position policy `{s['position_policy']}`), dropped {s['pairs_inconsistent']} whose two orders "
        f"disagreed, {s['pairs_tie']} ties, {s['pairs_invalid']} invalid. The two orders agreed on "
        f"{_fmt((s.get('order_agreement') or {}).get('rate'))} of pairs. The kept labels agree with the "
        f"oracle on {_rate(oracle)} "
        f"(n={oracle.get('n', 0)}). Throughput: {(s.get('this_run') or {}).get('pairs_per_minute', 'n/a')} pairs per minute.",
        "",
    ]


def _rm_section(run_dir: Path) -> list[str]:
    s = _load(run_dir / "rm" / "summary.json")
    if not s:
        return []
    held = (s.get("eval") or {}).get("heldout") or {}
    oracle = (held.get("oracle") or {}).get("reward_model") or {}
    return [
        "## 3. Reward model",
        "",
        *rm_verdicts(run_dir),
        "",
        f"Trained on {s['train_pairs']} AI-labelled pairs ({s['steps']} steps); on {held.get('pairs', 0)} held-out "
        f"pairs (held out by video) its pairwise accuracy against the AI labels is {_fmt(held.get('accuracy'))}, "
        f"and it agrees with the oracle on {_rate(oracle)} "
        f"(n={oracle.get('n', 0)}).",
        "",
    ]


def _ppo_section(run_dir: Path, ppo_comparison: list[dict]) -> list[str]:
    s = _load(run_dir / "ppo" / "summary.json")
    rows = read_metrics(run_dir / "ppo")
    if not s or not rows:
        return []
    first, last = rows[0], rows[-1]
    lead = difference_verdicts(ppo_comparison, "the initialised policy")
    lines = [
        "## 4. PPO",
        "",
        *(["What PPO itself changed: the RLAIF policy against the initialised policy it started from, on "
           "section 5's held-out benchmarks.", "", *lead, ""] if lead else []),
        f"{s['iterations']} iterations over {s['prompts']} RL prompts, after policy initialisation "
        f"({(s.get('init') or {}).get('steps', 0)} steps on the prompts' reference answers).",
        "",
        "| | first iteration | last iteration |",
        "|---|---|---|",
    ]
    for key, label in (
        ("reward_score", "reward model score"),
        ("reward_shaped", "shaped reward (x scale, EOS and length terms)"),
        ("kl", "KL to the reference"),
        ("response_length", "response length (tokens)"),
        ("eos_fraction", "responses ending with EOS"),
    ):
        lines.append(f"| {label} | {_fmt(first.get(key))} | {_fmt(last.get(key))} |")
    lines.append("")
    if plot_ppo(rows, run_dir / "ppo_curves.png"):
        lines += ["![PPO curves](ppo_curves.png)", ""]
    return lines


def _eval_items(run_dir: Path, model: str, bench: str, criterion: str) -> dict[str, dict]:
    """id -> judgement of the items that count: "ok" ones, and for multiple choice also the replies
    that name no option (wrong, as eval.aggregate counts them; else a model that answers off-format
    would look better and the paired comparison would drop exactly its failures)."""
    path = run_dir / "eval" / "judgements" / model / f"{bench}.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counted = ("ok", "invalid") if criterion == "choice" else ("ok",)
    return {r["id"]: r for r in rows if r["criterion"] == criterion and r["status"] in counted}


def compare_models(run_dir: Path, models: list[str], baseline: str = "sft") -> list[dict]:
    """Per measure: each model's mean with a bootstrap interval, and each model minus the baseline
    paired over the same items (bootstrap interval of the mean difference)."""
    table = []
    for bench, criterion, label, read, higher_better in ITEM_MEASURES:
        per_model = {m: _eval_items(run_dir, m, bench, criterion) for m in models}
        if not per_model.get(baseline):
            continue
        row: dict[str, Any] = {"measure": label, "higher_is_better": higher_better, "models": {}, "vs_baseline": {}}
        for m, items in per_model.items():
            if items:
                row["models"][m] = estimate_mean([read(j) for j in items.values()], resamples=2000, confidence=0.95, seed=0).to_dict()
            common = sorted(set(items) & set(per_model[baseline]))
            if m != baseline and common:
                diffs = [read(items[i]) - read(per_model[baseline][i]) for i in common]
                row["vs_baseline"][m] = estimate_mean(diffs, resamples=2000, confidence=0.95, seed=0).to_dict()
        table.append(row)
    return table


def _eval_section(run_dir: Path, s: dict | None, table: list[dict]) -> list[str]:
    if not s:
        return []
    models = list(s["results"])
    (run_dir / "comparison.json").write_text(json.dumps(table, indent=2))
    others = [m for m in models if m != "sft"]
    lines = [
        "## 5. SFT vs RLAIF, measured by the oracle",
        "",
        *difference_verdicts(table, "SFT"),
        *format_verdicts(run_dir),
        "",
        f"Held-out toy videos; answers at temperature {s['generation']['temperature']}; judged by the oracle "
        f"(`{s['judge']['rule']}`). Means with 95% bootstrap intervals; the last columns are paired "
        "differences from SFT over the same items. `policy_init` is the SFT model after the paper's "
        "policy initialisation (supervised on the RL prompts' reference answers); `rlaif` is that policy "
        "after PPO, so rlaif minus policy_init is what PPO itself changed.",
        "",
        "| measure | " + " | ".join(models) + " | " + " | ".join(f"{m} - sft" for m in others) + " |",
        "|---" * (1 + len(models) + len(others)) + "|",
    ]
    for row in table:
        cells = []
        for m in models:
            e = row["models"].get(m)
            cells.append("n/a" if not e or e["value"] is None else f"{e['value']:.2f}{_ci(e['low'], e['high'], 2)}")
        for m in others:
            e = row["vs_baseline"].get(m)
            cells.append("n/a" if not e or e["value"] is None else f"{e['value']:+.2f}{_ci(e['low'], e['high'], 2)}")
        lines.append(f"| {row['measure']} | " + " | ".join(cells) + " |")
        if row["measure"] == MCQ_MEASURE:  # next to the accuracy: how many of its replies could not count
            off = [mcq_off_format(run_dir, m) for m in models]
            lines.append("| multiple-choice replies naming no option (counted wrong) | "
                         + " | ".join(_share(*o) if o else "n/a" for o in off) + " |" + " |" * len(others))
    lines += ["", "Full per-benchmark tables: [eval/results.md](eval/results.md).", ""]
    if plot_eval(table, models, run_dir / "eval_scores.png", chance_levels(run_dir)):
        lines += ["![SFT vs RLAIF](eval_scores.png)", ""]
    return lines


def _benchmark_items(run_dir: Path, name: str) -> list:
    """The eval stage's items of one benchmark, from the files its config.yaml names ([] when gone)."""
    config = yaml.safe_load((run_dir / "eval" / "config.yaml").read_text()) if (run_dir / "eval" / "config.yaml").exists() else {}
    spec = next((b for b in (config or {}).get("benchmarks") or [] if b.get("name") == name), None)
    if not spec or not Path(spec["file"]).exists():
        return []
    return load_items(spec["kind"], spec["file"], answers_path=spec.get("answers_file"),
                      video_prefix=spec.get("video_prefix") or "", limit=spec.get("limit"))


def chance_levels(run_dir: Path) -> dict[str, tuple[float, str]]:
    """Accuracy measure -> (level, label) of what guessing gets: multiple choice, one of the
    item's options at random; QA, always the most common answer of the question's type (over the
    evaluated items)."""
    levels = {}
    mcq = [i for i in _benchmark_items(run_dir, "mcq") if i.candidates]
    if mcq:
        levels[MCQ_MEASURE] = (100.0 * sum(1 / len(i.candidates) for i in mcq) / len(mcq), "chance (a random option)")
    qa = _benchmark_items(run_dir, "qa")
    if qa:
        by_type: dict[str, Counter] = {}
        for item in qa:
            by_type.setdefault((item.meta.get("toy") or {}).get("qtype", ""), Counter())[item.answer.strip().lower()] += 1
        majority = sum(counts.most_common(1)[0][1] for counts in by_type.values())
        levels[QA_MEASURE] = (100.0 * majority / len(qa), "most common answer per question type")
    return levels


# Benchmarks the samples come from, and how a judged answer is marked.
SAMPLE_BENCHMARKS = (("qa", "qa", "QA", lambda j: "right" if j.get("yes") else "wrong"),
                     ("vcg_generic", "correctness", "descriptions", lambda j: f"{j.get('score')}/5"))


def _samples_section(run_dir: Path, models: list[str], count: int = 3) -> list[str]:
    """`count` items per benchmark with every model's answer side by side (with its oracle mark):
    the first items on which the models do not all answer alike, where they differ being the point."""
    lines = []
    for bench, criterion, title, mark in SAMPLE_BENCHMARKS:
        preds = {m: _predictions(run_dir, m, bench) for m in models}
        if not models or not all(preds.values()):
            continue
        judged = {m: _eval_items(run_dir, m, bench, criterion) for m in models}
        truth = {item.id: item.answer for item in _benchmark_items(run_dir, bench)}
        common = [i for i in preds[models[0]] if all(i in preds[m] for m in models)]
        differing = [i for i in common if len({_answer(preds[m][i]) for m in models}) > 1]
        ids = (differing + [i for i in common if i not in differing])[:count]
        lines += [f"| {title}: question | truth | " + " | ".join(models) + " |", "|---" * (2 + len(models)) + "|"]
        for i in ids:
            cells = [f"{_answer(preds[m][i]) or '(empty)'} ({mark(judged[m][i]) if i in judged[m] else 'not judged'})" for m in models]
            question = _cell(preds[models[0]][i]["prompts"][0])
            lines.append(f"| {question} | {_cell(truth.get(i, '?'))} | " + " | ".join(cells) + " |")
        lines.append("")
    return ["## 6. Sample answers", "", *lines] if lines else []


def _predictions(run_dir: Path, model: str, bench: str) -> dict[str, dict]:
    path = run_dir / "eval" / "predictions" / model / f"{bench}.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(x) for x in path.read_text().splitlines() if x.strip())
    return {r["id"]: r for r in rows if "predictions" in r}  # skipped items have none


def _answer(row: dict) -> str:
    return _cell((row["predictions"] or [""])[0])


def _cell(text: str) -> str:
    """Text that keeps a markdown table's row intact."""
    return str(text).replace("|", "/").replace("\n", " ").strip()
