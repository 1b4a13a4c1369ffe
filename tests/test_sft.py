"""Stage 1 SFT: assistant-only labels through the dataset path, the video inside the loss forward, the
curriculum, loss falling, LoRA and full fine-tuning outputs, resume after a kill, bad records."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlm_rlaif.config import load_config
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import RecordError, RunDirError, UserError
from vlm_rlaif.models import IGNORE_INDEX, build_tiny_model, count_visual_calls, load_adapter_model, train_tokenizer
from vlm_rlaif.train.data import InstructionDataset, PlannedBatches, batch_plan, read_instruction_file
from vlm_rlaif.train.loop import TrainSettings, train
from vlm_rlaif.train.sft import SFTConfig, curriculum_plan, make_sft_loss, read_curriculum, run_sft
from vlm_rlaif.video import write_video

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
FRAMES = 8
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (220, 220, 30), "white": (230, 230, 230)}


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def write_world(root: Path) -> Path:
    """Five videos of a coloured square moving right; short and long answers, clip descriptions."""
    (root / "videos").mkdir(parents=True)
    short, long = [], []
    for v, (colour, rgb) in enumerate(COLOURS.items()):
        frames = np.zeros((FRAMES, 32, 32, 3), np.uint8)
        for t in range(FRAMES):
            frames[t, 10:22, 2 + 2 * t : 14 + 2 * t] = rgb
        video = f"videos/v{v}.mp4"
        write_video(frames, root / video)
        short.append({"id": f"s{v}a", "video": video, "conversations": [human("<video>\nWhat colour is the square?"), gpt(f"It is {colour}.")]})
        short.append({"id": f"s{v}b", "video": video, "conversations": [human("Which way does the square move?\n<video>"), gpt("To the right.")]})
        long.append({"id": f"l{v}", "video": video, "conversations": [human("<video>\nDescribe the video in detail."),
                     gpt(f"A {colour} square starts at the left edge and moves steadily to the right until the video ends.")]})
        long.append({"id": f"c{v}", "video": video, "clip": {"index": 1, "count": 2},
                     "conversations": [human("<video>\nDescribe this clip."), gpt(f"The {colour} square keeps moving right.")]})
    (root / "sft").mkdir()
    (root / "sft" / "short.json").write_text(json.dumps(short, indent=1))
    (root / "sft" / "long.json").write_text(json.dumps(long, indent=1))
    return root


def config_dict(world: Path, out: Path, **train) -> dict:
    return {
        "out": str(out),
        "model": {"init": {"size": "tiny", "vocab_size": 320, "frames": FRAMES, "seed": 0}},
        "data": {"root": str(world), "clip_max_frames": 4, "eval_fraction": 0.2},
        "curriculum": {"phases": [
            {"name": "short", "files": ["sft/short.json"], "epochs": 3},
            {"name": "long", "files": ["sft/long.json"], "epochs": 3},
        ]},
        "tune": {"method": "full", "projector": True, "vision_tower": True},
        "train": {"batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "schedule": "cosine", "save_every": 3, "cpu": True, **train},
    }


def sft_config(world: Path, out: Path, overrides: list[str] = (), **train) -> SFTConfig:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({"sft": config_dict(world, out, **train)}))
    return load_config(SFTConfig, path, list(overrides), section="sft")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def tiny_lm():
    texts = ["What colour is the square?", "It is red.", "To the right.", "Describe the video in detail."]
    return build_tiny_model("tiny", train_tokenizer(texts * 10, vocab_size=320), frames=FRAMES, seed=0)


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    """One uninterrupted full fine-tuning run, shared by the tests that inspect it."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return out, run_sft(sft_config(world, out))


