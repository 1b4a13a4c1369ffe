"""An interactive chat about one video (`vlm-rlaif chat`): multi-turn, answers streamed as they come.

The video is encoded once (its features stay in the model's feature cache under the session's
video key); every turn sends the whole conversation so far, rendered by the model's own template.
Commands typed at the prompt: /reset (forget the conversation, keep the video), /quit (or end of input).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TextIO

import numpy as np

from vlm_rlaif.models import GenerationSettings, VideoExample, VideoLM
from vlm_rlaif.serve.generation import Completion, complete

HELP = "/reset clears the conversation (the video stays), /quit exits."


class ChatSession:
    """One conversation with `lm` about `frames` (uint8 (T, H, W, 3), or None for text only)."""

    def __init__(
        self,
        lm: VideoLM,
        frames: np.ndarray | None = None,
        video_key: str | None = None,
        settings: GenerationSettings | None = None,
        system: str | None = None,
    ):
        self.lm = lm
        self.frames = frames
        self.video_key = video_key
        self.settings = settings or GenerationSettings(temperature=0.2, max_new_tokens=512)
        self.system = system
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> Completion:
        """Answer `question` in the context of the conversation so far; `on_text` receives the answer's
        text piece by piece while it is generated. The turn is added to the history."""
        conversation = [{"role": "system", "content": self.system}] if self.system else []
        conversation += self.history + [{"role": "user", "content": question}]
        example = VideoExample(conversation, self.frames, self.video_key)
        if on_text is None:
            completion = complete(self.lm, example, self.settings)
        else:
            completion = self._streamed(example, on_text)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": completion.text}]
        return completion

    def _streamed(self, example: VideoExample, on_text: Callable[[str], None]) -> Completion:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def generate() -> None:
            try:
                result["completion"] = complete(self.lm, example, self.settings, streamer=streamer)
            except BaseException as err:  # handed to the caller's thread below
                result["error"] = err
                streamer.end()  # unblock the reader

        worker = threading.Thread(target=generate, name="chat-generate", daemon=True)
        worker.start()
        for piece in streamer:
            on_text(piece)
        worker.join()
        if "error" in result:
            raise result["error"]
        return result["completion"]


def run_chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO, banner: str = "") -> int:
    """Read questions line by line from stdin until /quit or end of input; stream answers to stdout."""

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    write((banner + "\n" if banner else "") + HELP + "\n")
    while True:
        write("you> ")
        line = stdin.readline()
        if not line:
            write("\n")
            return 0
        question = line.strip()
        if not question:
            continue
        if question in ("/quit", "/exit"):
            return 0
        if question == "/reset":
            session.reset()
            write("(conversation cleared)\n")
            continue
        if question.startswith("/"):
            write(f"unknown command {question.split()[0]}; {HELP}\n")
            continue
        write("model> ")
        session.ask(question, on_text=_without_leading_space(write))
        write("\n")


def _without_leading_space(write: Callable[[str], None]) -> Callable[[str], None]:
    """Answers often start with a space token ("ASSISTANT: A"); the prompt shows none."""
    started = False

    def show(piece: str) -> None:
        nonlocal started
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        write(piece)

    return show


__all__ = ["ChatSession", "HELP", "run_chat_loop"]
