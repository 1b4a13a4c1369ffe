"""The reward model (stage 2b): its input, Bradley-Terry training on video-dependent pairs, the video
reaching the loss forward, save/load, `rm score`, and clear errors for bad preference records."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch
from PIL import Image

from colour_pairs import NUM_FRAMES, NUM_VIDEOS, QUESTION, colour_frames, pair_record, write_colour_pairs
from vlm_rlaif.cli import main as cli_main
from vlm_rlaif.config import from_dict
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models import LoraSettings, VideoExample, build_tiny_model, count_visual_calls, train_tokenizer
from vlm_rlaif.models.examples import ModelInputError
from vlm_rlaif.prompts import load_prompt
from vlm_rlaif.reward import RewardModel, prompt_example
from vlm_rlaif.rundir import read_metrics
from vlm_rlaif.train.preference_data import (
    PreferenceDataset,
    PreferencePair,
    read_preference_file,
    split_heldout,
    usable_pairs,
)
from vlm_rlaif.train.rm import RMConfig, collate_pairs, make_rm_loss, oracle_metrics, pair_loss, run_rm


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Written videos (solid red or blue), our JSONL preference file about them, a tiny base model."""
    root = tmp_path_factory.mktemp("rm_world")
    write_colour_pairs(root)
    corpus = [f"{QUESTION} The video is red. The video is blue."] * 20 + [load_prompt("rm_evaluation").text] * 5
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    build_tiny_model("tiny", tokenizer, frames=NUM_FRAMES, seed=0).save(root / "sft")
    return root


@pytest.fixture(scope="module")
def trained(world):
    """One short training run on the colour pairs (shared by the tests that need a trained model),
    with an extra evaluation set: the same pairs with every label flipped."""
    flipped = [{**json.loads(line), "preference": 3 - json.loads(line)["preference"]}
               for line in (world / "prefs.jsonl").read_text().splitlines()]
    (world / "flipped.json").write_text(json.dumps(flipped))
    config = from_dict(
        RMConfig,
        {
            "out": str(world / "run"),
            "model": {"path": str(world / "sft")},
            "data": {"files": ["prefs.jsonl"], "root": str(world), "eval_pairs": 8,
                     "eval_sets": {"flipped": "flipped.json"}},
            "lora": {"r": 8, "alpha": 16},
            "train": {
                "batch_size": 8, "lr": 3e-3, "max_steps": 20, "schedule": "constant", "warmup_ratio": 0.0,
                "eval_every": 10, "save_every": 10,
            },
        },
    )
    return run_rm(config), world / "run"


def new_rm(world, seed=0) -> RewardModel:
    from vlm_rlaif.models.registry import load_adapter_model

    torch.manual_seed(seed)
    lm = load_adapter_model(world / "sft")
    return RewardModel.create(lm, LoraSettings(r=8, alpha=16), base_model=world / "sft")


def store(world) -> FrameStore:
    return FrameStore(world, FrameSampling(num_frames=NUM_FRAMES))


