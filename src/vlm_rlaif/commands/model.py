"""`vlm-rlaif model ACTION`: create model directories.

  model init     build a tiny/small model (llava-video, llava-next-video or qwen2.5-vl) with a tokenizer
                 trained on local texts
  model convert  an original LLaVA checkpoint (or a LoRA adapter trained on one) -> our llava-video format
  model ship-toy the SFT model of a from-scratch demo run -> the package's shipped toy foundation (fp16)
"""

from __future__ import annotations

import argparse

NAME = "model"
HELP = "create model directories (init: a tiny or small model from scratch; convert: from the original LLaVA layout)"
# The paper's architecture, then the HF-native families of vlm_rlaif.models.hf_native.tiny (listed here so
# that building the parser imports no torch).
INIT_ARCHES = ["llava-video", "llava-next-video", "qwen2.5-vl"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="build a randomly initialised model and a locally trained tokenizer (nothing is downloaded)",
        description="Build a randomly initialised model and a locally trained tokenizer. Nothing is downloaded.",
    )
    init.add_argument(
        "--arch",
        choices=INIT_ARCHES,
        default="llava-video",
        help="model family: llava-video (the paper's architecture) or an HF-native family",
    )
    init.add_argument(
        "--size", choices=["tiny", "small"], default="tiny", help="tiny (about 1M) or small (about 20M parameters)"
    )
    init.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    init.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="FILE_OR_DIR",
        help="texts for the tokenizer: JSON/JSONL instruction records ('value' strings) or .txt; repeatable",
    )
    init.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (at most)")
    init.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    init.add_argument(
        "--frames", type=int, help="frames per video the model expects (default: 24 for llava-video, else 8)"
    )
    init.add_argument("--image-size", type=int, default=32, help="frame side in pixels after resizing")
    init.add_argument("--patch-size", type=int, help="vision patch side in pixels (llava-video only; default 8)")
    init.add_argument(
        "--pooling", choices=["spatiotemporal", "none"], help="video pooling (llava-video only; default spatiotemporal)"
    )
    init.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    init.set_defaults(_model_action=run_init)

    convert = actions.add_parser(
        "convert",
        help="convert an original LLaVA checkpoint or a LoRA adapter trained on one (see models/convert.py)",
        description=(
            "Convert an original LLaVA checkpoint (config.json with mm_* keys, LLaMA + mm_projector weights, "
            "tokenizer) into a llava-video model directory, or a peft LoRA adapter trained on that layout into "
            "one that loads onto the converted model (--src holding adapter_config.json)."
        ),
    )
    convert.add_argument("--src", required=True, help="original checkpoint directory, or a LoRA adapter directory")
    convert.add_argument(
        "--vision-tower", help="local CLIP vision tower directory (e.g. clip-vit-large-patch14-336); not for adapters"
    )
    convert.add_argument(
        "--tokenizer", help="directory holding the checkpoint's tokenizer files (default: --src); not for adapters"
    )
    convert.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    convert.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], help="weight dtype (default: as the checkpoint stores it)"
    )
    convert.add_argument("--frames", type=int, default=50, help="frames per video the model expects (the paper's 50)")
    convert.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    convert.set_defaults(_model_action=run_convert)

    ship = actions.add_parser(
        "ship-toy",
        help="ship a from-scratch demo run's SFT model as the package's toy foundation (fp16; see demo/foundation.py)",
    )
    ship.add_argument("--from", dest="run_dir", required=True, help="a `vlm-rlaif demo --from-scratch` run directory")
    ship.add_argument("--dest", help="where to write (default: the package's vlm_rlaif/foundation/toy_sft)")
    ship.set_defaults(_model_action=run_ship_toy)


def run(args: argparse.Namespace) -> int:
    return args._model_action(args)


def run_init(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import numpy as np

    from vlm_rlaif.errors import ConfigError, UserError
    from vlm_rlaif.models.tiny import count_parameters, read_corpus

    log = logging.getLogger("vlm_rlaif.model")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --force")
    if args.arch != "llava-video" and (args.patch_size is not None or args.pooling is not None):
        raise ConfigError(
            f"--patch-size and --pooling apply to --arch llava-video only; {args.arch} uses its family's own"
        )

    texts = [text for corpus in args.corpus for text in read_corpus(corpus)]
    if args.arch == "llava-video":
        frames = 24 if args.frames is None else args.frames
        lm = _init_llava_video(args, texts, frames)
    else:
        from vlm_rlaif.models.hf_native.tiny import build_tiny_hf_model

        frames = 8 if args.frames is None else args.frames
        lm = build_tiny_hf_model(
            args.arch,
            texts,
            size=args.size,
            vocab_size=args.vocab_size,
            frames=frames,
            image_size=args.image_size,
            seed=args.seed,
        )
    lm.save(out)
    video = np.zeros((frames, args.image_size, args.image_size, 3), dtype=np.uint8)
    log.info(
        "wrote %s: %s %s, %d parameters, vocabulary %d (from %d texts), %d frames -> %d video tokens",
        out,
        args.arch,
        args.size,
        count_parameters(lm.base_model),
        len(lm.tokenizer),
        len(texts),
        frames,
        lm.num_video_tokens(video),
    )
    return 0


def _init_llava_video(args: argparse.Namespace, texts: list[str], frames: int):
    from vlm_rlaif.errors import ConfigError
    from vlm_rlaif.models.tiny import build_tiny_model, train_tokenizer

    patch_size = 8 if args.patch_size is None else args.patch_size
    if args.image_size % patch_size:
        raise ConfigError(f"--image-size {args.image_size} is not a multiple of --patch-size {patch_size}")
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    return build_tiny_model(
        args.size,
        tokenizer,
        frames=frames,
        image_size=args.image_size,
        patch_size=patch_size,
        video_pooling=args.pooling or "spatiotemporal",
        seed=args.seed,
    )


def run_ship_toy(args: argparse.Namespace) -> int:
    from vlm_rlaif.demo.foundation import SHIPPED, ship_foundation

    info = ship_foundation(args.run_dir, args.dest or SHIPPED)
    print(f"shipped {args.run_dir}/sft/model ({info['sft_summary'].get('steps')} SFT steps) to {args.dest or SHIPPED}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlm_rlaif.errors import ConfigError, UserError
    from vlm_rlaif.models.convert import convert_llava_checkpoint, convert_llava_lora, is_lora_adapter

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --force")
    if is_lora_adapter(args.src):
        if args.vision_tower or args.dtype or args.tokenizer:
            raise ConfigError("--vision-tower, --tokenizer and --dtype apply to checkpoints, not to LoRA adapters")
        convert_llava_lora(args.src, out)
    else:
        convert_llava_checkpoint(
            args.src, out, vision_tower=args.vision_tower, tokenizer=args.tokenizer, dtype=args.dtype, num_frames=args.frames
        )
    return 0
