"""vlm-rlaif: reinforcement learning from AI feedback for video large multimodal models."""

__version__ = "0.1.0"