# ------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_and_beats_chance_on_held_out_videos(trained):
    summary, run = trained
    rows = read_metrics(run)
    train_losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert sum(train_losses[-5:]) / 5 < 0.5 * sum(train_losses[:3]) / 3
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 20
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    # The held-out pairs are about videos never trained on; text alone cannot beat 0.5 on them.
    assert summary["heldout_videos"] == summary["heldout_pairs"] == 8
    assert summary["train_pairs"] == NUM_VIDEOS - 8
    assert summary["eval"]["heldout"]["pairs"] == 8
    # A model blind to the video scores each answer text the same everywhere, so the best it can do is
    # always prefer one colour: the share of held-out videos of the commoner colour.
    heldout_ids = [json.loads(line)["id"] for line in (run / "eval" / "heldout.jsonl").read_text().splitlines()]
    red = sum(int(i[1:]) % 2 == 0 for i in heldout_ids)
    blind_best = max(red, len(heldout_ids) - red) / len(heldout_ids)
    assert summary["eval"]["heldout"]["accuracy"] >= 0.75
    assert summary["eval"]["heldout"]["accuracy"] > blind_best
    # The extra set is scored on the held-out videos only (eval_sets_heldout_only), by the same model.
    assert summary["eval"]["flipped"]["pairs"] == 8
    assert summary["eval"]["flipped"]["accuracy"] == pytest.approx(1 - summary["eval"]["heldout"]["accuracy"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]


def test_save_load_and_rm_score_give_the_training_runs_scores(trained, world, tmp_path):
    _, run = trained
    heldout = [json.loads(line) for line in (run / "eval" / "heldout.jsonl").read_text().splitlines()]
    records = {r.record.id: r for r in read_preference_file(world / "prefs.jsonl")}
    dataset = PreferenceDataset([records[h["id"]] for h in heldout], store(world))

    rm = RewardModel.load(run)  # the run directory: base model + adapter + head in one call
    assert rm.frames.num_frames == NUM_FRAMES
    pairs = [dataset[i] for i in range(len(dataset))]
    prompts = [p.prompt for p in pairs]
    outputs_1 = [records[h["id"]].record.output_1.value for h in heldout]
    scores = rm.score(prompts, outputs_1, batch_size=3)
    assert scores.tolist() == pytest.approx([h["reward_1"] for h in heldout], abs=1e-5)
    videos = [p.prompt.video for p in pairs]
    by_question = rm.score_questions([QUESTION] * len(pairs), outputs_1, videos=videos)
    assert by_question.tolist() == pytest.approx(scores.tolist(), abs=1e-5)

    out = tmp_path / "scores.jsonl"
    score = ["rm", "score", "--records", str(world / "prefs.jsonl"), "--out", str(out)]
    assert cli_main([*score, "--rm", str(run / "model")]) == 0
    scored = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(scored) == NUM_VIDEOS
    for h in heldout:
        assert scored[h["id"]]["reward_1"] == pytest.approx(h["reward_1"], abs=1e-5)
        assert scored[h["id"]]["reward_2"] == pytest.approx(h["reward_2"], abs=1e-5)
        assert scored[h["id"]]["correct"] == h["correct"]
    # A second run finds every record scored and appends nothing.
    assert cli_main([*score, "--rm", str(run)]) == 0
    assert len(out.read_text().splitlines()) == NUM_VIDEOS


def test_a_finished_run_is_not_silently_overwritten(trained, world):
    _, run = trained
    config = ["rm", "--config", str(run / "config.yaml")]
    assert cli_main(config) == 2  # RunDirError: a finished run
    assert (run / "summary.json").is_file()


# ------------------------------------------------------------------------------ the loss forward


def test_the_video_reaches_the_loss_forward_and_both_answers_share_one_encode(world):
    rm = new_rm(world)
    dataset = PreferenceDataset(read_preference_file(world / "prefs.jsonl")[:2], store(world))
    pairs = [dataset[0], dataset[1]]
    loss_fn = make_rm_loss(rm, center_coef=1e-3)

    with count_visual_calls(rm.lm) as counts:
        loss, metrics = loss_fn(collate_pairs(rm, pairs))
        loss.backward()
    assert counts.with_grad > 0 and counts.calls_with_grad["splice"] > 0
    assert counts.video_forwards_with_grad == counts.forwards_with_grad == 1
    # Two pairs, two videos: the frozen tower ran once per video (no grad), not once per answer.
    assert counts.calls_without_grad["vision_tower"] == 2
    assert counts.calls_with_grad["vision_tower"] == 0
    lora_grads = [p.grad for n, p in rm.lm.model.named_parameters() if "lora_" in n and p.grad is not None]
    assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads)
    assert rm.head.linear.weight.grad.abs().sum() > 0
    assert 0.0 <= metrics["accuracy"] <= 1.0

    # Drop the video: the same loss then never splices one in, and the probe says so.
    blind = [PreferencePair(VideoExample(p.prompt.conversation), p.chosen, p.rejected) for p in pairs]
    with count_visual_calls(rm.lm) as counts:
        loss, _ = loss_fn(collate_pairs(rm, blind))
        loss.backward()
    assert counts.with_grad == 0 and counts.forwards_with_grad == 1


