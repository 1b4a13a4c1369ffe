"""HF-native families (LLaVA-NeXT-Video, Qwen2.5-VL) behind VideoLM, on tiny models built offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText
from transformers.video_utils import VideoMetadata

from model_inputs import ask, chat, frames
from vlm_rlaif.models import (
    IGNORE_INDEX,
    GenerationSettings,
    LoraSettings,
    ScalarModel,
    VideoExample,
    count_visual_calls,
    family_of_directory,
    load_adapter_model,
)
from vlm_rlaif.models.adapter import MODEL_INFO_FILE
from vlm_rlaif.models.examples import ModelInputError
from vlm_rlaif.models.hf_native import LlavaNextVideoLM, Qwen25VLVideoLM, build_tiny_hf_model
from vlm_rlaif.models.heads import ScalarHead

CORPUS = [
    "What colour is the circle? The circle is red.",
    "Where does the square go? It moves left.",
    "The better answer is A.",
    "The better answer is B.",
] * 20
ARCHES = ["llava-next-video", "qwen2.5-vl"]


@pytest.fixture(scope="module", params=ARCHES)
def lm(request):
    return build_tiny_hf_model(request.param, CORPUS, seed=1)


MULTI_TURN = [
    {"role": "user", "content": "What colour is the circle?"},
    {"role": "assistant", "content": "The circle is red."},
    {"role": "user", "content": "Where does the square go?"},
    {"role": "assistant", "content": "It moves left."},
]


def test_families_are_registered(lm):
    expected = {"llava-next-video": LlavaNextVideoLM, "qwen2.5-vl": Qwen25VLVideoLM}[lm.family]
    assert type(lm) is expected


def test_collate_matches_the_stock_processor(lm):
    video = frames(6, 40, 48, seed=1)
    example = ask("What colour is the circle?", video)
    ours = lm.collate([example], add_generation_prompt=True, visual="frames")
    text, _ = lm.codec.render(example.conversation, has_video=True, add_generation_prompt=True)
    # Our time spacing for Qwen2.5-VL is the stock one of frames sampled at 2 fps.
    extra = {"video_metadata": [VideoMetadata(total_num_frames=6, fps=2)]} if lm.family == "qwen2.5-vl" else {}
    stock = lm.processor(text=[text], videos=[video], return_tensors="pt", **extra)
    assert torch.equal(ours["input_ids"], stock["input_ids"])
    assert int((ours["input_ids"] == lm.video_token_id).sum()) == lm.num_video_tokens(video)
    with torch.no_grad():
        torch.testing.assert_close(lm.forward(ours).logits, lm.model(**stock).logits)


def test_labels_are_the_answers_through_eos(lm):
    ids, labels = lm._encode_conversation(
        MULTI_TURN, num_video_tokens=5, add_generation_prompt=False, assistant_prefix=None, where="x"
    )
    trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    eos = lm.tokenizer.eos_token
    if lm.family == "llava-next-video":
        # The template ends an answer with a space and no EOS: the EOS is added after it.
        expected = f" The circle is red. {eos} It moves left. {eos}"
    else:
        expected = f"The circle is red.{eos}It moves left.{eos}"
    assert lm.tokenizer.decode(trained) == expected
    assert ids.count(lm.video_token_id) == 5
    assert all(label == IGNORE_INDEX for t, label in zip(ids, labels) if t == lm.video_token_id)
    # A generation prompt for the second question is exactly the training text up to its answer.
    prompt, prompt_labels = lm._encode_conversation(
        MULTI_TURN[:3], num_video_tokens=5, add_generation_prompt=True, assistant_prefix=None, where="x"
    )
    assert ids[: len(prompt)] == prompt
    assert lm.tokenizer.decode([t for t, label in zip(prompt, prompt_labels) if label != IGNORE_INDEX]) == (
        expected[: expected.index(eos) + len(eos)]
    )


def test_system_turn_prefix_and_bad_conversations(lm):
    system = [{"role": "system", "content": "Be brief."}, MULTI_TURN[0]]
    text, _ = lm.codec.render(system, has_video=False, add_generation_prompt=True, assistant_prefix="Verdict:")
    assert "Be brief." in text and text.endswith(lm.codec.prompt_tail("Verdict:"))
    with pytest.raises(ModelInputError, match="example 0: expected role 'user'"):
        lm.collate([VideoExample([{"role": "assistant", "content": "hi"}])])
    with pytest.raises(ModelInputError, match="uint8"):
        lm.collate([ask("hi", frames(2).astype(np.float32))], add_generation_prompt=True)


def test_frames_and_cached_features_agree_and_the_tower_runs_once(lm):
    lm.feature_cache.clear()
    batch_examples = [
        chat("What colour is the circle?", "The circle is red.", frames(4, seed=2), "a"),
        chat("Where does the square go?", "It moves left, then right.", frames(6, 40, 48, seed=3), "b"),
    ]
    with count_visual_calls(lm) as counts:
        from_frames = lm.forward(lm.collate(batch_examples, visual="frames"))
    assert counts.calls_with_grad == {"vision_tower": 1, "projector": 1, "splice": 1}
    assert counts.video_forwards_with_grad == 1
    if not lm.features_input_supported:  # transformers < 5.2x: no precomputed-features input
        from_features = lm.forward(lm.collate(batch_examples, visual="features"))  # answered from the frames
        torch.testing.assert_close(from_frames.logits, from_features.logits)
        return
    tower_runs = []
    handle = lm.visual_modules()["vision_tower"].register_forward_hook(lambda *args: tower_runs.append(1))
    try:
        for _ in range(2):
            with count_visual_calls(lm) as counts:
                from_features = lm.forward(lm.collate(batch_examples, visual="features"))
            assert counts.calls_with_grad == {"splice": 1} and counts.video_forwards_with_grad == 1
    finally:
        handle.remove()
    assert len(tower_runs) == 2  # once per video, on the first pass only
    torch.testing.assert_close(from_frames.loss, from_features.loss)
    torch.testing.assert_close(from_frames.logits, from_features.logits)
    # The video matters: another video's features change the output.
    swapped = [chat(e.conversation[0]["content"], e.conversation[1]["content"], frames(len(e.video), seed=9)) for e in batch_examples]
    swapped[1].video = frames(6, 40, 48, seed=9)
    assert not torch.allclose(lm.forward(lm.collate(swapped, visual="features")).logits, from_features.logits)


def test_generate_agrees_with_forward_under_left_padding(lm):
    examples = [ask("What colour is the circle?", frames(4, seed=4), "g1"), ask("Where?", frames(6, 40, 48, seed=5), "g2")]
    greedy = GenerationSettings(max_new_tokens=4, temperature=0.0)
    together = lm.generate(examples, greedy)
    alone = [lm.generate([example], greedy)[0] for example in examples]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    with torch.no_grad():
        batch = lm.collate(examples, add_generation_prompt=True)
        next_tokens = lm.forward(batch).logits[:, -1].argmax(-1).tolist()
    assert next_tokens == [g.token_ids[0] for g in together]
    sampled = lm.generate(examples[:1], GenerationSettings(max_new_tokens=3, num_samples=3, seed=0))
    assert [g.sample_index for g in sampled] == [0, 1, 2]


def test_scored_responses_line_up_with_generation(lm):
    # PPO's scoring pass: prompts left-padded, responses appended. Under greedy decoding every
    # generated token is the most likely one at its place, which only holds if the scoring pass
    # sees the same positions (3-D for Qwen2.5-VL) and video as generation did.
    examples = [ask("What colour is the circle?", frames(4, seed=12), "p1"), ask("Where?", frames(2, 40, 48, seed=13), "p2")]
    generations = lm.generate(examples, GenerationSettings(max_new_tokens=5, temperature=0.0))
    responses = [g.token_ids for g in generations]
    with torch.no_grad():
        logprobs, mask = lm.response_logprobs(examples, responses)
        batch = lm.collate_with_responses(examples, responses)
        width = batch["response_mask"].shape[1]
        logits = lm.forward(batch).logits[:, -width - 1 : -1].float()
    full = torch.log_softmax(logits, -1)  # what response_logprobs reports: over the whole vocabulary
    full[..., lm.video_token_id] = float("-inf")  # never sampled
    best = full.max(-1)
    for row, response in enumerate(responses):
        n = len(response)
        assert mask[row].sum() == n
        assert best.indices[row, :n].tolist() == response
        torch.testing.assert_close(logprobs[row, :n], best.values[row, :n], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_keeps_the_loss_and_gradients(lm):
    lm = build_tiny_hf_model(lm.family, CORPUS, seed=4)
    lm.add_lora("sft", LoraSettings(r=4, alpha=8))
    batch = lm.collate([chat("What colour is the circle?", "The circle is red.", frames(2, seed=14))], visual="frames")
    lm.model.train()

    def loss_and_grads():
        loss = lm.forward(batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in lm.trainable_parameters()]
        lm.model.zero_grad()
        return loss.detach(), grads

    plain_loss, plain_grads = loss_and_grads()
    lm.enable_gradient_checkpointing()
    with count_visual_calls(lm) as counts:
        checkpointed_loss, checkpointed_grads = loss_and_grads()
    assert counts.video_forwards_with_grad == 1
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    for a, b in zip(plain_grads, checkpointed_grads):
        torch.testing.assert_close(a, b)


def test_next_token_logprobs(lm):
    example = ask("What colour is the circle?", frames(4, seed=6), "n1")
    got = lm.next_token_logprobs([example], [" A", " B"], assistant_prefix="The better answer is")
    ids = lm.candidate_token_ids([" A", " B"], "The better answer is")
    with torch.no_grad():
        batch = lm.collate([example], add_generation_prompt=True, assistant_prefix="The better answer is")
        expected = torch.log_softmax(lm.forward(batch).logits[0, -1].float(), -1)[ids]
    torch.testing.assert_close(got[0], expected)


def test_lora_adapts_the_language_model_only(lm, tmp_path):
    lm = build_tiny_hf_model(lm.family, CORPUS, seed=2)
    example = chat("What colour is the circle?", "The circle is red.", frames(4, seed=7), "l1")
    batch = lm.collate([example], visual="features")
    with torch.no_grad():
        base_logits = lm.forward(batch).logits
    lm.add_lora("policy", LoraSettings(r=4, alpha=8, targets="attn_mlp"))
    lora_modules = [name for name, _ in lm.model.named_modules() if name.endswith("lora_A")]
    assert lora_modules and all(".language_model.layers." in name for name in lora_modules)
    assert len(lora_modules) == 7 * lm.base_model.config.get_text_config().num_hidden_layers
    optimizer = torch.optim.SGD(lm.trainable_parameters(), lr=0.5)
    for parameter in lm.trainable_parameters():  # lora_B starts at zero: give it a push
        torch.nn.init.normal_(parameter, std=0.02)
    loss = lm.forward(batch).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        tuned = lm.forward(batch).logits
        with lm.adapter_disabled():
            torch.testing.assert_close(lm.forward(batch).logits, base_logits)
    assert not torch.allclose(tuned, base_logits)
    lm.save_lora(tmp_path / "policy")
    fresh = build_tiny_hf_model(lm.family, CORPUS, seed=2)
    fresh.load_lora(tmp_path / "policy", "policy")
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward(fresh.collate([example], visual="features")).logits, tuned)


def test_scalar_head_reads_the_last_token(lm, tmp_path):
    head = ScalarHead(lm.hidden_size)
    reward = ScalarModel(lm, head)
    examples = [chat("What colour is the circle?", "Red.", frames(4, seed=8), "s1"), chat("Where?", "It moves left.", frames(2, seed=9), "s2")]
    scores = reward.score(examples)
    with torch.no_grad():
        batch = lm.collate(examples, with_labels=False, visual="features")
        hidden = lm.hidden_states(batch)
        last = batch["attention_mask"].sum(1) - 1  # right padding
        expected = head(hidden[torch.arange(2), last]).cpu()
    torch.testing.assert_close(scores, expected)
    reward.save(tmp_path / "rm")
    loaded = ScalarModel.load(tmp_path / "rm")
    torch.testing.assert_close(loaded.score(examples), scores)


def test_save_and_load_through_the_registry(lm, tmp_path):
    example = ask("What colour is the circle?", frames(4, seed=10), "r1")
    with torch.no_grad():
        expected = lm.forward(lm.collate([example], add_generation_prompt=True)).logits
    lm.save(tmp_path)
    assert family_of_directory(tmp_path) == lm.family
    loaded = load_adapter_model(tmp_path)
    assert type(loaded) is type(lm)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward(loaded.collate([example], add_generation_prompt=True)).logits, expected)
    # A plain transformers checkpoint (no marker file) is recognised by its model_type.
    (tmp_path / MODEL_INFO_FILE).unlink()
    assert family_of_directory(tmp_path) == lm.family
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is type(lm.base_model)


def test_frozen_copy_probes_its_own_model(lm):
    reference = lm.frozen_copy()
    example = chat("What colour is the circle?", "Red.", frames(2, seed=11), "f1")
    with count_visual_calls(reference) as counts:
        reference.forward(reference.collate([example], visual="features"))
    assert counts.calls_with_grad["splice"] == 1
    with count_visual_calls(lm) as counts, torch.no_grad():
        reference.forward(reference.collate([example], visual="features"))
    assert counts.with_grad == 0 and not counts.calls_without_grad  # the original was not called


# -- Qwen2.5-VL specifics --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen():
    return build_tiny_hf_model("qwen2.5-vl", CORPUS, seed=3)


@pytest.mark.parametrize("cap", [False, True])
def test_qwen_grid_from_the_frame_shape_alone(qwen, cap):
    processor = qwen.processor.video_processor
    previous = processor.cap_pixels_per_frame, processor.max_video_tokens
    processor.cap_pixels_per_frame, processor.max_video_tokens = cap, 40
    try:
        for shape in [(8, 32, 32), (5, 40, 48), (3, 100, 20), (1, 7, 9), (12, 64, 64)]:
            video = frames(*shape)
            actual = processor(videos=[video], return_tensors="pt")["video_grid_thw"][0].tolist()
            assert list(qwen.video_grid(video)) == actual, shape
            assert qwen.preprocess_video(video).shape[:3] == tuple(actual)
    finally:
        processor.cap_pixels_per_frame, processor.max_video_tokens = previous


def test_qwen_cached_features_still_need_the_frames(qwen):
    qwen.encode_video(frames(4, seed=12), "cached")
    with pytest.raises(ModelInputError, match="pass the frames too"):
        qwen.collate([ask("What?", None, "cached")], add_generation_prompt=True)


def test_qwen_projector_can_train_without_the_tower(qwen):
    qwen.set_trainable(language_model=False, projector=True, vision_tower=False)
    try:
        visual = qwen.visual_modules()
        assert all(p.requires_grad for p in visual["projector"].parameters())
        merger = {id(p) for p in visual["projector"].parameters()}
        assert not any(p.requires_grad for p in visual["vision_tower"].parameters() if id(p) not in merger)
        assert not qwen.visual_path_frozen
    finally:
        qwen.model.requires_grad_(False)


def test_a_placeholder_in_message_text_stays_text(lm):
    # E.g. a sampled answer that spells the placeholder, re-tokenised for the reward model: only the
    # template's own placeholder may become the video's tokens.
    placeholder = lm.processor.video_token
    video = frames(2)
    conversation = [
        {"role": "user", "content": f"look {placeholder}"},
        {"role": "assistant", "content": f"I see {placeholder} here."},
    ]
    ids, labels = lm._encode_conversation(
        conversation, num_video_tokens=lm.num_video_tokens(video), add_generation_prompt=False,
        assistant_prefix=None, where="x",
    )
    positions = [i for i, t in enumerate(ids) if t == lm.video_token_id]
    assert len(positions) == lm.num_video_tokens(video)
    assert positions == list(range(positions[0], positions[-1] + 1))  # one block: the template's
    trained = lm.tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert f"I see {placeholder} here." in trained
    text = lm.tokenizer.decode([t for t in ids if t != lm.video_token_id])
    assert f"look {placeholder}" in text
    batch = lm.collate([ask("hi"), ask(f"look {placeholder}", video, "v")], add_generation_prompt=True)
    assert int((batch["input_ids"][1] == lm.video_token_id).sum()) == lm.num_video_tokens(video)
