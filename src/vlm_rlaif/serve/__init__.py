"""Using a model interactively and over HTTP: `vlm-rlaif chat` (a streamed multi-turn chat about one
video) and `vlm-rlaif serve` (an OpenAI-compatible chat-completions endpoint with video input and
token log-probabilities, so a model can judge for another run)."""

from vlm_rlaif.serve.generation import Completion, TokenLogprob, complete, default_num_frames
from vlm_rlaif.serve.openai_api import BadRequest, parse_request
from vlm_rlaif.serve.server import VideoLMServer
from vlm_rlaif.serve.session import ChatSession, run_chat_loop

__all__ = [
    "BadRequest",
    "ChatSession",
    "Completion",
    "TokenLogprob",
    "VideoLMServer",
    "complete",
    "default_num_frames",
    "parse_request",
    "run_chat_loop",
]