def test_pair_loss_is_bradley_terry_plus_the_centring_term():
    chosen, others = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 1.5])
    rewards = torch.cat([chosen, others])
    loss, metrics = pair_loss(rewards, center_coef=0.1)
    margins = chosen - others
    bradley_terry = torch.nn.functional.softplus(-margins).mean()
    # The released code's centring term: |mean over pairs of (r_chosen + r_other)|.
    centring = ((chosen + others).mean()).abs()
    assert loss.item() == pytest.approx(bradley_terry.item() + 0.1 * centring.item())
    assert metrics["bt_loss"] == pytest.approx(bradley_terry.item())
    assert metrics["accuracy"] == 0.5
    assert metrics["reward_mean"] == pytest.approx(1.0)
    assert pair_loss(torch.tensor([1.0, 1.0]), 0.0)[1]["accuracy"] == 0.5  # a tie counts half


# ------------------------------------------------------------------------------ the input


def test_the_input_ends_with_the_score_prefix_and_excludes_the_context(world):
    rm = new_rm(world)
    dataset = PreferenceDataset(read_preference_file(world / "prefs.jsonl")[:1], store(world))
    pair = dataset[0]
    batch = collate_pairs(rm, [pair])
    tokenizer = rm.lm.tokenizer
    video_id = rm.lm.video_token_id
    texts = []
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = [i for i, m in zip(row.tolist(), mask.tolist()) if m and i != video_id]
        assert video_id in row.tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    evaluation = load_prompt("rm_evaluation").text
    for text, answer in zip(texts, [pair.chosen, pair.rejected]):
        assert text.endswith(f"USER: {evaluation} ASSISTANT: Score:")
        flat = text.replace("\n", " ").replace("  ", " ")
        assert f"USER: {QUESTION} ASSISTANT: {answer}</s>USER: {evaluation}" in flat
        assert "secret context" not in text
    # Scoring builds the very same input as training.
    same = rm.collate([pair.prompt], [pair.chosen])
    chosen_row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert same["input_ids"][0][same["attention_mask"][0].bool()].tolist() == chosen_row.tolist()
    with pytest.raises(ModelInputError, match="must end with a user turn"):
        rm.collate([VideoExample([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])], ["b"])


def test_the_public_layout_loads_with_frame_images_and_a_trailing_answer(world, tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "frames").mkdir()
    images = []
    for t, frame in enumerate(colour_frames("red", rng)):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{t:03d}.png")
        images.append(f"frames/{t:03d}.png")
    public = [{
        "id": 7,
        "images": images,
        "conversations": [{"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": "SFT answer"}],
        "output_1": {"value": "The video is blue."},
        "output_2": {"value": "The video is red."},
        "preference": 2,
    }]
    (tmp_path / "RM_public.json").write_text(json.dumps(public, indent=1))
    records = read_preference_file(tmp_path / "RM_public.json")
    dataset = PreferenceDataset(records, FrameStore(tmp_path, FrameSampling(NUM_FRAMES)))
    pair = dataset[0]
    assert pair.prompt.conversation == [{"role": "user", "content": QUESTION}]
    assert pair.chosen == "The video is red." and pair.rejected == "The video is blue."
    assert pair.prompt.video.shape == (NUM_FRAMES, 32, 32, 3)
    assert new_rm(world).score([pair.prompt], [pair.chosen]).shape == (1,)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("output_2"), r"prefs\.jsonl:2 \(id p1\): field 'output_2': Field required"),
        (lambda r: r.update(preference=3), r"prefs\.jsonl:2 \(id p1\): field 'preference'"),
        (lambda r: r.update(preference="first"), r"prefs\.jsonl:2 \(id p1\): field 'preference'"),
        (lambda r: r["output_1"].pop("value"), r"prefs\.jsonl:2 \(id p1\): field 'output_1\.value'"),
    ],
)
def test_bad_records_are_errors_naming_file_and_line(tmp_path, change, message):
    records = [pair_record(0, "red", 1, "v0.mp4"), pair_record(1, "blue", 2, "v1.mp4")]
    change(records[1])
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(RecordError, match=message):
        read_preference_file(path)


