"""Tiny models, the locally trained tokenizer, corpus reading and `vlm-rlaif model init`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from vlm_rlaif.cli import main
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models import GenerationSettings, VideoExample, build_tiny_model, load_adapter_model, train_tokenizer
from vlm_rlaif.models.tiny import SPECIAL_TOKENS, count_parameters, read_corpus

WORDS = "red green blue circle square triangle moves left right up down appears the a is what colour where".split()


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, 10)) + "." for _ in range(3000)]


def test_tokenizer_special_tokens_and_byte_level_round_trip(corpus, tmp_path):
    tokenizer = train_tokenizer(corpus, vocab_size=512, out_dir=tmp_path)
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert tokenizer("a <video>\nb", add_special_tokens=False)["input_ids"].count(tokenizer.convert_tokens_to_ids("<video>")) == 1
    assert len(tokenizer) <= 512 and len(tokenizer) > 400  # merges were learnt
    text = "The red circle — moves ↑ 3 times; ünïcödé 🙂"  # unseen characters still encode, byte by byte
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tokenizer(" red circle", add_special_tokens=False)["input_ids"]) == 2  # frequent words are whole tokens
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("the red square")["input_ids"] == tokenizer("the red square")["input_ids"]
    with pytest.raises(ConfigError, match="at least 261"):
        train_tokenizer(corpus, vocab_size=100)


def test_tiny_and_small_sizes(corpus):
    tokenizer = train_tokenizer(corpus, vocab_size=2048)
    tiny = build_tiny_model("tiny", tokenizer)
    small = build_tiny_model("small", tokenizer)
    assert 1_000_000 <= count_parameters(tiny.model) <= 5_000_000
    assert 20_000_000 <= count_parameters(small.model) <= 30_000_000
    assert tiny.config.num_video_tokens(24) == 40 and tiny.processor.num_frames == 24
    assert build_tiny_model("tiny", tokenizer, video_pooling="none").config.num_video_tokens(24) == 24 * 16
    same = build_tiny_model("tiny", tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(tiny.model.parameters(), same.model.parameters()))  # seeded
    with pytest.raises(ConfigError, match="unknown tiny model size 'huge'"):
        build_tiny_model("huge", tokenizer)


def test_tiny_model_learns(corpus):
    tokenizer = train_tokenizer(corpus, vocab_size=512)
    lm = build_tiny_model("tiny", tokenizer)
    lm.set_trainable(language_model=True, projector=True, vision_tower=True)
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (4, 24, 32, 32, 3), dtype=np.uint8)
    examples = [VideoExample([{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": answer}], video)
                for answer, video in zip(["red", "green", "blue", "red"], videos)]
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=3e-3)
    lm.model.train()
    losses = []
    for _ in range(15):
        loss = lm.forward(lm.collate(examples)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_read_corpus_formats_and_errors(tmp_path):
    record = {"id": 1, "conversations": [{"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text(json.dumps([record]))
    (tmp_path / "data" / "b.jsonl").write_text(json.dumps(record) + "\n\n" + json.dumps({"output_1": {"value": "Blue."}}) + "\n")
    (tmp_path / "data" / "c.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "data" / "skip.csv").write_text("ignored")
    assert read_corpus(tmp_path / "data") == ["<video>\nWhat colour?", "Red.", "<video>\nWhat colour?", "Red.", "Blue.", "first line", "second line"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n{broken\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: invalid JSON record"):
        read_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('[\n{"value": 1},\n{oops}\n]')
    with pytest.raises(RecordError, match=r"bad.json: invalid JSON at line 3"):
        read_corpus(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such corpus"):
        read_corpus(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text('[{"text": "no value key"}]')
    with pytest.raises(UserError, match="no texts found"):
        read_corpus(tmp_path / "empty.json")


def test_model_init_command(tmp_path, caplog):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"conversations": [{"value": f"the {w} circle moves left"}]}) for w in WORDS))
    out = tmp_path / "model"
    assert main(["model", "init", "--size", "tiny", "--out", str(out), "--corpus", str(corpus), "--vocab-size", "300", "--seed", "2"]) == 0
    lm = load_adapter_model(out)
    assert lm.family == "llava-video" and len(lm.tokenizer) <= 300
    assert lm.config.num_video_tokens(lm.processor.num_frames) == 40
    assert main(["model", "init", "--out", str(out)]) == 2  # never overwrites silently
    assert "exists and is not empty" in caplog.text
    assert main(["model", "init", "--out", str(out), "--force", "--frames", "8", "--pooling", "none"]) == 0
    assert load_adapter_model(out).config.num_video_tokens(8) == 8 * 16
    assert main(["model", "init", "--out", str(tmp_path / "x"), "--image-size", "30"]) == 2
    assert main(["model", "init", "--out", str(tmp_path / "y"), "--corpus", str(tmp_path / "nope.json")]) == 2


@pytest.mark.parametrize(
    "arch, video_tokens",
    [("llava-video", 8 + 16), ("llava-next-video", 8 * 16), ("qwen2.5-vl", 8 // 2 * 16)],
)
def test_model_init_each_arch_loads_and_generates(tmp_path, caplog, arch, video_tokens):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the {w} circle moves left" for w in WORDS))
    out = tmp_path / arch
    caplog.set_level("INFO", logger="vlm_rlaif.model")
    command = ["model", "init", "--arch", arch, "--out", str(out), "--corpus", str(corpus), "--vocab-size", "400"]
    assert main([*command, "--frames", "8"]) == 0
    assert f"8 frames -> {video_tokens} video tokens" in caplog.text
    lm = load_adapter_model(out)
    assert lm.family == arch and len(lm.tokenizer) <= 400
    video = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert lm.num_video_tokens(video) == video_tokens
    example = VideoExample([{"role": "user", "content": "what colour is the circle"}], video=video)
    (generation,) = lm.generate([example], GenerationSettings(max_new_tokens=2, temperature=0))
    assert 1 <= len(generation.token_ids) <= 2


@pytest.mark.parametrize("option", [["--patch-size", "4"], ["--pooling", "none"]])
def test_model_init_llava_video_options_are_refused_for_hf_native(tmp_path, caplog, option):
    out = tmp_path / "model"
    assert main(["model", "init", "--arch", "qwen2.5-vl", "--out", str(out), *option]) == 2
    assert "apply to --arch llava-video only" in caplog.text
    assert not out.exists()
