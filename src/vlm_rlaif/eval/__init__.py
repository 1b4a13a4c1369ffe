"""Evaluation: VCG-Bench's five scores, zero-shot open-ended video QA, multiple choice; judges
(OpenAI-compatible, a local model, the toy world's oracle); bootstrap intervals; tables.

    run_eval(config) -> summary           everything (eval.run)
    predict(lm, items, frames, path, s)   a model's answers, resumable JSONL (eval.predict)
    judge(items, predictions, kind=, by=, out_path=)   judgements, resumable JSONL (eval.judging)
    aggregate(kind, judgements)           scores with intervals (eval.aggregate)
"""

from vlm_rlaif.eval.aggregate import aggregate
from vlm_rlaif.eval.benchmarks import EvalItem, load_items, model_prompts, parse_option
from vlm_rlaif.eval.config import BenchmarkSpec, BootstrapSpec, EvalConfig, JudgeSpec, ModelSpec
from vlm_rlaif.eval.judges import Judgement, LocalJudge, OpenAIJudge, OracleJudge
from vlm_rlaif.eval.judging import judge
from vlm_rlaif.eval.predict import PredictSettings, iter_predict, predict, read_predictions
from vlm_rlaif.eval.run import build_judge, load_model, run_eval

__all__ = [
    "BenchmarkSpec",
    "BootstrapSpec",
    "EvalConfig",
    "EvalItem",
    "Judgement",
    "JudgeSpec",
    "LocalJudge",
    "ModelSpec",
    "OpenAIJudge",
    "OracleJudge",
    "PredictSettings",
    "aggregate",
    "build_judge",
    "iter_predict",
    "judge",
    "load_items",
    "load_model",
    "model_prompts",
    "parse_option",
    "predict",
    "read_predictions",
    "run_eval",
]
