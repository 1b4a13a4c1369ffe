"""`vlm-rlaif serve`: an OpenAI-compatible chat-completions endpoint for a model.

  vlm-rlaif serve --model DIR [--host 127.0.0.1] [--port 8000] [--video-root DIR] [--name NAME]

DIR is what `chat --model` takes (a model, a LoRA adapter on its base, a stage's run directory).
POST /v1/chat/completions takes video as image_url frames or as our video_url part (see
vlm_rlaif.serve.openai_api) and returns token log-probabilities when asked (logprobs, top_logprobs),
so a judge can read " A" / " B" probabilities; GET /v1/models lists the model. Any API key is accepted.
Local files (video_url, image_url paths) are read only under --video-root. A request body may be at
most 64 MiB (413 beyond it); a prompt that with max_tokens exceeds the model's positions gets 400.
Each request is logged in one line (route, status, tokens, seconds), never its content.
"""

from __future__ import annotations

import argparse

from vlm_rlaif.commands.chat import add_model_arguments

NAME = "serve"
HELP = "serve a model over an OpenAI-compatible HTTP API (video input, token log-probabilities)"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Shown by `serve --help` (and in the README): a request with a video, after `vlm-rlaif demo`.
EXAMPLE = """example, after `vlm-rlaif demo` (the RLAIF policy; a video file under --video-root):

  vlm-rlaif serve --model demo_runs/seed0/ppo --video-root demo_runs/seed0/world/videos
  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "messages": [{"role": "user", "content": [
      {"type": "video_url", "video_url": {"url": "toy_00008.mp4"}},
      {"type": "text", "text": "What colour is the triangle?"}]}],
    "max_tokens": 32, "temperature": 0}'

The video may also travel in the request: {"url": "data:video/mp4;base64,..."}, or as frames
(one {"type": "image_url"} part per frame, data: URLs of JPEG/PNG images).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the example's lines
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--name", help="model name reported to clients (default: the model directory's name)")
    parser.add_argument("--video-root", help="the only folder whose files requests may name (default: none)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="longest answer one may ask for (default 1024)")
    parser.add_argument(
        "--lora-root",
        help="turn on vLLM's runtime LoRA API (POST /v1/load_lora_adapter, /v1/unload_lora_adapter) for adapters "
        "inside this folder; requests then name an adapter as their model (default: off)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from vlm_rlaif.errors import ConfigError
    from vlm_rlaif.serve import VideoLMServer, default_num_frames
    from vlm_rlaif.serve.generation import load_for_generation
    from vlm_rlaif.serve.model_choice import resolve_model

    log = logging.getLogger("vlm_rlaif.serve")
    for flag, folder in (("--video-root", args.video_root), ("--lora-root", args.lora_root)):
        if folder is not None and not Path(folder).is_dir():
            raise ConfigError(f"{flag} {folder}: no such directory")
    choice = resolve_model(args.model, args.lora)
    lm = load_for_generation(str(choice.base), lora=choice.adapter, device=args.device, dtype=args.dtype)
    server = VideoLMServer(
        (args.host, args.port),
        lm,
        model_name=args.name or Path(args.model).resolve().name,
        video_root=args.video_root,
        num_frames=args.frames or default_num_frames(lm),
        max_tokens=args.max_tokens,
        fingerprint_source=f"{choice.base.resolve()}|{choice.adapter.resolve() if choice.adapter else ''}",
        lora_root=args.lora_root,
    )
    if args.host not in LOOPBACK:
        log.warning("listening on %s: whoever reaches this port can use the model (any API key works)", args.host)
    log.info("serving %s (%s, %s) at %s; Ctrl-C stops", server.model_name, choice.describe(), lm.family, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0
