"""Scalar heads (reward / value) and LoRA adapters (presets, named adapters, reference, save/load, QLoRA)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util

import pytest
import torch

from model_inputs import chat, frames
from vlm_rlaif.errors import ConfigError, UserError
from vlm_rlaif.models import (
    LoraSettings,
    ScalarHead,
    ScalarModel,
    VideoExample,
    build_tiny_model,
    last_token_positions,
    train_tokenizer,
)
from vlm_rlaif.models import lora as lora_module

# peft asks transformers a deprecated question; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CORPUS = ["What colour is the circle? The circle is red.", "Is it good? It is good."] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def randomise_lora(lm, name, seed=0):
    """LoRA B starts at zero (no effect); give adapter `name` weights that change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in lm.model.named_parameters():
            if "lora_B" in param_name and f".{name}." in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def test_last_token_positions_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_positions(right).tolist() == [2, 4, 0]
    assert last_token_positions(left).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="no real token"):
        last_token_positions(torch.tensor([[0, 0]]))


@torch.no_grad()
def test_reward_reads_the_last_real_token_whatever_the_padding(tokenizer):
    rm = ScalarModel(build_tiny_model("tiny", tokenizer, seed=1))
    examples = [chat("q", "It is good.", frames(4), "a"), chat("What colour is the circle?", "The circle is red, and it is good.", frames(9, seed=2), "b")]
    alone = [rm(rm.lm.collate([example], with_labels=False)).item() for example in examples]
    for side in ("left", "right"):
        batch = rm.lm.collate(examples, with_labels=False, padding_side=side)
        assert rm(batch).tolist() == pytest.approx(alone, abs=1e-5)
        values = rm.values(batch)
        last = last_token_positions(batch["attention_mask"])
        assert values.shape == batch["input_ids"].shape
        assert [values[row, last[row]].item() for row in range(2)] == pytest.approx(alone, abs=1e-5)
    assert rm.score(examples, batch_size=1).tolist() == pytest.approx(alone, abs=1e-5)
    assert len(set(round(a, 6) for a in alone)) == 2


def test_zero_initialised_value_head(tokenizer):
    value = ScalarModel(build_tiny_model("tiny", tokenizer), zero_init=True)
    batch = value.lm.collate([chat("q", "a", frames(3))], with_labels=False)
    assert torch.equal(value.values(batch), torch.zeros(batch["input_ids"].shape))
    assert ScalarHead(8).linear.weight.abs().sum() > 0


def test_scalar_model_trains_head_and_lora(tokenizer):
    rm = ScalarModel(build_tiny_model("tiny", tokenizer), lora_name="reward")
    rm.lm.add_lora("reward", LoraSettings(r=4, alpha=8))
    params = rm.parameters()
    assert len(params) == 2 + len(rm.lm.trainable_parameters()) and len(params) > 2
    batch = rm.lm.collate([chat("q", "a", frames(3)), chat("q", "b", frames(3))], with_labels=False)
    loss = -torch.nn.functional.logsigmoid(rm(batch)[0] - rm(batch)[1])
    loss.backward()
    assert all(p.grad is not None for p in params)


@torch.no_grad()
def test_scalar_model_save_load_full_and_lora(tokenizer, tmp_path):
    examples = [chat("q", "It is good.", frames(4), "s")]
    full = ScalarModel(build_tiny_model("tiny", tokenizer, seed=2))
    full.save(tmp_path / "full")
    assert ScalarModel.load(tmp_path / "full").score(examples).tolist() == full.score(examples).tolist()

    base_dir = tmp_path / "base"
    build_tiny_model("tiny", tokenizer, seed=3).save(base_dir)
    from vlm_rlaif.models import load_adapter_model

    rm = ScalarModel(load_adapter_model(base_dir), lora_name="reward")
    rm.lm.add_lora("reward", LoraSettings(r=4, alpha=8))
    randomise_lora(rm.lm, "reward")
    rm.save(tmp_path / "rm")
    expected = rm.score(examples)
    assert ScalarModel.load(tmp_path / "rm").score(examples).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    # Reward and value on one base, as the paper: the value model starts from the RM's adapter.
    shared = load_adapter_model(base_dir)
    reward = ScalarModel.load(tmp_path / "rm", shared)
    value_start = ScalarModel.load(tmp_path / "rm", shared, lora_name="value", trainable=True)
    value = ScalarModel(shared, ScalarHead(shared.hidden_size, zero_init=True), lora_name="value")
    assert shared.adapter_names == ["reward", "value"]
    assert value_start.score(examples).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert value.score(examples).tolist() == [0.0]
    assert reward.score(examples).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    shared.set_adapter("value")
    assert shared.trainable_parameters() and all("value" in n for n, p in shared.model.named_parameters() if p.requires_grad)
    shared.set_adapter("reward")  # loaded frozen: stays frozen when active
    assert shared.trainable_parameters() == []
    with pytest.raises(UserError, match="not a saved scalar model"):
        ScalarModel.load(tmp_path / "base")


def targeted_modules(lm):
    return sorted({name for name, module in lm.model.named_modules() if hasattr(module, "lora_A")})