def test_multi_turn_labels_token_by_token(world, tiny_lm, tmp_path):
    record = {"id": "m", "video": "videos/v0.mp4", "conversations": [
        human("<video>\nWhat colour is the square?"), gpt("It is red."), human("Which way does it move?"), gpt("To the right.")]}
    (tmp_path / "multi.json").write_text(json.dumps([record]))
    dataset = InstructionDataset(read_instruction_file(tmp_path / "multi.json"), FrameStore(world, FrameSampling(FRAMES, 4)))
    batch = tiny_lm.collate([dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    runs, current = [], []
    for token, label in zip(ids, labels):
        assert label in (IGNORE_INDEX, token)  # a label is the token itself or ignored
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    tokenizer = tiny_lm.tokenizer
    assert [tokenizer.decode(run) for run in runs] == [" It is red.</s>", " To the right.</s>"]
    standalone = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (" It is red.</s>", " To the right.</s>")]
    assert runs == standalone  # exactly the answers' tokens and their </s>, nothing of the prompts
    video_positions = [i for i, token in enumerate(ids) if token == tiny_lm.video_token_id]
    assert len(video_positions) == tiny_lm.num_video_tokens(tiny_lm.preprocess_video(dataset[0].video))
    question = tokenizer.decode(ids[video_positions[-1] + 1 :])
    assert question.lstrip().startswith("What colour is the square?") and "<video>" not in question


def test_each_video_is_decoded_once(world, monkeypatch):
    import vlm_rlaif.data.frames as frames_module

    decoded = []
    real_load = frames_module.load_video
    monkeypatch.setattr(frames_module, "load_video", lambda source, **kw: decoded.append(source) or real_load(source, **kw))
    records = read_instruction_file(world / "sft" / "short.json") + read_instruction_file(world / "sft" / "long.json")
    dataset = InstructionDataset(records, FrameStore(world, FrameSampling(FRAMES, 4)))
    for _ in range(2):  # two epochs, clip records included
        examples = [dataset[i] for i in range(len(dataset))]
    assert len(decoded) == len(set(decoded)) == 5
    clip = next(e for e, s in zip(examples, records) if s.record.clip is not None)
    assert clip.video.shape[0] == 4 and clip.video_key.endswith("/clip1of2")


def test_video_reaches_the_loss_forward_with_grad(world, tiny_lm):
    records = read_instruction_file(world / "sft" / "short.json")
    dataset = InstructionDataset(records, FrameStore(world, FrameSampling(FRAMES, 4)))
    plan = batch_plan(range(len(dataset)), 2)[:1]
    settings = TrainSettings(batch_size=2, max_steps=1, lr=1e-4, cpu=True)

    lm = build_tiny_model("tiny", tiny_lm.tokenizer, frames=FRAMES, seed=0)
    lm.set_trainable(language_model=True, projector=True, vision_tower=True)
    with count_visual_calls(lm) as counts:
        train(lm.model, make_sft_loss(lm), PlannedBatches(plan, dataset, lm.collate), settings)
    assert counts.calls_with_grad["vision_tower"] == 1 and counts.calls_with_grad["projector"] == 1
    assert counts.video_forwards_with_grad == counts.forwards_with_grad == 1

    # A collate that drops the video (what TRL's trainers do silently) must read 0.
    def videoless(examples):
        return lm.collate([replace(e, video=None, video_key=None) for e in examples])

    with count_visual_calls(lm) as counts:
        train(lm.model, make_sft_loss(lm), PlannedBatches(plan, dataset, videoless), settings)
    assert counts.with_grad == 0 and counts.forwards_with_grad == 1


def test_loss_falls_on_a_tiny_overfit_set(world, tiny_lm):
    records = read_instruction_file(world / "sft" / "short.json")[:4]
    dataset = InstructionDataset(records, FrameStore(world, FrameSampling(FRAMES, 4)))
    lm = build_tiny_model("tiny", tiny_lm.tokenizer, frames=FRAMES, seed=0)
    lm.set_trainable(language_model=True, projector=True, vision_tower=True)
    batches = PlannedBatches([[0, 1, 2, 3]], dataset, lm.collate)
    settings = TrainSettings(batch_size=4, max_steps=40, lr=3e-3, schedule="constant", warmup_steps=3, cpu=True)
    result = train(lm.model, make_sft_loss(lm), batches, settings, eval_batches=batches)
    before, after = result.eval_history[0][1]["loss"], result.final_eval["loss"]
    assert after < 0.2 * before, (before, after)


def test_curriculum_order_and_length_split(world, tmp_path):
    config = sft_config(world, tmp_path / "unused")
    phases, split = read_curriculum(config)
    assert split is None and [p.name for p in phases] == ["short", "long"]
    plan, summaries = curriculum_plan(phases, 3, seed=0, lengths=None, per_step=1)
    boundary = len(phases[0].records)
    first_long = next(i for i, batch in enumerate(plan) if batch[0] >= boundary)
    assert all(max(b) < boundary for b in plan[:first_long]) and all(min(b) >= boundary for b in plan[first_long:])
    counts = np.bincount([i for batch in plan for i in batch])
    assert counts.tolist() == [3] * (boundary + len(phases[1].records))  # every record once per epoch
    assert [s["first_step"] for s in summaries] == [0, first_long]

    pooled = sft_config(world, tmp_path / "unused2", ["curriculum.phases=[]", "curriculum.pool=[sft/short.json,sft/long.json]",
                                                       "curriculum.threshold_words=5"])
    phases, split = read_curriculum(pooled)
    # Short: "It is <colour>." (3 words), "To the right." (3), the clip description (6 words) is long.
    assert split == {"threshold_words": 5, "short": 10, "long": 10}
    assert all(len(r.record.conversations[1].value.split()) <= 5 for r in phases[0].records)


def test_length_grouping_cuts_padding():
    lengths = [1, 50, 2, 49, 3, 48, 4, 47] * 4
    grouped = batch_plan(range(len(lengths)), 4, epochs=2, seed=0, lengths=lengths)
    plain = batch_plan(range(len(lengths)), 4, epochs=2, seed=0)
    padding = lambda plan: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert padding(grouped) < padding(plain) / 5


def test_full_fine_tuning_run_summary_metrics_and_model(full_run, world):
    out, summary = full_run
    assert summary["finetune"] == "full" and summary["lora"] is None
    assert summary["eval_videos"] == 1 and summary["train_videos"] == 4
    assert [(p["name"], p["examples"], p["batches"], p["first_step"]) for p in summary["phases"]] == [
        ("short", 8, 6, 0), ("long", 8, 6, 6)]
    assert summary["steps"] == 12 and summary["eval_loss_after"] < summary["eval_loss_before"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 13))
    assert [row["step"] for row in rows if "eval_loss" in row] == [0, 12]

    lm, base = load_adapter_model(out / "model"), load_adapter_model(out / "base_model")
    dataset = InstructionDataset(read_instruction_file(world / "sft" / "short.json")[:4], FrameStore(world, FrameSampling(FRAMES, 4)))
    examples = [dataset[i] for i in range(4)]
    with torch.no_grad():
        assert lm.forward(lm.collate(examples)).loss < 0.8 * base.forward(base.collate(examples)).loss


