"""Generation through OpenAI-compatible servers (clients.generator), tested against our own `serve`:
its runtime LoRA endpoints (vLLM's API), the generator as a drop-in for VideoLM.generate, and the
feedback and eval stages sampling from servers."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from test_feedback_helpers import FRAMES, make_config, make_model_dir, make_video_root
from test_ppo import world  # noqa: F401  (a fixture: PPO's tiny world, for the server-rollout test)

from vlm_rlaif.clients.generator import GeneratorSettings, OpenAIGenerator, mp4_data_url
from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.feedback import run_feedback
from vlm_rlaif.feedback.config import JudgeSettings, OpenAISettings
from vlm_rlaif.models import GenerationSettings, LoraSettings, VideoExample, load_adapter_model
from vlm_rlaif.rollout.engine import make_engine
from vlm_rlaif.serve import VideoLMServer
from vlm_rlaif.video import load_video

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_video_root(tmp_path_factory.mktemp("videos"))


def serve(lm, **kwargs) -> VideoLMServer:
    server = VideoLMServer(("127.0.0.1", 0), lm, model_name="tiny", num_frames=FRAMES, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server: VideoLMServer) -> None:
    server.shutdown()
    server.server_close()
    assert not server._handlers  # every keep-alive connection's thread has ended


def record_requests(monkeypatch) -> list[tuple[int, object]]:
    """(server port, requested model) of every chat completion any server answers from now on."""
    log = []
    original = VideoLMServer.serving

    def recording(self, model):
        log.append((self.server_address[1], model))
        return original(self, model)

    monkeypatch.setattr(VideoLMServer, "serving", recording)
    return log


def post(server, path, body):
    request = urllib.request.Request(server.url.removesuffix("/v1") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def frames_of(root, name="v0"):
    return load_video(str(root / "videos" / f"{name}.mp4"), num_frames=FRAMES).frames


def perturbed_adapter(lm, directory, name="trained"):
    """A LoRA adapter whose weights are far from zero, so it changes what the model says."""
    lm.add_lora(name, LoraSettings(r=4, alpha=16, targets="attn"))
    with torch.no_grad():
        for pname, param in lm.model.named_parameters():
            if f".{name}." in pname:
                param.copy_(torch.randn_like(param, generator=torch.Generator().manual_seed(len(pname))) * 0.8)
    lm.save_lora(directory, name)
    return directory


def ask(server, model, frames, max_tokens=6):
    parts = frames_to_image_parts(frames)
    return post(server, "/v1/chat/completions", {
        "model": model, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}],
    })  # fmt: skip


# ---------------------------------------------------------------------- serve: runtime LoRA API


def test_serve_loads_and_unloads_lora_adapters_at_run_time(model_dir, root, tmp_path):
    lm = load_adapter_model(model_dir)
    reference = load_adapter_model(model_dir)
    adapter = perturbed_adapter(reference, tmp_path / "loras" / "a1")
    frames = frames_of(root)
    example = [VideoExample([{"role": "user", "content": QUESTION}], _jpeg_roundtrip(frames))]
    greedy = GenerationSettings(max_new_tokens=6, temperature=0)
    with_adapter = reference.generate(example, greedy)[0].text
    with reference.adapter_disabled():
        base = reference.generate(example, greedy)[0].text
    assert with_adapter != base  # the adapter matters, so the test can tell which weights answered

    server = serve(lm, lora_root=tmp_path / "loras")
    try:
        status, reply = ask(server, "tiny", frames)
        assert status == 200 and reply["choices"][0]["message"]["content"] == base
        assert post(server, "/v1/load_lora_adapter", {"lora_name": "pol-v1", "lora_path": str(adapter)})[0] == 200
        with urllib.request.urlopen(server.url + "/models") as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["tiny", "pol-v1"]
        status, reply = ask(server, "pol-v1", frames)
        assert status == 200 and reply["model"] == "pol-v1"
        assert reply["choices"][0]["message"]["content"] == with_adapter
        status, reply = ask(server, "tiny", frames)  # the served name is the base, adapters loaded or not
        assert reply["choices"][0]["message"]["content"] == base
        assert ask(server, "pol-v2", frames)[0] == 404  # never a silent fallback to other weights
        status, reply = post(server, "/v1/load_lora_adapter", {"lora_name": "pol-v1", "lora_path": str(adapter)})
        assert status == 400 and "in use" in reply["error"]["message"]
        assert post(server, "/v1/unload_lora_adapter", {"lora_name": "pol-v1"})[0] == 200
        assert ask(server, "pol-v1", frames)[0] == 404
        assert post(server, "/v1/unload_lora_adapter", {"lora_name": "pol-v1"})[0] == 404
        # Untrusted paths stay inside the LoRA root; names must be plain.
        outside = perturbed_adapter(load_adapter_model(model_dir), tmp_path / "elsewhere")
        for body in ({"lora_name": "x", "lora_path": str(outside)}, {"lora_name": "x", "lora_path": "../elsewhere"},
                     {"lora_name": "a.b", "lora_path": str(adapter)}, {"lora_name": "x"}):  # fmt: skip
            status, reply = post(server, "/v1/load_lora_adapter", body)
            assert status == 400, body
        assert ask(server, "tiny", frames)[1]["choices"][0]["message"]["content"] == base
    finally:
        stop(server)

    plain = serve(lm)  # without a LoRA root the API is off and any model name is the model
    try:
        status, reply = post(plain, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter)})
        assert status == 404 and "--lora-root" in reply["error"]["message"]
        assert ask(plain, "whatever", frames)[0] == 200
    finally:
        stop(plain)


def _jpeg_roundtrip(frames):
    """The frames as the server sees them after the generator's JPEG image parts."""
    import io

    from PIL import Image

    parts = frames_to_image_parts(frames)
    images = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts]
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])