@pytest.mark.parametrize(
    "preset, leaves",
    [
        ("attn", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("attn_mlp", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_lora_presets_target_only_the_language_model(tokenizer, preset, leaves):
    lm = build_tiny_model("tiny", tokenizer)
    lm.add_lora("policy", LoraSettings(r=2, alpha=2, targets=preset))
    names = targeted_modules(lm)
    assert all(".language_model.layers." in name for name in names)  # never the vision tower's q/k/v
    assert {name.rsplit(".", 1)[-1] for name in names} == leaves
    assert len(names) == 4 * len(leaves)  # four layers


def test_lora_settings_are_validated():
    with pytest.raises(ConfigError, match="unknown LoRA target preset 'mlp'; known: attn, attn_mlp, all-linear"):
        LoraSettings(targets="mlp")
    with pytest.raises(ConfigError, match="positive"):
        LoraSettings(r=0)


@torch.no_grad()
def test_disabled_adapter_is_the_base_and_named_adapters_switch(tokenizer):
    lm = build_tiny_model("tiny", tokenizer, seed=4)
    example = VideoExample([{"role": "user", "content": "q"}], frames(5), "l1")
    batch = lm.collate([example], add_generation_prompt=True)
    base = lm.forward(batch).logits
    base_logprobs = lm.response_logprobs([example], [[40, 41]])[0]
    lm.add_lora("policy", LoraSettings(r=4, alpha=8))
    randomise_lora(lm, "policy", seed=1)
    policy = lm.forward(batch).logits
    assert not torch.allclose(policy, base)
    with lm.adapter_disabled():
        torch.testing.assert_close(lm.forward(batch).logits, base)
        torch.testing.assert_close(lm.response_logprobs([example], [[40, 41]])[0], base_logprobs)
    lm.add_lora("other", LoraSettings(r=4, alpha=8, targets="attn"))
    randomise_lora(lm, "other", seed=2)
    assert lm.active_adapter == "other"
    other = lm.forward(batch).logits
    assert not torch.allclose(other, policy) and not torch.allclose(other, base)
    lm.set_adapter("policy")
    torch.testing.assert_close(lm.forward(batch).logits, policy)
    with pytest.raises(ConfigError, match="no LoRA adapter named 'missing'"):
        lm.set_adapter("missing")
    with pytest.raises(ConfigError, match="already exists"):
        lm.add_lora("policy", LoraSettings())
    with pytest.raises(UserError, match="merge_lora"):
        lm.save("/tmp/never-written")


def test_lora_with_trainable_projector_saves_and_merges(tokenizer, tmp_path):
    lm = build_tiny_model("tiny", tokenizer, seed=5)
    lm.add_lora("sft", LoraSettings(r=4, alpha=8, train_projector=True))
    assert not lm.visual_path_frozen
    batch = lm.collate([chat("q", "It is good.", frames(3))])
    assert "pixel_values_videos" in batch  # the projector trains: frames, not cached features
    lm.forward(batch).loss.backward()
    optimizer = torch.optim.SGD(lm.trainable_parameters(), lr=1.0)
    optimizer.step()
    with torch.no_grad():
        trained = lm.forward(batch).logits
    lm.save_lora(tmp_path / "sft")
    reloaded = build_tiny_model("tiny", tokenizer, seed=5)
    reloaded.load_lora(tmp_path / "sft", "sft")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward(batch).logits, trained)
    lm.merge_lora()
    assert lm.adapter_names == [] and not hasattr(lm.model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(lm.forward(batch).logits, trained, atol=1e-5, rtol=1e-5)
    lm.save(tmp_path / "merged")
    from vlm_rlaif.models import load_adapter_model

    with torch.no_grad():
        torch.testing.assert_close(load_adapter_model(tmp_path / "merged").forward(batch).logits, trained, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="adapter_config.json"):
        reloaded.load_lora(tmp_path, "x")


def test_reference_for_full_fine_tuning_needs_a_frozen_copy(tokenizer):
    lm = build_tiny_model("tiny", tokenizer)
    with pytest.raises(UserError, match="frozen_copy"):
        with lm.adapter_disabled():
            pass
    lm.add_lora("policy", LoraSettings(r=2, alpha=2))
    with pytest.raises(UserError, match="adapter_disabled"):
        lm.frozen_copy()


def test_qlora_errors_clearly_without_bitsandbytes_or_cuda(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="needs bitsandbytes"):
        lora_module.quantization_config("4bit", [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        lora_module.quantization_config("4bit", [])
    with pytest.raises(ConfigError, match="unknown quantization '8bit'"):
        lora_module.quantization_config("8bit", [])


@pytest.mark.parametrize("use_lora", [False, True])
def test_activation_checkpointing_keeps_gradients(tokenizer, use_lora):
    example = chat("What colour is the circle?", "The circle is red.", frames(4))

    def gradients(checkpointing):
        lm = build_tiny_model("tiny", tokenizer, seed=6)
        if use_lora:
            lm.add_lora("policy", LoraSettings(r=4, alpha=8, train_projector=True))
        else:
            lm.set_trainable(language_model=True, projector=True)
        if checkpointing:
            lm.enable_gradient_checkpointing()
            model = lm.base_model  # the property's name before transformers 5.2x: is_gradient_checkpointing
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        lm.model.train()
        lm.forward(lm.collate([example])).loss.backward()
        return [p.grad for p in lm.trainable_parameters()]

    plain, checkpointed = gradients(False), gradients(True)
    assert len(plain) == len(checkpointed) and all(g is not None for g in checkpointed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)
