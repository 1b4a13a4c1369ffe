"""Stage 1: supervised fine-tuning with the answer-length curriculum (docs/method.md, stage 1).

    config = load_config(SFTConfig, "recipes/toy.yaml", section="sft")
    summary = run_sft(config)          # writes <out>/model and <out>/summary.json

Top to bottom:
1. Read the curriculum: explicit ordered phases, each a list of files with its own epochs (the paper:
   SFT_short.json, then SFT_long.json, one epoch each), or one pool of files split at an answer-length
   threshold into a short phase and a long phase (the paper does not publish its threshold). A share
   of the videos is held out (all their records) for the eval loss.
2. Load the base model, or build a tiny llava-video model from scratch (the toy world) with a
   tokenizer trained on the SFT texts; it is saved as <out>/base_model so a resumed run starts from
   the same weights.
3. Choose what trains: LoRA (the paper: r=32, alpha=32, lr 1e-4) or full fine-tuning; the projector
   by option (on by default, as in LLaVA-1.5's fine-tuning), the vision tower frozen by default. The
   toy recipe trains the vision tower as well: its tiny model has no pretrained CLIP to start from (a
   deliberate deviation from the paper).
4. Train with train/loop.py: the loss is the model's shifted cross-entropy on assistant tokens only
   (the adapter's labels); phases run in order, each shuffled within itself.
Bad videos (data.on_bad_video): every video is opened before the run directory is made, and once
the frame count is known decoded through the frame store (when it holds every video, so training
reuses those frames). "fail" (the default) stops at the first bad one, naming the file, the record
and the video; "skip" drops every record of a bad video and counts them in the summary
(records_skipped, skipped_records).
5. Save <out>/model, the merged model (LoRA folded into the base weights), which load_adapter_model
   reads; with LoRA also <out>/lora, the adapter alone (with the projector when it trained).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from vlm_rlaif.data.frames import FrameSampling, FrameStore, check_on_bad_video
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import IGNORE_INDEX
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.rundir import RunDir, check_inputs
from vlm_rlaif.train.data import (
    InstructionDataset,
    PlannedBatches,
    SourcedRecord,
    answer_words,
    batch_plan,
    check_training_records,
    check_videos,
    decodes_every_video,
    read_instruction_file,
    skipped_summary,
    video_identity,
)
from vlm_rlaif.train.loop import TrainSettings, accelerator_for, train
from vlm_rlaif.train.tracking import LoggingSettings, tracker_for

log = logging.getLogger(__name__)

STAGE = "sft"
ADAPTER_NAME = "sft"


@dataclass
class TinyModelSettings:
    """A llava-video model built from scratch (models/tiny.py): the toy world's model."""

    size: str = "tiny"
    vocab_size: int = 2048
    frames: int = 24
    image_size: int = 32
    patch_size: int = 8
    seed: int = 0
    # A pretrained vision tower (a CLIPVisionModel directory, e.g. from `vlm-rlaif vision`) whose
    # weights replace the random ones; its shapes must match `size`, image_size and patch_size.
    vision_tower: str | None = None


@dataclass
class ModelSettings:
    """The base model: a saved model directory (`path`) or a tiny model built from scratch (`init`)."""

    path: str | None = None
    init: TinyModelSettings | None = None
    dtype: str | None = None  # e.g. "bfloat16"; default: as saved
    gradient_checkpointing: bool = False


@dataclass
class PhaseSettings:
    """One curriculum phase: its files (relative to data.root) are mixed and shuffled together."""

    name: str
    files: list[str]
    epochs: int = 1


@dataclass
class CurriculumSettings:
    """Either `phases` (trained in order) or a `pool` split by answer length: records whose
    assistant turns hold at most `threshold_words` words form the "short" phase, the rest "long"."""

    phases: list[PhaseSettings] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    threshold_words: int = 20
    short_epochs: int = 1
    long_epochs: int = 1


@dataclass
class DataSettings:
    """root: the curriculum's files are relative to it, and so are the records' video paths (unless
    video_root is set). num_frames: frames sampled per video (0: the model's own setting);
    clip_max_frames: the clip split of clip records (the toy world: 8, the paper: 20), made of
    clip_frames frames sampled uniformly (0: num_frames; the toy world: 24 against 8 for the video)."""

    root: str = "."
    video_root: str | None = None
    num_frames: int = 0
    clip_max_frames: int = 20
    clip_frames: int = 0
    eval_fraction: float = 0.05  # share of videos held out for the eval loss
    eval_max_examples: int = 256
    max_length: int = 2048
    group_by_length: bool = True
    preload_frames: bool = False  # decode every video before training (small sets)
    frame_cache_videos: int = 4096  # decoded videos kept in memory
    # A record's video that is missing or does not decode: "fail" stops the run (the error names the
    # file, the record and the video); "skip" drops the records of that video, counted in the summary.
    on_bad_video: str = "fail"


