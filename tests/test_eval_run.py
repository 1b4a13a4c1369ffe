"""End to end: tiny random models evaluated through `vlm-rlaif eval` with a judge behind a real local
HTTP server; resuming predictions after an interrupted iterator and after a real kill."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlm_rlaif.cli import main
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.config import load_config
from vlm_rlaif.errors import RecordError, UserError
from vlm_rlaif.eval import (
    BenchmarkSpec,
    BootstrapSpec,
    EvalConfig,
    JudgeSpec,
    ModelSpec,
    iter_predict,
    judge,
    load_items,
    predict,
    run_eval,
)
from vlm_rlaif.eval.predict import PredictSettings
from vlm_rlaif.eval.run import build_judge as build_judge_from

FRAMES = 8
CANDIDATES = ["a red ball", "a blue box", "a green triangle"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three videos, the benchmark files in their layouts, and two saved tiny models."""
    from vlm_rlaif.models import build_tiny_model, train_tokenizer
    from vlm_rlaif.video import write_video

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(rng.integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8), root / "videos" / f"toy_{i}.mp4")
    files = {
        "vcg_generic": [{"video_name": f"toy_{i}", "Q": f"Describe video {i}.", "A": "A red ball moves left."} for i in range(3)],
        "vcg_consistency": [{"video_name": "toy_0", "Q1": "What moves?", "Q2": "Which object moves?", "A": "The red ball."}],
        "qa": [{"video_name": f"toy_{i % 3}", "question_id": f"q{i}", "question": f"What colour is it {i}?", "answer": "red"} for i in range(6)],
        "mcq": [{"video_name": "toy_1", "question_id": "m0", "question": "What is there?", "candidates": CANDIDATES, "answer": "a blue box"}],
    }
    for name, records in files.items():
        (root / f"{name}.json").write_text(json.dumps(records))
    tokenizer = train_tokenizer(["What colour is the red ball?", "{'score': 4}", "a blue box"] * 10, vocab_size=300)
    for seed, name in ((0, "sft"), (1, "rlaif")):
        build_tiny_model("tiny", tokenizer, frames=FRAMES, seed=seed).save(root / name)
    return root


def config_dict(world, out, url, benchmarks=("vcg_generic", "vcg_consistency", "qa", "mcq"), max_new_tokens=6, batch_size=2):
    kinds = {"vcg_generic": "vcg_generic", "vcg_consistency": "vcg_consistency", "qa": "qa", "mcq": "mcq"}
    return {
        "eval": {
            "out": str(out),
            "models": [{"name": "sft", "path": str(world / "sft")}, {"name": "rlaif", "path": str(world / "rlaif")}],
            "benchmarks": [
                {"name": name, "kind": kinds[name], "file": str(world / f"{name}.json"), "video_root": str(world / "videos"),
                 **({"paper": "vcg_bench"} if name.startswith("vcg") else {})}
                for name in benchmarks
            ],
            "generation": {"num_frames": FRAMES, "max_new_tokens": max_new_tokens, "batch_size": batch_size},
            "judge": {"kind": "openai", "model": "judge-alias", "base_url": url, "api_key_env": None, "max_retries": 1},
            "bootstrap": {"resamples": 200, "seed": 3},
        }
    }


def judge_score(*predictions):
    return sum(ord(c) for p in predictions for c in p) % 6