# ---------------------------------------------------------------------- the generator


def test_generator_answers_as_the_served_model_does_and_spreads_over_servers(model_dir, root, tmp_path, monkeypatch):
    lm = load_adapter_model(model_dir)
    servers = [serve(lm), serve(lm)]
    log = record_requests(monkeypatch)
    try:
        settings = GeneratorSettings(kind="openai", base_url=[s.url for s in servers], model="tiny")
        generator = OpenAIGenerator(settings, cache_dir=tmp_path / "cache", tokenizer=lm.tokenizer, eos_token_id=lm.eos_token_id)
        videos = [frames_of(root, f"v{i}") for i in range(3)]
        examples = [VideoExample([{"role": "user", "content": QUESTION}], v, where=f"item {i}") for i, v in enumerate(videos)]
        greedy = GenerationSettings(max_new_tokens=6, temperature=0, num_samples=2, seed=5)
        remote = generator.generate(examples, greedy)
        local = lm.generate([VideoExample(e.conversation, _jpeg_roundtrip(e.video)) for e in examples], greedy)
        assert [(g.example_index, g.sample_index) for g in remote] == [(g.example_index, g.sample_index) for g in local]
        assert [g.text for g in remote] == [g.text for g in local]
        assert [g.ended_with_eos for g in remote] == [g.ended_with_eos for g in local]
        for g in remote:  # ids: the text again, plus EOS when the server stopped on it
            text_ids = lm.tokenizer(g.text, add_special_tokens=False)["input_ids"]
            assert g.token_ids == text_ids + ([lm.eos_token_id] if g.ended_with_eos else [])
        assert sorted(Counter(port for port, _ in log).values()) == [3, 3]  # 6 requests, round-robin over both

        sampled = GenerationSettings(max_new_tokens=6, temperature=1.0, num_samples=3, seed=11)
        first = [g.text for g in generator.generate(examples, sampled)]
        before = len(log)
        again = [g.text for g in generator.generate(examples, sampled)]
        assert again == first and len(log) == before  # seeded samples come back from the cache
        assert len(set(first)) > 1  # the samples of one prompt are distinct draws, not one repeated
        # Video as one mp4 data URL (what vLLM's server takes for video models): the server decodes it.
        video_generator = OpenAIGenerator(GeneratorSettings(kind="openai", base_url=servers[0].url, model="tiny", video_as="video"))
        [reply] = video_generator.generate(examples[:1], GenerationSettings(max_new_tokens=6, temperature=0))
        sent = tmp_path / "sent.mp4"
        sent.write_bytes(base64.b64decode(mp4_data_url(videos[0]).split(",", 1)[1]))
        [local_video] = lm.generate([VideoExample(examples[0].conversation, load_video(str(sent), num_frames=FRAMES).frames)],
                                    GenerationSettings(max_new_tokens=6, temperature=0))  # fmt: skip
        assert reply.text == local_video.text and reply.token_ids == []  # no tokenizer given: text only
    finally:
        for s in servers:
            stop(s)