def test_bad_prompts_and_missing_videos_fail_before_training(world, tmp_path):
    record = pair_record(0, "red", 1, "v0.mp4")
    record["conversations"] = [{"from": speaker, "value": "x"} for speaker in ("human", "gpt", "gpt")]
    missing = pair_record(1, "red", 1, "nowhere.mp4")
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RecordError, match=r"prefs\.jsonl:1 \(id p0\): the prompt must alternate"):
        PreferenceDataset(read_preference_file(path), store(world))
    path.write_text(json.dumps(missing) + "\n")
    with pytest.raises(RecordError, match=r"prefs\.jsonl:1 \(id p1\): video not found"):
        PreferenceDataset(read_preference_file(path), store(world))
    with pytest.raises(ConfigError, match="model.path"):
        from_dict(RMConfig, {"data": {"files": ["x.jsonl"]}})


# ------------------------------------------------------------------------------ data selection


def test_held_out_pairs_are_whole_videos_and_useless_pairs_are_dropped(tmp_path):
    records = [pair_record(i, "red", 1, f"v{i // 3}.mp4") for i in range(30)]  # 10 videos, 3 pairs each
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    sourced = read_preference_file(path)
    train, heldout = split_heldout(sourced, eval_pairs=7, eval_fraction=None, seed=0)
    train_videos = {r.record.video for r in train}
    heldout_videos = {r.record.video for r in heldout}
    assert len(heldout) == 9 and len(heldout_videos) == 3 and not train_videos & heldout_videos
    assert len(split_heldout(sourced, eval_pairs=0, eval_fraction=0.5, seed=0)[1]) == 15
    assert len(split_heldout(sourced, eval_pairs=1000, eval_fraction=None, seed=0)[0]) == 3  # one video stays

    sourced[4].record.output_2.value = sourced[4].record.output_1.value + " "
    keep, dropped = usable_pairs(sourced, [5] * 29 + [50], max_text_tokens=40)
    assert dropped == {"identical_outputs": 1, "too_long": 1}
    assert 4 not in keep and 29 not in keep and len(keep) == 28


def test_score_questions_checks_its_lengths(world):
    rm = new_rm(world)
    with pytest.raises(ModelInputError, match="2 questions, 1 answers"):
        rm.score_questions(["a", "b"], ["c"])
    text_only = rm.score([prompt_example(QUESTION)], ["The video is red."])
    assert text_only.shape == (1,) and torch.isfinite(text_only).all()


def test_oracle_metrics_compare_reward_choices_and_labels_with_the_toy_oracle(tmp_path):
    from vlm_rlaif.toyworld import ToyWorldConfig, generate

    from vlm_rlaif.feedback.agreement import OracleReference

    generate(ToyWorldConfig(seed=0), tmp_path / "toy", 10, workers=1)
    reference = OracleReference(tmp_path / "toy")
    records = []
    for prompt in json.loads((tmp_path / "toy" / "sft" / "SFT_short.json").read_text()):
        if prompt["toy"]["qtype"] != "colour" or len(records) == 4:
            continue
        right = prompt["conversations"][1]["value"]
        wrong = next(c for c in ("Red.", "Blue.", "Green.") if c.lower()[:-1] not in right.lower())
        if reference.compare(prompt["toy"], right, wrong) == 1:  # the oracle sees the right answer as better
            records.append({**prompt, "id": f"pair{len(records)}", "conversations": prompt["conversations"][:1],
                            "output_1": {"value": right}, "output_2": {"value": wrong},
                            "preference": 1 if len(records) < 3 else 2})
    assert len(records) == 4
    records.append(pair_record(9, "red", 1, "v0.mp4"))  # no toy metadata: counted, not scored
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    sourced = read_preference_file(path)
    # The reward model prefers the right answer in pairs 0 and 1, the wrong one in pair 2, ties pair 3.
    rewards = ((1.0, 0.0), (2.0, 1.0), (0.0, 1.0), (0.5, 0.5), (0.0, 1.0))
    results = [{"reward_1": r1, "reward_2": r2} for r1, r2 in rewards]
    metrics = oracle_metrics(results, sourced, tmp_path / "toy")
    assert metrics["pairs_without_toy_metadata"] == 1
    assert (metrics["reward_model"]["n"], metrics["reward_model"]["agree"]) == (3, 2)  # the tie is left out
    assert (metrics["labels"]["n"], metrics["labels"]["agree"]) == (4, 3)


