"""DPO on preference pairs: answer log-probabilities, the loss, the reference policy, the video in the
loss forward, and a short run that learns video-dependent preferences."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import pytest
import torch

from colour_pairs import NUM_FRAMES, QUESTION, write_colour_pairs
from vlm_rlaif.config import from_dict
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models import LoraSettings, VideoExample, build_tiny_model, count_visual_calls, train_tokenizer
from vlm_rlaif.models.registry import load_adapter_model
from vlm_rlaif.rundir import read_metrics
from vlm_rlaif.train.dpo import (
    DPOConfig,
    Reference,
    answer_conversations,
    answer_logprobs,
    dpo_loss,
    make_dpo_loss,
    run_dpo,
)
from vlm_rlaif.train.preference_data import PreferenceDataset, PreferencePair, read_preference_file, split_heldout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Solid red or blue videos, pairs preferring the answer that names the true colour, a tiny model."""
    root = tmp_path_factory.mktemp("dpo_world")
    write_colour_pairs(root)
    tokenizer = train_tokenizer([f"{QUESTION} The video is red. The video is blue."] * 20, vocab_size=400)
    build_tiny_model("tiny", tokenizer, frames=NUM_FRAMES, seed=0).save(root / "sft")
    return root


def pairs_of(world, count=2) -> list[PreferencePair]:
    records = read_preference_file(world / "prefs.jsonl")[:count]
    dataset = PreferenceDataset(records, FrameStore(world, FrameSampling(NUM_FRAMES)))
    return [dataset[i] for i in range(count)]


def test_answer_logprobs_are_the_summed_token_logprobs_of_the_answer(world):
    lm = load_adapter_model(world / "sft")
    pair = pairs_of(world, 1)[0]
    batch = lm.collate(answer_conversations([pair]))
    summed = answer_logprobs(lm, batch)
    # The model's own loss is the mean cross-entropy over the same labelled tokens, per row.
    for row in range(2):
        single = lm.collate([answer_conversations([pair])[row]])
        loss = lm.forward(single).loss
        tokens = int((single["labels"][:, 1:] != -100).sum())
        assert summed[row].item() == pytest.approx(-loss.item() * tokens, rel=1e-4)
    assert summed[0].item() != pytest.approx(summed[1].item())


def test_dpo_loss_matches_the_formula():
    policy = torch.tensor([-3.0, -5.0, -4.0, -4.0])  # chosen rows, then rejected rows
    reference = torch.tensor([-4.0, -4.0, -4.0, -4.0])
    loss, metrics = dpo_loss(policy, reference, beta=0.5)
    margins = torch.tensor([0.5 * 1.0 - 0.0, 0.5 * -1.0 - 0.0])
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(margins).mean().item())
    assert metrics["accuracy"] == 0.5
    assert metrics["reward_chosen"] == pytest.approx(0.0)
    assert dpo_loss(reference, reference, beta=0.1)[0].item() == pytest.approx(math.log(2))


def test_the_video_reaches_the_dpo_loss_forward_and_the_reference_starts_equal(world):
    lm = load_adapter_model(world / "sft")
    lm.add_lora("dpo", LoraSettings(r=8, alpha=16))
    loss_fn = make_dpo_loss(lm, Reference(lm), beta=0.1)
    pairs = pairs_of(world)
    with count_visual_calls(lm) as counts:
        loss, metrics = loss_fn(lm.collate(answer_conversations(pairs)))
        loss.backward()
    assert counts.with_grad > 0 and counts.calls_with_grad["splice"] > 0
    assert counts.calls_without_grad["vision_tower"] == 2  # two videos, each encoded once for both answers
    # A fresh adapter (B = 0) is the reference itself: every log-ratio is 0, the loss log 2.
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lm.model.named_parameters() if "lora_" in n)

    blind = [PreferencePair(VideoExample(p.prompt.conversation), p.chosen, p.rejected) for p in pairs]
    with count_visual_calls(lm) as counts:
        loss, _ = loss_fn(lm.collate(answer_conversations(blind)))
        loss.backward()
    assert counts.with_grad == 0 and counts.forwards_with_grad > 0


def test_the_full_fine_tuning_reference_stays_frozen(world):
    lm = load_adapter_model(world / "sft")
    reference = Reference(lm)
    lm.set_trainable(language_model=True)
    batch = lm.collate(answer_conversations(pairs_of(world, 1)))
    before = reference.logprobs(batch)
    with torch.no_grad():
        for p in lm.trainable_parameters():
            p.add_(0.05)
    assert torch.equal(reference.logprobs(batch), before)
    assert not torch.allclose(answer_logprobs(lm, batch).detach(), before)


