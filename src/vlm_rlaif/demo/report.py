"""report.md and its plots for a toy-world run: what each stage did and what RLAIF changed.

Everything here is read back from the stages' own files (summary.json, metrics.jsonl, the eval's
per-item judgements), so a report can be rebuilt from a run directory at any time:

    python -c "from vlm_rlaif.demo.report import write_report; write_report('demo_runs/seed0')"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    comparison = compare_models(run_dir, list(evals["results"])) if evals else []
    lines: list[str] = ["# vlm-rlaif demo report", ""]
    lines += _header(run_dir, results, quick=quick, seed=seed, seconds=seconds)
    lines += verdict_lines(run_dir, comparison)
    lines += _judge_section(run_dir)
    lines += _feedback_section(run_dir)
    lines += _rm_section(run_dir)
    lines += _ppo_section(run_dir)
    lines += _eval_section(run_dir, evals, comparison)
    lines += _samples_section(run_dir)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _header(run_dir: Path, results: list | None, *, quick: bool, seed: int | None, seconds: float | None) -> list[str]:
    lines = []
    if quick:
        lines += ["> **Quick run** (a smoke test of every stage at toy size): its numbers carry no meaning.", ""]
    env = next((e for e in (_load(run_dir / stage / "env.json") for stage in ("sft", "feedback", "eval")) if e), {})
    lines += [
        f"Run directory `{run_dir}`, seed {seed if seed is not None else 'n/a'}"
        + (f", {seconds / 60:.1f} minutes this invocation" if seconds is not None else "")
        + f". torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')},"
        f" vlm-rlaif {env.get('vlm_rlaif', '?')} (commit {str(env.get('git_commit') or '?')[:10]}).",
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
    continued = [r.name for r in results or [] if r.status in ("resumed", "reused")]
    if continued:
        lines += [
            f"This invocation continued earlier work in this directory (invocations so far: {len(_history(run_dir))}): "
            f"{', '.join(continued)} were reused (finished before) or resumed (interrupted before).",
            "",
        ]
    if results:
        lines += ["| stage | this invocation | seconds |", "|---|---|---|"]
        lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} |" for r in results]
        lines += [""]
    return lines


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
    """One line per question of the demo, each read off an interval: is the judge better than
    chance, did the context help it, did the reward model learn the preferences, did RLAIF beat SFT
    (`comparison`: compare_models' rows for the run's models)."""
    lines = []
    judge = _load(run_dir / "judge_context" / "summary.json")
    if judge:
        m = judge["context"]["mean_of_orders"]
        low, high = m.get("ci95") or (None, None)
        verb = {"above": "beats", "within": "is not measurably better than", "below": "is worse than"}
        lines.append(f"- The self-judge with its clip context {verb[_interval_word(low, high, 0.5)]} chance: "
                     f"agreement with the oracle {_rate(m)}.")
        d = judge["difference_context_minus_no_context"]
        low, high = d.get("ci95") or (None, None)
        side = _interval_word(low, high, 0.0)
        head = {"above": "Context helped the judge", "below": "Context hurt the judge",
                "within": "No measurable effect of context on the judge"}[side]
        lines.append(f"- {head}: {d['difference']:+.3f}{_ci(low, high)} (context minus no context)." if d.get("difference") is not None
                     else f"- {head}.")
    rm = _load(run_dir / "rm" / "summary.json")
    if rm:
        oracle = (((rm.get("eval") or {}).get("heldout") or {}).get("oracle") or {}).get("reward_model") or {}
        low, high = oracle.get("ci95") or (None, None)
        side = _interval_word(low, high, 0.5)
        lines.append(f"- The reward model {'learnt' if side == 'above' else 'did not measurably learn'} the true preferences: "
                     f"it agrees with the oracle on {_rate(oracle)} of held-out pairs.")
    evals = _load(run_dir / "eval" / "summary.json")
    if evals and "rlaif" in evals.get("results", {}):
        table = {row["measure"]: row for row in comparison}
        for label, unit, name in VERDICT_MEASURES:
            e = (table.get(label) or {}).get("vs_baseline", {}).get("rlaif")
            if not e or e["value"] is None:
                continue
            side = _interval_word(e["low"], e["high"], 0.0)
            better = side == ("above" if table[label]["higher_is_better"] else "below")
            head = "No measurable difference in" if side == "within" else "RLAIF beat SFT on" if better else "RLAIF fell below SFT on"
            lines.append(f"- {head} {name}: {e['value']:+.2f}{_ci(e['low'], e['high'], 2)}{unit} (RLAIF minus SFT, paired).")
        in_format = {m: _mcq_in_format(run_dir, m) for m in ("sft", "rlaif")}
        if all(in_format.values()):
            lines.append(f"- Multiple-choice replies that name an option: SFT {in_format['sft'][0]} of {in_format['sft'][1]}, "
                         f"RLAIF {in_format['rlaif'][0]} of {in_format['rlaif'][1]}.")
        leaks = {m: judge_phrasing(run_dir, m) for m in ("sft", "rlaif")}
        if all(v is not None for v in leaks.values()):
            lines.append(f"- Answers with judge phrasing: SFT {leaks['sft'][0]} of {leaks['sft'][1]}, "
                         f"RLAIF {leaks['rlaif'][0]} of {leaks['rlaif'][1]}.")
    return (["## Verdicts", "", *lines, ""] if lines else [])


def _mcq_in_format(run_dir: Path, model: str) -> tuple[int, int] | None:
    items = _eval_items(run_dir, model, "mcq", "choice")
    return (sum(j["status"] == "ok" for j in items.values()), len(items)) if items else None


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
    if _plot_judge(s, run_dir / "judge_context.png"):
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
        f"Trained on {s['train_pairs']} AI-labelled pairs ({s['steps']} steps); on {held.get('pairs', 0)} held-out "
        f"pairs (held out by video) its pairwise accuracy against the AI labels is {_fmt(held.get('accuracy'))}, "
        f"and it agrees with the oracle on {_rate(oracle)} "
        f"(n={oracle.get('n', 0)}).",
        "",
    ]


def _ppo_section(run_dir: Path) -> list[str]:
    s = _load(run_dir / "ppo" / "summary.json")
    rows = read_metrics(run_dir / "ppo")
    if not s or not rows:
        return []
    first, last = rows[0], rows[-1]
    lines = [
        "## 4. PPO",
        "",
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
    if _plot_ppo(rows, run_dir / "ppo_curves.png"):
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
    lines += ["", f"Full per-benchmark tables: [eval/results.md](eval/results.md).", ""]
    if _plot_eval(table, models, run_dir / "eval_scores.png"):
        lines += ["![SFT vs RLAIF](eval_scores.png)", ""]
    return lines


def _samples_section(run_dir: Path, limit: int = 6) -> list[str]:
    preds = {}
    for model in ("sft", "rlaif"):
        path = run_dir / "eval" / "predictions" / model / "qa.jsonl"
        if not path.exists():
            return []
        preds[model] = {r["id"]: r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}
    judged = {m: _eval_items(run_dir, m, "qa", "qa") for m in preds}
    ids = [i for i in preds["sft"] if i in preds["rlaif"]][:limit]
    lines = ["## 6. Sample answers (QA set)", "", "| question | SFT | RLAIF |", "|---|---|---|"]
    for i in ids:
        cells = []
        for m in ("sft", "rlaif"):
            answer = (preds[m][i]["predictions"] or [""])[0].replace("|", "/").replace("\n", " ")
            mark = "yes" if (judged[m].get(i) or {}).get("yes") else "no"
            cells.append(f"{answer or '(empty)'} ({mark})")
        lines.append(f"| {preds['sft'][i]['prompts'][0]} | " + " | ".join(cells) + " |")
    return lines + [""]


# ------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_judge(s: dict, path: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels, rates, errs = [], [], [[], []]
    for condition, label in (("context", "with context"), ("no_context", "without context")):
        m = s[condition]["mean_of_orders"]
        if m["rate"] is None:
            continue
        labels.append(label)
        rates.append(m["rate"])
        low, high = m["ci95"]
        errs[0].append(m["rate"] - low)
        errs[1].append(high - m["rate"])
    if not rates:
        plt.close(fig)
        return False
    ax.bar(labels, rates, yerr=errs, capsize=6, color=["#3b7dd8", "#9aa5b1"][: len(rates)])
    ax.axhline(0.5, ls="--", c="grey", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("agreement with the oracle")
    ax.set_title("Self-judge on its own answer pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_ppo(rows: list[dict], path: Path) -> bool:
    plt = _pyplot()
    keys = [("reward_score", "reward model score"), ("reward_shaped", "shaped reward"), ("kl", "KL to reference"),
            ("response_length", "response length")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    steps = [r["step"] for r in rows]
    for ax, (key, title) in zip(axes, keys):
        ax.plot(steps, [r.get(key) for r in rows], marker="o", ms=3)
        ax.set_title(title)
        ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_eval(table: list[dict], models: list[str], path: Path) -> bool:
    if not table:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(3.2 * len(table), 3.2))
    axes = axes if len(table) > 1 else [axes]
    colours = ["#9aa5b1", "#7fb3e0", "#3b7dd8", "#1f4e8c"]
    for ax, row in zip(axes, table):
        names, values, errs = [], [], [[], []]
        for m in models:
            e = row["models"].get(m)
            if not e or e["value"] is None:
                continue
            names.append(m)
            values.append(e["value"])
            errs[0].append(e["value"] - e["low"])
            errs[1].append(e["high"] - e["value"])
        ax.bar(names, values, yerr=errs, capsize=4, color=colours[: len(names)])
        ax.set_title(row["measure"], fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
