"""`serve` (OpenAI-compatible endpoint, judged through our own ChatClient) and `chat` (streamed, multi-turn)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import base64
import io
import json
import math
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_rlaif.cli import main as cli_main
from vlm_rlaif.clients.openai_compat import ChatClient, ChatRequest
from vlm_rlaif.clients.images import frames_to_image_parts
from vlm_rlaif.clients.parsing import choice_probabilities
from vlm_rlaif.models import GenerationSettings, VideoExample, build_tiny_model, train_tokenizer
from vlm_rlaif.serve import ChatSession, VideoLMServer, run_chat_loop
from vlm_rlaif.video import load_video, write_video

QUESTION = "Which answer is better?"
CORPUS = [QUESTION, "The better answer is A.", "The better answer is B.", "A", "B", "It is red. It is blue."] * 20
FRAMES = 8


def video(colour, seed=0):
    """A mostly red or mostly blue clip with a little noise."""
    frames = np.random.default_rng(seed).integers(0, 40, (FRAMES, 32, 32, 3), dtype=np.uint8)
    frames[..., {"red": 0, "blue": 2}[colour]] += 200
    return frames


@pytest.fixture(scope="module")
def judge():
    """A tiny llava-video taught to answer " A" for red videos and " B" for blue ones."""
    lm = build_tiny_model("tiny", train_tokenizer(CORPUS, vocab_size=400), frames=FRAMES, seed=0)
    examples = [
        VideoExample([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}], video(colour, seed))
        for colour, answer in (("red", "A"), ("blue", "B"))
        for seed in range(3)
    ]
    lm.set_trainable(language_model=True, projector=True)
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=3e-3)
    lm.model.train()
    for _ in range(40):
        loss = lm.forward(lm.collate(examples, visual="frames")).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lm.model.requires_grad_(False)
    lm.model.eval()
    return lm


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(video("red", seed=7), root / "red.mp4", fps=4)
    return root


@pytest.fixture(scope="module")
def server(judge, video_root):
    server = VideoLMServer(("127.0.0.1", 0), judge, model_name="tiny-judge", video_root=video_root, num_frames=FRAMES)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def decoded(parts):
    """The frames the server sees: the JPEG images of the parts, decoded."""
    images = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts]
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])


def post(server, body, path="/v1/chat/completions", raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url.removesuffix("/v1") + path, data=data, headers={"Content-Type": "application/json", "Authorization": "Bearer anything"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_served_model_judges_through_chat_client(judge, server):
    with ChatClient(server.url, "tiny-judge", api_key_env=None, max_retries=0) as client:
        for colour, verdict in (("red", "A"), ("blue", "B")):
            parts = frames_to_image_parts(video(colour, seed=5))
            request = ChatRequest([{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}], max_tokens=3, top_logprobs=5)
            [result] = client.complete([request])
            assert result.ok, result.error
            assert result.model == "tiny-judge" and result.system_fingerprint.startswith("fp_vlm_rlaif_")
            assert result.tokens[0] == f" {verdict}" and result.text.startswith(verdict)
            probability_a = choice_probabilities(result.top_logprobs[0])["A"]
            # The same question asked of the model directly, on the frames the server decoded.
            example = VideoExample([{"role": "user", "content": QUESTION}], decoded(parts))
            logprob_a, logprob_b = judge.next_token_logprobs([example], [" A", " B"])[0].tolist()
            assert math.isclose(result.top_logprobs[0][" A"], logprob_a, abs_tol=1e-5)
            assert math.isclose(probability_a, 1 / (1 + math.exp(logprob_b - logprob_a)), abs_tol=1e-5)
            assert (probability_a > 0.9) == (verdict == "A") and (probability_a < 0.1) == (verdict == "B")
            prompt_tokens = int(judge.collate([example], add_generation_prompt=True)["attention_mask"].sum())
            assert result.usage["prompt_tokens"] == prompt_tokens and result.usage["completion_tokens"] == len(result.tokens)


def test_video_url_answers_like_generate(judge, server, video_root):
    frames = load_video(str(video_root / "red.mp4"), num_frames=FRAMES).frames
    expected = judge.generate([VideoExample([{"role": "user", "content": QUESTION}], frames)], GenerationSettings(max_new_tokens=4, temperature=0))
    inline = "data:video/mp4;base64," + base64.b64encode((video_root / "red.mp4").read_bytes()).decode()
    for url in ("red.mp4", (video_root / "red.mp4").as_uri(), inline):
        status, reply = post(server, {
            "model": "anything",
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": QUESTION}]}],
            "temperature": 0, "max_tokens": 4, "logprobs": True, "top_logprobs": 2,
        })  # fmt: skip
        assert status == 200, reply
        choice = reply["choices"][0]
        assert choice["message"]["content"] == expected[0].text
        assert choice["finish_reason"] == ("stop" if expected[0].ended_with_eos else "length")
        content = choice["logprobs"]["content"]
        assert len(content) == reply["usage"]["completion_tokens"] == len(expected[0].token_ids)
        for position in content:  # greedy: each token is the most likely one
            assert position["logprob"] <= 0 and math.isclose(position["logprob"], position["top_logprobs"][0]["logprob"], abs_tol=1e-6)
            assert position["bytes"] == list(position["token"].encode())


def test_token_bytes_are_the_tokens_own():
    from vlm_rlaif.serve.generation import token_text

    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    pieces = [token_text(tokenizer, i) for i in tokenizer("é", add_special_tokens=False)["input_ids"]]
    assert len(pieces) == 2  # one byte each: neither is text on its own
    assert b"".join(p.utf8 for p in pieces) == "é".encode()
    [space_a] = [token_text(tokenizer, i) for i in tokenizer(" A", add_special_tokens=False)["input_ids"]]
    assert (space_a.text, space_a.utf8) == (" A", b" A")
    eos = token_text(tokenizer, tokenizer.eos_token_id)
    assert (eos.text, eos.utf8) == ("</s>", b"</s>")


def test_models_route_and_bad_requests(server, video_root, tmp_path):
    with urllib.request.urlopen(server.url + "/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny-judge"
    user = {"role": "user", "content": QUESTION}
    outside = tmp_path / "elsewhere.mp4"
    write_video(video("red"), outside, fps=4)
    small, large = frames_to_image_parts(video("red")[:1]), frames_to_image_parts(np.zeros((1, 16, 16, 3), np.uint8))
    cases = [
        (None, b"{not json", "not JSON"),
        ({"model": "m"}, None, "messages must be a non-empty list"),
        ({"messages": [user], "n": 2}, None, "n must be 1"),
        ({"messages": [user], "stream": True}, None, "streaming"),
        ({"messages": [user], "tools": []}, None, "unsupported field"),
        ({"messages": [user], "top_logprobs": 3}, None, "needs logprobs=true"),
        ({"messages": [user], "logprobs": True, "top_logprobs": 50}, None, "top_logprobs must be"),
        ({"messages": [user], "temperature": -1}, None, "temperature must be"),
        ({"messages": [user, {"role": "assistant", "content": "A"}]}, None, "last message must be a user message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, None, "role one of"),
        ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "../elsewhere.mp4"}}]}]}, None, "outside the video root"),
        ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(outside)}}]}]}, None, "outside the video root"),
        ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "missing.mp4"}}]}]}, None, "no such file"),
        ({"messages": [{"role": "user", "content": [*small, *large]}]}, None, "same size"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]}, None, "invalid base64"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, None, "expected a text, image_url or video_url part"),
    ]  # fmt: skip
    for body, raw, message in cases:
        status, reply = post(server, body, raw=raw)
        assert status == 400 and message in reply["error"]["message"], (body, reply)
    status, reply = post(server, {"messages": [user]}, path="/v1/completions")
    assert status == 404


def test_playlists_and_concat_lists_are_refused_alike_for_existing_and_missing_files(server, video_root, tmp_path):
    """A playlist (sent as a file in the root or as a data URL) naming a file outside the root gets the
    same 400 whether that file exists: the answer tells nothing about the server's files."""
    write_video(video("red"), tmp_path / "secret.mp4", fps=4)
    replies = {}
    for target in ("secret.mp4", "missing.mp4"):
        hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{tmp_path / target}\n#EXT-X-ENDLIST\n"
        concat = f"ffconcat version 1.0\nfile {tmp_path / target}\n"
        (video_root / f"{target}.m3u8").write_text(hls)
        (video_root / f"{target}.mp4").write_text(hls)
        (video_root / f"{target}.ffconcat").write_text(concat)
        urls = {
            "m3u8 file": f"{target}.m3u8",
            "m3u8 named mp4": f"{target}.mp4",
            "concat file": f"{target}.ffconcat",
            "m3u8 data url": "data:application/vnd.apple.mpegurl;base64," + base64.b64encode(hls.encode()).decode(),
            "m3u8 data url as video": "data:video/m3u8;base64," + base64.b64encode(hls.encode()).decode(),
            "m3u8 in video/mp4": "data:video/mp4;base64," + base64.b64encode(hls.encode()).decode(),
            "concat in video/mp4": "data:video/mp4;base64," + base64.b64encode(concat.encode()).decode(),
        }
        for case, url in urls.items():
            part = {"type": "video_url", "video_url": {"url": url}}
            status, reply = post(server, {"messages": [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}], "max_tokens": 2})
            message = reply["error"]["message"] if status != 200 else ""
            replies.setdefault(case, set()).add((status, message.replace(target, "T")))
            assert status == 400, (case, reply)
    assert all(len(r) == 1 for r in replies.values()), replies
    assert "video data URLs must be of type" in next(iter(replies["m3u8 data url"]))[1]
    assert "video data URLs must be of type" in next(iter(replies["m3u8 data url as video"]))[1]


