"""Every shipped recipe loads: each stage section through its stage's config class (and its check()),
with the variables a run sets, so a typo in a recipe fails here and not hours into a GPU run. Nothing
runs and no path needs to exist."""

from pathlib import Path

import pytest
import yaml

from vlm_rlaif.eval.config import EvalConfig
from vlm_rlaif.feedback.config import FeedbackConfig
from vlm_rlaif.pipeline import PipelineSettings, Recipe, quick_overrides
from vlm_rlaif.toyworld import ToyWorldConfig
from vlm_rlaif.train.grpo import GRPOConfig
from vlm_rlaif.train.ppo import PPOConfig, PPOSettings
from vlm_rlaif.train.rm import RMConfig
from vlm_rlaif.train.sft import SFTConfig
from vlm_rlaif.train.vision_pretrain import VisionPretrainConfig

_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(_DIR.glob("*.yaml")) + sorted((_DIR / "ablations").glob("*.yaml"))
# judge_context has no section of its own: it reruns the feedback section's pairs.
STAGE_CONFIGS = {
    "toyworld": ToyWorldConfig,
    "vision": VisionPretrainConfig,
    "sft": SFTConfig,
    "feedback": FeedbackConfig,
    "rm": RMConfig,
    "ppo": PPOConfig,
    "grpo": GRPOConfig,
    "eval": EvalConfig,
}
# Top-level mappings that are neither stages nor variables: YAML anchors other sections refer to.
ANCHOR_SECTIONS = {"model"}


def test_the_recipes_are_found():
    assert {path.name for path in RECIPES} >= {"toy.yaml", "paper-7b.yaml", "qwen2.5-vl-7b.yaml", "dense-clips.yaml",
                                               "dense-clips-verify.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_top_level_keys_are_known(path):
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        if isinstance(value, (str, int, float)):
            continue  # a ${variable}
        assert key in STAGE_CONFIGS or key in ("pipeline", "quick") or key in ANCHOR_SECTIONS, (
            f"{path.name}: unknown top-level section {key!r} (a misspelt stage is silently ignored)"
        )
    assert "run_dir" in raw and "seed" in raw


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_stage_section_loads_with_its_config_class(path, quick, tmp_path):
    overrides = quick_overrides(path) if quick else {}
    recipe = Recipe(path, {"run_dir": str(tmp_path / "run"), "seed": 7}, overrides)
    raw = recipe.raw()
    pipeline = recipe.load(PipelineSettings, "pipeline")
    sections = [stage for stage in STAGE_CONFIGS if stage in raw]
    assert sections, f"{path.name} has no stage section"
    for stage in pipeline.stages:
        needed = "feedback" if stage == "judge_context" else stage
        assert needed in raw, f"{path.name}: pipeline.stages runs {stage} but there is no '{needed}' section"
    for stage in sections:
        config = recipe.load(STAGE_CONFIGS[stage], stage)
        if hasattr(config, "check"):
            config.check()
        if stage != "toyworld":
            # Outputs follow ${run_dir}, so a run's --out / --run-dir moves every stage.
            assert str(config.out).startswith(str(tmp_path / "run")), f"{path.name}: {stage}.out = {config.out}"
        seeds = [config.seed] if hasattr(config, "seed") else []
        seeds += [config.train.seed] if hasattr(config, "train") else []
        assert all(seed == 7 for seed in seeds), f"{path.name}: {stage} does not follow ${{seed}}: {seeds}"


def test_paper_recipe_holds_the_papers_numbers(tmp_path):
    recipe = Recipe(_DIR / "paper-7b.yaml", {"run_dir": str(tmp_path), "data_dir": "/d"}, {})
    assert recipe.load(PipelineSettings, "pipeline").stages == ["sft", "feedback", "rm", "ppo", "eval"]

    sft = recipe.load(SFTConfig, "sft")
    assert [phase.files for phase in sft.curriculum.phases] == [["SFT_short.json"], ["SFT_long.json"]]
    assert (sft.tune.method, sft.tune.lora_r, sft.tune.lora_alpha, sft.train.lr) == ("lora", 32, 32, 1e-4)
    assert sft.data.root == "/d/instructions"

    feedback = recipe.load(FeedbackConfig, "feedback")
    assert (feedback.num_frames, feedback.clip_max_frames) == (50, 20)  # 3 clips
    assert (feedback.candidates.num_candidates, feedback.candidates.temperature) == (2, 1.0)
    assert feedback.context and feedback.judge.kind == "local" and feedback.model_dir == tmp_path / "sft" / "model"
    assert feedback.judge.min_verdict_mass > 0  # an off-format verdict gives no label

    rm = recipe.load(RMConfig, "rm")
    assert (rm.lora.r, rm.lora.alpha, rm.lora.targets, rm.epochs) == (64, 16, "attn_mlp", 1)
    train = rm.train
    assert (train.lr, train.schedule, train.warmup_ratio, train.mixed_precision) == (2e-5, "constant", 0.03, "bf16")
    assert train.batch_size * 8 * train.grad_accum == 16  # pairs per step on the 8 GPUs the comments launch
    assert rm.data.eval_pairs == 500 and "13b" in rm.model.path

    ppo = recipe.load(PPOConfig, "ppo")
    paper = PPOSettings()  # the defaults are the paper's values
    for name in ("rollout_batch_size", "minibatch_size", "max_new_tokens", "temperature", "top_p", "kl_coef",
                 "clip_range", "value_clip_range", "value_loss_coef", "ppo_epochs", "lr", "warmup_iterations",
                 "reward_scale", "no_eos_penalty", "length_penalty"):
        assert getattr(ppo.ppo, name) == getattr(paper, name), name
    assert (ppo.policy.lora.r, ppo.policy.lora.alpha) == (64, 16) and ppo.init.enabled
    assert ppo.init.train.batch_size * 8 * ppo.init.train.grad_accum == 128
    assert ppo.reward.value_init == "reward_model" and ppo.data.num_frames == 50
    assert ppo.ppo.stop_at_question_mark and ppo.data.max_prompt_tokens == 128  # as the released code

    evaluation = recipe.load(EvalConfig, "eval")
    generation = evaluation.generation
    assert (generation.num_frames, generation.temperature, generation.max_new_tokens) == (50, 0.2, 512)
    assert {b.paper for b in evaluation.benchmarks} == {"vcg_bench", "msvd_qa", "msrvtt_qa", "anet_qa"}
    assert evaluation.judge.kind == "openai" and evaluation.judge.model[-4:].isdigit()  # a dated model


def test_a_misspelt_key_in_a_recipe_fails(tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (_DIR / "paper-7b.yaml").read_text()
    broken.write_text(text.replace("clip_max_frames: 20\n  context: true", "clip_max_frame: 20\n  context: true"))
    recipe = Recipe(broken, {"run_dir": str(tmp_path)}, {})
    with pytest.raises(Exception, match="unknown key 'clip_max_frame'; did you mean 'clip_max_frames'"):
        recipe.load(FeedbackConfig, "feedback")
