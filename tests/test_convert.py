"""`model convert`: an original LLaVA checkpoint (and a LoRA adapter trained on it) -> llava-video.

The test writes a tiny checkpoint the way LLaVA saves one (LLaMA weights + mm_projector in sharded
pytorch_model-*.bin files with an index, config.json with mm_* keys, tokenizer files; the CLIP tower in
its own directory) and checks the converted model's logits against a forward written by hand from
the original weights: CLIP second-to-last layer without CLS -> Linear, GELU, Linear -> 50-frame style
spatio-temporal pooling -> spliced at the placeholder -> LLaMA.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vlm_rlaif.cli import main as cli_main
from vlm_rlaif.errors import UserError
from vlm_rlaif.models import VideoExample, load_adapter_model
from vlm_rlaif.models.convert import convert_llava_checkpoint, convert_llava_lora, remap_name
from vlm_rlaif.models.llava_video.processing import VICUNA_SYSTEM, preprocess_frames

CORPUS = ["What colour is the circle? The circle is red.", "USER: ASSISTANT:", VICUNA_SYSTEM] * 20
HIDDEN, TOWER_WIDTH, IMAGE, PATCH = 64, 32, 32, 8
QUESTION = "What colour is the circle?"


def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A LLaMA-like tokenizer: <unk> <s> </s>, BOS added, no video token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_original(root, **mm_overrides):
    """A tiny checkpoint in the original LLaVA layout; returns (src, tower, llama, clip, projector)."""
    src, tower = root / "llava", root / "clip"
    tokenizer = llama_tokenizer()
    tokenizer.save_pretrained(src)
    text = dict(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0, pretraining_tp=1,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**text)).eval()
    clip_config = CLIPVisionConfig(
        hidden_size=TOWER_WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=IMAGE, patch_size=PATCH
    )
    clip = CLIPVisionModel(clip_config).eval()
    clip.save_pretrained(tower)
    projector = {
        "model.mm_projector.0.weight": torch.randn(HIDDEN, TOWER_WIDTH) * 0.1,
        "model.mm_projector.0.bias": torch.randn(HIDDEN) * 0.1,
        "model.mm_projector.2.weight": torch.randn(HIDDEN, HIDDEN) * 0.1,
        "model.mm_projector.2.bias": torch.randn(HIDDEN) * 0.1,
    }
    state = {**llama.state_dict(), **projector}
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for file, keys in shards.items():
        torch.save({k: state[k].clone() for k in keys}, src / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        **text,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "torch_dtype": "float32",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": TOWER_WIDTH,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        **mm_overrides,
    }
    (src / "config.json").write_text(json.dumps(config))
    return src, tower, llama, clip, projector


def reference_inputs(tokenizer, llama, clip, projector, frames):
    """The original model's input embeddings, by hand, and the text token ids around the video."""
    pixels = preprocess_frames(frames, IMAGE)  # LLaVA-1.5: pad to square with the CLIP mean, resize, normalise
    with torch.no_grad():
        patches = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        hidden = F.linear(patches, projector["model.mm_projector.0.weight"], projector["model.mm_projector.0.bias"])
        hidden = F.linear(F.gelu(hidden), projector["model.mm_projector.2.weight"], projector["model.mm_projector.2.bias"])
        video = torch.cat([hidden.mean(dim=1), hidden.mean(dim=0)])  # T temporal + P spatial tokens
        before = [tokenizer.bos_token_id] + tokenizer(f"{VICUNA_SYSTEM} USER: ", add_special_tokens=False)["input_ids"]
        after = tokenizer(f"\n{QUESTION} ASSISTANT:", add_special_tokens=False)["input_ids"]
        embed = llama.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(before)), video, embed(torch.tensor(after))])
    return embeds.unsqueeze(0), before, after, video.shape[0]


def converted_logits(lm, frames):
    batch = lm.collate([VideoExample([{"role": "user", "content": QUESTION}], frames)], add_generation_prompt=True)
    with torch.no_grad():
        return batch["input_ids"][0].tolist(), lm.forward(batch).logits