def test_a_short_run_learns_which_answer_the_video_supports(world):
    config = from_dict(
        DPOConfig,
        {
            "out": str(world / "run"),
            "beta": 0.5,
            "model": {"path": str(world / "sft")},
            "data": {"files": ["prefs.jsonl"], "root": str(world), "eval_pairs": 8},
            "tune": {"lora_r": 8, "lora_alpha": 16},
            "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 20, "schedule": "constant", "warmup_ratio": 0.0,
                      "eval_every": 0, "save_every": 0},
        },
    )
    summary = run_dpo(config)
    assert summary["eval_before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert summary["eval_before"]["accuracy"] == 0.5  # policy = reference: every margin is a tie
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    # Held-out videos: a model blind to the video can at best always prefer the commoner colour.
    _, heldout = split_heldout(read_preference_file(world / "prefs.jsonl"), 8, None, seed=0)
    red = sum(int(r.record.id[1:]) % 2 == 0 for r in heldout)
    assert summary["eval_after"]["accuracy"] >= 0.75
    assert summary["eval_after"]["accuracy"] > max(red, len(heldout) - red) / len(heldout)
    losses = [r["loss"] for r in read_metrics(world / "run") if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3

    tuned = load_adapter_model(world / "run" / "model")  # merged: loads like any SFT model
    assert not tuned.adapter_names
    assert (world / "run" / "lora" / "adapter_config.json").is_file()
    with pytest.raises(ConfigError, match="model.path"):
        from_dict(DPOConfig, {"data": {"files": ["x.jsonl"]}})


def test_on_bad_video_fail_or_skip(world, tmp_path):
    """A pair about a file of random bytes, one about a frame folder that does not decode."""
    import json
    import shutil

    from bad_videos import write_bad_videos
    from colour_pairs import NUM_VIDEOS, pair_record

    root = tmp_path / "root"
    root.mkdir()
    for v in range(NUM_VIDEOS):
        shutil.copy(world / f"v{v}.mp4", root / f"v{v}.mp4")
    corrupt, broken = write_bad_videos(root)
    lines = (world / "prefs.jsonl").read_text().splitlines()
    bad = [json.dumps(pair_record(100, "red", 1, corrupt)), json.dumps(pair_record(101, "blue", 2, broken))]
    (root / "prefs.jsonl").write_text("\n".join([bad[1], *lines[:3], bad[0], *lines[3:]]) + "\n")

    def config(out, on_bad_video="fail", files=("prefs.jsonl",)):
        return from_dict(DPOConfig, {
            "out": str(tmp_path / out),
            "model": {"path": str(world / "sft")},
            "data": {"files": list(files), "root": str(root), "eval_pairs": 4, "on_bad_video": on_bad_video},
            "tune": {"lora_r": 4, "lora_alpha": 8},
            "train": {"batch_size": 8, "lr": 1e-3, "max_steps": 2, "eval_every": 0, "save_every": 0},
        })

    with pytest.raises(UserError, match=r"prefs\.jsonl:5 \(id p100\): video corrupt\.mp4: .*corrupt\.mp4: cannot open"):
        run_dpo(config("fail"))
    assert not (tmp_path / "fail").exists()  # opened before anything is written
    # Without the random bytes, the frame folder that does not decode stops the run once the frames are decoded.
    (root / "broken.jsonl").write_text("\n".join([bad[1], *lines]) + "\n")
    with pytest.raises(UserError, match=r"broken\.jsonl:1 \(id p101\): video broken_frames: .*cannot read frame image"):
        run_dpo(config("fail_2", files=["broken.jsonl"]))

    summary = run_dpo(config("skip", "skip"))
    assert summary["pairs_read"] == NUM_VIDEOS + 2 and summary["records_skipped"] == 2
    assert summary["train_pairs"] + summary["heldout_pairs"] == NUM_VIDEOS
    assert {(s["id"], s["video"]) for s in summary["skipped_records"]} == {("p100", "corrupt.mp4"), ("p101", "broken_frames")}
    assert all(s["file"].endswith(("prefs.jsonl:1", "prefs.jsonl:5")) for s in summary["skipped_records"])
    with pytest.raises(ConfigError, match="on_bad_video must be 'fail' or 'skip'"):
        config("x", "ignore")
