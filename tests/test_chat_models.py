"""What `chat --model` / `serve --model` accept (a model, an adapter on the base it names, a stage's
run directory), the banner that says what was loaded, serve's one log line per request, and the
example in `serve --help`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import io
import json
import logging
import threading
import urllib.error
import urllib.request

import pytest

from vlm_rlaif.cli import build_parser
from vlm_rlaif.cli import main as cli_main
from vlm_rlaif.errors import UserError
from vlm_rlaif.models import LoraSettings, build_tiny_model, load_adapter_model, train_tokenizer
from vlm_rlaif.serve import VideoLMServer
from vlm_rlaif.serve.model_choice import ModelChoice, resolve_model

QUESTION = "What colour is the private square?"


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A run directory laid out as the demo's: sft/model (a model), ppo/policy_adapter (a LoRA
    adapter whose config names sft/model as its base), rm (a reward model's run), and each stage's
    summary.json recording paths relative to the directory the run was started in."""
    top = tmp_path_factory.mktemp("work")
    run = top / "demo_runs" / "seed0"
    lm = build_tiny_model("tiny", train_tokenizer([QUESTION, "It is red.", "It is blue."] * 20, vocab_size=300), frames=4, seed=0)
    lm.save(run / "sft" / "model")
    cwd = os.getcwd()
    os.chdir(top)  # as a demo started in `top` records them
    try:
        base = load_adapter_model("demo_runs/seed0/sft/model", device="cpu")
        base.add_lora("policy", LoraSettings(r=2, alpha=2, targets="attn"))
        base.save_lora(run / "ppo" / "policy_adapter", "policy")
    finally:
        os.chdir(cwd)
    for stage, summary in (
        ("sft", {"stage": "sft", "model": "demo_runs/seed0/sft/model"}),
        ("ppo", {"stage": "ppo", "policy_adapter": "demo_runs/seed0/ppo/policy_adapter", "policy_base": "demo_runs/seed0/sft/model"}),
        ("rm", {"stage": "rm", "model": "demo_runs/seed0/rm/model"}),
    ):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "summary.json").write_text(json.dumps(summary))
    return run


def test_model_adapter_and_stage_directories_resolve_to_base_and_adapter(demo_like, monkeypatch):
    run = demo_like
    monkeypatch.chdir(run.parent.parent.parent)  # elsewhere: the recorded relative paths do not resolve from here
    model, adapter = run / "sft" / "model", run / "ppo" / "policy_adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "demo_runs/seed0/sft/model"
    assert resolve_model(model) == ModelChoice(model)
    assert resolve_model(model, adapter) == ModelChoice(model, adapter)
    assert resolve_model(adapter) == ModelChoice(run.parent.parent / "demo_runs/seed0/sft/model", adapter)
    assert resolve_model(run / "ppo") == resolve_model(adapter)
    assert resolve_model(run / "sft").base.resolve() == model.resolve()
    with pytest.raises(UserError, match="reward model's run"):
        resolve_model(run / "rm")
    with pytest.raises(UserError, match=r"is itself a LoRA adapter; give its base as --model"):
        resolve_model(adapter, adapter)
    with pytest.raises(UserError) as err:
        resolve_model(run)
    assert f"--model {run / 'ppo'}, --model {run / 'sft'}" in str(err.value) and "rm" not in str(err.value).split("with:")[1]


def test_an_adapter_whose_base_is_gone_says_how_to_give_it(demo_like, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((demo_like / "ppo" / "policy_adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere/model"}))
    with pytest.raises(UserError, match=rf"trained on /nowhere/model, .*--model BASE --lora {adapter}"):
        resolve_model(adapter)


def test_chat_with_a_ppo_run_directory_names_base_and_adapter(demo_like, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n"))
    assert cli_main(["chat", "--model", str(demo_like / "ppo"), "--temperature", "0", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    assert banner.startswith("base ") and "sft/model, adapter " in banner and banner.endswith("(llava-video); no video.")
    assert str(demo_like / "ppo" / "policy_adapter") in banner


def post(server, body):
    request = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_serve_logs_one_line_per_request_without_its_content(demo_like, caplog):
    lm = load_adapter_model(demo_like / "sft" / "model", device="cpu")
    server = VideoLMServer(("127.0.0.1", 0), lm, model_name="tiny", num_frames=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="vlm_rlaif.serve.server"):
            ok = post(server, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3, "temperature": 0})
            bad = post(server, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 0})
    finally:
        server.shutdown()
        server.server_close()
    assert (ok, bad) == (200, 400)
    lines = [r.getMessage() for r in caplog.records if r.name == "vlm_rlaif.serve.server"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /v1/chat/completions 200, ") and " prompt + " in lines[0] and lines[0].endswith(" s")
    assert lines[1].startswith("POST /v1/chat/completions 400, no tokens, ")
    assert not any("private" in r.getMessage() for r in caplog.records)


def test_serve_help_shows_a_request_with_a_video():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    text = serve.format_help()
    assert "vlm-rlaif serve --model demo_runs/seed0/ppo --video-root demo_runs/seed0/world/videos" in text
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in text and '"video_url": {"url": "toy_00008.mp4"}' in text
