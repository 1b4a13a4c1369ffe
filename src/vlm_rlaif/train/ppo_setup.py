"""PPO's setup (train/ppo.py runs the algorithm): the four roles on their two bases, and the RL prompts.

    policy base (the SFT model):  LoRA POLICY (trains) + LoRA REFERENCE (frozen); with full
                                  fine-tuning the reference is a frozen copy instead
    value base (the RM's base):   LoRA VALUE (trains) + the reward model's own LoRA (frozen)

load_policy initialises the policy first when asked (initialise_policy: SFT on the RL prompts'
reference answers through train/loop.py); load_value_and_reward builds the value model and the
reward function. Both bases share the run's one FeatureCache. read_prompts reads the RL prompts
(dropping over-long prompts together with their videos); prompt_examples turns them into the
examples the policy and the reward model read.

Bad videos (data.on_bad_video, for the RL prompts and the initialisation data alike): read_rl_data
opens every video before the run directory is made; the videos are decoded through the frame store
before they are used (when it holds them all, so the frames are reused). "fail" stops at the first
bad one, naming the file, the record and the video; "skip" drops its records and lists them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models.adapter import VideoExample, VideoLM
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.heads import ScalarHead, ScalarModel
from vlm_rlaif.rundir import RunDir
from vlm_rlaif.train.data import (
    SourcedRecord,
    check_video_exists,
    check_videos,
    decodes_every_video,
    read_instruction_file,
    skipped_summary,
)

if TYPE_CHECKING:  # ppo.py imports this module; its types are for annotations only
    from vlm_rlaif.train.ppo import PPOConfig, RewardFn

log = logging.getLogger(__name__)

# The LoRA adapters' names on the two bases.
POLICY, REFERENCE, VALUE = "policy", "reference", "value"


# ---------------------------------------------------------------------------- the bases


@dataclass
class RLData:
    """The RL prompts' and the initialisation data's records whose videos open (read_rl_data), and the
    records skipped for a bad video (on_bad_video "skip")."""

    prompts: list[SourcedRecord]
    prompts_skipped: list[dict]
    init: list[SourcedRecord] | None = None  # None: this run does not read the initialisation data
    init_skipped: list[dict] = field(default_factory=list)


def read_rl_data(config: PPOConfig) -> RLData:
    """Read data.prompts (and data.init_data when this run initialises the policy) and open every
    video, before anything is written (see the module docstring)."""
    data, root = config.data, Path(config.data.root)
    video_root = Path(data.video_root or data.root)
    prompts, prompts_skipped = check_videos(read_instruction_file(root / data.prompts), data.on_bad_video, root=video_root)
    result = RLData(prompts, prompts_skipped)
    if config.initialises:
        result.init, result.init_skipped = check_videos(
            read_instruction_file(root / data.init_data), data.on_bad_video, root=video_root
        )
    return result


def load_policy(
    config: PPOConfig, out: Path, accelerator, cache: FeatureCache | None, rl_data: RLData | None = None
) -> tuple[VideoLM, VideoLM | None, dict]:
    """The policy base with its trainable policy and frozen reference (initialising the policy first
    when asked, on rl_data.init when given); returns (policy, reference copy for full fine-tuning or
    None, init summary)."""
    from vlm_rlaif.models.registry import load_adapter_model

    runtime = config.runtime
    init_dir = out / "policy_init"
    full = config.policy.finetune == "full"
    init_done = (init_dir / "summary.json").is_file()
    base_dir = init_dir / "model" if full and init_done else Path(config.policy.model)
    policy = load_adapter_model(base_dir, device=accelerator.device, dtype=runtime.dtype, quantization=runtime.quantization)
    share_feature_cache(policy, cache)
    if config.init.adapter:
        init_summary: dict = {"adapter": config.init.adapter, "trained": False}
        policy.load_lora(config.init.adapter, POLICY, trainable=True)
        policy.load_lora(config.init.adapter, REFERENCE, trainable=False)
    elif config.init.enabled and not init_done:
        init = rl_data if rl_data is not None and rl_data.init is not None else None
        init_summary = initialise_policy(
            config, policy, init_dir, accelerator,
            records=init.init if init else None, skipped=init.init_skipped if init else (),
        )
        if not full:
            policy.load_lora(init_dir / "adapter", REFERENCE, trainable=False)
    elif config.init.enabled:
        init_summary = json.loads((init_dir / "summary.json").read_text())
        if not full:
            policy.load_lora(init_dir / "adapter", POLICY, trainable=True)
            policy.load_lora(init_dir / "adapter", REFERENCE, trainable=False)
    else:
        init_summary = {"enabled": False}
        if not full:
            torch.manual_seed(config.seed)  # the fresh adapter's initialisation
            policy.add_lora(POLICY, config.policy.lora)
    reference = None
    if full:
        policy.set_trainable(language_model=True)
        reference = policy.frozen_copy()
    else:
        policy.set_adapter(POLICY)
    return policy, reference, init_summary


def initialise_policy(
    config: PPOConfig,
    policy: VideoLM,
    init_dir: Path,
    accelerator,
    *,
    records: list[SourcedRecord] | None = None,
    skipped: Sequence[dict] = (),
) -> dict:
    """SFT the policy on the RL prompts' reference answers (train/loop.py); saves init_dir/adapter
    (LoRA: the adapter POLICY is added and trained) or init_dir/model (full fine-tuning).
    records: data.init_data already read (read_rl_data), with `skipped` the records it skipped; each
    video is decoded before training (when the frame store holds them all)."""
    from vlm_rlaif.train.data import InstructionDataset, PlannedBatches, batch_plan
    from vlm_rlaif.train.loop import train
    from vlm_rlaif.train.sft import make_sft_loss

    settings = config.init.train
    root = Path(config.data.root)
    if records is None:
        records, skipped = check_videos(
            read_instruction_file(root / config.data.init_data), config.data.on_bad_video,
            root=Path(config.data.video_root or config.data.root),
        )
    skipped = list(skipped)
    store = frame_store(config, policy)
    if decodes_every_video(store, records):  # the frames stay in the store for training
        records, more = check_videos(records, config.data.on_bad_video, store=store)
        skipped += more
    if not records:
        raise UserError(f"ppo: no record of {root / config.data.init_data} has a good video ({len(skipped)} skipped)")
    dataset = InstructionDataset(records, store)
    if config.policy.finetune == "lora":
        torch.manual_seed(config.seed)
        policy.add_lora(POLICY, config.policy.lora)
    else:
        policy.set_trainable(language_model=True)
    if config.runtime.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    init_config = {"policy": config.policy, "data": config.data.init_data, "train": settings}
    run = RunDir.open_on_main(accelerator, init_dir, "ppo_init", init_config, settings.seed)
    lengths = dataset.lengths(policy.tokenizer)
    plan = batch_plan(range(len(dataset)), settings.batch_size, epochs=1, seed=settings.seed, lengths=lengths)
    result = train(
        policy.model, make_sft_loss(policy), PlannedBatches(plan, dataset, policy.collate), settings,
        run=run, accelerator=accelerator, desc="policy init",
    )
    summary = {
        "examples": len(dataset),
        "steps": result.steps,
        "train_loss": result.train_metrics.get("loss"),
        "seconds": round(result.seconds, 1),
        "trained": True,
        **skipped_summary(skipped),  # on_bad_video "skip"
    }
    if accelerator.is_main_process:
        if config.policy.finetune == "lora":
            policy.save_lora(init_dir / "adapter", POLICY)
        else:
            policy.save(init_dir / "model")
        summary = run.finish(summary)
    accelerator.wait_for_everyone()
    return summary


def load_value_and_reward(
    config: PPOConfig, policy: VideoLM, accelerator, cache: FeatureCache | None, reward_fn: RewardFn | None
) -> tuple[ScalarModel, RewardFn, dict]:
    """The value model (LoRA VALUE + zero head) on the reward model's base, and the reward function
    (the reward model scoring through its own input builder, unless `reward_fn` is given)."""
    from vlm_rlaif.models.registry import load_adapter_model

    runtime = config.runtime
    settings = config.reward
    info: dict = {"value_init": settings.value_init}
    if settings.model:
        from vlm_rlaif.reward import RewardModel, reward_model_directory

        rm = RewardModel.load(
            settings.model, device=accelerator.device, dtype=runtime.dtype, quantization=runtime.quantization
        )
        value_lm = rm.lm
        if settings.value_init == "reward_model":
            value_lm.load_lora(reward_model_directory(settings.model) / "lora", VALUE, trainable=True)
        else:
            torch.manual_seed(config.seed + 1)
            value_lm.add_lora(VALUE, settings.value_lora)
        if rm.frames is not None and rm.frames.num_frames != num_frames_of(config, policy):
            log.warning(
                "the reward model was trained on %d frames per video, PPO samples %d",
                rm.frames.num_frames, num_frames_of(config, policy),
            )
        if reward_fn is None:
            batch_size = config.ppo.forward_batch_size

            def reward_fn(examples, texts):
                return rm.score(examples, texts, batch_size=batch_size)

            info["reward"] = str(settings.model)
    else:
        if reward_fn is None:
            raise ConfigError("reward.model (a reward model directory) is required")
        if settings.value_init == "reward_model":
            raise ConfigError("reward.value_init 'reward_model' needs reward.model; use 'fresh' with a reward function")
        value_lm = load_adapter_model(
            config.policy.model, device=accelerator.device, dtype=runtime.dtype, quantization=runtime.quantization
        )
        torch.manual_seed(config.seed + 1)
        value_lm.add_lora(VALUE, settings.value_lora)
    info.setdefault("reward", "function")
    share_feature_cache(value_lm, cache)
    if value_lm.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise UserError(
            "the value/reward base and the policy use different tokenizers; the value model must read the policy's tokens"
        )
    if not (value_lm.visual_path_frozen and policy.visual_path_frozen):
        raise UserError("the vision tower and projector must stay frozen in PPO")
    if runtime.gradient_checkpointing:
        value_lm.enable_gradient_checkpointing()
    value = ScalarModel(value_lm, ScalarHead(value_lm.hidden_size, zero_init=True), lora_name=VALUE)
    return value, reward_fn, info


def share_feature_cache(lm: VideoLM, cache: FeatureCache | None) -> None:
    """Give `lm` the run's one feature cache (None: no caching). Assigned after loading, because
    VideoLM's constructor treats an empty cache as false and would make its own."""
    lm.feature_cache = cache


