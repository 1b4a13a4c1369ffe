"""VideoLM: batches, generation, log-probabilities, judging, training switches, loading and errors."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from torch import nn

from model_inputs import ask, chat, frames
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models import (
    IGNORE_INDEX,
    GenerationSettings,
    LlavaVideoLM,
    ModelInputError,
    build_tiny_model,
    family_of_directory,
    load_adapter_model,
    train_tokenizer,
)
from vlm_rlaif.models.llava_video import VideoInputError
from vlm_rlaif.models.registry import family_class

# peft asks transformers a deprecated question; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CORPUS = ["What colour is the circle? The circle is red.", "Answer A is better. Answer B is better."] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def lm(tokenizer):
    return build_tiny_model("tiny", tokenizer, seed=3)


def manual_logits(lm, example, extra_ids=()):
    """Logits of one unpadded prompt (+ extra tokens), computed straight on the transformers model."""
    features = lm.base_model.get_video_features(lm.preprocess_video(example.video), [len(example.video)])[0]
    ids, _ = lm.processor.encode_conversation(
        example.conversation, num_video_tokens=features.shape[0], add_generation_prompt=True
    )
    input_ids = torch.tensor([ids + list(extra_ids)])
    return lm.base_model(input_ids=input_ids, video_features=features).logits[0], len(ids)


def test_sft_batch_has_assistant_only_labels_and_right_padding(lm):
    examples = [chat("What colour is the circle?", "The circle is red.", frames(24)), chat("Hi?", "Hello.", frames(6, seed=1))]
    batch = lm.collate(examples, visual="frames")
    assert set(batch) == {"input_ids", "attention_mask", "position_ids", "labels", "pixel_values_videos", "video_num_frames"}
    assert batch["pixel_values_videos"].shape == (30, 3, 32, 32) and batch["video_num_frames"].tolist() == [24, 6]
    lengths = batch["attention_mask"].sum(1)
    assert batch["attention_mask"][1, : lengths[1]].all() and not batch["attention_mask"][1, lengths[1] :].any()
    assert batch["position_ids"][1, : lengths[1]].tolist() == list(range(lengths[1]))
    for row, answer in enumerate((" The circle is red.</s>", " Hello.</s>")):
        labels = batch["labels"][row]
        assert lm.tokenizer.decode(labels[labels != IGNORE_INDEX]) == answer
    assert torch.isfinite(lm.forward(batch).loss)


def test_batches_mix_frame_counts_and_text_only_examples(lm):
    examples = [ask("one", frames(24)), ask("two"), ask("three", frames(3, seed=2))]
    batch = lm.collate(examples, add_generation_prompt=True)
    assert batch["video_features"].shape == (40 + 19, 128)
    counts = (batch["input_ids"] == lm.video_token_id).sum(1).tolist()
    assert counts == [40, 0, 19]
    batched = lm.forward(batch).logits[:, -1]
    for row, example in enumerate(examples):
        alone = lm.forward(lm.collate([example], add_generation_prompt=True)).logits[0, -1]
        torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-5)


def test_generate_returns_k_samples_per_example_in_order(lm):
    examples = [ask("What colour?", frames(24), "v1"), ask("Where?", frames(8, seed=4), "v2")]
    settings = GenerationSettings(max_new_tokens=6, num_samples=3, batch_size=4, seed=7)
    samples = lm.generate(examples, settings)
    assert [(s.example_index, s.sample_index) for s in samples] == [(e, k) for e in range(2) for k in range(3)]
    for sample in samples:
        assert 1 <= len(sample.token_ids) <= 6
        assert sample.ended_with_eos == (sample.token_ids[-1] == lm.eos_token_id)
        assert lm.eos_token_id not in sample.token_ids[:-1]
    again = lm.generate(examples, settings)
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]  # seeded
    assert len({tuple(s.token_ids) for s in samples}) > 1  # sampling, not one answer repeated


def test_greedy_generation_is_the_same_batched_or_alone(lm):
    examples = [ask("What colour is the circle in this video?", frames(24), "a"), ask("Hi", frames(5, seed=5), "b")]
    greedy = GenerationSettings(max_new_tokens=8, temperature=0)
    batched = lm.generate(examples, greedy)
    alone = [lm.generate([example], greedy)[0] for example in examples]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_static_cache_gives_the_same_greedy_output(lm):
    examples = [ask("What colour is the circle in this video?", frames(24), "a"), ask("Hi", frames(5, seed=5), "b")]
    caches = []
    hook = lm.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: caches.append(type(kwargs.get("cache", kwargs.get("past_key_values"))).__name__), with_kwargs=True
    )
    try:
        dynamic = lm.generate(examples, GenerationSettings(max_new_tokens=12, temperature=0))
        assert "StaticCache" not in caches
        caches.clear()
        static_settings = GenerationSettings(max_new_tokens=12, temperature=0, cache_implementation="static")
        static = lm.generate(examples, static_settings)
    finally:
        hook.remove()
    assert set(caches) == {"StaticCache"}  # the setting reached transformers, it was not ignored
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    assert any(len(g.token_ids) > 2 for g in dynamic)
    with pytest.raises(ConfigError, match="unknown cache_implementation 'statc'"):
        GenerationSettings(cache_implementation="statc")


def test_generation_eos_flags(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=3)
    hidden, vocab = lm.hidden_size, len(tokenizer)
    head = nn.Linear(hidden, vocab, bias=True)
    nn.init.zeros_(head.weight)
    lm.base_model.lm_head = head
    with torch.no_grad():
        head.bias.zero_()
        head.bias[lm.eos_token_id] = 10.0  # always ends at once
    ended = lm.generate([ask("q", frames(2))], GenerationSettings(max_new_tokens=5, temperature=0))[0]
    assert ended.ended_with_eos and ended.token_ids == [lm.eos_token_id] and ended.text == ""
    word = tokenizer.convert_tokens_to_ids("circle") if "circle" in tokenizer.get_vocab() else 300
    with torch.no_grad():
        head.bias.zero_()
        head.bias[word] = 10.0  # never ends
        head.bias[lm.video_token_id] = 20.0  # the placeholder is never sampled, however likely
    cut = lm.generate([ask("q", frames(2))], GenerationSettings(max_new_tokens=5, temperature=0))[0]
    assert not cut.ended_with_eos and cut.token_ids == [word] * 5
    assert cut.text == tokenizer.decode([word] * 5).strip()
    with pytest.raises(ModelInputError, match="example 0: the response holds the video token"):
        lm.response_logprobs([ask("q", frames(2))], [[word, lm.video_token_id]])


@torch.no_grad()
def test_response_logprobs_match_a_manual_forward(lm):
    examples = [ask("What colour is the circle?", frames(24), "r1"), ask("Hi", frames(4, seed=6), "r2")]
    responses = [[40, 41, 42, lm.eos_token_id], [50, 51]]
    logprobs, mask = lm.response_logprobs(examples, responses)
    assert logprobs.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert (logprobs[~mask] == 0).all()
    for row, (example, response) in enumerate(zip(examples, responses)):
        logits, prompt_length = manual_logits(lm, example, response)
        expected = torch.log_softmax(logits, -1)[prompt_length - 1 : -1].gather(1, torch.tensor(response)[:, None])[:, 0]
        torch.testing.assert_close(logprobs[row, : len(response)], expected, atol=1e-5, rtol=1e-5)


def test_response_logprobs_carry_grad_when_enabled(lm):
    lm.set_trainable(language_model=True)
    logprobs, mask = lm.response_logprobs([ask("q", frames(3), "g")], [[40, 41]])
    assert logprobs.requires_grad
    logprobs[mask].sum().backward()
    assert lm.base_model.lm_head.weight.grad is not None
    lm.base_model.zero_grad()
    lm.set_trainable(language_model=False)


@torch.no_grad()
def test_next_token_logprobs_match_a_manual_forward(lm):
    examples = [ask("Which answer is better?", frames(24), "j1"), ask("And now?", frames(9, seed=8), "j2")]
    candidates = [" A", " B"]
    prefix = "Answer"
    logprobs = lm.next_token_logprobs(examples, candidates, assistant_prefix=prefix)
    assert logprobs.shape == (2, 2) and logprobs.dtype == torch.float32
    assert (logprobs.exp().sum(1) <= 1 + 1e-6).all()
    candidate_ids = lm.candidate_token_ids(candidates, prefix)
    assert lm.tokenizer.convert_ids_to_tokens(candidate_ids) == ["ĠA", "ĠB"]
    for row, example in enumerate(examples):
        features = lm.encode_video(example.video)
        ids, _ = lm.processor.encode_conversation(
            example.conversation, num_video_tokens=features.shape[0], add_generation_prompt=True, assistant_prefix=prefix
        )
        assert lm.tokenizer.decode(ids[-4:]).endswith("ASSISTANT: Answer")
        logits = lm.base_model(input_ids=torch.tensor([ids]), video_features=features).logits[0, -1]
        expected = torch.log_softmax(logits, -1)[candidate_ids]
        torch.testing.assert_close(logprobs[row], expected, atol=1e-5, rtol=1e-5)


def test_candidates_must_be_single_distinct_tokens(lm):
    with pytest.raises(ModelInputError, match="not a single token"):
        lm.candidate_token_ids([" A", " circle is"], "Answer")
    with pytest.raises(ModelInputError, match="distinct"):
        lm.candidate_token_ids([" A", " A"], "Answer")


def test_hidden_states_are_the_final_normed_states(lm):
    batch = lm.collate([ask("q", frames(3), "h")], add_generation_prompt=True)
    with torch.no_grad():
        hidden = lm.hidden_states(batch)
        logits = lm.forward(batch).logits
    assert hidden.shape == (1, batch["input_ids"].shape[1], lm.hidden_size)
    torch.testing.assert_close(lm.base_model.lm_head(hidden), logits)


def test_set_trainable_and_frames_reach_the_projector(tokenizer):
    lm = build_tiny_model("tiny", tokenizer)
    lm.set_trainable(language_model=False, projector=True, vision_tower=False)
    trainable = {n.split(".")[1] for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable == {"multi_modal_projector"}
    batch = lm.collate([chat("q", "a", frames(4))])  # "auto": the visual path trains -> frames
    assert "pixel_values_videos" in batch
    lm.forward(batch).loss.backward()
    assert lm.visual_modules()["projector"].linear_1.weight.grad.abs().sum() > 0
    lm.set_trainable(language_model=True, projector=False, vision_tower=False)
    assert "video_features" in lm.collate([chat("q", "a", frames(4))])


def test_frozen_copy_is_independent_and_frozen(tokenizer):
    lm = build_tiny_model("tiny", tokenizer)
    lm.set_trainable(language_model=True)
    reference = lm.frozen_copy()
    batch = lm.collate([chat("q", "a", frames(3))])
    torch.testing.assert_close(reference.forward(batch).logits, lm.forward(batch).logits)
    assert not any(p.requires_grad for p in reference.model.parameters())
    with torch.no_grad():
        lm.base_model.lm_head.weight.add_(0.5)
    assert not torch.allclose(reference.forward(batch).logits, lm.forward(batch).logits)


def test_max_length_truncates_training_rows_but_never_the_video(lm):
    example = chat("q", "The circle is red. " * 10, frames(2))
    full = lm.collate([example])["input_ids"].shape[1]
    cut = lm.collate([example], max_length=full - 5)
    assert cut["input_ids"].shape[1] == full - 5
    with pytest.raises(ModelInputError, match="cut the video"):
        lm.collate([example], max_length=10)
    with pytest.raises(ModelInputError, match="more than max_length"):
        lm.collate([ask("q", frames(2))], add_generation_prompt=True, max_length=10)


def test_bad_inputs_name_the_example(lm):
    with pytest.raises(ModelInputError, match="example 1: frames must be uint8"):
        lm.collate([ask("q", frames(2)), ask("q", frames(2).astype(np.float32))], add_generation_prompt=True)
    with pytest.raises(ModelInputError, match="example 0 \\(video_key 'nowhere'\\).*not in the feature cache"):
        lm.collate([ask("q", key="nowhere")], add_generation_prompt=True)
    with pytest.raises(ModelInputError, match="example 0.*end with a user turn"):
        lm.collate([chat("q", "a")], add_generation_prompt=True)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationSettings(top_p=0)


def test_a_tokenizer_without_the_video_token_is_rejected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from vlm_rlaif.models.llava_video import LlavaVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>")
    with pytest.raises(VideoInputError, match="no <video> token"):
        LlavaVideoProcessor(plain)


def test_save_and_load_adapter_model(lm, tmp_path):
    lm.save(tmp_path / "m")
    loaded = load_adapter_model(tmp_path / "m")
    assert isinstance(loaded, LlavaVideoLM) and family_of_directory(tmp_path / "m") == "llava-video"
    batch = lm.collate([ask("q", frames(3), "s")], add_generation_prompt=True)
    with torch.no_grad():
        assert torch.equal(loaded.forward(batch).logits, lm.forward(batch).logits)
    # A plain transformers directory (no vlm_rlaif_model.json) is recognised by its model_type.
    lm.base_model.save_pretrained(tmp_path / "plain")
    lm.processor.save_pretrained(tmp_path / "plain")
    assert isinstance(load_adapter_model(tmp_path / "plain"), LlavaVideoLM)


def test_loading_errors_are_clear(lm, tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        load_adapter_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model directory"):
        load_adapter_model(tmp_path / "empty")
    lm.save(tmp_path / "m")
    (tmp_path / "m" / "vlm_rlaif_model.json").write_text(json.dumps({"family": "gpt-video"}))
    with pytest.raises(UserError, match="unknown model family 'gpt-video'; known families: .*llava-video"):
        load_adapter_model(tmp_path / "m")
    (tmp_path / "m" / "vlm_rlaif_model.json").write_text("{broken")
    with pytest.raises(UserError, match="vlm_rlaif_model.json: not readable JSON"):
        load_adapter_model(tmp_path / "m")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="model_type 'bert' belongs to no known family"):
        load_adapter_model(tmp_path / "other")
    (tmp_path / "noweights").mkdir()
    lm.base_model.config.save_pretrained(tmp_path / "noweights")
    with pytest.raises(UserError, match="cannot load a llava-video model"):
        load_adapter_model(tmp_path / "noweights")
    with pytest.raises(UserError, match="unknown model family"):
        family_class("nope")


def test_data_parallel_wrapper_keeps_the_interface(tokenizer, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vlm_rlaif.models import LoraSettings, count_visual_calls

    lm = build_tiny_model("tiny", tokenizer, seed=4)
    lm.add_lora("policy", LoraSettings(r=2, alpha=2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        lm.model = DistributedDataParallel(lm.model)  # what accelerate.prepare does under DDP
        assert lm.base_model.__class__.__name__ == "LlavaVideoForCausalLM" and lm.active_adapter == "policy"
        with count_visual_calls(lm) as counts:
            lm.forward(lm.collate([chat("q", "a", frames(3), "ddp")])).loss.backward()
        assert counts.video_forwards_with_grad == 1
        assert lm.generate([ask("q", frames(3), "ddp")], GenerationSettings(max_new_tokens=2))[0].token_ids
        with lm.adapter_disabled(), torch.no_grad():
            lm.response_logprobs([ask("q", frames(3), "ddp")], [[40]])
    finally:
        dist.destroy_process_group()


def test_a_shared_empty_feature_cache_is_kept(lm):
    # An empty FeatureCache is falsy; it must still be the cache the model uses (and shares).
    from vlm_rlaif.models.feature_cache import FeatureCache

    shared = FeatureCache()
    other = type(lm)(lm.model, lm.processor, feature_cache=shared)
    assert other.feature_cache is shared
    other.encode_video(frames(4), video_key="v@u4")
    assert len(shared) == 1
    assert other.frozen_copy().feature_cache is shared


def test_hidden_states_ignore_labels(lm):
    batch = lm.collate([chat("What colour is the circle?", "The circle is red.", frames(4))])
    assert "labels" in batch
    assert torch.equal(lm.hidden_states(batch), lm.hidden_states({k: v for k, v in batch.items() if k != "labels"}))


def test_a_prompt_longer_than_the_model_positions_is_refused_before_generation(lm, monkeypatch):
    import time

    from vlm_rlaif.models import VideoExample
    from vlm_rlaif.models.examples import PromptTooLongError

    assert lm.max_positions == 2048
    calls = []
    real_generate = lm.unwrapped_model.generate
    monkeypatch.setattr(lm.unwrapped_model, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))

    # 5 MB of text: refused at once, before tokenising or encoding anything, naming the record.
    huge = VideoExample([{"role": "user", "content": "red " * 1_300_000}], frames(8), "v", where="q.json:7 (id 3)")
    started = time.perf_counter()
    with pytest.raises(PromptTooLongError, match=r"^q.json:7 \(id 3\): the prompt's text has 5200000 characters"):
        lm.generate([ask("What colour?"), huge], GenerationSettings(max_new_tokens=4))
    assert time.perf_counter() - started < 2 and calls == []

    # Near the limit the tokenised length decides: video tokens and max_new_tokens count.
    video = frames(8)
    words = 400
    while True:
        example = ask("red " * words, video, "near")
        length = lm.collate([example], add_generation_prompt=True)["input_ids"].shape[1]
        if length > 2048 - 40:
            break
        words += 50
    room = 2048 - length
    lm.generate([example], GenerationSettings(max_new_tokens=room, temperature=0))  # fits exactly
    with pytest.raises(PromptTooLongError, match=rf"example 1 \(video_key 'near'\): the prompt has {length} tokens"):
        lm.generate([ask("What colour?"), example], GenerationSettings(max_new_tokens=room + 1, temperature=0))
    assert isinstance(PromptTooLongError("x"), UserError)