def test_too_long_prompts_and_bodies_are_refused_without_the_model_lock(server, monkeypatch):
    import time

    import vlm_rlaif.serve.server as server_module

    huge = {"messages": [{"role": "user", "content": "A " * 2_500_000}], "max_tokens": 4}  # a 5 MB question
    near = {"messages": [{"role": "user", "content": "A " * 2040}], "max_tokens": 8}  # fits only without max_tokens
    with server.lock:  # another request is generating: the huge one must not wait for it
        started = time.perf_counter()
        status, reply = post(server, huge)
        assert time.perf_counter() - started < 10
    assert status == 400 and "request messages: the prompt's text has 5000000 characters" in reply["error"]["message"]
    status, reply = post(server, near)
    assert status == 400 and re.search(r"request messages: the prompt has \d+ tokens .* max_new_tokens 8", reply["error"]["message"]), reply
    status, reply = post(server, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2})
    assert status == 200, reply

    monkeypatch.setattr(server_module, "MAX_BODY_BYTES", 1000)
    status, reply = post(server, {"messages": [{"role": "user", "content": "A " * 1000}]})
    assert status == 413 and "more than the 1000" in reply["error"]["message"]


def test_no_video_root_means_no_local_files(judge, video_root):
    server = VideoLMServer(("127.0.0.1", 0), judge, model_name="m", num_frames=FRAMES)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        part = {"type": "video_url", "video_url": {"url": str(video_root / "red.mp4")}}
        status, reply = post(server, {"messages": [{"role": "user", "content": [part]}]})
        assert status == 400 and "--video-root" in reply["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()


def test_chat_session_is_multi_turn_and_resets(judge):
    frames = video("red", seed=9)
    greedy = GenerationSettings(max_new_tokens=6, temperature=0)
    session = ChatSession(judge, frames, "chat:red", greedy)
    script = io.StringIO(f"{QUESTION}\nAnd why?\n/reset\n\n/bogus\n{QUESTION}\n/quit\nnever read\n")
    out = io.StringIO()
    assert run_chat_loop(session, script, out) == 0
    first = judge.generate([VideoExample([{"role": "user", "content": QUESTION}], frames)], greedy)[0].text
    follow_up = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And why?"},
    ]
    second = judge.generate([VideoExample(follow_up, frames)], greedy)[0].text
    text = out.getvalue()
    assert text.count("model> ") == 3 and "(conversation cleared)" in text and "unknown command /bogus" in text
    answers = [line.removeprefix("you> ").removeprefix("model> ").strip() for line in text.splitlines() if "model> " in line]
    assert answers == [first, second, first]  # streamed pieces add up to the answers
    assert session.history == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first}]


def test_chat_command_reads_a_video_file(judge, video_root, tmp_path, monkeypatch, capsys):
    judge.save(tmp_path / "model")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n"))
    args = ["chat", "--model", str(tmp_path / "model"), "--video", str(video_root / "red.mp4"), "--temperature", "0", "--max-new-tokens", "3", "--device", "cpu"]
    assert cli_main(args) == 0
    output = capsys.readouterr().out
    assert f"{FRAMES} frames" in output and "model> A" in output
