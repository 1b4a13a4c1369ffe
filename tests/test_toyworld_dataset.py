"""A toy world on disk: layout, records through the real loaders, determinism, resume, videos."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vlm_rlaif.cli import main
from vlm_rlaif.data import (
    InstructionRecord,
    MCQRecord,
    QARecord,
    VCGConsistencyRecord,
    VCGRecord,
    read_records,
    resolve_under,
)
from vlm_rlaif.errors import ConfigError
from vlm_rlaif.toyworld import FILES, Oracle, ToyWorldConfig, Truth, generate, split_of
from vlm_rlaif.toyworld.lexicon import PALETTE
from vlm_rlaif.video import load_video

N = 16
MODELS = {
    "sft/SFT_short.json": InstructionRecord, "sft/SFT_long.json": InstructionRecord,
    "sft/SFT_clips.json": InstructionRecord, "sft/SFT_judge.json": InstructionRecord,
    "feedback/prompts.json": InstructionRecord, "rl/prompts.json": InstructionRecord,
    "rl/PPO_init.json": InstructionRecord, "eval/vcg_generic.json": VCGRecord,
    "eval/vcg_temporal.json": VCGRecord, "eval/vcg_consistency.json": VCGConsistencyRecord,
    "eval/qa.json": QARecord, "eval/mcq.json": MCQRecord,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "world"
    generate(ToyWorldConfig(seed=7), out, N, workers=2)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_and_manifest(world):
    for name in FILES:
        assert (world / name).exists(), name
    assert len(list((world / "videos").glob("toy_*.mp4"))) == N
    assert len(list((world / "truth").glob("toy_*.json"))) == N
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["videos"] == N and manifest["seed"] == 7
    assert sum(manifest["videos_per_split"].values()) == N
    assert all(manifest["videos_per_split"][s] >= 1 for s in ("sft", "feedback", "rl", "eval"))
    for name in FILES:
        records = json.loads((world / name).read_text())
        assert manifest["records_per_file"][name] == len(records) > 0, name
    assert manifest["generation_seconds"] > 0 and manifest["config"]["seed"] == 7
    assert manifest["prompts"]["judge_pairwise_context"].startswith("judge_pairwise_context_v")


def test_every_file_loads_through_the_real_record_readers(world):
    for name, model in MODELS.items():
        records = read_records(world / name, model)
        for r in records:
            toy = r.model_extra["toy"]
            assert toy["video_id"].startswith("toy_") and toy["qtype"]
            if isinstance(r, InstructionRecord):
                assert r.video == f"videos/{toy['video_id']}.mp4"
                assert resolve_under(world, r.video).exists()
            else:
                assert r.video_name == toy["video_id"] and (world / "videos" / f"{r.video_name}.mp4").exists()


def test_splits_are_disjoint_and_match_the_files(world):
    videos_in = {}
    for name in FILES:
        split = name.split("/")[0]
        for r in json.loads((world / name).read_text()):
            videos_in.setdefault(split, set()).add(r["toy"]["video_id"])
            assert r["toy"]["split"] == split
    splits = list(videos_in)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not videos_in[a] & videos_in[b], (a, b)
    for vid in videos_in["eval"]:
        truth = json.loads((world / "truth" / f"{vid}.json").read_text())
        assert truth["split"] == "eval" == split_of(truth["index"], ToyWorldConfig(seed=7))


def test_split_fractions_hold_for_small_and_large_worlds():
    cfg = ToyWorldConfig()
    for n in (20, 2000):
        counts = {s: sum(split_of(i, cfg) == s for i in range(n)) for s in ("sft", "feedback", "rl", "eval")}
        for split, fraction in cfg.split_fractions.items():
            assert abs(counts[split] - fraction * n) <= max(2, 0.02 * n), (n, counts)


def test_generated_answers_pass_the_oracle(world):
    oracle = Oracle()
    checked = 0
    for name in ("sft/SFT_short.json", "sft/SFT_long.json", "sft/SFT_clips.json", "rl/PPO_init.json"):
        for r in json.loads((world / name).read_text()):
            assert oracle.check_record(world, r, r["conversations"][1]["value"]).correct, r["id"]
            checked += 1
    for name, key in (("eval/vcg_generic.json", "A"), ("eval/vcg_temporal.json", "A"), ("eval/vcg_consistency.json", "A")):
        for r in json.loads((world / name).read_text()):
            assert oracle.check_record(world, r, r[key]).correct, r
            checked += 1
    assert checked > 50


def test_same_seed_gives_identical_files_and_video_i_does_not_depend_on_n(world, tmp_path):
    again = tmp_path / "again"
    generate(ToyWorldConfig(seed=7), again, N, workers=1)
    for name in FILES + ("truth/toy_00003.json", "videos/toy_00003.mp4"):
        assert _digest(world / name) == _digest(again / name), name
    fewer = tmp_path / "fewer"
    generate(ToyWorldConfig(seed=7), fewer, 5, workers=1)
    for i in range(5):
        assert _digest(world / f"truth/toy_{i:05d}.json") == _digest(fewer / f"truth/toy_{i:05d}.json")
        assert _digest(world / f"videos/toy_{i:05d}.mp4") == _digest(fewer / f"videos/toy_{i:05d}.mp4")
    first_short = [r for r in json.loads((fewer / "sft/SFT_short.json").read_text())]
    all_short = {r["id"]: r for r in json.loads((world / "sft/SFT_short.json").read_text())}
    assert first_short and all(all_short[r["id"]] == r for r in first_short)


def test_rerun_resumes_and_refuses_another_config(world, tmp_path):
    out = tmp_path / "resume"
    generate(ToyWorldConfig(seed=7), out, 4, workers=1)
    mp4 = out / "videos" / "toy_00001.mp4"
    stamp = mp4.stat().st_mtime_ns
    (out / "truth" / "toy_00003.json").unlink()  # as if killed before video 3 finished
    manifest = generate(ToyWorldConfig(seed=7), out, 6, workers=1)
    assert mp4.stat().st_mtime_ns == stamp, "finished videos are reused, not rewritten"
    assert (out / "truth" / "toy_00003.json").exists() and manifest["videos"] == 6
    assert _digest(out / "truth/toy_00005.json") == _digest(world / "truth/toy_00005.json")
    with pytest.raises(ConfigError, match="frames"):
        generate(ToyWorldConfig(seed=7, frames=32), out, 6)
    generate(ToyWorldConfig(seed=7, frames=32), out, 2, overwrite=True)
    assert Truth.from_dict(json.loads((out / "truth/toy_00000.json").read_text())).frames == 32
    assert not (out / "truth" / "toy_00005.json").exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a toy world"):
        generate(ToyWorldConfig(), stranger, 2)


def test_videos_decode_with_their_truth_colours(world):
    """h264 yuv420 at 32 px keeps every object's colour: the decoded pixels around each visible
    object's centre classify back to its true colour."""
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=float)
    total = right = 0
    for path in sorted((world / "truth").glob("toy_*.json")):
        truth = Truth.from_dict(json.loads(path.read_text()))
        video = load_video(world / "videos" / f"{truth.video_id}.mp4")
        assert video.frames.shape == (truth.frames, truth.size, truth.size, 3)
        assert video.fps == pytest.approx(truth.fps)
        for t in range(truth.frames):
            for o in truth.objects:
                st = truth.states[t][o.id]
                if not st.visible:
                    continue
                x, y = int(st.x), int(st.y)
                pixel = video.frames[t, max(y - 1, 0):y + 1, max(x - 1, 0):x + 1].reshape(-1, 3).mean(axis=0)
                total += 1
                right += names[int(((palette - pixel) ** 2).sum(axis=1).argmin())] == st.colour
    assert total > 200 and right / total >= 0.99, f"{right}/{total} object colours survive h264"