def test_lora_with_length_split_saves_adapter_and_merged_model(world, tmp_path):
    out = tmp_path / "lora"
    config = sft_config(world, out, ["tune.method=lora", "tune.vision_tower=false", "tune.lora_r=4", "tune.lora_alpha=8",
                                     "curriculum.phases=[]", "curriculum.pool=[sft/short.json,sft/long.json]",
                                     "curriculum.threshold_words=5", "curriculum.short_epochs=1", "curriculum.long_epochs=1"],
                        save_every=0)
    summary = run_sft(config)
    assert summary["length_split"] == {"threshold_words": 5, "short": 10, "long": 10}
    assert [p["name"] for p in summary["phases"]] == ["short", "long"]
    assert json.loads((out / "summary.json").read_text())["length_split"]["short"] == 10
    assert (out / "lora" / "adapter_config.json").is_file()
    merged, base = load_file(out / "model" / "model.safetensors"), load_file(out / "base_model" / "model.safetensors")
    assert set(merged) == set(base)  # merged back into the plain layout
    changed = {name for name in base if not torch.equal(merged[name], base[name])}
    assert any("multi_modal_projector" in name for name in changed)
    assert any("q_proj" in name for name in changed)
    assert not any("vision_tower" in name for name in changed)
    assert not any("embed_tokens" in name for name in changed)  # not a LoRA target