def num_frames_of(config: PPOConfig, lm: VideoLM) -> int:
    frames = config.data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not frames:
        raise ConfigError("data.num_frames is 0 and the policy's processor names no frame count; set data.num_frames")
    return frames


def frame_store(config: PPOConfig, lm: VideoLM) -> FrameStore:
    root = Path(config.data.video_root or config.data.root)
    return FrameStore(root, FrameSampling(num_frames=num_frames_of(config, lm)), max_videos=config.data.frame_cache_videos)



# ---------------------------------------------------------------------------- RL prompts


@dataclass
class Prompt:
    """One RL prompt: the question about a record's video."""

    id: str
    question: str
    sourced: SourcedRecord


def read_prompts(
    path: Path, video_root: Path, lm: VideoLM, max_prompt_tokens: int, *, records: Sequence[SourcedRecord] | None = None
) -> tuple[list[Prompt], int]:
    """The prompts of an instruction file (first human turn) whose video exists, and how many were
    dropped for a rendered query over max_prompt_tokens tokens: the policy's whole generation prompt
    (system sentence, template, video placeholder as one token, question), as the released code
    counts it, not the question alone. records: the file already read (read_rl_data)."""
    from vlm_rlaif.reward import prompt_example

    prompts, dropped = [], 0
    for sourced in read_instruction_file(path) if records is None else records:
        check_video_exists(video_root, sourced)
        question = sourced.record.question
        if not question:
            raise RecordError(f"{sourced.where}: the first human turn holds no question")
        length = lm.prompt_length(prompt_example(question).conversation, where=sourced.where)
        if length > max_prompt_tokens:
            dropped += 1  # the prompt and its video go together: nothing can misalign
            continue
        prompts.append(Prompt(sourced.record.id, question, sourced))
    return prompts, dropped


