#!/usr/bin/env bash
# One-shot GPU check (issue 16, item 4): llava-video (the paper's 50 frames, LLaVA-1.5-7B shapes) and
# Qwen2.5-VL-7B (its real config shapes), random weights, each through one PPO iteration (rollout,
# scoring with and without the feature cache, update) in bf16, and in QLoRA where bitsandbytes is
# importable; prints ONE JSON line: tokens/s per phase, peak GPU memory, and ratios against plain
# transformers generation measured in the same run. bench/gpu_check.py's docstring says what each
# number is.
#
# STATUS: NOT YET RUN ON A GPU. Written and checked on CPUs only: `python bench/gpu_check.py --tiny`
# runs the same code with tiny shapes (tests/test_bench_smoke.py, on the newest and on the lowest
# supported torch/transformers). The first GPU run is its real test.
#
# Usage, on the GPU machine, from the repository root (nothing is downloaded there):
#     bash bench/gpu_check.sh                                  # every section, about 4-8 minutes
#     bash bench/gpu_check.sh --sections qwen2.5-vl/bf16       # one section; other flags: --help
# Through this project's device tool: carry [".whl"], command
#     "bash bench/gpu_check.sh > $OUT/gpu_check.json 2> $OUT/gpu_check.log", timeout_s 540.
# Budget: the sections together get --budget-s (default 440 s), each also its own limit (170 s bf16,
# 150 s QLoRA), each in its own process: a crash, out-of-memory error or hang in one is reported in
# the JSON line and the others still run. This script's own limit (470 s) is a last resort that still
# prints a JSON line.
#
# What it installs, from local files only:
# 1. Wheels from .whl/ (gitignored) for the modules our PPO path imports at module level that the
#    GPU image (torch 2.11.0+cu130, transformers 5.17.0, Python 3.12; /work/.library/device/KINDS.md
#    lists its packages: pillow, torchvision, pyyaml, tqdm, httpx, anyio are there) lacks: av (the
#    frame store's decoder), pydantic (record schemas), openai (the rollout engine's server client),
#    and their dependencies. Only a module that does not import is installed. Fetch them, on a
#    machine that reaches the package index (about 40 MB; the second --platform because pydantic_core
#    and jiter ship manylinux2014 wheels only):
#      pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#        --platform manylinux2014_x86_64 --no-deps -d .whl \
#        av==18.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
#        typing_extensions==4.16.0 openai==3.60.0 jiter==0.19.0 sniffio==1.3.1 httpx2==2.16.2 \
#        httpcore2==2.16.2 truststore==0.10.5
#    bitsandbytes is not carried (its CUDA wheel alone is larger than what may travel): QLoRA runs
#    only where the image has it.
# 2. The package itself: pip install --no-deps --no-build-isolation -e . (the image's setuptools; with
#    build isolation pip would try to download one). If that fails, PYTHONPATH=src instead.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

missing=()
for module in av pydantic openai; do  # pip names equal the module names here
    "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
    echo "gpu_check.sh: installing ${missing[*]} from .whl/" >&2
    "$PY" -m pip install -q --no-index --find-links .whl "${missing[@]}" >&2 ||
        echo "gpu_check.sh: could not install ${missing[*]} (is .whl/ carried?): the JSON line will say what fails" >&2
fi
# Always (re)installed: an older copy already on the machine would otherwise be what runs.
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >&2; then
    echo "gpu_check.sh: pip install -e . failed; using PYTHONPATH=src" >&2
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

timeout --signal=TERM --kill-after=10 470 "$PY" bench/gpu_check.py "$@"
status=$?
if ((status == 124 || status == 137)); then
    echo '{"check": "gpu_check", "ok": false, "error": "bench/gpu_check.py did not finish within 470 s"}'
fi
exit "$status"
