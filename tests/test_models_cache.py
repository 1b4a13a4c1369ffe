"""Visual-feature cache (memory LRU, disk, keys, fingerprints) and the visual-path call probe."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import logging

import pytest
import torch

from model_inputs import ask, chat, frames
from vlm_rlaif.models import (
    FeatureCache,
    GenerationSettings,
    ScalarModel,
    VideoExample,
    build_tiny_model,
    count_visual_calls,
    train_tokenizer,
)
from vlm_rlaif.models.examples import ModelInputError

CORPUS = ["What colour is the circle? The circle is red.", "Answer A is better.", "Answer B is better."] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def tower_calls(lm):
    """A list that grows by one per vision-tower forward."""
    calls = []
    lm.visual_modules()["vision_tower"].register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_memory_cache_is_lru_by_bytes():
    cache = FeatureCache(max_bytes=2 * 400)  # room for two (10, 10) float32 tensors
    a, b, c = (torch.full((10, 10), float(i)) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", c)  # evicts the least recent: "b"
    assert cache.get("b") is None and torch.equal(cache.get("a"), a) and torch.equal(cache.get("c"), c)
    assert len(cache) == 2 and cache.memory_bytes == 800
    assert (cache.hits, cache.misses) == (3, 1)
    cache.put("huge", torch.zeros(1000))  # larger than the whole budget: not kept in memory
    assert cache.get("huge") is None and len(cache) == 2


def test_disk_cache_survives_a_new_instance_and_rejects_bad_files(tmp_path, caplog):
    features = torch.randn(40, 8, dtype=torch.bfloat16)
    FeatureCache(directory=tmp_path).put("v1|vision=abc", features)
    fresh = FeatureCache(directory=tmp_path)
    assert torch.equal(fresh.get("v1|vision=abc"), features)
    assert fresh.get("v2|vision=abc") is None
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries
    [stored] = list(tmp_path.glob("*.safetensors"))
    stored.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        assert FeatureCache(directory=tmp_path).get("v1|vision=abc") is None
    assert "ignoring unreadable feature cache file" in caplog.text


def test_cached_and_uncached_results_are_identical(tokenizer):
    cached = build_tiny_model("tiny", tokenizer, seed=5)
    plain = build_tiny_model("tiny", tokenizer, seed=5, )
    plain.feature_cache = None
    examples = [ask("Which is better?", frames(24), "c1"), ask("And?", frames(7, seed=1), "c2")]
    responses = [[40, 41, 42], [43]]
    first = cached.response_logprobs(examples, responses)[0]
    second = cached.response_logprobs(examples, responses)[0]  # served from the cache
    reference = plain.response_logprobs(examples, responses)[0]
    assert cached.feature_cache.hits == 2 and len(cached.feature_cache) == 2
    assert torch.equal(first, second) and torch.equal(first, reference)
    assert torch.equal(
        cached.next_token_logprobs(examples, [" A", " B"], assistant_prefix="Answer"),
        plain.next_token_logprobs(examples, [" A", " B"], assistant_prefix="Answer"),
    )
    assert len(plain.collate(examples, add_generation_prompt=True)) == 4  # features path without a cache works


def test_the_tower_runs_once_per_video_across_a_multi_pass_step(tokenizer, tmp_path):
    lm = build_tiny_model("tiny", tokenizer, seed=6)
    calls = tower_calls(lm)
    prompts = [ask("What colour?", frames(24), "p1"), ask("Where?", frames(24, seed=2), "p2")]
    samples = lm.generate(prompts, GenerationSettings(max_new_tokens=4, num_samples=3, seed=0))
    lm.response_logprobs([prompts[s.example_index] for s in samples], [s.token_ids for s in samples])
    lm.next_token_logprobs(prompts, [" A", " B"], assistant_prefix="Answer")
    ScalarModel(lm).score([chat("What colour?", "Red.", frames(24), "p1")])
    assert len(calls) == 2  # one tower pass per video, five passes over the prompts
    # Without keys nothing is cached, but K samples of one example still share one tower pass.
    lm.generate([ask("What colour?", frames(24))], GenerationSettings(max_new_tokens=2, num_samples=4))
    assert len(calls) == 3


def test_features_only_examples_and_a_shared_disk_cache(tokenizer, tmp_path):
    shared = FeatureCache(directory=tmp_path)
    writer = build_tiny_model("tiny", tokenizer, seed=6)
    writer.feature_cache = shared
    with_frames = writer.next_token_logprobs([ask("q", frames(24), "d1")], [" A"], assistant_prefix="Answer")
    reader = build_tiny_model("tiny", tokenizer, seed=6)  # same weights: same fingerprint
    reader.feature_cache = FeatureCache(directory=tmp_path)
    calls = tower_calls(reader)
    without_frames = reader.next_token_logprobs([ask("q", None, "d1")], [" A"], assistant_prefix="Answer")
    assert torch.equal(with_frames, without_frames) and calls == []
    other = build_tiny_model("tiny", tokenizer, seed=7)  # other weights: other fingerprint, no stale hit
    other.feature_cache = FeatureCache(directory=tmp_path)
    with pytest.raises(ModelInputError, match="not in the feature cache"):
        other.next_token_logprobs([ask("q", None, "d1")], [" A"], assistant_prefix="Answer")


def test_fingerprint_follows_the_visual_weights(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=8)
    calls = tower_calls(lm)
    example = ask("q", frames(4), "f1")
    before = lm.encode_video(example.video, "f1")
    fingerprint = lm.vision_fingerprint()
    assert lm.vision_fingerprint() == fingerprint
    with torch.no_grad():
        lm.visual_modules()["projector"].linear_1.bias.add_(1.0)  # an in-place update, as an optimizer's
    assert lm.vision_fingerprint() != fingerprint
    after = lm.encode_video(example.video, "f1")
    assert len(calls) == 2 and not torch.allclose(before, after)


def test_a_key_reused_for_another_frame_count_is_recomputed(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=8)
    assert lm.encode_video(frames(4), "same-key").shape[0] == 4 + 16
    assert lm.encode_video(frames(9), "same-key").shape[0] == 9 + 16


def test_nothing_is_cached_while_the_visual_path_trains(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=9)
    lm.set_trainable(language_model=False, projector=True)
    calls = tower_calls(lm)
    example = ask("q", frames(3), "t1")
    lm.encode_video(example.video, "t1")
    lm.encode_video(example.video, "t1")
    assert len(calls) == 2 and len(lm.feature_cache) == 0
    assert "pixel_values_videos" in lm.collate([example], add_generation_prompt=True)


def test_probe_counts_frames_and_features_paths_with_grad(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=10)
    lm.set_trainable(language_model=True, projector=True)
    with count_visual_calls(lm) as counts:
        lm.forward(lm.collate([chat("q", "a", frames(3))], visual="frames")).loss.backward()
    assert counts.calls_with_grad == {"vision_tower": 1, "projector": 1, "splice": 1}
    assert counts.forwards_with_grad == counts.video_forwards_with_grad == 1

    lm.set_trainable(language_model=True, projector=False)
    with count_visual_calls(lm) as counts:
        lm.forward(lm.collate([chat("q", "a", frames(3), "k")], visual="features")).loss.backward()
    assert counts.calls_with_grad == {"splice": 1}  # cached features: the tower ran without grad
    assert counts.calls_without_grad == {"vision_tower": 1, "projector": 1}
    assert counts.with_grad == 1 and counts.video_forwards_with_grad == 1


def test_probe_reads_zero_when_the_video_is_dropped(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=10)
    lm.set_trainable(language_model=True)
    example = chat("q", "a", frames(3))
    dropped = VideoExample(example.conversation)  # what a trainer that loses the video would feed
    with count_visual_calls(lm) as counts:
        lm.forward(lm.collate([dropped])).loss.backward()
    assert counts.with_grad == 0 and counts.forwards_with_grad == 1 and counts.video_forwards_with_grad == 0
    with count_visual_calls(lm) as counts, torch.no_grad():
        lm.forward(lm.collate([example], visual="frames"))
    assert counts.with_grad == 0 and counts.calls_without_grad["splice"] == 1
    with count_visual_calls(lm) as counts:
        pass
    lm.forward(lm.collate([example], visual="frames"))  # after the block: hooks are gone
    assert counts.with_grad == 0