def test_resume_after_kill_matches_the_uninterrupted_run(full_run, world, tmp_path):
    reference_out, _ = full_run
    out = tmp_path / "killed"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"sft": config_dict(world, reference_out)}))
    command = [sys.executable, "-m", "vlm_rlaif.cli", "sft", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("step_????????")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 3
    final, expected = load_file(out / "model" / "model.safetensors"), load_file(reference_out / "model" / "model.safetensors")
    for name in expected:
        assert torch.equal(final[name], expected[name]), name  # bitwise on CPU
    with pytest.raises(RunDirError, match="finished"):  # a finished run is never silently redone
        run_sft(load_config(SFTConfig, config, [f"out={out}"], section="sft"))


def test_bad_records_name_file_and_line(world, tmp_path):
    records = [
        {"id": "ok", "video": "videos/v0.mp4", "conversations": [human("Q?"), gpt("A.")]},
        {"id": "open", "video": "videos/v0.mp4", "conversations": [human("Q?"), gpt("A."), human("And?")]},
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    store = FrameStore(world, FrameSampling(FRAMES, 4))
    with pytest.raises(RecordError, match=r"bad.json:3 \(id open\): .*ends with a gpt answer"):
        InstructionDataset(read_instruction_file(bad), store)

    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps(records[0]) + "\n" + json.dumps({**records[0], "id": "gone", "video": "videos/none.mp4"}) + "\n")
    with pytest.raises(RecordError, match=r"missing.jsonl:2 \(id gone\): video not found"):
        InstructionDataset(read_instruction_file(missing), store)

    schema = tmp_path / "schema.json"
    schema.write_text('[\n{"id": "x", "video": "videos/v0.mp4", "conversations": []}\n]\n')
    with pytest.raises(RecordError, match=r"schema.json:2 \(id x\): field 'conversations'"):
        read_instruction_file(schema)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    dataset = InstructionDataset(read_instruction_file(_one_record_file(tmp_path, "broken.mp4")), FrameStore(tmp_path, FrameSampling(FRAMES, 4)))
    with pytest.raises(RecordError, match=r"one.json:2 \(id b\)"):
        dataset[0]

    config = sft_config(tmp_path, tmp_path / "never", ["curriculum.phases=[{name: a, files: [bad.json]}]", f"data.video_root={world}"])
    with pytest.raises(RecordError, match="bad.json:3"):
        run_sft(config)
    assert not (tmp_path / "never").exists()  # records are checked before anything is written
    with pytest.raises(UserError, match="exactly one of curriculum.phases"):
        sft_config(world, tmp_path / "x", ["curriculum.pool=[sft/short.json]"])


def _one_record_file(directory: Path, video: str) -> Path:
    path = directory / "one.json"
    path.write_text("[\n" + json.dumps({"id": "b", "video": video, "conversations": [human("Q?"), gpt("A.")]}) + "\n]\n")
    return path


@pytest.mark.parametrize("recipe", ["toy.yaml", "paper-7b.yaml"])
def test_recipes_sft_sections_load(recipe):
    config = load_config(SFTConfig, REPO / "recipes" / recipe, section="sft")
    assert config.curriculum.phases[0].name == "short"
    if recipe == "paper-7b.yaml":
        assert (config.tune.method, config.tune.lora_r, config.tune.lora_alpha, config.train.lr) == ("lora", 32, 32, 1e-4)
        assert config.data.num_frames == 50 and [p.epochs for p in config.curriculum.phases] == [1, 1]


def test_on_bad_video_fail_or_skip(tmp_path):
    """A record about a file of random bytes (found before the run directory is made) and one about a
    frame folder that does not decode (found once the frames are decoded), beside five good videos."""
    from bad_videos import write_bad_videos

    world = write_world(tmp_path / "world")
    corrupt, broken = write_bad_videos(world / "videos")
    short = json.loads((world / "sft" / "short.json").read_text())
    short += [
        {"id": "bad1", "video": f"videos/{corrupt}", "conversations": [human("<video>\nWhat colour is it?"), gpt("Red.")]},
        {"id": "bad2", "video": f"videos/{broken}", "conversations": [human("<video>\nWhat colour is it?"), gpt("Blue.")]},
        {"id": "bad3", "video": f"videos/{corrupt}", "conversations": [human("<video>\nWhich way?"), gpt("Right.")]},
    ]
    (world / "sft" / "short.json").write_text(json.dumps(short, indent=1))

    def small(world, out, on_bad_video="fail"):  # one epoch per phase, no eval set
        data = config_dict(world, out)
        data["data"].update(eval_fraction=0.0, on_bad_video=on_bad_video)
        for phase in data["curriculum"]["phases"]:
            phase["epochs"] = 1
        out.with_suffix(".yaml").write_text(yaml.safe_dump({"sft": data}))
        return load_config(SFTConfig, out.with_suffix(".yaml"), section="sft")

    with pytest.raises(UserError, match=r"short.json:\d+ \(id bad1\): video videos/corrupt.mp4: .*corrupt.mp4: cannot open"):
        run_sft(small(world, tmp_path / "fail"))
    assert not (tmp_path / "fail").exists()  # opened before anything is written

    world_2 = tmp_path / "world_2"
    write_world(world_2)
    write_bad_videos(world_2 / "videos")
    only_broken = [r for r in short if r["id"] != "bad1" and r["id"] != "bad3"]
    (world_2 / "sft" / "short.json").write_text(json.dumps(only_broken, indent=1))
    with pytest.raises(UserError, match=r"short.json:\d+ \(id bad2\): video videos/broken_frames: .*cannot read frame image"):
        run_sft(small(world_2, tmp_path / "fail_2"))

    summary = run_sft(small(world, tmp_path / "skip", "skip"))
    assert summary["records_skipped"] == 3 and summary["train_examples"] == 20
    assert [(s["id"], s["video"]) for s in summary["skipped_records"]] == [
        ("bad1", "videos/corrupt.mp4"), ("bad3", "videos/corrupt.mp4"), ("bad2", "videos/broken_frames")]
    first = summary["skipped_records"][0]
    assert first["file"].endswith("short.json:" + first["file"].rsplit(":", 1)[1]) and "cannot open" in first["reason"]
    assert "cannot read frame image" in summary["skipped_records"][2]["reason"]
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["records_skipped"] == 3
    with pytest.raises(UserError, match="on_bad_video must be 'fail' or 'skip'"):
        small(world, tmp_path / "x", "ignore")