@dataclass
class TuneSettings:
    """What trains. method "lora": a LoRA adapter on the language model (lora_* settings); "full":
    every language-model weight. projector / vision_tower: also train those (full copies)."""

    method: Literal["lora", "full"] = "lora"
    projector: bool = True
    vision_tower: bool = False
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = "attn_mlp"

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            targets=self.lora_targets,
            train_projector=self.projector,
            train_vision_tower=self.vision_tower,
        )


@dataclass
class SFTConfig:
    out: str = "runs/sft"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=1e-4, warmup_ratio=0.03))
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        if (self.model.path is None) == (self.model.init is None):
            raise ConfigError("set exactly one of model.path (a saved model) and model.init (a tiny model from scratch)")
        curriculum = self.curriculum
        if bool(curriculum.phases) == bool(curriculum.pool):
            raise ConfigError("set exactly one of curriculum.phases (ordered phases) and curriculum.pool (split by answer length)")
        names = [phase.name for phase in curriculum.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"curriculum phase names must be unique, got {names}")
        for phase in curriculum.phases:
            if not phase.files or phase.epochs < 0:
                raise ConfigError(f"curriculum phase {phase.name!r} needs files and epochs >= 0")
        if min(curriculum.short_epochs, curriculum.long_epochs, curriculum.threshold_words) < 0:
            raise ConfigError("curriculum.threshold_words, short_epochs and long_epochs must be >= 0")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        check_on_bad_video(self.data.on_bad_video, "sft: data")

    def inputs(self) -> dict[str, str | Path | None]:
        """The paths this stage reads, by config key (None: not used); checked by RunDir.open."""
        root = Path(self.data.root)
        paths: dict[str, str | Path | None] = {"model.path": self.model.path}
        if self.model.init is not None:
            paths["model.init.vision_tower"] = self.model.init.vision_tower
        for i, phase in enumerate(self.curriculum.phases):
            paths.update({f"curriculum.phases[{i}].files[{j}]": root / f for j, f in enumerate(phase.files)})
        paths.update({f"curriculum.pool[{j}]": root / f for j, f in enumerate(self.curriculum.pool)})
        paths["data.video_root" if self.data.video_root else "data.root"] = self.data.video_root or root
        return paths


@dataclass
class Phase:
    name: str
    records: list[SourcedRecord]
    epochs: int
    files: list[str]


def read_curriculum(config: SFTConfig) -> tuple[list[Phase], dict | None]:
    """The phases in training order, and the length split's sizes (None for explicit phases)."""
    root = Path(config.data.root)
    curriculum = config.curriculum
    if curriculum.phases:
        phases = [
            Phase(p.name, [r for f in p.files for r in read_instruction_file(root / f)], p.epochs, p.files)
            for p in curriculum.phases
        ]
        return phases, None
    pool = [r for f in curriculum.pool for r in read_instruction_file(root / f)]
    short = [r for r in pool if answer_words(r.record) <= curriculum.threshold_words]
    long = [r for r in pool if answer_words(r.record) > curriculum.threshold_words]
    split = {"threshold_words": curriculum.threshold_words, "short": len(short), "long": len(long)}
    return [
        Phase("short", short, curriculum.short_epochs, curriculum.pool),
        Phase("long", long, curriculum.long_epochs, curriculum.pool),
    ], split


def hold_out_videos(phases: list[Phase], fraction: float, max_examples: int, seed: int) -> tuple[list[Phase], list[SourcedRecord]]:
    """Move every record of a `fraction` of the videos (at least one when fraction > 0 and there are
    two or more videos) out of the phases; the eval set is at most `max_examples` of those records."""
    videos = sorted({video_identity(r.record) for phase in phases for r in phase.records})
    count = round(fraction * len(videos))
    if fraction > 0 and len(videos) > 1:
        count = max(1, count)
    held = set(random.Random(seed).sample(videos, count))
    train_phases = [
        Phase(p.name, [r for r in p.records if video_identity(r.record) not in held], p.epochs, p.files) for p in phases
    ]
    eval_records = [r for p in phases for r in p.records if video_identity(r.record) in held]
    if len(eval_records) > max_examples:
        eval_records = random.Random(seed).sample(eval_records, max_examples)
    return train_phases, eval_records