def test_cli_command(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["toyworld", "--out", str(out), "--videos", "3", "--seed", "2", "--workers", "1", "size=48",
                 "brief_object_prob=0.5"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 3
    truth = json.loads((out / "truth" / "toy_00000.json").read_text())
    assert truth["size"] == 48 and truth["seed"] == 2
    assert main(["toyworld", "--out", str(out), "--videos", "3", "nonsense_key=1"]) == 2


def test_same_world_in_fresh_processes_with_different_hash_seeds(tmp_path):
    """Every file, byte for byte (the manifest's timing aside): the world may not depend on the
    order in which Python iterates sets of strings."""
    from fresh_process import differing_files, run_cli_with_hash_seeds

    out = tmp_path / "world"
    a, b = run_cli_with_hash_seeds(["toyworld", "--out", str(out), "--videos", "60", "--seed", "7"], out)
    assert differing_files(a, b) == []


def test_context_examples_answer_from_the_true_clip_descriptions(tmp_path):
    """context_per_video > 0: SFT records whose question carries the true clip descriptions
    (answer_with_context) and whose answer is the reference; the other records are unchanged."""
    from vlm_rlaif.prompts import load_prompt
    from vlm_rlaif.toyworld import make_records, sample_truth

    base = ToyWorldConfig(seed=7)
    index = next(i for i in range(40) if split_of(i, base) == "sft")
    truth = sample_truth(base, index)
    truth.split = "sft"
    plain = make_records(truth, ToyWorldConfig(seed=7, context_per_video=0))
    truth.split = "sft"
    with_context = make_records(truth, ToyWorldConfig(seed=7, context_per_video=3))
    assert plain["sft/SFT_context.json"] == [] and len(with_context["sft/SFT_context.json"]) == 3
    for name in FILES:
        if name not in ("sft/SFT_context.json", "sft/SFT_mcq.json", "sft/SFT_verify.json"):  # these draw after it
            assert with_context[name] == plain[name], name
    oracle = Oracle()
    head = load_prompt("answer_with_context").text.split("{context}")[0]
    for record in with_context["sft/SFT_context.json"]:
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert question.startswith("<video>\n" + head)
        assert "Clip 1: " in question and "Clip 3: " in question
        assert oracle.check(truth, record["toy"], answer).correct


def test_context_examples_may_show_a_blank_video(tmp_path):
    """context_blank_video_prob: that share of the context examples shows videos/blank.mp4 (the
    background only), so only the context can answer them."""
    from vlm_rlaif.toyworld.dataset import BLANK_VIDEO
    from vlm_rlaif.toyworld.lexicon import BACKGROUND

    out = tmp_path / "world"
    generate(ToyWorldConfig(seed=7, context_per_video=4, context_blank_video_prob=0.5), out, 12, workers=1)
    records = json.loads((out / "sft" / "SFT_context.json").read_text())
    blank = [r for r in records if r["video"] == BLANK_VIDEO]
    assert 0 < len(blank) < len(records)
    frames = load_video(out / BLANK_VIDEO).frames
    assert np.abs(frames.astype(int) - np.array(BACKGROUND)).max() <= 3  # h264 of a flat frame
    assert all(r["toy"]["video_id"] in r["id"] for r in blank)  # the oracle still knows the real video


def test_context_examples_can_be_limited_to_question_types():
    from vlm_rlaif.toyworld import make_records, sample_truth
    from vlm_rlaif.toyworld.questions import LONG_QTYPES

    cfg = ToyWorldConfig(seed=7, context_per_video=6, context_qtypes=["when", "direction"])
    qtypes = set()
    for index in [i for i in range(60) if split_of(i, cfg) == "sft"][:10]:
        truth = sample_truth(cfg, index)
        truth.split = "sft"
        qtypes |= {r["toy"]["qtype"] for r in make_records(truth, cfg)["sft/SFT_context.json"]}
    assert qtypes - set(LONG_QTYPES) <= {"when", "direction"} and qtypes & {"when", "direction"}
    truth.split = "sft"
    with pytest.raises(ConfigError, match="context_qtypes: unknown"):
        make_records(truth, ToyWorldConfig(seed=7, context_qtypes=["colour", "nope"]))


def test_mcq_examples_answer_with_the_letter_the_benchmark_parses():
    """mcq_per_video > 0: SFT records in the multiple-choice benchmark's own prompt, answered with
    the letter of the correct option (eval's strict parser reads it back); the other records are
    unchanged."""
    from vlm_rlaif.eval.benchmarks import parse_option
    from vlm_rlaif.prompts import load_prompt
    from vlm_rlaif.toyworld import make_records, sample_truth

    base = ToyWorldConfig(seed=7)
    index = next(i for i in range(40) if split_of(i, base) == "sft")
    truth = sample_truth(base, index)
    truth.split = "sft"
    plain = make_records(truth, ToyWorldConfig(seed=7, mcq_per_video=0))
    with_mcq = make_records(truth, ToyWorldConfig(seed=7, mcq_per_video=2))
    assert plain["sft/SFT_mcq.json"] == [] and len(with_mcq["sft/SFT_mcq.json"]) == 2
    for name in FILES:
        if name not in ("sft/SFT_mcq.json", "sft/SFT_verify.json"):  # the latter draws after it
            assert with_mcq[name] == plain[name], name
    tail = load_prompt("eval_mcq_question").text.split("{options}")[1]
    for record in with_mcq["sft/SFT_mcq.json"]:
        question, letter = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert question.endswith(tail.rstrip())
        options = [line.split(") ", 1)[1] for line in question.splitlines() if line.startswith("(")]
        assert len(options) >= 2 and parse_option(letter, options) == letter
        picked = options[ord(letter) - ord("A")]
        assert Oracle().check(truth, record["toy"], picked).correct, (question, picked)
        assert not any(Oracle().check(truth, record["toy"], o).correct for o in options if o != picked)


def test_verify_examples_say_yes_exactly_to_the_right_answers():
    """verify_per_video: one answer per record, the reference or a corrupted one, labelled Yes / No
    as the oracle sees it; even records carry the true clip descriptions (judge_verify_context)."""
    from vlm_rlaif.prompts import load_prompt
    from vlm_rlaif.toyworld import make_records, sample_truth

    cfg = ToyWorldConfig(seed=7, verify_per_video=6)
    oracle, labels = Oracle(), []
    for index in [i for i in range(60) if split_of(i, cfg) == "sft"][:8]:
        truth = sample_truth(cfg, index)
        truth.split = "sft"
        for record in make_records(truth, cfg)["sft/SFT_verify.json"]:
            toy, (ask, reply) = record["toy"], record["conversations"]
            params = toy["params"]
            labels.append(reply["value"])
            assert reply["value"] == ("Yes" if params["right"] else "No")
            verdict = oracle.check(truth, {"qtype": params["base_qtype"], "params": params["base_params"]}, params["answer"])
            assert verdict.correct == params["right"], record["id"]
            context_head = load_prompt("judge_verify_context").text.split("{context}")[0]
            assert ask["value"].startswith("<video>\n" + context_head) == params["context"]
            assert params["context"] == record["id"].endswith(("_0", "_2", "_4"))
    assert 0.3 < labels.count("Yes") / len(labels) < 0.7
