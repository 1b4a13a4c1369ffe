"""The demo report's plots (PNG beside report.md), drawn from what demo.report has read back."""

from __future__ import annotations

import math
from pathlib import Path

COLOURS = ["#9aa5b1", "#7fb3e0", "#3b7dd8", "#1f4e8c"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_judge(s: dict, path: Path) -> bool:
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


def plot_ppo(rows: list[dict], path: Path) -> bool:
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


def plot_eval(table: list[dict], models: list[str], path: Path, chance: dict[str, tuple[float, str]] | None = None) -> bool:
    """One panel per measure of `table` (compare_models' rows) in a grid of at most 3 columns, so
    that it reads at page width; a measure where lower is better says so, and `chance` (measure ->
    (level, label)) draws a dashed line on the panels it names."""
    if not table:
        return False
    plt = _pyplot()
    columns = min(3, len(table))
    rows = math.ceil(len(table) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, row in zip(axes.flat, table):
        names, values, errs = [], [], [[], []]
        for m in models:
            e = row["models"].get(m)
            if not e or e["value"] is None:
                continue
            names.append(m)
            values.append(e["value"])
            errs[0].append(e["value"] - e["low"])
            errs[1].append(e["high"] - e["value"])
        ax.bar(names, values, yerr=errs, capsize=4, color=COLOURS[: len(names)])
        title = row["measure"] + ("" if row["higher_is_better"] else "\n(lower is better)")
        ax.set_title(title, fontsize=10)
        if row["measure"] in (chance or {}):
            level, label = chance[row["measure"]]
            ax.axhline(level, ls="--", c="grey", lw=1, label=label)
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
        ax.tick_params(axis="x", labelsize=9)
    for ax in list(axes.flat)[len(table):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
