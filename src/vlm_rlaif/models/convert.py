"""Convert the original LLaVA checkpoint layout (the paper's released models) into our llava-video format.

The original layout (LLaVA / LLaVA-RLHF / VLM-RLAIF, e.g. SNUMPR/vlm_sft_video_llava_7b):
- config.json: a LLaMA config plus mm_* keys (mm_vision_tower, mm_vision_select_layer,
  mm_vision_select_feature, mm_projector_type, mm_hidden_size, ...);
- weights (pytorch_model*.bin or *.safetensors, optionally sharded with an index): the LLaMA weights
  `model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`, and the projector
  `model.mm_projector.{0,2}.*` (mlp2x_gelu: Linear, GELU, Linear) or `model.mm_projector.*` (linear);
- tokenizer files (LLaMA's, without any video token); for a checkpoint saved without them, the
  tokenizer directory is given with --tokenizer (e.g. the base Vicuna model's);
- usually not the vision tower: it is CLIP ViT-L/14-336 loaded by name, given here with --vision-tower
  (a local CLIPVisionModel or CLIPModel directory). Checkpoints that carry tuned tower weights under
  `model.vision_tower.vision_tower.*` use those (the directory then only gives the tower's config).

The result loads with `load_adapter_model`: the same weights under our module names, the tokenizer
plus a `<video>` token (new embedding and LM-head rows set to the mean of the others; the video token
is never sampled and its positions are overwritten by visual features), the Vicuna v1 template and
LLaVA's frame preprocessing (pad to square with the CLIP mean colour).

LoRA adapters trained on the original layout (peft directories) are converted too: their module
names are remapped and their targets pinned to exactly the modules they adapt, so they load onto the
converted model with `VideoLM.load_lora`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from vlm_rlaif.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# A LLaMA tokenizer is one of these (tokenizer.model alone needs sentencepiece to load).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
REQUIRED_MM_KEYS = ("mm_vision_tower", "mm_vision_select_layer", "mm_projector_type", "mm_hidden_size")
LLAMA_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias",
    "mlp_bias", "head_dim", "pretraining_tp",
)  # fmt: skip
TOWER_PREFIX_IN_CHECKPOINT = "model.vision_tower.vision_tower."

# Original module path prefix -> ours (first match wins).
_PATH_MAP = (
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.mm_projector.", "model.multi_modal_projector.linear_1."),  # projector type "linear"
    (TOWER_PREFIX_IN_CHECKPOINT + "vision_model.", "model.vision_tower."),
    (TOWER_PREFIX_IN_CHECKPOINT, "model.vision_tower."),
    ("model.layers.", "model.language_model.layers."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)


def remap_name(name: str) -> str:
    """Original parameter or module name -> ours (a module name without a trailing dot works too)."""
    for old, new in _PATH_MAP:
        if (name + ".").startswith(old):
            return (new + (name + ".")[len(old) :])[:-1]
    raise UserError(f"{name}: not a parameter of the original LLaVA layout")


def is_lora_adapter(directory: str | os.PathLike) -> bool:
    return (Path(directory) / ADAPTER_CONFIG_FILE).is_file()


# ---------------------------------------------------------------- reading checkpoints


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: *.safetensors or pytorch_model*.bin, sharded or not
    (files memory-mapped, so a 7B checkpoint does not need twice its size in RAM)."""
    from safetensors.torch import load_file

    shards = sorted(directory.glob("*.safetensors"))
    loader = load_file
    if not shards:
        shards = sorted(p for p in directory.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
        loader = _load_bin
    if not shards:
        raise UserError(f"{directory}: no weights (*.safetensors or pytorch_model*.bin)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state.update(loader(str(shard)))
        except Exception as err:  # a damaged shard: say which file
            raise UserError(f"{shard}: cannot read weights: {err}") from err
    return state


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err


def _missing(state: dict, names: list[str], where: str) -> None:
    absent = [name for name in names if name not in state]
    if absent:
        shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
        raise UserError(f"{where}: missing weights {shown}")


# ---------------------------------------------------------------- the base model


def convert_llava_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    vision_tower: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    num_frames: int = 50,
    video_pooling: str = "spatiotemporal",
) -> Path:
    """Write the original LLaVA checkpoint at `src` (tower from `vision_tower` unless the checkpoint
    holds it) as a llava-video model directory at `out`; returns `out`.

    tokenizer: a directory holding the checkpoint's tokenizer files (default: `src`), for checkpoints
    saved without them. dtype: of every weight (default: the language model's as stored).
    num_frames: the frames per video the processor records as the default sampling (the paper's 50).
    """
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    from vlm_rlaif.models.adapter import resolve_dtype
    from vlm_rlaif.models.llava_video import LlavaVideoConfig, LlavaVideoForCausalLM, LlavaVideoProcessor
    from vlm_rlaif.models.llava_video.processing import CLIP_MEAN, CLIP_STD, VIDEO_TOKEN
    from vlm_rlaif.models.llava_video_adapter import LlavaVideoLM

    src, out = Path(src), Path(out)
    config_path = src / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{src}: no {CONFIG_FILE}; expected an original LLaVA checkpoint directory")
    original = _read_json(config_path)
    absent = [key for key in REQUIRED_MM_KEYS if key not in original]
    if absent:
        raise UserError(f"{config_path}: not an original LLaVA checkpoint: no {', '.join(absent)}")
    projector_type = original["mm_projector_type"]
    if projector_type not in ("mlp2x_gelu", "linear"):
        raise UserError(f"{config_path}: mm_projector_type {projector_type!r} is not supported (mlp2x_gelu, linear)")
    if original.get("mm_vision_select_feature", "patch") != "patch":
        raise UserError(
            f"{config_path}: mm_vision_select_feature {original['mm_vision_select_feature']!r}: "
            "only 'patch' (CLS dropped) is supported"
        )
    if original.get("mm_use_im_start_end", False):
        raise UserError(f"{config_path}: mm_use_im_start_end=true (image start/end tokens) is not supported")
    if original.get("image_aspect_ratio", "pad") != "pad":
        log.warning(
            "%s: image_aspect_ratio %r; llava-video pads frames to square as LLaVA-1.5 does ('pad')",
            config_path,
            original["image_aspect_ratio"],
        )

    # The tokenizer before the weights: reading a 7B checkpoint takes minutes.
    tokenizer = _load_tokenizer(Path(tokenizer) if tokenizer is not None else src, given=tokenizer is not None)

    state = read_state_dict(src)
    num_layers = original["num_hidden_layers"]
    layer_leaves = sorted({k.split(".", 3)[3] for k in state if k.startswith("model.layers.0.")})
    if not layer_leaves:
        raise UserError(f"{src}: missing weights model.layers.0.* (is this a LLaVA checkpoint?)")
    layers = ("0.", "2.") if projector_type == "mlp2x_gelu" else ("",)
    projector = [f"model.mm_projector.{layer}{kind}" for layer in layers for kind in ("weight", "bias")]
    _missing(
        state,
        ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", *projector]
        + [f"model.layers.{i}.{leaf}" for i in range(num_layers) for leaf in layer_leaves],
        str(src),
    )

    # The vision tower: its config (and weights, unless the checkpoint holds tuned ones) from a CLIP directory.
    if vision_tower is None:
        raise UserError(
            f"{src}: pass --vision-tower DIR, a local copy of its vision tower {original['mm_vision_tower']!r} "
            "(a CLIPVisionModel or CLIPModel directory)"
        )
    tower_dir = Path(vision_tower)
    if not (tower_dir / CONFIG_FILE).is_file():
        raise UserError(f"{tower_dir}: no {CONFIG_FILE}; expected a CLIP vision tower directory")
    tower_config = CLIPVisionConfig.from_pretrained(tower_dir)
    if any(k.startswith(TOWER_PREFIX_IN_CHECKPOINT) for k in state):
        tower_where = f"{src} ({TOWER_PREFIX_IN_CHECKPOINT}*)"
        tower_state = {}  # remapped with the rest of the checkpoint
    else:
        # transformers reads either CLIP layout (CLIPModel, CLIPVisionModel, old or new key names).
        try:
            tower_state = CLIPVisionModel.from_pretrained(tower_dir).state_dict()
        except (OSError, ValueError) as err:
            raise UserError(f"{tower_dir}: cannot load a CLIP vision tower: {err}") from err
        tower_where = str(tower_dir)
    if original["mm_hidden_size"] != tower_config.hidden_size:
        raise UserError(
            f"{config_path}: mm_hidden_size {original['mm_hidden_size']} but the vision tower's width is "
            f"{tower_config.hidden_size}: wrong --vision-tower?"
        )

    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([VIDEO_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for Vicuna v1
    rows = max(len(tokenizer), state["model.embed_tokens.weight"].shape[0])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = _grow_rows(state[name], rows)

    target_dtype = resolve_dtype(dtype) if dtype is not None else state["model.embed_tokens.weight"].dtype
    text_config = LlamaConfig(
        **{key: original[key] for key in LLAMA_KEYS if original.get(key) is not None},
        vocab_size=rows,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    processor_settings = _tower_preprocessing(tower_dir)
    processor = LlavaVideoProcessor(
        tokenizer,
        image_size=tower_config.image_size,
        patch_size=tower_config.patch_size,
        video_pooling=video_pooling,
        num_frames=num_frames,
        image_mean=processor_settings.get("image_mean", CLIP_MEAN),
        image_std=processor_settings.get("image_std", CLIP_STD),
    )
    config = LlavaVideoConfig(
        vision_config=tower_config.to_dict(),
        text_config=text_config.to_dict(),
        video_token_id=processor.video_token_id,
        projector_type=projector_type,
        vision_feature_layer=original["mm_vision_select_layer"],
        video_pooling=video_pooling,
    )

    ours = {f"model.vision_tower.{k}": v for k, v in tower_state.items()}
    unused = []
    for name, tensor in state.items():
        try:
            ours[remap_name(name)] = tensor
        except UserError:
            unused.append(name)
    # Parameters on the meta device (no memory, no random init: the weights come next); buffers,
    # which checkpoints do not hold (rotary frequencies, position ids), are built as usual.
    with init_empty_weights(include_buffers=False):
        model = LlavaVideoForCausalLM(config)
    expected = set(model.state_dict())
    _missing(ours, sorted(expected), f"{src} + {tower_where}")
    unused = sorted(unused + list(set(ours) - expected))  # e.g. old checkpoints' rotary inv_freq
    if unused:
        log.warning("ignoring %d weights with no place in llava-video: %s", len(unused), ", ".join(unused[:5]))
    model.load_state_dict({k: ours[k].to(target_dtype) for k in expected}, assign=True)
    for target in (model.config, model.generation_config):
        target.bos_token_id, target.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        target.pad_token_id = tokenizer.pad_token_id
    LlavaVideoLM(model.eval(), processor, feature_cache=False).save(out)
    log.info("wrote %s: llava-video, %d layers, %d tokens, tower from %s", out, num_layers, rows, tower_where)
    return out


def _load_tokenizer(directory: Path, *, given: bool):
    """The checkpoint's tokenizer from `directory` (given: named by --tokenizer, else the checkpoint)."""
    from transformers import AutoTokenizer

    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not present:
        hint = "" if given else "; pass --tokenizer DIR, a directory holding them (e.g. the base Vicuna/LLaMA model's)"
        raise UserError(f"{directory}: no tokenizer files (expected {' or '.join(TOKENIZER_FILES)}){hint}")
    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # transformers raises many kinds here
        hint = "; tokenizer.model alone needs `pip install sentencepiece protobuf`" if present == ["tokenizer.model"] else ""
        raise UserError(f"{directory}: cannot load the tokenizer ({err}){hint}") from err


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows (the mean of the existing ones) up to `rows`."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)])


def _tower_preprocessing(tower_dir: Path) -> dict:
    """image_mean / image_std from the tower's preprocessor_config.json, when it has one."""
    path = tower_dir / "preprocessor_config.json"
    if not path.is_file():
        return {}
    settings = _read_json(path)
    return {key: settings[key] for key in ("image_mean", "image_std") if key in settings}


# ---------------------------------------------------------------- LoRA adapters


def convert_llava_lora(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a peft LoRA adapter trained on the original layout; returns `out`.

    Module names are remapped (model.layers.* -> model.language_model.layers.*, mm_projector ->
    multi_modal_projector) and target_modules becomes a regex of exactly the adapted modules (a list of
    leaf names like "q_proj" would also match the vision tower's layers here).
    """
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    config_path = src / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{src}: no {ADAPTER_CONFIG_FILE}; expected a peft LoRA adapter directory")
    config = _read_json(config_path)
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{config_path}: peft_type {config['peft_type']!r}; only LORA adapters are converted")
    files = [src / "adapter_model.safetensors", src / "adapter_model.bin"]
    weights_file = next((f for f in files if f.is_file()), None)
    if weights_file is None:
        raise UserError(f"{src}: no adapter_model.safetensors or adapter_model.bin")
    state = read_state_dict_file(weights_file)

    prefix = "base_model.model."
    converted, adapted = {}, set()
    for key, value in state.items():
        if not key.startswith(prefix):
            raise UserError(f"{weights_file}: unexpected key {key!r} (peft keys start with {prefix!r})")
        name = remap_name(key[len(prefix) :])
        if name.startswith(("lm_head", "model.language_model.embed_tokens")):
            # Their rows would miss the added <video> token.
            raise UserError(f"{weights_file}: {key}: adapters of the embeddings or LM head are not supported")
        lora = re.match(r"(.*)\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)(?:\.|$)", name)
        if lora:
            adapted.add(lora.group(1))
        converted[prefix + name] = value
    if not adapted:
        raise UserError(f"{weights_file}: no LoRA weights (lora_A / lora_B) found")

    config["target_modules"] = "(?:" + "|".join(re.escape(module) for module in sorted(adapted)) + ")"
    for key in ("layers_to_transform", "layers_pattern"):
        config.pop(key, None)  # the exact module list already says which layers
    if config.get("modules_to_save"):
        config["modules_to_save"] = [_module_leaf(name) for name in config["modules_to_save"]]
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            config[key] = {_remap_pattern(pattern): value for pattern, value in config[key].items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in converted.items()}, out / "adapter_model.safetensors")
    (out / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    log.info("wrote %s: LoRA adapter on %d modules", out, len(adapted))
    return out


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path)) if path.suffix == ".safetensors" else _load_bin(str(path))
    except Exception as err:
        raise UserError(f"{path}: cannot read weights: {err}") from err


def _module_leaf(name: str) -> str:
    """modules_to_save entries are leaf names (or paths) of the original layout."""
    leaves = {"mm_projector": "multi_modal_projector", "embed_tokens": "embed_tokens", "lm_head": "lm_head"}
    if name in leaves:
        if name in ("embed_tokens", "lm_head"):
            raise UserError(f"modules_to_save {name!r}: its rows would miss the added <video> token; not supported")
        return leaves[name]
    return remap_name(name)


def _remap_pattern(pattern: str) -> str:
    """rank/alpha pattern keys: a module path of the original layout, or a leaf name kept as is."""
    try:
        return remap_name(pattern)
    except UserError:
        return pattern


__all__ = [
    "convert_llava_checkpoint",
    "convert_llava_lora",
    "is_lora_adapter",
    "read_state_dict",
    "remap_name",
]