def test_converted_model_reproduces_the_original_forward(tmp_path):
    src, tower, llama, clip, projector = write_original(tmp_path)
    out = convert_llava_checkpoint(src, tmp_path / "out", vision_tower=tower, num_frames=6)
    lm = load_adapter_model(out)
    assert lm.family == "llava-video" and lm.processor.num_frames == 6
    tokenizer = llama_tokenizer()
    frames = np.random.default_rng(0).integers(0, 256, (6, 24, 40, 3), dtype=np.uint8)
    embeds, before, after, num_video = reference_inputs(tokenizer, llama, clip, projector, frames)
    ids, logits = converted_logits(lm, frames)
    video_id = lm.video_token_id
    assert video_id == len(tokenizer)  # one token added after the original vocabulary
    assert ids == before + [video_id] * num_video + after
    with torch.no_grad():
        expected = llama(inputs_embeds=embeds).logits
    vocab = len(tokenizer)
    torch.testing.assert_close(logits[..., :vocab], expected, rtol=1e-5, atol=1e-5)
    # The added row: the mean of the original rows, never sampled.
    torch.testing.assert_close(lm.base_model.lm_head.weight[video_id], llama.lm_head.weight.mean(0))
    assert lm.tokenizer.pad_token == "<unk>" and lm.base_model.generation_config.eos_token_id == 2


def test_converted_lora_adapter_matches_the_original(tmp_path):
    from peft import LoraConfig, get_peft_model

    src, tower, llama, clip, projector = write_original(tmp_path)
    lm = load_adapter_model(convert_llava_checkpoint(src, tmp_path / "out", vision_tower=tower))
    # An adapter trained on the original layout: leaf names, as LLaVA's scripts write them.
    peft_llama = get_peft_model(llama, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    for name, parameter in peft_llama.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    peft_llama.save_pretrained(tmp_path / "lora_original")
    assert (tmp_path / "lora_original" / "adapter_model.safetensors").is_file()

    assert cli_main(["model", "convert", "--src", str(tmp_path / "lora_original"), "--out", str(tmp_path / "lora")]) == 0
    lm.load_lora(tmp_path / "lora", "sft")
    adapted = [name for name, _ in lm.model.named_modules() if name.endswith(".lora_A")]
    assert len(adapted) == 3 * 2 and all(".language_model.layers." in name for name in adapted)  # not CLIP's q/v_proj

    frames = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    embeds, *_ = reference_inputs(llama_tokenizer(), peft_llama.get_base_model(), clip, projector, frames)
    with torch.no_grad():
        expected = peft_llama(inputs_embeds=embeds).logits
        with peft_llama.disable_adapter():
            base = peft_llama(inputs_embeds=embeds).logits
    _, logits = converted_logits(lm, frames)
    vocab = expected.shape[-1]
    torch.testing.assert_close(logits[..., :vocab], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter does change the output


def test_cli_converts_a_checkpoint(tmp_path):
    src, tower, *_ = write_original(tmp_path)
    out = tmp_path / "out"
    args = ["model", "convert", "--src", str(src), "--vision-tower", str(tower), "--out", str(out), "--dtype", "bfloat16"]
    assert cli_main(args) == 0
    assert load_adapter_model(out).dtype == torch.bfloat16
    assert cli_main(args) == 2  # --out is not empty now


def test_tower_weights_inside_the_checkpoint_win(tmp_path):
    src, tower, _, clip, _ = write_original(tmp_path)
    # A checkpoint saved with a tuned tower (old CLIP key names, as LLaVA's code saves them).
    tuned = {f"model.vision_tower.vision_tower.vision_model.{k}": v * 2 for k, v in clip.state_dict().items()}
    torch.save(tuned, src / "pytorch_model-00003-of-00003.bin")
    lm = load_adapter_model(convert_llava_checkpoint(src, tmp_path / "out", vision_tower=tower))
    ours = lm.visual_modules()["vision_tower"].state_dict()
    torch.testing.assert_close(ours["post_layernorm.weight"], clip.state_dict()["post_layernorm.weight"] * 2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"config_drop": "mm_projector_type"}, r"not an original LLaVA checkpoint: no mm_projector_type"),
        ({"weight_drop": "model.mm_projector.2.weight"}, r"missing weights model\.mm_projector\.2\.weight"),
        ({"weight_drop": "model.layers.1.mlp.up_proj.weight"}, r"missing weights model\.layers\.1\.mlp\.up_proj\.weight"),
        ({"no_tower": True}, r"pass --vision-tower DIR, a local copy of its vision tower 'openai/clip-vit-large-patch14-336'"),
        ({"mm": {"mm_hidden_size": 1024}}, r"mm_hidden_size 1024 but the vision tower's width is 32"),
        ({"mm": {"mm_projector_type": "qformer"}}, r"mm_projector_type 'qformer' is not supported"),
    ],
)
def test_wrong_layouts_say_what_is_missing(tmp_path, change, message):
    src, tower, *_ = write_original(tmp_path, **change.get("mm", {}))
    if "config_drop" in change:
        config = json.loads((src / "config.json").read_text())
        del config[change["config_drop"]]
        (src / "config.json").write_text(json.dumps(config))
    if "weight_drop" in change:
        for shard in src.glob("*.bin"):
            state = torch.load(shard, weights_only=True)
            state.pop(change["weight_drop"], None)
            torch.save(state, shard)
    with pytest.raises(UserError, match=message):
        convert_llava_checkpoint(src, tmp_path / "out", vision_tower=None if change.get("no_tower") else tower)