def test_a_killed_run_resumes_to_the_same_reward_model(world):
    import shutil

    from safetensors.torch import load_file

    def run(out, **kwargs):
        config = from_dict(RMConfig, {
            "out": str(out), "model": {"path": str(world / "sft")},
            "data": {"files": ["prefs.jsonl"], "root": str(world), "eval_pairs": 8}, "lora": {"r": 8, "alpha": 16},
            "train": {"batch_size": 4, "lr": 3e-3, "max_steps": 4, "save_every": 2, "keep_checkpoints": 3},
        })
        return run_rm(config, **kwargs)

    run(world / "whole")
    run(world / "killed")
    # As if killed after step 2: the last checkpoint, the saved model and the summary never written.
    shutil.rmtree(world / "killed" / "checkpoints" / "step_00000004")
    shutil.rmtree(world / "killed" / "model")
    (world / "killed" / "summary.json").unlink()
    assert run(world / "killed")["resumed_from_step"] == 2
    for name in ("scalar_head.safetensors", "lora/adapter_model.safetensors"):
        whole, resumed = load_file(world / "whole" / "model" / name), load_file(world / "killed" / "model" / name)
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def bad_video_world(world, root):
    """The colour pairs (their videos copied under `root`), plus a pair about a file of random bytes
    and one about a frame folder that does not decode; also an extra evaluation set holding a pair
    about the random bytes."""
    import shutil

    from bad_videos import write_bad_videos

    root.mkdir()
    for v in range(NUM_VIDEOS):
        shutil.copy(world / f"v{v}.mp4", root / f"v{v}.mp4")
    corrupt, broken = write_bad_videos(root)
    lines = (world / "prefs.jsonl").read_text().splitlines()
    bad = [pair_record(100, "red", 1, corrupt), pair_record(101, "blue", 2, broken)]
    (root / "prefs.jsonl").write_text("\n".join(lines[:5] + [json.dumps(bad[0])] + lines[5:] + [json.dumps(bad[1])]) + "\n")
    (root / "extra.jsonl").write_text(lines[0] + "\n" + json.dumps(pair_record(102, "red", 1, corrupt)) + "\n")
    return root


def test_on_bad_video_fail_or_skip(world, tmp_path):
    root = bad_video_world(world, tmp_path / "root")

    def config(out, on_bad_video="fail"):
        return from_dict(RMConfig, {
            "out": str(tmp_path / out),
            "model": {"path": str(world / "sft")},
            "data": {"files": ["prefs.jsonl"], "root": str(root), "eval_pairs": 4, "on_bad_video": on_bad_video,
                     "eval_sets": {"extra": "extra.jsonl"}, "eval_sets_heldout_only": False},
            "lora": {"r": 4, "alpha": 8},
            "train": {"batch_size": 8, "lr": 1e-3, "max_steps": 2, "eval_every": 0, "save_every": 0},
        })

    with pytest.raises(UserError, match=r"prefs\.jsonl:6 \(id p100\): video corrupt\.mp4: .*corrupt\.mp4: cannot open"):
        run_rm(config("fail"))
    assert not (tmp_path / "fail").exists()  # opened before anything is written

    summary = run_rm(config("skip", "skip"))
    assert summary["pairs_read"] == NUM_VIDEOS + 2 and summary["records_skipped"] == 3
    assert summary["train_pairs"] + summary["heldout_pairs"] == NUM_VIDEOS
    skipped = {(s["id"], s["file"].rsplit("/", 1)[-1], s["video"]) for s in summary["skipped_records"]}
    assert skipped == {("p100", "prefs.jsonl:6", "corrupt.mp4"), ("p101", f"prefs.jsonl:{NUM_VIDEOS + 2}", "broken_frames"),
                       ("p102", "extra.jsonl:2", "corrupt.mp4")}
    assert summary["eval"]["extra"]["records"] == 1
    with pytest.raises(ConfigError, match="on_bad_video must be 'fail' or 'skip'"):
        config("x", "ignore")
