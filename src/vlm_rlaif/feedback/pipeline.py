"""run_feedback: prompts -> K candidates -> clip context -> judge both orders -> preference records.

Files in the run directory (all append-only JSONL, so a killed run loses at most the record being
written and a rerun picks up where it stopped):
    candidates.jsonl   per prompt: its K distinct answers (or dropped), resample count, sampling
    contexts.jsonl     per video: clip descriptions (context.py)
    judgments.jsonl    per pair: both orders' probabilities, invalid reasons, decision (every pair)
    preferences.jsonl  the kept pairs in the public preference layout plus our fields
    judge_cache/, describe_cache/, generator_cache/   on-disk reply caches of openai endpoints
    summary.json       counts, order agreement, throughput, oracle agreement (toy world)
Candidates, and the policy's clip descriptions, come from the policy itself or, with
`generator.kind: openai`, from servers serving it (clients.generator; the local model is then
loaded only if the judge needs it). Prompts go in chunks of chunk_size; within a chunk candidates are sampled in one batch, contexts are
made for its videos, and its pairs are judged in one batch. A pair's judgment is written before its
preference record; a rerun rewrites any preference record a kill cut off, so none is lost or doubled.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vlm_rlaif.clients.generator import make_generator
from vlm_rlaif.clients.openai_compat import ChatClient
from vlm_rlaif.data import InstructionRecord, JsonlWriter, done_ids, iter_raw, read_records
from vlm_rlaif.data.frames import NON_IMAGE_FILES, SINGLE_FRAME, BadVideoError, FrameSampling, FrameStore
from vlm_rlaif.data.records import to_messages
from vlm_rlaif.errors import RecordError, UserError
from vlm_rlaif.feedback.agreement import OracleReference, agreement
from vlm_rlaif.feedback.candidates import PromptCandidates, sample_candidates, sampling_record
from vlm_rlaif.feedback.config import FeedbackConfig, OpenAISettings
from vlm_rlaif.feedback.context import ClipContexts, Describer, LocalDescriber, OpenAIDescriber
from vlm_rlaif.feedback.judges import (
    Judge,
    JudgeItem,
    LocalJudge,
    OpenAIJudge,
    OracleJudge,
    Verdict,
    below_min_mass,
    judge_template,
    model_dir_version,
    reply_format_id,
    verify_template,
)
from vlm_rlaif.feedback.preferences import STATUSES, decide, preference_record, side
from vlm_rlaif.models import FeatureCache, VideoExample, VideoLM, load_adapter_model
from vlm_rlaif.prompts import load_prompt
from vlm_rlaif.rundir import RunDir

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.jsonl"
CONTEXTS_FILE = "contexts.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
NO_CONTEXT = "no clip context (a clip could not be described)"


@dataclass
class Pair:
    id: str
    prompt: InstructionRecord
    output_1: str
    output_2: str


def load_prompts(path: Path, max_prompts: int | None = None) -> list[InstructionRecord]:
    """Prompt records (ids unique), the first max_prompts of them when set."""
    prompts = read_records(path, InstructionRecord)
    seen: set[str] = set()
    for record in prompts:
        if record.id in seen:
            raise RecordError(f"{path}: prompt id {record.id!r} occurs more than once")
        seen.add(record.id)
    return prompts if max_prompts is None else prompts[:max_prompts]


def toy_meta(record: InstructionRecord) -> dict | None:
    return (record.model_extra or {}).get("toy")


class FeedbackRunner:
    """The models, judge, frames and logs of one feedback run directory; run_feedback and the
    context measurement both drive it."""

    def __init__(self, config: FeedbackConfig, directory: Path):
        self.config = config
        self.dir = directory
        self._policy: VideoLM | None = None
        self._generator = None
        if config.num_frames is None and config.generator.kind == "openai" and not self._judge_is_policy():
            raise UserError("feedback: with generator.kind 'openai' and no local self-judge, set num_frames (frames a video)")
        num_frames = config.num_frames or getattr(self.policy.processor, "num_frames", None) or 50
        # Decoded frames of about one chunk's videos are kept: full-resolution videos are large.
        sampling = FrameSampling(num_frames, config.clip_max_frames, clip_frames=config.clip_frames)
        self.frames = FrameStore(config.video_root, sampling, max_videos=max(16, config.chunk_size))
        self.judge = self._make_judge()
        self._contexts: ClipContexts | None = None
        self.candidates: dict[str, PromptCandidates] = {}
        self.sampling: dict[str, dict] = {}
        path = directory / CANDIDATES_FILE
        if path.exists():
            for _, obj in iter_raw(path, repair=True):
                self.sampling[obj["prompt_id"]] = obj.pop("sampling")
                self.candidates[obj["prompt_id"]] = PromptCandidates(**obj)
        self.timings = Counter()  # seconds spent per phase in this invocation

    # ------------------------------------------------------------------ models and judges

    def _load(self, model_dir: Path) -> VideoLM:
        cache = FeatureCache(max_bytes=self.config.feature_cache_bytes)
        return load_adapter_model(model_dir, device=self.config.device, dtype=self.config.dtype, feature_cache=cache)

    @property
    def policy(self) -> VideoLM:
        """The policy model, loaded on first use (a run whose generation and judge are servers never loads it)."""
        if self._policy is None:
            self._policy = self._load(self.config.model_dir)
        return self._policy

    @property
    def generator(self):
        """What samples the policy's answers and descriptions: the policy, or servers serving it."""
        if self._generator is None:
            settings = self.config.generator
            lm = self.policy if settings.kind == "local" else None
            self._generator = make_generator(settings, lm, cache_dir=self.dir / "generator_cache")
        return self._generator

    def _judge_is_policy(self) -> bool:
        return self.config.judge.kind == "local" and self._same_as_policy(self.config.judge.model_dir)

    def _same_as_policy(self, model_dir: Path | None) -> bool:
        return model_dir is None or Path(model_dir).resolve() == Path(self.config.model_dir).resolve()

    def _client(self, settings: OpenAISettings, cache_name: str) -> ChatClient:
        return ChatClient(
            settings.base_url,
            settings.model,
            api_key_env=settings.api_key_env,
            max_concurrency=settings.max_concurrency,
            max_retries=settings.max_retries,
            max_invalid_retries=settings.max_invalid_retries,
            timeout_s=settings.timeout_s,
            backoff_base_s=settings.backoff_base_s,
            cache_dir=self.dir / cache_name,
        )

    def _make_judge(self) -> Judge:
        settings = self.config.judge
        if settings.kind == "local":
            model_dir = settings.model_dir or self.config.model_dir
            lm = self.policy if self._same_as_policy(settings.model_dir) else self._load(settings.model_dir)
            return LocalJudge(lm, settings, f"local:{model_dir}", model_dir_version(model_dir))
        if settings.kind == "openai":
            return OpenAIJudge(self._client(settings.openai, "judge_cache"), settings.openai)
        return OracleJudge(OracleReference(self.toy_root()))

    def _make_describer(self) -> Describer:
        settings = self.config.describe
        if settings.describer == "openai":
            client = self._client(settings.openai, "describe_cache")
            return OpenAIDescriber(client, settings.openai, settings.max_new_tokens, settings.temperature)
        model_dir = settings.model_dir if settings.describer == "model" else self.config.model_dir
        if self._same_as_policy(model_dir):
            generator = self.generator
            describer_id = f"local:{model_dir}" if generator is self._policy else generator.id
            return LocalDescriber(generator, settings, describer_id)
        return LocalDescriber(self._load(model_dir), settings, f"local:{model_dir}")

    @property
    def contexts(self) -> ClipContexts:
        """Made on first use: a run without context loads no describer."""
        if self._contexts is None:
            self._contexts = ClipContexts(self._make_describer(), self.frames, self.dir / CONTEXTS_FILE)
        return self._contexts

    @contexts.setter
    def contexts(self, contexts: ClipContexts) -> None:
        """Judge with contexts from elsewhere (e.g. the toy world's true clip descriptions)."""
        self._contexts = contexts

    def toy_root(self) -> Path:
        root = self.config.toy_root or self.config.video_root
        if root is None or not (Path(root) / "truth").is_dir():
            raise UserError(f"the oracle needs a toy world directory with truth/ (toy_root or video_root; got {root})")
        return Path(root)

    # ------------------------------------------------------------------ candidates

    def video(self, prompt: InstructionRecord) -> tuple[np.ndarray, str]:
        """Its frames; BadVideoError (naming the prompts file, the record and the video) when the
        video is missing or does not decode."""
        return self.frames.video(prompt.video_source, where=f"{self.config.prompts}: record {prompt.id}")

    def ensure_candidates(self, prompts: list[InstructionRecord], seed: int) -> None:
        """Sample (and log) candidates for the prompts that have none yet."""
        todo = [p for p in prompts if p.id not in self.candidates]
        if not todo:
            return
        started = time.perf_counter()
        examples, usable, skipped = [], [], []
        for prompt in todo:
            try:
                frames, key = self.video(prompt)
            except BadVideoError as err:
                if self.config.on_bad_video == "fail":
                    raise
                log.warning("skipped: %s", err)
                skipped.append(PromptCandidates(prompt.id, [], 0, dropped=False, skipped=str(err)))
                continue
            # The question only: a trailing reference answer (instruction files) is not shown.
            examples.append(VideoExample(to_messages(prompt.conversations[:1]), frames, key, where=f"{self.config.prompts}: record {prompt.id}"))
            usable.append(prompt)
        results = sample_candidates(self.generator, examples, [p.id for p in usable], self.config.candidates, seed) if usable else []
        for result, example in zip(results, examples):
            result.video_warnings = self.frames.warnings.get(example.video_key, [])
        sampling = sampling_record(self.config.candidates, seed)
        with JsonlWriter(self.dir / CANDIDATES_FILE) as writer:
            for result in [*results, *skipped]:
                writer.write({**asdict(result), "sampling": sampling})
                self.candidates[result.prompt_id] = result
                self.sampling[result.prompt_id] = sampling
        self.timings["candidates_s"] += time.perf_counter() - started

    def pairs_of(self, prompt: InstructionRecord) -> list[Pair]:
        answers = self.candidates[prompt.id].answers
        return [Pair(f"{prompt.id}:{i}-{j}", prompt, answers[i], answers[j]) for i, j in combinations(range(len(answers)), 2)]

    # ------------------------------------------------------------------ context and judging

    def ensure_contexts(self, prompts: list[InstructionRecord]) -> None:
        started = time.perf_counter()
        self.contexts.ensure([(p.video_source, f"{self.config.prompts}: record {p.id}") for p in prompts])
        self.timings["context_s"] += time.perf_counter() - started

    def judge_pairs(
        self, pairs: list[Pair], with_context: bool, judge: Judge | None = None
    ) -> list[tuple[Verdict, Verdict]]:
        """Each pair judged with output_1 shown first, then second: (verdict, verdict) per pair."""
        judge = judge or self.judge
        if with_context:
            self.ensure_contexts([pair.prompt for pair in pairs])
        started = time.perf_counter()
        items: list[JudgeItem] = []
        missing_context: set[int] = set()
        for index, pair in enumerate(pairs):
            frames, key = self.video(pair.prompt)
            context = None
            if with_context:
                context = self.contexts.get(key).text
                if context is None:
                    missing_context.add(index)
                    continue
            question = pair.prompt.question
            toy = toy_meta(pair.prompt)
            items.append(JudgeItem(question, pair.output_1, pair.output_2, context, frames, key, toy))
            items.append(JudgeItem(question, pair.output_2, pair.output_1, context, frames, key, toy))
        verdicts = iter(judge.judge(items)) if items else iter(())
        no_context = Verdict(None, invalid=NO_CONTEXT)
        results = []
        for index in range(len(pairs)):
            results.append((no_context, no_context) if index in missing_context else (next(verdicts), next(verdicts)))
        self.timings["judge_s"] += time.perf_counter() - started
        return results

    def judgment(self, pair: Pair, first: Verdict, second: Verdict, with_context: bool, judge: Judge) -> dict:
        """The judgments.jsonl entry of one pair."""
        prob_1_first = first.prob_a
        prob_1_second = None if second.prob_a is None else 1.0 - second.prob_a
        decision = decide(prob_1_first, prob_1_second, self.config.position_policy, self.config.margin)
        _, video_key = self.video(pair.prompt)
        return {
            "id": pair.id,
            "prompt_id": pair.prompt.id,
            "video_key": video_key,
            "output_1": pair.output_1,
            "output_2": pair.output_2,
            "status": decision.status,
            "preference": decision.preference,
            "prob_1": decision.prob_1,
            "prob_1_first": prob_1_first,
            "prob_1_second": prob_1_second,
            "orders_agree": decision.orders_agree,
            "invalid_first": first.invalid,
            "invalid_second": second.invalid,
            "verdict_mass_first": first.verdict_mass,
            "verdict_mass_second": second.verdict_mass,
            "rationale_first": first.rationale,
            "rationale_second": second.rationale,
            "context_used": with_context,
            "judge": judge.id,
            "judge_version": judge.version,
            "judge_prompt": judge_prompt_id(judge, with_context),
            "position_policy": self.config.position_policy,
        }

    def preference(self, pair_prompt: InstructionRecord, judgment: dict):
        context = self.contexts.get(judgment["video_key"]) if judgment["context_used"] else None
        return preference_record(
            pair_prompt,
            judgment["id"],
            judgment["output_1"],
            judgment["output_2"],
            judgment,
            context=context.text if context is not None else None,
            judge=judgment["judge"],
            judge_version=judgment["judge_version"],
            sampling=self.sampling[pair_prompt.id],
        )