def decode_prompt_videos(prompts: list[Prompt], store: FrameStore, on_bad_video: str) -> tuple[list[Prompt], list[dict]]:
    """Decode every prompt's video now when the store holds them all (the rollouts then reuse the
    frames): (the prompts whose video decodes, the skipped ones under on_bad_video "skip")."""
    if not decodes_every_video(store, [p.sourced for p in prompts]):
        return prompts, []
    kept, skipped = check_videos([p.sourced for p in prompts], on_bad_video, store=store)
    keep = {id(r) for r in kept}
    return [p for p in prompts if id(p.sourced) in keep], skipped


def prompt_examples(prompts: Sequence[Prompt], store: FrameStore) -> list[VideoExample]:
    """One question-about-a-video example per prompt, built as the reward model builds its prompts."""
    from vlm_rlaif.reward import prompt_example

    examples = []
    for prompt in prompts:
        try:
            frames, key = store.for_record(prompt.sourced.record, where=prompt.sourced.where)
        except UserError as err:
            if isinstance(err, RecordError):
                raise
            raise RecordError(f"{prompt.sourced.where}: {err}") from err
        examples.append(prompt_example(prompt.question, frames, key))
    return examples

__all__ = [
    "POLICY",
    "REFERENCE",
    "VALUE",
    "Prompt",
    "RLData",
    "decode_prompt_videos",
    "frame_store",
    "initialise_policy",
    "load_policy",
    "load_value_and_reward",
    "num_frames_of",
    "prompt_examples",
    "read_prompts",
    "read_rl_data",
    "share_feature_cache",
]