def scripted_judge(request):
    """Scores from the predictions' characters, so the expected numbers follow from the files."""
    text = request["messages"][0]["content"]
    predictions = re.findall(r"(?:Predicted answer|Answer to question \d): (.*)", text)
    score = judge_score(*predictions)
    if "Say whether the prediction matches" in text:
        return f"{{'pred': '{'yes' if score >= 3 else 'no'}', 'score': {score}}}"
    return f"{{'score': {score}}}"


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_eval_command_end_to_end(world, tmp_path, fake_openai_server):
    server = fake_openai_server
    server.reply = scripted_judge
    server.served_model = "judge-alias-2025-06-01"
    config = config_dict(world, tmp_path / "run", server.url)
    config["eval"]["benchmarks"][2]["limit"] = 3
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config))

    assert main(["eval", "--config", str(config_path)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["judge"]["model"] == "judge-alias" and summary["judge"]["versions"] == ["judge-alias-2025-06-01"]
    assert "eval_correctness_v1" in summary["judge"]["prompts"] and "eval_qa_v1" in summary["judge"]["prompts"]
    for model in ("sft", "rlaif"):
        predictions = read_jsonl(run / "predictions" / model / "qa.jsonl")
        assert [p["id"] for p in predictions] == ["q0", "q1", "q2"]  # limit: 3
        consistency = read_jsonl(run / "predictions" / model / "vcg_consistency.jsonl")
        assert len(consistency[0]["predictions"]) == 2 and consistency[0]["prompts"] == ["What moves?", "Which object moves?"]
        mcq = read_jsonl(run / "predictions" / model / "mcq.jsonl")
        assert "(B) a blue box" in mcq[0]["prompts"][0]

        # Every score follows from the scripted judge and the model's own predictions.
        generic = read_jsonl(run / "predictions" / model / "vcg_generic.jsonl")
        expected = np.mean([judge_score(p["predictions"][0]) for p in generic])
        result = summary["results"][model]
        assert result["vcg_generic"]["metrics"]["correctness"]["value"] == pytest.approx(expected)
        assert result["vcg_generic"]["judged"] == {"correctness": 3, "detail": 3, "context": 3}
        qa_scores = [judge_score(p["predictions"][0]) for p in predictions]
        assert result["qa"]["metrics"]["accuracy"]["value"] == pytest.approx(np.mean([s >= 3 for s in qa_scores]))
        assert result["qa"]["metrics"]["score"]["value"] == pytest.approx(np.mean(qa_scores))
        low, high = result["qa"]["metrics"]["score"]["low"], result["qa"]["metrics"]["score"]["high"]
        assert min(qa_scores) <= low <= np.mean(qa_scores) <= high <= max(qa_scores)
        both = consistency[0]["predictions"]
        assert result["vcg_consistency"]["metrics"]["consistency"]["value"] == judge_score(*both)
        assert result["mcq"]["metrics"]["accuracy"]["n"] == 1
        judgements = read_jsonl(run / "judgements" / model / "qa.jsonl")
        assert all(j["judge_version"] == "judge-alias-2025-06-01" and j["prompt"] == "eval_qa_v1" for j in judgements)
    assert len(server.requests) == 2 * (3 * 3 + 1 + 3)  # mcq needs no judge

    table = (run / "results.md").read_text()
    assert "| benchmark | metric | sft | rlaif | VLM-SFT 7B (paper) | VLM-RLAIF 7B (paper) |" in table
    assert re.search(r"\| vcg_generic \| correctness \| [\d.]+ \[[\d.]+, [\d.]+\] \| [\d.]+ \[.*\] \| 2.79 \| 3.63 \|", table)
    assert "| qa | accuracy |" in table and "judge-alias-2025-06-01" in table and "unpinned" in table

    # A finished run is never silently overwritten.
    assert main(["eval", "--config", str(config_path)]) == 2


def test_missing_judge_model_is_a_config_error(world, tmp_path):
    config = config_dict(world, tmp_path / "run", "http://127.0.0.1:9/v1")
    del config["eval"]["judge"]["model"]
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["eval", "--config", str(config_path)]) == 2
    assert not (tmp_path / "run").exists()


class CountingLM:
    """Wraps a VideoLM and counts the examples it generates for."""

    def __init__(self, lm):
        self.lm = lm
        self.examples = 0

    def generate(self, examples, settings):
        self.examples += len(examples)
        return self.lm.generate(examples, settings)


def test_interrupted_prediction_resumes_without_redoing_items(world, tmp_path):
    from vlm_rlaif.models import load_adapter_model

    items = load_items("qa", world / "qa.json")
    frames = FrameStore(world / "videos", FrameSampling(num_frames=FRAMES))
    settings = PredictSettings(num_frames=FRAMES, max_new_tokens=4, batch_size=2)
    out = tmp_path / "p.jsonl"
    lm = CountingLM(load_adapter_model(world / "sft"))
    stream = iter_predict(lm, items, frames, out, settings)
    first = [next(stream), next(stream)]  # one batch of two items, then the run "dies"
    stream.close()
    with out.open("a") as f:
        f.write('{"id": "q2", "predic')  # a line torn by the kill
    assert lm.examples == 2

    predictions = predict(lm, items, frames, out, settings)
    assert lm.examples == 6  # only the four missing items were generated
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == [f"q{i}" for i in range(6)]
    assert lines[:2] == first and predictions["q0"] == first[0]["predictions"]


def test_killed_eval_run_resumes(world, tmp_path, fake_openai_server, monkeypatch):
    from vlm_rlaif.models import LlavaVideoLM

    fake_openai_server.reply = scripted_judge
    config = config_dict(world, tmp_path / "run", fake_openai_server.url, benchmarks=("qa",), max_new_tokens=32, batch_size=1)
    config["eval"]["models"] = config["eval"]["models"][:1]
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config))
    predictions_file = tmp_path / "run" / "predictions" / "sft" / "qa.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vlm_rlaif.cli", "eval", "--config", str(config_path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if predictions_file.exists() and predictions_file.read_text().count("\n") >= 2:
                break
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    done_before = [line for line in predictions_file.read_text().split("\n")[:-1]]  # whole lines only
    assert 2 <= len(done_before) < 6 and not (tmp_path / "run" / "summary.json").exists()

    generated = []
    original = LlavaVideoLM.generate
    monkeypatch.setattr(LlavaVideoLM, "generate", lambda self, examples, settings: generated.extend(examples) or original(self, examples, settings))
    summary = run_eval(load_config(EvalConfig, config_path, section="eval"))
    assert len(generated) == 6 - len(done_before)  # only what the kill left undone
    lines = predictions_file.read_text().split("\n")[:-1]
    assert lines[: len(done_before)] == done_before
    assert sorted(json.loads(line)["id"] for line in lines) == [f"q{i}" for i in range(6)]
    assert summary["results"]["sft"]["qa"]["judged"] == {"qa": 6}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["resumed_at"]


TOY_SETS = ("vcg_generic", "vcg_temporal", "vcg_consistency", "qa", "mcq")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy world of 4 videos, one of them in the eval split: 3 items per benchmark file."""
    from vlm_rlaif.toyworld.config import ToyWorldConfig
    from vlm_rlaif.toyworld.dataset import generate

    root = tmp_path_factory.mktemp("toy")
    cfg = ToyWorldConfig(seed=0, sft_fraction=0.25, feedback_fraction=0.25, rl_fraction=0.25, eval_fraction=0.25, eval_per_video=3)
    generate(cfg, root, 4, workers=1)
    return root


def test_oracle_judge_on_the_toy_world(world, toy, tmp_path):
    oracle = build_judge_from(JudgeSpec(kind="oracle", toy_dir=str(toy)), tmp_path)
    # Reference answers as predictions: the oracle marks them all correct, so every score is 5.
    for kind in ("vcg_generic", "vcg_temporal", "vcg_consistency", "qa"):
        items = load_items(kind, toy / "eval" / f"{kind}.json")
        assert len(items) == 3
        references = {item.id: [item.answer] * len(item.questions) for item in items}
        rows = judge(items, references, kind=kind, by=oracle, out_path=tmp_path / f"{kind}.jsonl")
        assert {r["score"] for r in rows} == {5} and all(h == 0 for r in rows for h in r["hallucinations"])
        if kind == "qa":
            assert all(r["yes"] for r in rows)
    # A wrong colour is caught.
    items = load_items("qa", toy / "eval" / "qa.json")
    colour = next(item for item in items if item.meta["toy"]["qtype"] == "colour")
    wrong = "blue" if colour.answer != "blue" else "green"
    (row,) = judge([colour], {colour.id: [wrong]}, kind="qa", by=oracle, out_path=tmp_path / "wrong.jsonl")
    assert (row["yes"], row["score"]) == (False, 0)
    # Benchmarks without toy metadata cannot be judged by the oracle.
    (plain,) = load_items("qa", world / "qa.json", limit=1)
    with pytest.raises(RecordError, match="no 'toy' metadata"):
        judge([plain], {plain.id: ["red"]}, kind="qa", by=oracle, out_path=tmp_path / "plain.jsonl")
    with pytest.raises(UserError, match="no manifest.json"):
        build_judge_from(JudgeSpec(kind="oracle", toy_dir=str(world)), tmp_path)


def test_tiny_model_on_the_toy_world_with_the_oracle(world, toy, tmp_path):
    config = EvalConfig(
        out=str(tmp_path / "run"),
        models=[ModelSpec("sft", str(world / "sft"))],
        benchmarks=[BenchmarkSpec(name, name, str(toy / "eval" / f"{name}.json"), str(toy / "videos")) for name in TOY_SETS],
        generation=PredictSettings(num_frames=24, max_new_tokens=6, batch_size=8),
        judge=JudgeSpec(kind="oracle", toy_dir=str(toy)),
        bootstrap=BootstrapSpec(resamples=100),
    )
    summary = run_eval(config)
    result = summary["results"]["sft"]
    assert summary["judge"]["kind"] == "oracle" and summary["judge"]["prompts"] == ["oracle_rule_v1"]
    # A random model's answers state nothing true: no correct answer, every score low.
    assert result["qa"]["metrics"]["accuracy"]["value"] == 0.0
    for name, metric in (("vcg_generic", "correctness"), ("vcg_temporal", "temporal"), ("vcg_consistency", "consistency")):
        assert result[name]["metrics"][metric]["n"] == 3 and result[name]["metrics"][metric]["value"] <= 2
    assert result["vcg_generic"]["metrics"]["hallucinations"]["n"] == 3
    assert result["mcq"]["metrics"]["accuracy"]["n"] == 3
    assert "| vcg_generic | correctness |" in (tmp_path / "run" / "results.md").read_text()


def test_local_judge_from_a_model_directory(world, tmp_path):
    from vlm_rlaif.eval import LocalJudge

    local = build_judge_from(JudgeSpec(kind="local", path=str(world / "rlaif"), max_new_tokens=4), tmp_path)
    assert isinstance(local, LocalJudge) and local.info()["model"] == str(world / "rlaif")
    items = load_items("vcg_temporal", world / "vcg_generic.json", limit=2)
    rows = judge(items, {"0": ["a ball"], "1": ["a box"]}, kind="vcg_temporal", by=local, out_path=tmp_path / "j.jsonl")
    assert [(r["id"], r["criterion"], r["prompt"]) for r in rows] == [("0", "temporal", "eval_temporal_v1"), ("1", "temporal", "eval_temporal_v1")]
    assert all(r["status"] in ("ok", "invalid") and (r["score"] is None) == (r["status"] == "invalid") for r in rows)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e["models"].append(dict(e["models"][0])), "duplicate models names"),
        (lambda e: e["benchmarks"][0].update(paper="mvbench"), "paper must be one of"),
        (lambda e: e["benchmarks"][0].update(answers_file="a.json"), "answers_file is only for kind 'qa'"),
        (lambda e: e["models"][0].update(name="a/b"), "must match"),
        (lambda e: e["judge"].update(kind="oracle"), "judge.toy_dir"),
        (lambda e: e["generation"].update(max_new_token=5), "did you mean 'generation.max_new_tokens'"),
    ],
)
def test_config_errors_name_the_key(world, tmp_path, change, message):
    from vlm_rlaif.errors import ConfigError

    config = config_dict(world, tmp_path / "run", "http://127.0.0.1:9/v1")
    change(config["eval"])
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_config(EvalConfig, config_path, section="eval").check()


@pytest.fixture
def bad_videos(world, tmp_path):
    """A multiple-choice benchmark whose items' videos are: fine, corrupt, an HLS playlist naming a
    video outside the root, a single frame, and a frame folder holding a non-image file."""
    from PIL import Image

    from vlm_rlaif.video import write_video

    root = tmp_path / "videos"
    root.mkdir()
    rng = np.random.default_rng(1)
    write_video(rng.integers(0, 256, (FRAMES, 32, 32, 3), dtype=np.uint8), root / "good.mp4")
    (root / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    outside = world / "videos" / "toy_0.mp4"
    (root / "playlist.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{outside}\n#EXT-X-ENDLIST\n")
    write_video(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), root / "still.mp4")
    (root / "frames").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "frames" / f"{i}.png")
    (root / "frames" / "notes.txt").write_text("not a frame")
    names = ["good", "corrupt", "playlist.m3u8", "still", "frames"]
    items = [{"video_name": n, "question_id": f"m{i}", "question": "What is there?", "candidates": CANDIDATES, "answer": "a blue box"}
             for i, n in enumerate(names)]  # fmt: skip
    bench = tmp_path / "mcq.json"
    bench.write_text(json.dumps(items))

    def config(on_bad_video):
        return EvalConfig(
            out=str(tmp_path / f"run_{on_bad_video}"),
            models=[ModelSpec("sft", str(world / "sft"))],
            benchmarks=[BenchmarkSpec("mcq", "mcq", str(bench), str(root))],
            generation=PredictSettings(num_frames=FRAMES, max_new_tokens=4, batch_size=2),
            bootstrap=BootstrapSpec(resamples=20),
            on_bad_video=on_bad_video,
        )

    return bench, config


def test_eval_bad_video_error_names_benchmark_file_item_and_video(bad_videos):
    bench, config = bad_videos
    with pytest.raises(UserError) as caught:
        run_eval(config("fail"))
    message = str(caught.value)
    assert str(bench) in message and "question_id m1" in message and "corrupt" in message, message


def test_eval_on_bad_video_skip_records_and_counts_skipped_items(bad_videos, caplog):
    bench, config = bad_videos
    with caplog.at_level("WARNING"):
        summary = run_eval(config("skip"))
    result = summary["results"]["sft"]["mcq"]
    assert result["items"] == 5 and result["skipped"] == 2
    assert [s["id"] for s in result["skipped_items"]] == ["m1", "m2"]
    assert "corrupt" in result["skipped_items"][0]["reason"]
    assert "cannot open as a video" in result["skipped_items"][1]["reason"]  # the playlist is not followed
    assert result["metrics"]["accuracy"]["n"] == 3  # only the items that have a prediction are judged
    # A single-frame video and a frame folder with a non-image file: warned about, counted.
    assert result["video_warnings"] == {"single_frame": 1, "non_image_files": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("single frame" in w for w in warned) == 1 and sum("notes.txt" in w for w in warned) == 1
    report = (Path(config("skip").out) / "results.md").read_text()
    assert re.search(r"\| mcq \| sft \| 5 \| choice 3 \| .* \| 2 \| single_frame 1, non_image_files 1 \|", report), report


def test_a_question_too_long_for_the_model_names_the_benchmark_file_and_item(world, tmp_path):
    from vlm_rlaif.models import load_adapter_model

    bench = tmp_path / "qa.json"
    bench.write_text(json.dumps([
        {"video_name": "toy_0", "question_id": "short", "question": "What colour?", "answer": "red"},
        {"video_name": "toy_1", "question_id": "huge", "question": "colour " * 800_000, "answer": "red"},
    ]))  # fmt: skip
    items = load_items("qa", bench)
    frames = FrameStore(world / "videos", FrameSampling(num_frames=FRAMES))
    settings = PredictSettings(num_frames=FRAMES, max_new_tokens=4, batch_size=2)
    with pytest.raises(UserError, match=r"qa.json:\d+ \(question_id huge\): the prompt's text has \d+ characters"):
        predict(load_adapter_model(world / "sft"), items, frames, tmp_path / "p.jsonl", settings)
