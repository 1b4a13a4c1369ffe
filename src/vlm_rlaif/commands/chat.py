"""`vlm-rlaif chat`: talk with a model about a video in the terminal.

  vlm-rlaif chat --model DIR [--video FILE] [--frames N] [--lora DIR] [--system TEXT]

DIR is a model directory, a LoRA adapter directory (on the base its adapter_config.json names) or a
stage's run directory (the model it trained), e.g. after `vlm-rlaif demo`:

  vlm-rlaif chat --model demo_runs/seed0/sft --video demo_runs/seed0/world/videos/<clip>.mp4
  vlm-rlaif chat --model demo_runs/seed0/ppo --video demo_runs/seed0/world/videos/<clip>.mp4

Answers stream as they are generated; the conversation is multi-turn. At the prompt, /reset starts
over (same video) and /quit (or Ctrl-D) exits. Without --video the chat is text only.
"""

from __future__ import annotations

import argparse

NAME = "chat"
HELP = "chat with a model about a video (streamed, multi-turn; /reset, /quit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--video", help="video file or frame folder to talk about (default: text only)")
    parser.add_argument("--system", help="system prompt (default: the model's template's own)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (default 0.2, the paper's)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: random)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `serve`: which model, on what device."""
    parser.add_argument("--model", required=True,
                        help="a model directory (any family), a LoRA adapter directory (on the base it names) "
                        "or a stage's run directory (e.g. demo_runs/seed0/ppo: the RLAIF policy)")
    parser.add_argument("--lora", help="a LoRA adapter directory to apply on a model directory given as --model")
    parser.add_argument("--frames", type=int, help="frames sampled per video (default: the model's own, else 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: a GPU if there is one)")
    parser.add_argument("--dtype", help="e.g. bfloat16 (default: as saved)")


def run(args: argparse.Namespace) -> int:
    import sys

    from vlm_rlaif.models import GenerationSettings
    from vlm_rlaif.serve import ChatSession, default_num_frames, run_chat_loop
    from vlm_rlaif.serve.generation import load_for_generation
    from vlm_rlaif.serve.model_choice import resolve_model
    from vlm_rlaif.video import load_video

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    choice = resolve_model(args.model, args.lora)
    lm = load_for_generation(str(choice.base), lora=choice.adapter, device=args.device, dtype=args.dtype)
    frames = video_key = None
    if args.video:
        num_frames = args.frames or default_num_frames(lm)
        frames = load_video(args.video, num_frames=num_frames).frames
        video_key = f"chat:{args.video}@{num_frames}"
    session = ChatSession(lm, frames, video_key, settings, system=args.system)
    about = f"{args.video} ({len(frames)} frames)" if frames is not None else "no video"
    return run_chat_loop(session, sys.stdin, sys.stdout, banner=f"{choice.describe()} ({lm.family}); {about}.")
