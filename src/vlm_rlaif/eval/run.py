"""`run_eval(config) -> summary`: predict with every model, judge, aggregate, write the tables.

Output directory (a RunDir of stage "eval"; a rerun with the same config resumes):
    predictions/<model>/<benchmark>.jsonl   one line per item (eval.predict)
    judgements/<model>/<benchmark>.jsonl    one line per item and criterion (eval.judging)
    judge_cache/                            the OpenAI judge's reply cache (unless judge.cache_dir)
    results.md                              the table (eval.report)
    summary.json                            scores with intervals, the judge and its versions; per
                                            benchmark the skipped items (on_bad_video: skip) and
                                            videos with warnings (single frame, non-image files)
Models are loaded one at a time, and only when some of their predictions are missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from vlm_rlaif.config import to_dict
from vlm_rlaif.data import done_ids
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.eval.aggregate import aggregate
from vlm_rlaif.eval.benchmarks import EvalItem, load_items
from vlm_rlaif.eval.config import EvalConfig, JudgeSpec, ModelSpec
from vlm_rlaif.eval.criteria import tasks_for
from vlm_rlaif.eval.judges import Judge, LocalJudge, OpenAIJudge, OracleJudge, toy_oracle_check
from vlm_rlaif.eval.judging import judge as judge_benchmark
from vlm_rlaif.eval.paper import PAPER_JUDGE, PAPER_JUDGE_NOTE
from vlm_rlaif.eval.predict import iter_predict, read_predictions, read_video_notes
from vlm_rlaif.eval.report import results_markdown
from vlm_rlaif.rundir import RunDir

log = logging.getLogger(__name__)

FEATURE_CACHE_BYTES = 256 << 20  # a consistency item's two questions share one video encoding


def load_model(spec: ModelSpec, feature_cache_bytes: int = FEATURE_CACHE_BYTES, cache_dir: Path | None = None):
    """A VideoLM from a model directory, with its LoRA adapter if the spec names one; or, for
    generator kind "openai", the servers that serve it (replies cached under cache_dir)."""
    from vlm_rlaif.models import FeatureCache, load_adapter_model

    if spec.generator.kind == "openai":
        from vlm_rlaif.clients.generator import make_generator

        return make_generator(spec.generator, cache_dir=cache_dir)

    lm = load_adapter_model(spec.path, device=spec.device, dtype=spec.dtype, feature_cache=FeatureCache(feature_cache_bytes))
    if spec.lora:
        lm.load_lora(spec.lora, "evaluated")  # not "eval": peft models have an .eval attribute
    return lm


def build_judge(spec: JudgeSpec, out_dir: str | Path) -> Judge:
    """The judge a JudgeSpec describes (the local judge's model is loaded here)."""
    if spec.kind == "openai":
        from vlm_rlaif.clients.openai_compat import ChatClient

        client = ChatClient(
            spec.base_url,
            spec.model,
            api_key_env=spec.api_key_env,
            max_concurrency=spec.max_concurrency,
            max_retries=spec.max_retries,
            max_invalid_retries=spec.max_invalid_retries,
            timeout_s=spec.timeout_s,
            cache_dir=spec.cache_dir or Path(out_dir) / "judge_cache",
        )
        return OpenAIJudge(client, temperature=spec.temperature, max_tokens=spec.max_tokens)
    if spec.kind == "local":
        from vlm_rlaif.models import load_adapter_model

        lm = load_adapter_model(spec.path, device=spec.device, dtype=spec.dtype)
        return LocalJudge(lm, str(spec.path), batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens)
    return OracleJudge(toy_oracle_check(spec.toy_dir))


def run_eval(config: EvalConfig, *, overwrite: bool = False, judge: Judge | None = None) -> dict:
    """Evaluate every model on every benchmark; returns the summary (also in <out>/summary.json).

    judge: use this judge instead of building config.judge's (tests, the demo); config.judge is then
    only recorded.
    """
    config.check(judge_given=judge is not None)
    run = RunDir.open(config.out, "eval", config, config.seed, overwrite=overwrite, inputs=config.inputs(judge_given=judge is not None))
    items = {
        b.name: load_items(b.kind, b.file, answers_path=b.answers_file, video_prefix=b.video_prefix, limit=b.limit)
        for b in config.benchmarks
    }
    settings = config.generation

    predictions: dict[str, dict[str, dict[str, list[str]]]] = {}
    notes: dict[str, dict[str, tuple[list[dict], dict[str, int]]]] = {}  # skipped items, video warnings
    for model in config.models:
        paths = {b.name: run.path / "predictions" / model.name / f"{b.name}.jsonl" for b in config.benchmarks}
        missing = [b for b in config.benchmarks if _missing(items[b.name], done_ids(paths[b.name]))]
        if missing:
            log.info("model %s: predicting %s", model.name, ", ".join(b.name for b in missing))
            lm = load_model(model, cache_dir=run.path / "generator_cache" / model.name)
            todo = sum(len({i.id for i in items[b.name]} - done_ids(paths[b.name])) for b in missing)
            with tqdm(total=todo, desc=f"eval {model.name}", unit="item", delay=2) as bar:  # one bar per model
                for bench in missing:
                    frames = FrameStore(bench.video_root, FrameSampling(num_frames=settings.num_frames))
                    for _ in iter_predict(lm, items[bench.name], frames, paths[bench.name], settings, config.on_bad_video):
                        bar.update()
            del lm
        predictions[model.name] = {b.name: read_predictions(paths[b.name], items[b.name]) for b in config.benchmarks}
        notes[model.name] = {b.name: read_video_notes(paths[b.name]) for b in config.benchmarks}

    results: dict[str, dict[str, dict]] = {}
    rows: list[dict] = []
    boot = config.bootstrap
    built: Judge | None = None  # the judge built here (closed here), if any
    try:
        for model in config.models:
            results[model.name] = {}
            for bench in config.benchmarks:
                mine = predictions[model.name][bench.name]
                skipped, video_warnings = notes[model.name][bench.name]
                judged_items = [item for item in items[bench.name] if item.id in mine]  # skipped items are not judged
                path = run.path / "judgements" / model.name / f"{bench.name}.jsonl"
                if judge is None and bench.kind != "mcq" and _pending(bench.kind, judged_items, mine, path):
                    judge = built = build_judge(config.judge, run.path)
                judged = judge_benchmark(judged_items, mine, kind=bench.kind, by=judge, out_path=path)
                rows += [row for row in judged if bench.kind != "mcq"]
                agg = aggregate(bench.kind, judged, resamples=boot.resamples, confidence=boot.confidence, seed=boot.seed)
                results[model.name][bench.name] = {
                    "kind": bench.kind, "paper": bench.paper, "items": len(items[bench.name]), **agg,
                    "skipped": len(skipped), "skipped_items": skipped, "video_warnings": video_warnings,
                }  # fmt: skip
    finally:
        if isinstance(built, OpenAIJudge):
            built.client.close()

    judge_record = _judge_record(config.judge, judge, rows)
    bench_rows = [{"name": b.name, "kind": b.kind, "paper": b.paper} for b in config.benchmarks]
    bootstrap = to_dict(config.bootstrap)
    (run.path / "results.md").write_text(results_markdown(results, bench_rows, judge_record, bootstrap))
    summary = {
        "judge": judge_record,
        "generation": to_dict(config.generation),
        "bootstrap": bootstrap,
        "benchmarks": bench_rows,
        "results": results,
        "paper_judge": {"model": PAPER_JUDGE, "note": PAPER_JUDGE_NOTE},
    }
    log.info("wrote %s", run.path / "results.md")
    return run.finish(summary)


def _missing(items: list[EvalItem], done: set[str]) -> bool:
    return any(item.id not in done for item in items)


def _pending(kind: str, items: list[EvalItem], predictions: dict[str, list[str]], path: Path) -> bool:
    done = done_ids(path, key="key")
    return any(task.key not in done for task in tasks_for(kind, items, predictions))


def _judge_record(spec: JudgeSpec, judge: Judge | None, rows: list[dict]) -> dict:
    """The judge as configured, plus every version and prompt that actually answered (from the
    judgement lines, so a resumed run whose endpoint changed version shows both)."""
    if judge is not None:
        record = judge.info()
    else:  # every judgement was already on disk
        record = {"kind": spec.kind, "model": spec.model or spec.path or "oracle"}
    record["versions"] = sorted({r["judge_version"] for r in rows if r.get("judge_version")})
    record["fingerprints"] = sorted({r["judge_fingerprint"] for r in rows if r.get("judge_fingerprint")})
    record["prompts"] = sorted({r["prompt"] for r in rows if r.get("prompt")})
    return record


__all__ = ["build_judge", "load_model", "run_eval"]
