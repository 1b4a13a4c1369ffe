"""Vision pretraining of the toy model (CLIP-style): frame captions from the truth, the contrastive
loss, the vision tower inside the loss forward with grad, the stage, and loading the tower into SFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlm_rlaif.errors import UserError
from vlm_rlaif.models import build_tiny_model, train_tokenizer
from vlm_rlaif.models.llava_video.processing import preprocess_frames
from vlm_rlaif.models.tiny import load_vision_tower
from vlm_rlaif.toyworld import ToyWorldConfig, sample_truth
from vlm_rlaif.toyworld.frame_captions import PRETRAIN_OFFSET, frame_caption, frame_caption_pairs, place_of
from vlm_rlaif.train.contrastive import ContrastiveSettings, contrastive_loss, pretrain_tower
from vlm_rlaif.train.vision_pretrain import TowerShape, VisionPretrainConfig, build_tower, run_vision_pretrain

CFG = ToyWorldConfig(seed=3, colours=["red", "green", "blue", "yellow"], shapes=["circle", "square", "triangle"],
                     max_objects=2)


def test_a_caption_names_each_visible_object_left_to_right():
    truth = sample_truth(CFG, PRETRAIN_OFFSET + 5)
    for t in (0, truth.frames // 2, truth.frames - 1):
        seen = sorted((truth.states[t][o.id].x, o) for o in truth.objects if truth.states[t][o.id].visible)
        expected = [f"{o.size} {truth.states[t][o.id].colour} {o.shape} "
                    f"{place_of(truth.states[t][o.id].x, truth.states[t][o.id].y, truth.size)}" for _, o in seen]
        assert frame_caption(truth, t) == (" , ".join(expected) or "nothing")
    assert place_of(1.0, 1.0, 32) == "top left" and place_of(31.0, 16.0, 32) == "middle right"
    assert place_of(1.0, 1.0, 32, grid=6) == "x0 y0" and place_of(31.0, 16.0, 32, grid=6) == "x5 y3"


def test_pairs_come_from_videos_the_world_never_generates():
    from vlm_rlaif.toyworld import render

    frames, captions = frame_caption_pairs(CFG, videos=3, frames_per_video=4, start=1)
    assert frames.shape == (12, CFG.size, CFG.size, 3) and frames.dtype == np.uint8 and len(captions) == 12
    truth = sample_truth(CFG, PRETRAIN_OFFSET + 1)  # the world numbers its videos from 0
    picks = np.linspace(0, truth.frames - 1, 4).round().astype(int)
    assert np.array_equal(frames[:4], render(truth, CFG.supersample)[picks])
    assert captions[:4] == [frame_caption(truth, int(t)) for t in picks]


def test_contrastive_loss_counts_identical_captions_as_positives():
    image = torch.eye(3)
    text = torch.eye(3)
    same = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    loss, accuracy = contrastive_loss(image, text, torch.tensor(np.log(10.0)), same)
    assert accuracy == 1.0
    # rows 1 and 2 share a caption: moving image 2 onto text 1 must not be penalised as a mistake
    moved = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    loss_moved, accuracy_moved = contrastive_loss(moved, text, torch.tensor(np.log(10.0)), same)
    assert accuracy_moved == 1.0 and loss_moved < loss + 1.0


def test_pretraining_runs_the_tower_with_grad_and_learns_captions():
    frames, captions = frame_caption_pairs(CFG, videos=60, frames_per_video=4)
    pixels = preprocess_frames(frames, 32)
    tower = build_tower(TowerShape(), seed=0)
    calls = []
    hook = tower.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    result = pretrain_tower(tower, pixels, captions, ContrastiveSettings(steps=60, batch_size=64, warmup_steps=5,
                                                                      eval_fraction=0.2), feature_layer=-2)
    hook.remove()
    assert sum(calls) == 60  # one forward with grad per step (evaluations run without)
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())
    assert result["heldout_loss"] < result["heldout_loss_before"]
    assert result["heldout_accuracy"] > result["heldout_accuracy_before"]


def test_stage_writes_a_tower_that_sft_loads(tmp_path):
    config = VisionPretrainConfig(out=str(tmp_path / "vision"), world=CFG, videos=20, frames_per_video=2,
                                  train=ContrastiveSettings(steps=3, batch_size=16, warmup_steps=1))
    summary = run_vision_pretrain(config)
    assert json.loads((tmp_path / "vision" / "summary.json").read_text())["tower"] == summary["tower"]
    tokenizer = train_tokenizer(["a red circle moves left"] * 20, vocab_size=300)
    lm = build_tiny_model("tiny", tokenizer)
    load_vision_tower(lm, summary["tower"])
    saved = build_tower(TowerShape(), seed=0).from_pretrained(summary["tower"]).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in lm.model.model.vision_tower.state_dict().items())

    small = build_tiny_model("small", tokenizer)
    with pytest.raises(UserError, match="does not fit the model"):
        load_vision_tower(small, summary["tower"])
    with pytest.raises(UserError, match="not a saved vision tower"):
        load_vision_tower(lm, tmp_path)


def test_cli_reads_the_recipe_section(tmp_path, capsys):
    from vlm_rlaif.cli import main
    from vlm_rlaif.demo import toy_recipe_path

    out = tmp_path / "vision"
    code = main(["vision", "--config", str(toy_recipe_path()), "--out", str(out), "--var", f"run_dir={tmp_path}",
                 "videos=10", "frames_per_video=2", "train.steps=2", "train.batch_size=8"])
    assert code == 0 and (out / "tower" / "config.json").is_file()
    assert "held-out caption retrieval" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["pairs"] == 20
