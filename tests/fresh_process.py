"""Running a command in fresh processes with different hash seeds, and comparing what they wrote.

Python salts str hashes per process (PYTHONHASHSEED), so iterating a set of strings can change
order between two runs of the same seeded job; these helpers catch that."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Keys whose values are wall-clock measurements or describe the machine, not the computation.
TIMING_KEY = re.compile(r"time|seconds|_s$|per_min|started|finished|elapsed|host|pid|git|versions|platform", re.I)


def run_cli_with_hash_seeds(args: list[str], out: Path, hash_seeds=(1, 2), timeout=600) -> list[Path]:
    """Run `vlm-rlaif ARGS` once per hash seed, each time writing into `out` (so paths recorded in
    the outputs match), and move each result aside; returns the result directories."""
    results = []
    for seed in hash_seeds:
        env = dict(os.environ, PYTHONHASHSEED=str(seed), OMP_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, "-m", "vlm_rlaif.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stderr[-3000:]
        kept = out.with_name(f"{out.name}.hash{seed}")
        shutil.move(out, kept)
        results.append(kept)
    return results


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def json_content(path: Path):
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [without_timing(json.loads(line)) for line in text.splitlines() if line.strip()]
    return without_timing(json.loads(text))


def differing_files(a: Path, b: Path) -> list[str]:
    """Files under a and b that differ: JSON/JSONL compared without timing fields, the rest byte for
    byte (a file missing on one side counts)."""
    names = sorted({p.relative_to(a) for p in a.rglob("*") if p.is_file()} |
                   {p.relative_to(b) for p in b.rglob("*") if p.is_file()})
    out = []
    for name in names:
        x, y = a / name, b / name
        if not (x.is_file() and y.is_file()):
            out.append(f"{name} (only one side)")
        elif name.suffix in (".json", ".jsonl"):
            if json_content(x) != json_content(y):
                out.append(str(name))
        elif x.read_bytes() != y.read_bytes():
            out.append(str(name))
    return out