def test_a_checkpoint_without_tokenizer_files_fails_before_reading_weights(tmp_path, monkeypatch):
    import vlm_rlaif.models.convert as convert

    src, tower, *_ = write_original(tmp_path)
    tokenizer_dir = tmp_path / "vicuna"
    tokenizer_dir.mkdir()
    for path in src.glob("*token*"):  # what the tokenizer's save_pretrained wrote
        path.rename(tokenizer_dir / path.name)

    def no_weights(directory):
        raise AssertionError("read the weights before checking the tokenizer")

    with monkeypatch.context() as patch:
        patch.setattr(convert, "read_state_dict", no_weights)
        with pytest.raises(UserError, match=rf"{src}: no tokenizer files \(expected tokenizer.json or tokenizer.model\); pass --tokenizer DIR"):
            convert_llava_checkpoint(src, tmp_path / "out", vision_tower=tower)
        with pytest.raises(UserError, match=rf"{tmp_path / 'elsewhere'}: no tokenizer files"):
            convert_llava_checkpoint(src, tmp_path / "out", vision_tower=tower, tokenizer=tmp_path / "elsewhere")
    assert not (tmp_path / "out").exists()

    out = tmp_path / "out"
    args = ["model", "convert", "--src", str(src), "--vision-tower", str(tower), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    assert cli_main(args) == 0
    assert load_adapter_model(out).tokenizer.convert_ids_to_tokens(1) == "<s>"


def test_adapter_errors_and_name_mapping(tmp_path):
    with pytest.raises(UserError, match="no adapter_config.json"):
        convert_llava_lora(tmp_path, tmp_path / "out")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q_proj"]}))
    with pytest.raises(UserError, match="no adapter_model.safetensors or adapter_model.bin"):
        convert_llava_lora(tmp_path, tmp_path / "out")
    assert remap_name("model.layers.3.self_attn.q_proj") == "model.language_model.layers.3.self_attn.q_proj"
    assert remap_name("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert remap_name("model.vision_tower.vision_tower.vision_model.post_layernorm.weight") == (
        "model.vision_tower.post_layernorm.weight"
    )
    with pytest.raises(UserError, match="not a parameter of the original LLaVA layout"):
        remap_name("model.something_else.weight")
