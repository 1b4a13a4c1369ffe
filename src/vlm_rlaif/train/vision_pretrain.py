"""`vlm-rlaif vision`: the toy model's vision tower pretrained the way CLIP is, before SFT.

The paper starts from CLIP ViT-L/14, a tower that already sees objects and their attributes; a
tower with random weights does not, and SFT keeps it frozen. This stage gives the toy model what
CLIP gives LLaVA: frames of a pretraining split of the toy world (videos no later stage sees;
toyworld.frame_captions) with captions naming every object's size, colour, shape and place, and a
contrastive loss (train.contrastive). The tower is saved as a CLIPVisionModel in `out/tower`, which
`sft.model.init.vision_tower` loads. Its shapes come from the tiny model settings SFT will build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlm_rlaif.errors import ConfigError
from vlm_rlaif.rundir import RunDir, drop_rows_after
from vlm_rlaif.toyworld.config import ToyWorldConfig
from vlm_rlaif.train.contrastive import ContrastiveSettings, pretrain_tower
from vlm_rlaif.train.tracking import LoggingSettings, tracker_for

log = logging.getLogger(__name__)

STAGE = "vision"


@dataclass
class TowerShape:
    """The vision tower of a tiny llava-video model (models/tiny.py SIZES)."""

    size: str = "tiny"
    image_size: int = 32
    patch_size: int = 8
    feature_layer: int = -2  # the layer llava-video reads (vision_feature_layer)


@dataclass
class VisionPretrainConfig:
    out: str = "runs/toy/vision"
    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    videos: int = 2000  # pretraining videos (indices the world's generator never uses)
    frames_per_video: int = 8
    place_grid: int = 3  # captions name each object's cell of a place_grid x place_grid split
    tower: TowerShape = field(default_factory=TowerShape)
    train: ContrastiveSettings = field(default_factory=ContrastiveSettings)
    seed: int = 0
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self):
        if self.videos < 1 or self.frames_per_video < 1 or self.place_grid < 1:
            raise ConfigError("vision: videos, frames_per_video and place_grid must be >= 1")

    def inputs(self) -> dict:
        return {}


def build_tower(shape: TowerShape, seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlm_rlaif.models.tiny import SIZES

    if shape.size not in SIZES:
        raise ConfigError(f"vision.tower.size: unknown tiny size {shape.size!r}; known: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**SIZES[shape.size][1], image_size=shape.image_size, patch_size=shape.patch_size))


def run_vision_pretrain(config: VisionPretrainConfig, overwrite: bool = False) -> dict:
    from vlm_rlaif.models.llava_video.processing import preprocess_frames
    from vlm_rlaif.toyworld.frame_captions import frame_caption_pairs

    out = Path(config.out)
    run = RunDir.open(out, STAGE, config, config.seed, overwrite=overwrite, inputs=config.inputs(), tracker=tracker_for(config))
    if run.resumed:  # minutes of work: a killed run starts over
        drop_rows_after(out / "metrics.jsonl", "step", -1)
    frames, captions = frame_caption_pairs(config.world, config.videos, config.frames_per_video, grid=config.place_grid)
    pixels = preprocess_frames(frames, config.tower.image_size)
    tower = build_tower(config.tower, config.seed)
    result = pretrain_tower(
        tower, pixels, captions, config.train, feature_layer=config.tower.feature_layer,
        on_log=lambda row: run.log_metrics(row.pop("step"), **row),
    )
    tower.save_pretrained(out / "tower")
    log.info("vision: held-out retrieval %.3f (before %.3f) on %d pairs; tower in %s",
             result["heldout_accuracy"], result["heldout_accuracy_before"], result["heldout_pairs"], out / "tower")
    return run.finish({"tower": str(out / "tower"), **result})


__all__ = ["STAGE", "TowerShape", "VisionPretrainConfig", "run_vision_pretrain"]