def test_generator_settings_and_errors_name_the_problem(model_dir, root):
    with pytest.raises(ConfigError, match="base_url"):
        GeneratorSettings(kind="openai", model="m").check("feedback.generator")
    lm = load_adapter_model(model_dir)
    server = serve(lm)
    try:
        generator = OpenAIGenerator(GeneratorSettings(kind="openai", base_url=server.url, model="tiny"))
        too_long = VideoExample([{"role": "user", "content": "colour " * 5000}], frames_of(root), where="prompts.json: record 7")
        with pytest.raises(UserError, match="record 7"):
            generator.generate([too_long], GenerationSettings(max_new_tokens=4, temperature=0))
        with pytest.raises(ConfigError, match="top_k"):
            generator.generate([too_long], GenerationSettings(top_k=5))
    finally:
        stop(server)
    assert mp4_data_url(frames_of(root)).startswith("data:video/mp4;base64,")


# ---------------------------------------------------------------------- stages sampling from servers


def test_feedback_candidates_and_descriptions_come_from_the_servers(model_dir, root, tmp_path, monkeypatch):
    lm = load_adapter_model(model_dir)
    server = serve(lm)
    log = record_requests(monkeypatch)
    loads = []
    import vlm_rlaif.feedback.pipeline as feedback_pipeline

    real_load = feedback_pipeline.load_adapter_model
    monkeypatch.setattr(feedback_pipeline, "load_adapter_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    try:
        judge = JudgeSettings(kind="openai", openai=OpenAISettings(base_url=server.url, model="tiny", api_key_env=None))
        config = make_config(model_dir, root, tmp_path / "run", num_frames=FRAMES, judge=judge)
        config.generator = GeneratorSettings(kind="openai", base_url=server.url, model="tiny")
        summary = run_feedback(config)
    finally:
        stop(server)
    assert summary["pairs_judged"] > 0 and len(log) > 0
    assert not loads  # candidates, descriptions and verdicts all came from the server: no local model

    server = serve(lm)
    try:
        config = make_config(model_dir, root, tmp_path / "run2")
        config.generator = GeneratorSettings(kind="openai", base_url=server.url, model="tiny")
        log.clear()
        summary = run_feedback(config)
    finally:
        stop(server)
    candidates = [json.loads(line) for line in (tmp_path / "run2" / "candidates.jsonl").read_text().splitlines()]
    contexts = [json.loads(line) for line in (tmp_path / "run2" / "contexts.jsonl").read_text().splitlines()]
    answers = sum(len(c["answers"]) for c in candidates)
    assert summary["prompts"] == 6 and answers > 0
    descriptions = sum(len(c["descriptions"]) for c in contexts)
    assert len(log) >= answers + descriptions  # every answer and every clip description was a request
    assert all(c["describer"] == "openai:tiny" for c in contexts)


def test_eval_predictions_come_from_a_server(model_dir, root, tmp_path):
    from vlm_rlaif.eval.config import BenchmarkSpec, EvalConfig, ModelSpec
    from vlm_rlaif.eval.run import run_eval

    bench = tmp_path / "mc.json"
    items = [{"video_name": f"v{i}", "question_id": f"q{i}", "question": QUESTION, "candidates": ["red", "blue"], "answer": "red"}
             for i in range(3)]  # fmt: skip
    bench.write_text(json.dumps(items))
    lm = load_adapter_model(model_dir)
    server = serve(lm)
    try:
        config = EvalConfig(
            models=[ModelSpec(name="served", generator=GeneratorSettings(kind="openai", base_url=server.url, model="tiny"))],
            benchmarks=[BenchmarkSpec(name="mc", kind="mcq", file=str(bench), video_root=str(root / "videos"))],
            out=str(tmp_path / "eval"),
        )
        config.generation.num_frames = FRAMES
        config.generation.temperature = 0
        config.generation.max_new_tokens = 8
        run_eval(config)
    finally:
        stop(server)
    lines = [json.loads(x) for x in (tmp_path / "eval" / "predictions" / "served" / "mc.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["q0", "q1", "q2"]
    for i, line in enumerate(lines):
        [local] = lm.generate(
            [VideoExample([{"role": "user", "content": line["prompts"][0]}], _jpeg_roundtrip(frames_of(root, f"v{i}")))],
            GenerationSettings(max_new_tokens=8, temperature=0),
        )
        assert line["predictions"] == [local.text]


# ---------------------------------------------------------------------- PPO rollouts from a server


def test_openai_rollout_engine_hot_loads_each_policy_version(model_dir, root, tmp_path):
    served = load_adapter_model(model_dir)
    server = serve(served, lora_root=tmp_path)
    policy = load_adapter_model(model_dir)
    perturbed_adapter(policy, tmp_path / "unused", name="policy")
    try:
        engine = make_engine("openai", policy, adapter="policy", workdir=tmp_path / "rollout_adapters",
                             server=GeneratorSettings(kind="openai", base_url=server.url, model="tiny"))  # fmt: skip
        assert list(server.runtime_adapters) == [engine.lora_name]
        example = VideoExample([{"role": "user", "content": QUESTION}], frames_of(root))
        greedy = GenerationSettings(max_new_tokens=6, temperature=0)
        policy.set_adapter("policy")
        expected = policy.generate([VideoExample(example.conversation, _jpeg_roundtrip(example.video))], greedy)[0]
        [generation] = engine.generate([example], greedy)
        assert generation.text == expected.text and generation.ended_with_eos == expected.ended_with_eos
        with torch.no_grad():  # an update changes the policy; the server must sample the new weights
            for name, param in policy.model.named_parameters():
                if ".policy." in name:
                    param.mul_(-1.5)
        first = engine.lora_name
        engine.update_policy()
        assert list(server.runtime_adapters) == [engine.lora_name] != [first]
        assert not (tmp_path / "rollout_adapters" / first).exists()
        expected = policy.generate([VideoExample(example.conversation, _jpeg_roundtrip(example.video))], greedy)[0]
        assert engine.generate([example], greedy)[0].text == expected.text
        engine.close()
    finally:
        stop(server)
    with pytest.raises(UserError, match="LoRA policy"):
        make_engine("openai", load_adapter_model(model_dir), adapter=None, workdir=tmp_path / "w",
                    server=GeneratorSettings(kind="openai", base_url="http://127.0.0.1:9/v1", model="m"))  # fmt: skip


def test_ppo_samples_its_rollouts_from_a_server_that_loads_each_iteration(world, tmp_path, monkeypatch):
    from test_ppo import ppo_config, says_red

    from vlm_rlaif.train.ppo import run_ppo

    log = record_requests(monkeypatch)
    server = serve(load_adapter_model(world / "sft_model"), lora_root=tmp_path)
    try:
        config = ppo_config(world, tmp_path / "ppo", ppo={"epochs": 1}, runtime={
            "engine": "openai", "rollout_server": {"kind": "openai", "base_url": server.url, "model": "tiny"}})  # fmt: skip
        summary = run_ppo(config, reward_fn=says_red)
    finally:
        stop(server)
    assert summary["iterations"] == 2
    asked = [model for _, model in log]
    versions = sorted(set(asked))
    assert len(versions) == 2 and all(v.startswith("policy-") for v in versions)  # one adapter per iteration
    assert asked.count(versions[0]) == asked.count(versions[1]) == 8  # rollout_batch_size requests each
    # Only the newest version stays loaded: the one after the last update (older ones were unloaded).
    prefix = versions[0].rsplit("-v", 1)[0]
    assert versions == [f"{prefix}-v1", f"{prefix}-v2"] and list(server.runtime_adapters) == [f"{prefix}-v3"]