def run_sft(config: SFTConfig, *, overwrite: bool = False) -> dict:
    """Run stage 1 (see the module docstring); returns the summary also written to summary.json.

    A re-run on an unfinished output directory resumes from its last checkpoint."""
    settings = config.train
    accelerator = accelerator_for(settings)
    check_inputs(STAGE, config.inputs())  # a missing model or file first, before any video is opened
    on_bad_video = config.data.on_bad_video
    video_root = Path(config.data.video_root or config.data.root)
    phases, length_split = read_curriculum(config)
    # Every video opens (or its records are skipped) before anything is written.
    kept, skipped = check_videos([r for p in phases for r in p.records], on_bad_video, root=video_root)
    phases = keep_records(phases, kept)
    phases, eval_records = hold_out_videos(phases, config.data.eval_fraction, config.data.eval_max_examples, settings.seed)
    if not any(p.records for p in phases):
        skipping = f" and skipping {len(skipped)} records with bad videos" if skipped else ""
        raise ConfigError(f"the curriculum holds no training records (after holding out the eval videos{skipping})")
    check_training_records([r for p in phases for r in p.records] + eval_records, video_root)

    out = Path(config.out)
    run = RunDir.open_on_main(
        accelerator, out, STAGE, config, settings.seed, overwrite=overwrite, inputs=config.inputs(), tracker=tracker_for(config)
    )

    lm = load_base_model(config, out, accelerator)
    trainable = choose_trainable(lm, config.tune, settings.seed)
    if config.model.gradient_checkpointing:
        lm.enable_gradient_checkpointing()
    if lm.visual_path_frozen:
        lm.feature_cache = FeatureCache()  # pooled features once per video, not once per epoch

    num_frames = config.data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not num_frames:
        raise ConfigError("data.num_frames is 0 and the model's processor names no frame count; set data.num_frames")
    store = FrameStore(
        video_root,
        FrameSampling(num_frames=num_frames, clip_max_frames=config.data.clip_max_frames,
                      clip_frames=config.data.clip_frames or None),
        max_videos=config.data.frame_cache_videos,
    )
    everything = [r for p in phases for r in p.records] + eval_records
    if decodes_every_video(store, everything):  # the frames stay in the store for training
        kept, more = check_videos(everything, on_bad_video, store=store)
        skipped += more
        phases = keep_records(phases, kept)
        eval_records = only(eval_records, kept)
        if not any(p.records for p in phases):
            raise ConfigError("the curriculum holds no training records whose video decodes")
    train_records = [r for p in phases for r in p.records]
    train_set = InstructionDataset(train_records, store)
    eval_set = InstructionDataset(eval_records, store)
    if config.data.preload_frames:
        train_set.preload()
        eval_set.preload()

    lengths = train_set.lengths(lm.tokenizer) if config.data.group_by_length else None
    per_step = settings.grad_accum * accelerator.num_processes
    plan, phase_summaries = curriculum_plan(phases, settings.batch_size, seed=settings.seed, lengths=lengths, per_step=per_step)

    def collate(examples):
        return lm.collate(examples, max_length=config.data.max_length)

    eval_plan = batch_plan(range(len(eval_set)), settings.batch_size, seed=settings.seed) if len(eval_set) else []
    result = train(
        lm.model,
        make_sft_loss(lm),
        PlannedBatches(plan, train_set, collate),
        settings,
        eval_batches=PlannedBatches(eval_plan, eval_set, collate) if eval_plan else None,
        run=run,
        accelerator=accelerator,
        desc="sft",
        keep_whole=list(lm.visual_modules().values()),  # FSDP2: the visual path is not sharded
    )
    if result.consolidated is not None:  # FSDP2: the trained full weights, on the main process
        lm.model = result.consolidated

    summary = {
        "model": str(out / "model"),
        "lora": str(out / "lora") if config.tune.method == "lora" else None,
        "finetune": config.tune.method,
        "trainable_parameters": trainable,
        "phases": phase_summaries,
        "length_split": length_split,
        "train_examples": len(train_set),
        "train_videos": train_set.distinct_videos(),
        "eval_examples": len(eval_set),
        "eval_videos": eval_set.distinct_videos(),
        **skipped_summary(skipped),  # on_bad_video "skip"
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_loss": result.train_metrics.get("loss"),
        "eval_loss_before": result.eval_history[0][1]["loss"] if result.resumed_from_step is None and result.eval_history else None,
        "eval_loss_after": result.final_eval.get("loss"),
        "train_seconds": round(result.seconds, 1),
    }
    if accelerator.is_main_process:
        if config.tune.method == "lora":
            lm.save_lora(out / "lora", ADAPTER_NAME)
            lm.merge_lora()
        lm.save(out / "model")
        summary = run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


