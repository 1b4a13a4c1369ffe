"""llava-video: pooling, frame preprocessing, Vicuna template and labels, model forward, Auto classes."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from model_inputs import frames
from vlm_rlaif.models import build_tiny_model, train_tokenizer
from vlm_rlaif.models.llava_video import LlavaVideoConfig, LlavaVideoForCausalLM, pool_video_features
from vlm_rlaif.models.llava_video.processing import (
    CLIP_MEAN,
    CLIP_STD,
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    VideoInputError,
    preprocess_frames,
    render_conversation,
)

CORPUS = ["What colour is the circle?", "The circle is red and it moves left.", "Where does the square go?"] * 20


@pytest.fixture(scope="module")
def lm():
    return build_tiny_model("tiny", train_tokenizer(CORPUS, vocab_size=400), seed=1)


def test_spatiotemporal_pooling_by_hand():
    # T=2 frames, P=3 positions, D=2.
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]], [[5.0, 2.0], [6.0, 2.0], [7.0, 2.0]]])
    pooled = pool_video_features(x, "spatiotemporal")
    expected_temporal = [[2.0, 2.0], [6.0, 2.0]]  # each frame over its positions
    expected_spatial = [[3.0, 1.0], [4.0, 1.0], [5.0, 4.0]]  # each position over the frames
    assert pooled.tolist() == expected_temporal + expected_spatial
    assert pool_video_features(x, "none").tolist() == x.reshape(6, 2).tolist()
    with pytest.raises(ValueError, match="pooling"):
        pool_video_features(x, "max")


def test_video_features_follow_tower_layer_projector_pool(lm):
    model = lm.base_model
    video_a, video_b = frames(24, seed=1), frames(7, seed=2)
    pixels = torch.cat([lm.preprocess_video(video_a), lm.preprocess_video(video_b)])
    with torch.no_grad():
        features = model.get_video_features(pixels, [24, 7])
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        patches = hidden[-2][:, 1:]  # second-to-last layer, CLS dropped
        projected = model.model.multi_modal_projector(patches)
    assert [f.shape for f in features] == [(24 + 16, 128), (7 + 16, 128)]
    manual_a = torch.cat([projected[:24].mean(1), projected[:24].mean(0)])
    manual_b = torch.cat([projected[24:].mean(1), projected[24:].mean(0)])
    torch.testing.assert_close(features[0], manual_a)
    torch.testing.assert_close(features[1], manual_b)
    with pytest.raises(ValueError, match="sums to"):
        model.get_video_features(pixels, [24, 6])


def test_preprocess_pads_with_mean_colour_resizes_and_normalises():
    frame = np.full((3, 2, 4, 3), 255, dtype=np.uint8)  # 2 rows x 4 columns, white
    out = preprocess_frames(frame, image_size=4)
    assert out.shape == (3, 3, 4, 4) and out.dtype == torch.float32
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    white = (1 - mean) / std
    # LLaVA's padding colour: tuple(int(x * 255) for x in image_mean), truncated.
    fill = torch.tensor([int(x * 255) for x in CLIP_MEAN], dtype=torch.float32).view(3, 1, 1)
    padding = (fill / 255 - mean) / std
    torch.testing.assert_close(out[0, :, 1:3, :], white.expand(3, 2, 4))
    torch.testing.assert_close(out[0, :, 0, :], padding[:, 0].expand(3, 4))
    torch.testing.assert_close(out[0, :, 3, :], padding[:, 0].expand(3, 4))
    assert ((mean * 255 - fill) >= 0).all() and ((mean * 255 - fill) < 1).all()  # within one uint8 step below
    resized = preprocess_frames(frames(5, 40, 30), image_size=32, resample="bilinear")
    assert resized.shape == (5, 3, 32, 32)
    assert torch.equal(preprocess_frames(torch.from_numpy(frames(2)), 32), preprocess_frames(frames(2), 32))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "non-empty"),
        ([[0]], "numpy array or torch tensor"),
    ],
)
def test_preprocess_rejects_bad_frames(bad, message):
    with pytest.raises(VideoInputError, match=message):
        preprocess_frames(bad, image_size=32)


MULTI_TURN = [
    {"role": "user", "content": "What colour is the circle?"},
    {"role": "assistant", "content": "The circle is red."},
    {"role": "user", "content": "Where does it go?"},
    {"role": "assistant", "content": "It moves left."},
]


def test_vicuna_text():
    text, spans = render_conversation(MULTI_TURN, has_video=True, add_generation_prompt=False)
    assert text == (
        f"{VICUNA_SYSTEM} USER: <video>\nWhat colour is the circle? ASSISTANT: The circle is red.</s>"
        "USER: Where does it go? ASSISTANT: It moves left.</s>"
    )
    assert [text[a:b] for a, b in spans] == [" The circle is red.</s>", " It moves left.</s>"]
    prompt, spans = render_conversation(
        MULTI_TURN[:3], has_video=False, add_generation_prompt=True, assistant_prefix="Verdict:"
    )
    assert prompt.endswith("</s>USER: Where does it go? ASSISTANT: Verdict:") and spans == [(prompt.index(" The circle"), prompt.index("USER: Where"))]
    system = [{"role": "system", "content": "Be brief."}] + MULTI_TURN[:1]
    assert render_conversation(system, has_video=False, add_generation_prompt=True)[0] == (
        "Be brief. USER: What colour is the circle? ASSISTANT:"
    )


def test_labels_token_by_token_on_a_multi_turn_conversation(lm):
    processor, tokenizer = lm.processor, lm.tokenizer
    ids, labels = processor.encode_conversation(MULTI_TURN, num_video_tokens=40, add_generation_prompt=False)

    # Independent expectation: tokenize the template pieces one by one (byte-level BPE never merges
    # across the space that starts each answer).
    def piece(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    video = [processor.video_token_id] * 40
    segments = [
        (piece(f"{VICUNA_SYSTEM} USER: "), False),
        (video, False),
        (piece("\nWhat colour is the circle? ASSISTANT:"), False),
        (piece(" The circle is red.") + [tokenizer.eos_token_id], True),
        (piece("USER: Where does it go? ASSISTANT:"), False),
        (piece(" It moves left.") + [tokenizer.eos_token_id], True),
    ]
    expected_ids = [tokenizer.bos_token_id]
    expected_labels = [IGNORE_INDEX]
    for tokens, trained in segments:
        expected_ids += tokens
        expected_labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    assert ids == expected_ids
    assert labels == expected_labels
    trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " The circle is red.</s> It moves left.</s>"

    prompt_ids, prompt_labels = processor.encode_conversation(MULTI_TURN[:3], num_video_tokens=None, add_generation_prompt=True)
    prompt_trained = [t for t, label in zip(prompt_ids, prompt_labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(prompt_trained) == " The circle is red.</s>"  # earlier answers only
    assert processor.video_token_id not in prompt_ids
    assert tokenizer.decode(prompt_ids[-4:]).endswith("ASSISTANT:")


@pytest.mark.parametrize(
    "conversation, kwargs, message",
    [
        ([{"role": "assistant", "content": "hi"}], {}, "expected role 'user'"),
        ([{"role": "user", "content": "q"}], {}, "must end with an assistant turn"),
        (MULTI_TURN, {"add_generation_prompt": True}, "end with a user turn"),
        ([{"role": "user", "content": "<video> a <video>"}, {"role": "assistant", "content": "b"}], {}, "2 <video> placeholder"),
        ([{"role": "user", "content": "q"}, {"role": "bot", "content": "b"}], {}, "expected role 'assistant'"),
        ([{"role": "user", "content": 3}], {}, "content must be a string"),
        ([], {}, "empty conversation"),
    ],
)
def test_conversation_errors(conversation, kwargs, message):
    kwargs = {"has_video": True, "add_generation_prompt": False, **kwargs}
    with pytest.raises(VideoInputError, match=message):
        render_conversation(conversation, **kwargs)
    with pytest.raises(VideoInputError, match="0 video"):
        render_conversation([{"role": "user", "content": "<video>\nq"}], has_video=False, add_generation_prompt=True)


def test_a_placeholder_in_an_answer_stays_text(lm):
    # A sampled answer that spells "<video>" (PPO re-tokenises answers for the reward model) must not
    # splice the video into the answer: only the first user turn's placeholder is the video.
    processor, tokenizer = lm.processor, lm.tokenizer
    conversation = [
        {"role": "user", "content": "What colour is the circle?"},
        {"role": "assistant", "content": "It is <video> red."},
    ]
    text, _ = render_conversation(conversation, has_video=True, add_generation_prompt=False)
    assert text.startswith(f"{VICUNA_SYSTEM} USER: <video>\nWhat colour") and text.endswith("It is <video> red.</s>")
    ids, labels = processor.encode_conversation(conversation, num_video_tokens=40, add_generation_prompt=False)
    positions = [i for i, t in enumerate(ids) if t == processor.video_token_id]
    assert len(positions) == 40 and positions == list(range(positions[0], positions[0] + 40))
    assert tokenizer.decode(ids[1 : positions[0]]) == f"{VICUNA_SYSTEM} USER: "  # first in the first turn
    trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " It is <video> red.</s>"
    # The same holds in a later user turn, and in a text-only conversation.
    later = conversation + [{"role": "user", "content": "And <video>?"}]
    ids, _ = processor.encode_conversation(later, num_video_tokens=40, add_generation_prompt=True)
    assert ids.count(processor.video_token_id) == 40
    ids, _ = processor.encode_conversation(later, num_video_tokens=None, add_generation_prompt=True)
    assert processor.video_token_id not in ids and "And <video>?" in tokenizer.decode(ids)


def test_placeholder_expands_to_pooled_token_count(lm):
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    lm_none = build_tiny_model("tiny", tokenizer, video_pooling="none")
    for model, expected in ((lm, 24 + 16), (lm_none, 24 * 16)):
        ids, _ = model.processor.encode_conversation(
            MULTI_TURN[:1], num_video_tokens=model.config.num_video_tokens(24), add_generation_prompt=True
        )
        positions = [i for i, t in enumerate(ids) if t == model.processor.video_token_id]
        assert len(positions) == expected
        assert positions == list(range(positions[0], positions[0] + expected))  # one contiguous block


def test_chat_template_matches_renderer(lm):
    conversation = [{"role": "user", "content": "<video>\nq1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    ours, _ = render_conversation(conversation, has_video=True, add_generation_prompt=True)
    theirs = lm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert theirs == ours


def test_processor_call_expands_placeholders(lm):
    processor = lm.processor
    out = processor(text=["USER: <video>\nhi ASSISTANT:", "USER: <video>\nhello there ASSISTANT:"], videos=[frames(24), frames(5)])
    assert out["pixel_values_videos"].shape == (29, 3, 32, 32)
    assert out["video_num_frames"].tolist() == [24, 5]
    counts = (out["input_ids"] == processor.video_token_id).sum(1).tolist()
    assert counts == [40, 21]
    text_lengths = [len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("hi", "hello there")]
    # BOS + text tokens, the one placeholder replaced by the video's tokens.
    expected = [1 + len(processor.tokenizer("USER: <video>\n ASSISTANT:", add_special_tokens=False)["input_ids"]) - 1 + n + extra
                for n, extra in zip((40, 21), text_lengths)]
    assert out["attention_mask"].sum(1).tolist() == expected
    assert out["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    with pytest.raises(VideoInputError, match="more videos"):
        processor(text="no placeholder", videos=[frames(2)])


def test_frames_and_features_give_identical_logits(lm):
    model = lm.base_model
    video = frames(24)
    ids, _ = lm.processor.encode_conversation(MULTI_TURN[:1], num_video_tokens=40, add_generation_prompt=True)
    input_ids = torch.tensor([ids])
    pixels = lm.preprocess_video(video)
    with torch.no_grad():
        from_frames = model(input_ids=input_ids, pixel_values_videos=pixels, video_num_frames=[24]).logits
        features = model.get_video_features(pixels, [24])
        from_features = model(input_ids=input_ids, video_features=features).logits
        without_video = model(input_ids=input_ids, video_features=torch.zeros(40, 128)).logits
    torch.testing.assert_close(from_frames, from_features)
    assert not torch.allclose(from_frames, without_video)  # the video really changes the output


def test_forward_rejects_mismatched_video_inputs(lm):
    model = lm.base_model
    ids, _ = lm.processor.encode_conversation(MULTI_TURN[:1], num_video_tokens=40, add_generation_prompt=True)
    input_ids = torch.tensor([ids])
    with pytest.raises(ValueError, match="40 video tokens but 39 visual features"):
        model(input_ids=input_ids, video_features=torch.zeros(39, 128))
    with pytest.raises(ValueError, match="no video was given"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=input_ids, video_features=torch.zeros(40, 128), pixel_values_videos=torch.zeros(24, 3, 32, 32), video_num_frames=[24])


def test_config_validation():
    with pytest.raises(ValueError, match="projector_type"):
        LlavaVideoConfig(projector_type="mlp3x")
    with pytest.raises(ValueError, match="vision_feature_layer"):
        LlavaVideoConfig(vision_feature_layer=-40)
    with pytest.raises(ValueError, match="outside the language model's vocabulary"):
        LlavaVideoConfig(video_token_id=99999)
    assert LlavaVideoConfig().num_video_tokens(50) == 626  # the paper's 50 + 576


def test_save_load_round_trip_through_auto_classes(lm, tmp_path):
    lm.save(tmp_path)
    ids, _ = lm.processor.encode_conversation(MULTI_TURN[:1], num_video_tokens=40, add_generation_prompt=True)
    inputs = {"input_ids": torch.tensor([ids]), "pixel_values_videos": lm.preprocess_video(frames(24)), "video_num_frames": [24]}
    with torch.no_grad():
        expected = lm.base_model(**inputs).logits
        assert type(AutoConfig.from_pretrained(tmp_path)) is LlavaVideoConfig
        for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
            loaded = auto.from_pretrained(tmp_path).eval()
            assert type(loaded) is LlavaVideoForCausalLM
            assert torch.equal(loaded(**inputs).logits, expected)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert (processor.image_size, processor.patch_size, processor.num_frames) == (32, 8, 24)
    assert processor.encode_conversation(MULTI_TURN, num_video_tokens=40, add_generation_prompt=False) == lm.processor.encode_conversation(
        MULTI_TURN, num_video_tokens=40, add_generation_prompt=False
    )


def test_transformers_generate_with_frames_or_features(lm):
    model = lm.base_model
    ids, _ = lm.processor.encode_conversation(MULTI_TURN[:1], num_video_tokens=40, add_generation_prompt=True)
    input_ids = torch.tensor([ids])
    pixels = lm.preprocess_video(frames(24))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=lm.pad_token_id, eos_token_id=lm.eos_token_id)
    with torch.no_grad():
        from_frames = model.generate(input_ids=input_ids, pixel_values_videos=pixels, video_num_frames=[24], **settings)
        features = model.get_video_features(pixels, [24])
        from_features = model.generate(input_ids=input_ids, video_features=features, **settings)
        without_cache = model.generate(input_ids=input_ids, video_features=features, use_cache=False, **settings)
    assert from_frames.shape[1] > input_ids.shape[1]
    assert torch.equal(from_frames, from_features) and torch.equal(from_frames, without_cache)