def judge_prompt_id(judge: Judge, with_context: bool) -> str:
    """The template id, plus the reply-format instruction an endpoint judge also gets."""
    if isinstance(judge, LocalJudge) and judge.settings.form == "likelihood":
        return load_prompt("answer_with_context").id if with_context \
            else "question+answer likelihood"
    if isinstance(judge, LocalJudge) and judge.settings.form == "verify":
        return verify_template(with_context).id
    template = judge_template(with_context).id
    extra = reply_format_id(judge)
    return f"{template}+{extra}" if extra else template


def chunked(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def chunks_with_progress(chunks: list[list], desc: str) -> Iterator[list]:
    """The chunks, with a bar of the prompts done out of all of them (a chunk counts once its loop
    body is over, skipped or not)."""
    with tqdm(total=sum(map(len, chunks)), desc=desc, unit="prompt", delay=2) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def run_feedback(config: FeedbackConfig, *, overwrite: bool = False) -> dict:
    """The feedback stage (see the module docstring); returns the summary written to summary.json."""
    config.check()
    prompts = load_prompts(config.prompts, config.max_prompts)
    run = RunDir.open(config.out, "feedback", config, config.seed, overwrite=overwrite, inputs=config.inputs())
    started = time.perf_counter()
    runner = FeedbackRunner(config, run.path)
    by_id = {p.id: p for p in prompts}
    judgments_path, preferences_path = run.path / JUDGMENTS_FILE, run.path / PREFERENCES_FILE
    judged = {obj["id"]: obj for _, obj in iter_raw(judgments_path, repair=True)} if judgments_path.exists() else {}
    restored = _restore_preferences(runner, by_id, judged, preferences_path)
    new_pairs = 0
    with JsonlWriter(judgments_path) as judgment_log, JsonlWriter(preferences_path) as preference_log:
        for chunk_index, chunk in enumerate(chunks_with_progress(chunked(prompts, config.chunk_size), "feedback")):
            # Chunks are fixed over the whole prompt list, so a rerun samples each chunk with the same seed.
            runner.ensure_candidates(chunk, seed=config.seed * 1_000_003 + chunk_index)
            pairs = [pair for p in chunk for pair in runner.pairs_of(p) if pair.id not in judged]
            if not pairs:
                continue
            verdicts = runner.judge_pairs(pairs, config.context)
            statuses = Counter()
            for pair, (first, second) in zip(pairs, verdicts):
                judgment = runner.judgment(pair, first, second, config.context, runner.judge)
                judgment_log.write(judgment)
                judged[pair.id] = judgment
                if judgment["status"] == "kept":
                    preference_log.write(runner.preference(pair.prompt, judgment))
                statuses[judgment["status"]] += 1
            new_pairs += len(pairs)
            run.log_metrics(chunk_index, pairs=len(pairs), **{s: statuses[s] for s in STATUSES})
            log.debug("chunk %d: %d pairs judged (%s)", chunk_index, len(pairs), dict(statuses))  # the bar shows progress
    elapsed = time.perf_counter() - started
    summary = summarise(runner, prompts, judged, preferences_path)
    summary["this_run"] = {
        "pairs_judged": new_pairs,
        "preferences_restored": restored,
        "videos_described": runner.contexts.described_videos if config.context else 0,
        "seconds": round(elapsed, 2),
        "pairs_per_minute": round(60 * new_pairs / elapsed, 2) if elapsed > 0 else None,
        "judge_pairs_per_minute": _per_minute(new_pairs, runner.timings["judge_s"]),
        **{name: round(seconds, 2) for name, seconds in runner.timings.items()},
    }
    return run.finish(summary)


def _per_minute(count: int, seconds: float) -> float | None:
    return round(60 * count / seconds, 2) if seconds > 0 else None


def _restore_preferences(runner: FeedbackRunner, by_id: dict, judged: dict, path: Path) -> int:
    """Write the preference records of kept judgments that a kill cut off before they were written."""
    written = done_ids(path)
    missing = [j for j in judged.values() if j["status"] == "kept" and j["id"] not in written]
    if missing:
        with JsonlWriter(path) as writer:
            for judgment in missing:
                writer.write(runner.preference(by_id[judgment["prompt_id"]], judgment))
    return len(missing)


def summarise(runner: FeedbackRunner, prompts: list[InstructionRecord], judged: dict, preferences_path: Path) -> dict:
    """Counts over the whole run directory (earlier, interrupted invocations included)."""
    candidates = [runner.candidates[p.id] for p in prompts if p.id in runner.candidates]
    judgments = list(judged.values())
    statuses = Counter(j["status"] for j in judgments)
    agreeing = [j["orders_agree"] for j in judgments if j["orders_agree"] is not None]
    # A pair whose context could not be made never reached the judge: not an invalid reply.
    invalid_replies = sum(
        sum(j[f"invalid_{order}"] not in (None, NO_CONTEXT) for order in ("first", "second")) for j in judgments
    )
    kept = [j for j in judgments if j["status"] == "kept"]
    # Local verdicts that min_verdict_mass made invalid (the judge put too little probability on A/B).
    min_mass = runner.config.judge.min_verdict_mass
    masses = [j.get(f"verdict_mass_{order}") for j in judgments for order in ("first", "second")]
    summary = {
        "prompts": len(prompts),
        "prompts_dropped": sum(c.dropped for c in candidates),
        "prompts_skipped": sum(c.skipped is not None for c in candidates),  # on_bad_video "skip"
        "skipped_prompts": [{"id": c.prompt_id, "reason": c.skipped} for c in candidates if c.skipped is not None],
        "video_warnings": _video_warnings(prompts, runner.candidates),
        "answers_resampled": sum(c.resampled for c in candidates),
        "pairs_judged": len(judgments),
        **{f"pairs_{status}": statuses[status] for status in STATUSES},
        "invalid_replies": invalid_replies,
        "min_verdict_mass": min_mass,
        "verdicts_below_min_mass": sum(m is not None and below_min_mass(m, min_mass) for m in masses),
        "pairs_without_context": sum(j["invalid_first"] == NO_CONTEXT for j in judgments),
        "order_agreement": {
            "n": len(agreeing),
            "agree": sum(agreeing),
            "rate": sum(agreeing) / len(agreeing) if agreeing else None,
        },
        "preference_counts": {"1": sum(j["preference"] == 1 for j in kept), "2": sum(j["preference"] == 2 for j in kept)},
        "preferences_file": str(preferences_path),
        "preferences_written": len(done_ids(preferences_path)),
        "judge": runner.judge.id,
        "judge_version": runner.judge.version,
        "judge_prompt": judge_prompt_id(runner.judge, runner.config.context),
        "describer": runner.contexts.describer.id if runner.config.context else None,
        "context": runner.config.context,
        "position_policy": runner.config.position_policy,
        "margin": runner.config.margin,
    }
    summary["oracle"] = oracle_summary(runner, {p.id: p for p in prompts}, judgments)
    return summary


def _video_warnings(prompts: list[InstructionRecord], candidates: dict[str, PromptCandidates]) -> dict[str, int]:
    """Distinct videos with each warning (single frame, non-image files in the frame folder)."""
    videos: dict[str, set[str]] = {SINGLE_FRAME: set(), NON_IMAGE_FILES: set()}
    for prompt in prompts:
        for kind in candidates[prompt.id].video_warnings if prompt.id in candidates else []:
            videos.setdefault(kind, set()).add(str(prompt.video_source))
    return {kind: len(names) for kind, names in videos.items()}


def oracle_summary(runner: FeedbackRunner, by_id: dict[str, InstructionRecord], judgments: list[dict]) -> dict:
    """Agreement with the toy world's oracle: of the kept labels, and of every pair with valid
    verdicts in both orders, decided by their mean (the judge's own skill, before filtering)."""
    if not judgments or any(toy_meta(by_id[j["prompt_id"]]) is None for j in judgments):
        return {"available": False, "reason": "the prompts carry no toy metadata"}
    try:
        reference = OracleReference(runner.toy_root())
    except (UserError, ImportError) as err:
        return {"available": False, "reason": str(err)}
    oracle = [reference.compare(toy_meta(by_id[j["prompt_id"]]), j["output_1"], j["output_2"]) for j in judgments]
    kept = [(j["preference"], o) for j, o in zip(judgments, oracle) if j["status"] == "kept"]
    averaged = [None if j["prob_1"] is None else (side(j["prob_1"], 0.0) or None) for j in judgments]
    return {
        "available": True,
        "oracle_version": reference.version,
        "kept_labels": agreement([j for j, _ in kept], [o for _, o in kept]),
        "all_pairs_mean_of_orders": agreement(averaged, oracle),
    }


__all__ = ["FeedbackRunner", "Pair", "load_prompts", "run_feedback", "summarise"]