def keep_records(phases: list[Phase], kept: list[SourcedRecord]) -> list[Phase]:
    """The phases with only the records in `kept` (the others' videos are bad)."""
    return [replace(p, records=only(p.records, kept)) for p in phases]


def only(records: list[SourcedRecord], kept: list[SourcedRecord]) -> list[SourcedRecord]:
    """`records` (in order) that are in `kept`, by identity."""
    keep = {id(r) for r in kept}
    return [r for r in records if id(r) in keep]


def curriculum_plan(
    phases: list[Phase], batch_size: int, *, seed: int, lengths: list[int] | None, per_step: int
) -> tuple[list[list[int]], list[dict]]:
    """Micro-batches over the phases' records concatenated in order (dataset index = position in
    that concatenation): every batch of a phase comes before any of the next; within a phase the
    records are shuffled (length-grouped with `lengths`) each epoch. Also a summary per phase."""
    plan: list[list[int]] = []
    summaries = []
    start = 0
    for number, phase in enumerate(phases):
        indices = range(start, start + len(phase.records))
        phase_plan = batch_plan(indices, batch_size, epochs=phase.epochs, seed=seed + number, lengths=lengths)
        summaries.append(
            {
                "name": phase.name,
                "files": phase.files,
                "epochs": phase.epochs,
                "examples": len(phase.records),
                "batches": len(phase_plan),
                "first_step": len(plan) // per_step,
            }
        )
        plan.extend(phase_plan)
        start += len(phase.records)
    return plan, summaries


def make_sft_loss(lm: VideoLM):
    """loss_fn for the training loop: the model's loss on assistant tokens, and how many there were."""

    def sft_loss(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        output = lm.forward(batch)
        return output.loss, {"answer_tokens": float((batch["labels"] != IGNORE_INDEX).sum())}

    return sft_loss


def load_base_model(config: SFTConfig, out: Path, accelerator) -> VideoLM:
    """The model to fine-tune, on the accelerator's device. A tiny model built from scratch is saved
    as <out>/base_model first (by the main process), so every process and every resume load the
    same weights and tokenizer."""
    from vlm_rlaif.models.registry import load_adapter_model

    path = config.model.path
    if config.model.init is not None:
        path = out / "base_model"
        if accelerator.is_main_process and not path.is_dir():
            build_tiny_base(config, path)
        accelerator.wait_for_everyone()
    return load_adapter_model(path, device=accelerator.device, dtype=config.model.dtype)


def build_tiny_base(config: SFTConfig, path: Path) -> None:
    """Build the toy model from scratch, its tokenizer trained on every text of the curriculum's files."""
    from vlm_rlaif.models.tiny import build_tiny_model, load_vision_tower, read_corpus, train_tokenizer

    init = config.model.init
    root = Path(config.data.root)
    files = config.curriculum.pool or [f for phase in config.curriculum.phases for f in phase.files]
    texts = [text for f in files for text in read_corpus(root / f)]
    tokenizer = train_tokenizer(texts, vocab_size=init.vocab_size)
    lm = build_tiny_model(
        init.size, tokenizer, frames=init.frames, image_size=init.image_size, patch_size=init.patch_size, seed=init.seed
    )
    if init.vision_tower:
        load_vision_tower(lm, init.vision_tower)
    partial = path.with_name(path.name + ".partial")
    lm.save(partial)
    partial.rename(path)
    log.info("built a %s llava-video model from scratch (vocabulary %d) in %s", init.size, len(tokenizer), path)


def choose_trainable(lm: VideoLM, tune: TuneSettings, seed: int) -> int:
    """Make the chosen parts trainable (LoRA adapter or full weights); returns the trainable count."""
    if tune.method == "lora":
        torch.manual_seed(seed)  # the adapter's initialisation
        lm.add_lora(ADAPTER_NAME, tune.lora_settings())
    else:
        lm.set_trainable(language_model=True, projector=tune.projector, vision_tower=tune.vision_tower)
    return sum(p.numel() for p in lm.trainable_parameters())


__all__ = [
    "CurriculumSettings",
    "DataSettings",
    "ModelSettings",
    "PhaseSettings",
    "SFTConfig",
    "TinyModelSettings",
    "TuneSettings",
    "curriculum_plan",
    "hold_out_videos",
    "make_sft_loss",
    "read_curriculum",
    "run_sft",
]
