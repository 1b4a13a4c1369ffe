"""Generation engines that sample PPO rollouts from the current policy (see engine.py)."""

from vlm_rlaif.rollout.engine import EngineKind, HFEngine, RolloutEngine, make_engine, vllm_available

__all__ = ["EngineKind", "HFEngine", "RolloutEngine", "make_engine", "vllm_available"]
