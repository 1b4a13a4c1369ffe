"""Stage 2a, context-aware AI feedback: candidates, clip context, judges, preference records.

    candidates   K distinct sampled answers per prompt (duplicates resampled or the prompt dropped)
    context      clip descriptions by the describing model, joined in temporal order, cached per video
    judges       local (next-token " A" vs " B"), openai (any compatible endpoint), oracle (toy world)
    preferences  both orders -> a label under the consistent or average position policy
    pipeline     run_feedback(config) -> summary: the resumable stage
    measure      measure_context(config): the same pairs judged with and without context vs the oracle
    agreement    oracle agreement, Wilson and bootstrap intervals
"""

from vlm_rlaif.feedback.config import FeedbackConfig
from vlm_rlaif.feedback.measure import measure_context
from vlm_rlaif.feedback.pipeline import run_feedback

__all__ = ["FeedbackConfig", "measure_context", "run_feedback"]
