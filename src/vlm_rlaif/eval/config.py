"""EvalConfig: which models, on which benchmarks, judged by whom, written where.

YAML (a recipe's `eval` section or a file of its own):

    out: runs/eval
    models:
      - {name: sft, path: runs/sft/model}
      - {name: rlaif, path: runs/sft/model, lora: runs/ppo/policy_adapter}
    benchmarks:
      - {name: vcg_generic, kind: vcg_generic, file: data/vcg/generic_qa.json, video_root: data/vcg/videos, paper: vcg_bench}
      - {name: anet_qa, kind: qa, file: data/anet/test_q.json, answers_file: data/anet/test_a.json,
         video_prefix: "v_", video_root: data/anet/videos, paper: anet_qa}
    generation: {num_frames: 50, temperature: 0.2, max_new_tokens: 512}
    judge: {kind: openai, model: gpt-3.5-turbo-0125}
    bootstrap: {resamples: 1000, confidence: 0.95}
    on_bad_video: fail          # or skip: an item whose video is missing or does not decode is skipped
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlm_rlaif.clients.generator import GeneratorSettings
from vlm_rlaif.data.frames import check_on_bad_video
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.eval.benchmarks import KINDS
from vlm_rlaif.eval.paper import PAPER_BENCHMARKS
from vlm_rlaif.eval.predict import PredictSettings

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # names become directory names


@dataclass
class ModelSpec:
    name: str
    path: str | None = None  # a saved model directory (VideoLM.save or a transformers checkpoint)
    lora: str | None = None  # a LoRA adapter directory to load on top (VideoLM.save_lora)
    device: str = "cpu"
    dtype: str | None = None  # e.g. bfloat16 (default: as saved)
    # "openai": the predictions come from servers serving this model (vLLM, `vlm-rlaif serve`);
    # path and lora are then not loaded here.
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)


@dataclass
class BenchmarkSpec:
    name: str
    kind: Literal["vcg_generic", "vcg_temporal", "vcg_consistency", "qa", "mcq"]
    file: str
    video_root: str  # where the videos (files or frame folders) named by video_name live
    answers_file: str | None = None  # ActivityNet-QA's original release: answers by question_id
    video_prefix: str = ""  # put before every video_name ("v_" for ActivityNet-QA's original files)
    paper: str | None = None  # the paper's benchmark this is: vcg_bench, msvd_qa, msrvtt_qa, anet_qa
    limit: int | None = None  # only the first `limit` items (quick runs)


@dataclass
class JudgeSpec:
    kind: Literal["openai", "local", "oracle"] = "openai"
    # openai
    model: str | None = None  # required: the exact model name (prefer a dated one over an alias)
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    max_invalid_retries: int = 2
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 128
    cache_dir: str | None = None  # default: <out>/judge_cache
    # local
    path: str | None = None  # a saved model directory
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 64
    # oracle
    toy_dir: str | None = None  # the toy world directory (its truth/ folder)


@dataclass
class BootstrapSpec:
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class EvalConfig:
    out: str = "runs/eval"
    seed: int = 0
    models: list[ModelSpec] = field(default_factory=list)
    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    generation: PredictSettings = field(default_factory=PredictSettings)  # the paper's by default
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    bootstrap: BootstrapSpec = field(default_factory=BootstrapSpec)
    # A benchmark video that is missing or does not decode: "fail" stops the run (the error names the
    # benchmark file, the item and the video); "skip" records the item as skipped and goes on.
    on_bad_video: str = "fail"

    def check(self, *, judge_given: bool = False) -> None:
        """Raise ConfigError naming the first key that cannot work (judge_given: the caller brings
        its own judge, so the judge section is not checked)."""
        if not self.models:
            raise ConfigError("eval: 'models' is empty; list at least one {name, path}")
        if not self.benchmarks:
            raise ConfigError("eval: 'benchmarks' is empty; list at least one {name, kind, file, video_root}")
        for key, names in (("models", [m.name for m in self.models]), ("benchmarks", [b.name for b in self.benchmarks])):
            for name in names:
                if not re.fullmatch(NAME_PATTERN, name):
                    raise ConfigError(f"eval: {key} name {name!r} must match {NAME_PATTERN} (it names a directory)")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ConfigError(f"eval: duplicate {key} names {duplicates}")
        for model in self.models:
            if model.generator.kind == "local" and not model.path:
                raise ConfigError(f"eval: model {model.name!r} needs a path (or generator.kind 'openai')")
            model.generator.check(f"eval: model {model.name!r}")
        for bench in self.benchmarks:
            if bench.kind not in KINDS:
                raise ConfigError(f"eval: benchmark {bench.name!r}: kind must be one of {', '.join(KINDS)}")
            if bench.paper is not None and bench.paper not in PAPER_BENCHMARKS:
                raise ConfigError(f"eval: benchmark {bench.name!r}: paper must be one of {', '.join(PAPER_BENCHMARKS)}")
            if bench.answers_file is not None and bench.kind != "qa":
                raise ConfigError(f"eval: benchmark {bench.name!r}: answers_file is only for kind 'qa'")
            if bench.limit is not None and bench.limit < 1:
                raise ConfigError(f"eval: benchmark {bench.name!r}: limit must be >= 1")
        judge = self.judge
        needs_judge = not judge_given and any(b.kind != "mcq" for b in self.benchmarks)
        if needs_judge and judge.kind == "openai" and not judge.model:
            raise ConfigError("eval: judge.model is required for the openai judge (name it exactly, e.g. gpt-4o-mini-2024-07-18)")
        if needs_judge and judge.kind == "local" and not judge.path:
            raise ConfigError("eval: judge.path (a model directory) is required for the local judge")
        if needs_judge and judge.kind == "oracle" and not judge.toy_dir:
            raise ConfigError("eval: judge.toy_dir (the toy world directory) is required for the oracle judge")
        gen = self.generation
        if gen.num_frames < 1 or gen.max_new_tokens < 1 or gen.batch_size < 1 or gen.temperature < 0:
            raise ConfigError("eval: generation needs num_frames, max_new_tokens, batch_size >= 1 and temperature >= 0")
        check_on_bad_video(self.on_bad_video, "eval")
        if not 0 < self.bootstrap.confidence < 1 or self.bootstrap.resamples < 0:
            raise ConfigError("eval: bootstrap.confidence must be in (0, 1) and bootstrap.resamples >= 0")

    def inputs(self, *, judge_given: bool = False) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        paths: dict[str, str | Path | None] = {}
        for m in self.models:
            if m.generator.kind == "local":
                paths.update({f"models.{m.name}.path": m.path, f"models.{m.name}.lora": m.lora})
        for b in self.benchmarks:
            paths.update({
                f"benchmarks.{b.name}.file": b.file,
                f"benchmarks.{b.name}.answers_file": b.answers_file,
                f"benchmarks.{b.name}.video_root": b.video_root,
            })
        if not judge_given and any(b.kind != "mcq" for b in self.benchmarks):
            judge = self.judge
            paths["judge.path"] = judge.path if judge.kind == "local" else None
            paths["judge.toy_dir"] = judge.toy_dir if judge.kind == "oracle" else None
        return paths


__all__ = ["BenchmarkSpec", "BootstrapSpec", "EvalConfig", "JudgeSpec", "ModelSpec"]
