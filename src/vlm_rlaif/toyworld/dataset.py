"""Writing a toy world to disk: videos, ground truth, every text file, the manifest.

Layout of DIR (paths inside records are relative to DIR):
    videos/<id>.mp4           h264, written through vlm_rlaif.video.write_video
    truth/<id>.json           Truth.to_dict(): objects, per-frame states, events with frame times
    sft/SFT_short.json        short-answer instructions (the curriculum's easy half)
    sft/SFT_long.json         long-answer instructions (descriptions; the hard half)
    sft/SFT_clips.json        per-clip descriptions (records with clip: {index, count})
    sft/SFT_judge.json        judge-skill examples (with and without clip context)
    sft/SFT_context.json      answers read off the true clip descriptions (answer_with_context prompt)
    sft/SFT_mcq.json          short questions with lettered options, answered with the letter
    sft/SFT_verify.json       one answer (right or corrupted) checked Yes / No, with and without context
    feedback/prompts.json     questions without answers for the AI-feedback stage
    rl/prompts.json           RL prompts; rl/PPO_init.json: the same with reference answers
    eval/vcg_generic.json, eval/vcg_temporal.json, eval/vcg_consistency.json, eval/qa.json,
    eval/mcq.json             benchmark sets in the real benchmarks' layouts
    toyworld_config.yaml      the config (written first: a killed run resumes only with it)
    manifest.json             config, seed, counts per split / file / question type, time (last)
Every record carries `toy: {video_id, split, qtype, params}` so the oracle knows what it asks.

Videos are assigned to splits by a low-discrepancy sequence over the index (split_of), so the
split of video i, like its content, does not depend on how many videos are generated, and even
20 videos split close to the configured fractions. A re-run reuses every finished video (its mp4
and truth exist) and rebuilds the text files, which are a pure function of (config, index).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from vlm_rlaif.config import from_dict, to_dict
from vlm_rlaif.data.jsonio import write_json_array
from vlm_rlaif.data.records import VIDEO_PLACEHOLDER
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.prompts import OPTION_LETTERS, format_context, format_mcq_question, load_prompt
from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.toyworld.lexicon import BACKGROUND
from vlm_rlaif.toyworld.describe import Speaker, span_facts, with_sizes
from vlm_rlaif.toyworld.questions import LONG_QTYPES, SHORT_QTYPES, TEMPORAL_QTYPES, QA, Asker
from vlm_rlaif.toyworld.render import render
from vlm_rlaif.toyworld.world import Truth, sample_truth, video_id_of
from vlm_rlaif.video import write_video

log = logging.getLogger(__name__)

SPLITS = ("sft", "feedback", "rl", "eval")
FILES = (
    "sft/SFT_short.json", "sft/SFT_long.json", "sft/SFT_clips.json", "sft/SFT_judge.json",
    "sft/SFT_context.json", "sft/SFT_mcq.json", "sft/SFT_verify.json", "feedback/prompts.json", "rl/prompts.json",
    "rl/PPO_init.json",
    "eval/vcg_generic.json", "eval/vcg_temporal.json", "eval/vcg_consistency.json", "eval/qa.json",
    "eval/mcq.json",
)
BLANK_VIDEO = "videos/blank.mp4"  # the background only: context examples that must be read
_OWN_DIRS = ("videos", "truth", "sft", "feedback", "rl", "eval")
_OWN_FILES = ("manifest.json", "toyworld_config.yaml")
# The describe_clip prompt is what the feedback stage asks; a few paraphrases keep it from being a
# magic string while the real prompt stays the most frequent.
CLIP_QUESTIONS = ("Describe what happens in this part of the video.", "Describe this clip in detail.",
                  "What happens in this part of the video?")
_GOLDEN = 0.6180339887498949
_CORRUPTION_WEIGHT = {"repetition": 0.4, "invented_event": 0.8}


def split_of(index: int, cfg: ToyWorldConfig) -> str:
    """The split of video `index`: a Weyl sequence u_i = frac(i * golden + offset(seed)) cut at
    the cumulative split fractions (balanced for any prefix of indices)."""
    u = (index * _GOLDEN + (cfg.seed * 0.7548776662466927) % 1.0) % 1.0
    edge = 0.0
    for name, fraction in cfg.split_fractions.items():
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def video_path(video_id: str) -> str:
    return f"videos/{video_id}.mp4"


# ---------------------------------------------------------------------- records of one video


def _human(question: str) -> dict:
    return {"from": "human", "value": f"{VIDEO_PLACEHOLDER}\n{question}"}


def _gpt(answer: str) -> dict:
    return {"from": "gpt", "value": answer}


def _toy(truth: Truth, qa_or_qtype: QA | str, params: dict | None = None, **extra) -> dict:
    qtype = qa_or_qtype if isinstance(qa_or_qtype, str) else qa_or_qtype.qtype
    params = params if params is not None else qa_or_qtype.params  # type: ignore[union-attr]
    return {"video_id": truth.video_id, "split": truth.split, "qtype": qtype, "params": params, **extra}


def _pick_qas(asker: Asker, builders: dict, n: int, rng: np.random.Generator) -> list[QA]:
    """Up to n questions of varied types (each type once per round, in random order), no
    question asked twice."""
    out: list[QA] = []
    seen: set[str] = set()
    names = list(builders)
    for _ in range(4):
        for k in rng.permutation(len(names)):
            if len(out) >= n:
                return out
            qa = builders[names[int(k)]](asker)
            if qa is not None and qa.questions[0] not in seen:
                seen.add(qa.questions[0])
                out.append(qa)
    return out


def clip_descriptions(truth: Truth, rng: np.random.Generator, order_gap: int) -> list[str]:
    """One true description per clip of the feedback context (same split as the feedback stage)."""
    out = []
    for c in range(len(truth.clips)):
        span = truth.span_of_clip(c)
        facts = with_sizes(truth, span_facts(truth, span), rng, 0.3)
        out.append(Speaker(rng).describe(facts, span, style="clip", order_gap=order_gap))
    return out


def make_records(truth: Truth, cfg: ToyWorldConfig) -> dict[str, list[dict]]:
    """Every text record of one video, by output file. Pure: depends on (cfg, truth) only."""
    rng = np.random.default_rng([cfg.seed, truth.index, 1])
    asker = Asker(truth, cfg, rng)
    vid, video = truth.video_id, video_path(truth.video_id)
    out: dict[str, list[dict]] = {f: [] for f in FILES}

    def instruction(rid: str, qa: QA, with_answer: bool) -> dict:
        turns = [_human(qa.questions[0])] + ([_gpt(qa.answer)] if with_answer else [])
        return {"id": rid, "video": video, "conversations": turns, "toy": _toy(truth, qa)}

    if truth.split == "sft":
        for k, qa in enumerate(_pick_qas(asker, SHORT_QTYPES, cfg.short_per_video, rng)):
            out["sft/SFT_short.json"].append(instruction(f"{vid}_short_{k}", qa, True))
        longs = [asker.describe()] + _pick_qas(asker, {n: b for n, b in LONG_QTYPES.items() if n != "describe"},
                                               max(cfg.long_per_video - 1, 0), rng)
        for k, qa in enumerate(longs[:cfg.long_per_video]):
            out["sft/SFT_long.json"].append(instruction(f"{vid}_long_{k}", qa, True))
        describe_clip = load_prompt("describe_clip").text
        for c, text in enumerate(clip_descriptions(truth, rng, cfg.order_gap)):
            question = describe_clip if rng.random() < 0.7 else CLIP_QUESTIONS[int(rng.integers(len(CLIP_QUESTIONS)))]
            first, last = truth.span_of_clip(c)
            out["sft/SFT_clips.json"].append({
                "id": f"{vid}_clip_{c}", "video": video, "conversations": [_human(question), _gpt(text)],
                "clip": {"index": c, "count": len(truth.clips)},
                "toy": _toy(truth, "clip", {"clip": c, "count": len(truth.clips), "first": first, "last": last}),
            })
        for j in range(cfg.judge_per_video):
            record = judge_example(truth, cfg, asker, rng, truth.index * cfg.judge_per_video + j)
            if record is not None:
                out["sft/SFT_judge.json"].append(record)
        # Last, so that the records above draw the same random numbers with or without these.
        out["sft/SFT_context.json"].extend(context_examples(truth, cfg, asker, rng))
        out["sft/SFT_mcq.json"].extend(mcq_examples(truth, cfg, asker, rng))
        for j in range(cfg.verify_per_video):
            record = verify_example(truth, cfg, asker, rng, j)
            if record is not None:
                out["sft/SFT_verify.json"].append(record)
    elif truth.split in ("feedback", "rl"):
        n = cfg.feedback_per_video if truth.split == "feedback" else cfg.rl_per_video
        n_long = int(rng.binomial(n, cfg.rl_long_fraction))
        qas = _pick_qas(asker, LONG_QTYPES, n_long, rng) + _pick_qas(asker, SHORT_QTYPES, n - n_long, rng)
        tag = "fb" if truth.split == "feedback" else "rl"
        for k, qa in enumerate(qas):
            if truth.split == "feedback":
                out["feedback/prompts.json"].append(instruction(f"{vid}_{tag}_{k}", qa, False))
            else:
                out["rl/prompts.json"].append(instruction(f"{vid}_{tag}_{k}", qa, False))
                out["rl/PPO_init.json"].append(instruction(f"{vid}_{tag}_{k}", qa, True))
    elif truth.split == "eval":
        _eval_records(truth, cfg, asker, rng, out)
    return out


def _corrupted(qa: QA, rng: np.random.Generator):
    """One of the question's wrong answers: its own lie (wrong colour, flipped yes/no, ...) most
    often; the generic ones (an added false event, repetition) less, so they do not crowd out the
    specific skills."""
    kinds = sorted({w.corruption for w in qa.wrongs})
    weights = np.array([_CORRUPTION_WEIGHT.get(c, 2.0 if qa.kind == "short" else 1.0) for c in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    pool = [w for w in qa.wrongs if w.corruption == kind]
    return pool[int(rng.integers(len(pool)))]


def verify_example(truth: Truth, cfg: ToyWorldConfig, asker: Asker, rng: np.random.Generator,
                   k: int) -> dict | None:
    """A verify example (the verify judge's skill): a question and one answer, the reference or a
    corrupted one (even odds), answered Yes or No; with the true clip descriptions as context when k
    is even (judge_verify_context), else without (judge_verify)."""
    builders = LONG_QTYPES if rng.random() < cfg.judge_long_fraction else SHORT_QTYPES
    qas = [qa for qa in _pick_qas(asker, builders, 1, rng) if qa.wrongs]
    if not qas:
        return None
    qa = qas[0]
    right = rng.random() < 0.5
    wrong = None if right else _corrupted(qa, rng)
    answer = qa.answer if right else wrong.answer
    values = {"question": qa.questions[0], "answer": answer}
    with_context = k % 2 == 0
    if with_context:
        values["context"] = format_context(clip_descriptions(truth, rng, cfg.order_gap))
    prompt = load_prompt("judge_verify_context" if with_context else "judge_verify")
    return {
        "id": f"{truth.video_id}_verify_{k}",
        "video": video_path(truth.video_id),
        "conversations": [_human(prompt.render(**values)), _gpt("Yes" if right else "No")],
        "toy": _toy(truth, "verify", {"base_qtype": qa.qtype, "base_params": qa.params, "right": right,
                                      "corruption": None if right else wrong.corruption,
                                      "context": with_context, "prompt": prompt.id, "answer": answer}),
    }


def judge_example(truth: Truth, cfg: ToyWorldConfig, asker: Asker, rng: np.random.Generator,
                  k: int) -> dict | None:
    """A judge-skill example: a question, a correct and a corrupted answer (the better one is A
    when k is even), with the true clip descriptions as context when (k // 2) is even."""
    better = "A" if k % 2 == 0 else "B"
    with_context = (k // 2) % 2 == 0
    builders = LONG_QTYPES if rng.random() < cfg.judge_long_fraction else SHORT_QTYPES
    qas = [qa for qa in _pick_qas(asker, builders, 1, rng) if qa.wrongs]
    if not qas:
        return None
    qa = qas[0]
    wrong = _corrupted(qa, rng)
    answer_a, answer_b = (qa.answer, wrong.answer) if better == "A" else (wrong.answer, qa.answer)
    worse = "B" if better == "A" else "A"
    values = {"question": qa.questions[0], "answer_a": answer_a, "answer_b": answer_b}
    if with_context:
        prompt = load_prompt("judge_pairwise_context")
        values["context"] = format_context(clip_descriptions(truth, rng, cfg.order_gap))
    else:
        prompt = load_prompt("judge_pairwise")
    verdict = f"{load_prompt('judge_verdict_prefix').text} {better}. {wrong.reason.format(x=worse)}"
    return {
        "id": f"{truth.video_id}_judge_{k % max(cfg.judge_per_video, 1)}",
        "video": video_path(truth.video_id),
        "conversations": [_human(prompt.render(**values)), _gpt(verdict)],
        "toy": _toy(truth, "judge", {
            "base_qtype": qa.qtype, "base_params": qa.params, "corruption": wrong.corruption, "better": better,
            "context": with_context, "prompt": prompt.id, "answers": [answer_a, answer_b],
        }),
    }


def context_examples(truth: Truth, cfg: ToyWorldConfig, asker: Asker, rng: np.random.Generator) -> list[dict]:
    """Questions answered with the true clip descriptions in the prompt (answer_with_context): the
    skill the likelihood judge uses, reading a fact off the context; short and long questions in
    the proportion of the feedback prompts."""
    n_long = int(rng.binomial(cfg.context_per_video, cfg.rl_long_fraction))
    unknown = sorted(set(cfg.context_qtypes) - set(SHORT_QTYPES))
    if unknown:
        raise ConfigError(f"toyworld.context_qtypes: unknown {unknown}; known: {', '.join(SHORT_QTYPES)}")
    short = {k: v for k, v in SHORT_QTYPES.items() if not cfg.context_qtypes or k in cfg.context_qtypes}
    qas = _pick_qas(asker, LONG_QTYPES, n_long, rng) + _pick_qas(asker, short, cfg.context_per_video - n_long, rng)
    prompt = load_prompt("answer_with_context")
    out = []
    for k, qa in enumerate(qas):
        context = format_context(clip_descriptions(truth, rng, cfg.order_gap))
        blank = cfg.context_blank_video_prob > 0 and rng.random() < cfg.context_blank_video_prob
        out.append({
            "id": f"{truth.video_id}_context_{k}", "video": BLANK_VIDEO if blank else video_path(truth.video_id),
            "conversations": [_human(prompt.render(context=context, question=qa.questions[0])), _gpt(qa.answer)],
            "toy": _toy(truth, qa),
        })
    return out


def mcq_examples(truth: Truth, cfg: ToyWorldConfig, asker: Asker, rng: np.random.Generator) -> list[dict]:
    """Short questions with lettered options (the eval_mcq_question prompt the multiple-choice
    benchmark asks), answered with the letter: the format, on SFT videos only."""
    if not cfg.mcq_per_video:
        return []
    qas = [qa for qa in _pick_qas(asker, SHORT_QTYPES, cfg.mcq_per_video + 2, rng) if qa.candidates]
    out = []
    for k, qa in enumerate(qas[:cfg.mcq_per_video]):
        letter = OPTION_LETTERS[qa.candidates.index(qa.short)]
        out.append({"id": f"{truth.video_id}_mcq_{k}", "video": video_path(truth.video_id),
                    "conversations": [_human(format_mcq_question(qa.questions[0], qa.candidates)), _gpt(letter)],
                    "toy": _toy(truth, qa)})
    return out


def _eval_records(truth: Truth, cfg: ToyWorldConfig, asker: Asker, rng: np.random.Generator,
                  out: dict[str, list[dict]]) -> None:
    vid, n = truth.video_id, cfg.eval_per_video
    generic_builders = {k: v for k, v in {**SHORT_QTYPES, **LONG_QTYPES}.items()
                        if k not in TEMPORAL_QTYPES and k != "describe"}
    temporal_builders = {k: v for k, v in {**SHORT_QTYPES, **LONG_QTYPES}.items() if k in TEMPORAL_QTYPES}
    generic = ([asker.describe()] if n else []) + _pick_qas(asker, generic_builders, n - 1, rng)
    for qa in generic[:n]:
        out["eval/vcg_generic.json"].append({"video_name": vid, "Q": qa.questions[0], "A": qa.answer,
                                             "toy": _toy(truth, qa)})
    for qa in _pick_qas(asker, temporal_builders, n, rng):
        out["eval/vcg_temporal.json"].append({"video_name": vid, "Q": qa.questions[0], "A": qa.answer,
                                              "toy": _toy(truth, qa)})
    consistency = [qa for qa in _pick_qas(asker, {**SHORT_QTYPES, **LONG_QTYPES}, n + 2, rng)
                   if len(set(qa.questions)) > 1][:n]
    for qa in consistency:
        q1, q2 = qa.questions[0], next(q for q in qa.questions[1:] if q != qa.questions[0])
        out["eval/vcg_consistency.json"].append({"video_name": vid, "Q1": q1, "Q2": q2, "A": qa.answer,
                                                 "toy": _toy(truth, qa)})
    for k, qa in enumerate(_pick_qas(asker, SHORT_QTYPES, n, rng)):
        out["eval/qa.json"].append({"video_name": vid, "question_id": f"{vid}_qa_{k}", "question": qa.questions[0],
                                    "answer": qa.short, "toy": _toy(truth, qa)})
    mcqs = [qa for qa in _pick_qas(asker, SHORT_QTYPES, n + 2, rng) if qa.candidates][:n]
    for k, qa in enumerate(mcqs):
        out["eval/mcq.json"].append({"video_name": vid, "question_id": f"{vid}_mcq_{k}", "question": qa.questions[0],
                                     "candidates": qa.candidates, "answer": qa.short, "toy": _toy(truth, qa)})


# ---------------------------------------------------------------------- one video, on disk


def build_video(cfg: ToyWorldConfig, out_dir: Path, index: int) -> dict[str, list[dict]]:
    """Make (or reuse) video `index` and its truth under out_dir; return its text records."""
    vid = video_id_of(index)
    truth_path = out_dir / "truth" / f"{vid}.json"
    mp4 = out_dir / video_path(vid)
    if truth_path.exists() and mp4.exists():
        truth = Truth.from_dict(json.loads(truth_path.read_text()))
    else:
        truth = sample_truth(cfg, index)
        truth.split = split_of(index, cfg)
        # write_video's libx264 defaults are deterministic (same frames, same bytes): toy worlds reproduce.
        write_video(render(truth, cfg.supersample), mp4, fps=cfg.fps, crf=cfg.crf)
        tmp = truth_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(truth.to_dict()))
        os.replace(tmp, truth_path)  # the truth appears last: its presence marks the video done
    return make_records(truth, cfg)


def _build_job(job: tuple[dict, str, int]) -> tuple[int, dict[str, list[dict]]]:
    cfg_dict, out_dir, index = job
    cfg = from_dict(ToyWorldConfig, cfg_dict)
    return index, build_video(cfg, Path(out_dir), index)


def generate(cfg: ToyWorldConfig, out_dir: str | Path, n_videos: int, *, workers: int | None = None,
             overwrite: bool = False) -> dict:
    """Write a toy world of n_videos videos to out_dir; returns the manifest.

    A directory made with a different config is refused unless overwrite=True (which deletes only
    what this function writes). With the same config, finished videos are reused.
    """
    if n_videos < 1:
        raise ConfigError(f"toyworld: need at least 1 video, got {n_videos}")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    _prepare(cfg, out_dir, overwrite)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    _remove_beyond(out_dir, n_videos)
    if cfg.context_blank_video_prob > 0 and not (out_dir / BLANK_VIDEO).exists():
        blank = np.empty((cfg.frames, cfg.size, cfg.size, 3), dtype=np.uint8)
        blank[:] = BACKGROUND
        write_video(blank, out_dir / BLANK_VIDEO, fps=cfg.fps, crf=cfg.crf)

    cfg_dict = to_dict(cfg)
    jobs = [(cfg_dict, str(out_dir), i) for i in range(n_videos)]
    workers = workers or min(os.cpu_count() or 1, 16)
    results: dict[int, dict[str, list[dict]]] = {}
    # delay: a world made in a second or two (a reused one, a smoke run) shows no bar.
    with tqdm(total=n_videos, desc="toy world", unit="video", delay=2) as bar:
        if workers <= 1 or n_videos < 8:
            for job in jobs:
                index, records = _build_job(job)
                results[index] = records
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for index, records in pool.map(_build_job, jobs, chunksize=max(1, n_videos // (workers * 8))):
                    results[index] = records
                    bar.update()

    counts_files: dict[str, int] = {}
    counts_qtypes: dict[str, dict[str, int]] = {}
    for name in FILES:
        records = [r for i in range(n_videos) for r in results[i][name]]
        write_json_array(out_dir / name, records)
        counts_files[name] = len(records)
        counts_qtypes[name] = dict(sorted(Counter(r["toy"]["qtype"] for r in records).items()))
    splits = Counter(split_of(i, cfg) for i in range(n_videos))
    judge = [r["toy"]["params"] for i in range(n_videos) for r in results[i]["sft/SFT_judge.json"]]
    manifest = {
        "generator": "vlm_rlaif.toyworld",
        "seed": cfg.seed,
        "videos": n_videos,
        "videos_per_split": {s: splits.get(s, 0) for s in SPLITS},
        "records_per_file": counts_files,
        "records_per_qtype": counts_qtypes,
        "judge_examples": {
            "better_A": sum(p["better"] == "A" for p in judge),
            "with_context": sum(p["context"] for p in judge),
            "per_corruption": dict(sorted(Counter(p["corruption"] for p in judge).items())),
        },
        "prompts": {name: load_prompt(name).id for name in
                    ("describe_clip", "judge_pairwise_context", "judge_pairwise", "judge_verdict_prefix")},
        "clips_per_video": len(sample_truth(cfg, 0).clips),
        "generation_seconds": round(time.perf_counter() - start, 2),
        "workers": workers,
        "config": cfg_dict,
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / "manifest.json")
    log.info("toy world: %d videos in %.1f s -> %s", n_videos, manifest["generation_seconds"], out_dir)
    return manifest


def _prepare(cfg: ToyWorldConfig, out_dir: Path, overwrite: bool) -> None:
    config_path = out_dir / "toyworld_config.yaml"
    wanted = to_dict(cfg)
    if overwrite:
        for name in _OWN_DIRS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in _OWN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    elif config_path.exists():
        existing = yaml.safe_load(config_path.read_text()) or {}
        if existing != wanted:
            changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise ConfigError(f"{out_dir} holds a toy world made with another config (differs in: "
                              f"{', '.join(changed)}); pass --overwrite to replace it")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists, is not empty and is not a toy world; choose another --out "
                          f"or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(wanted, sort_keys=False))


def _remove_beyond(out_dir: Path, n_videos: int) -> None:
    """A re-run with fewer videos drops the videos it no longer lists."""
    for folder, suffix in (("truth", ".json"), ("videos", ".mp4")):
        for path in (out_dir / folder).glob(f"toy_*{suffix}"):
            stem = path.name[4:-len(suffix)]
            if stem.isdigit() and int(stem) >= n_videos:
                path.unlink()
