"""The setup PPO and GRPO share (train/ppo.py and train/grpo.py run the algorithms): the settings of
the policy, its initialisation, the RL prompts and the runtime; the roles on their bases; the prompts.

    policy base (the SFT model):  LoRA POLICY (trains) + LoRA REFERENCE (frozen); with full
                                  fine-tuning the reference is a frozen copy instead
    value base (the RM's base):   LoRA VALUE (trains) + the reward model's own LoRA (frozen)

GRPO has no value model: only the policy base with its POLICY and REFERENCE adapters.
load_policy initialises the policy first when asked (initialise_policy: SFT on the RL prompts'
reference answers through train/loop.py); load_value_and_reward (PPO) builds the value model and the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from vlm_rlaif.clients.generator import GeneratorSettings
from vlm_rlaif.data.frames import FrameSampling, FrameStore
from vlm_rlaif.errors import ConfigError, RecordError, UserError
from vlm_rlaif.models.adapter import VideoLM
from vlm_rlaif.models.examples import VideoExample
from vlm_rlaif.models.feature_cache import FeatureCache
from vlm_rlaif.models.heads import ScalarHead, ScalarModel
from vlm_rlaif.models.lora import LoraSettings
from vlm_rlaif.rollout.engine import EngineKind
from vlm_rlaif.rundir import RunDir
from vlm_rlaif.train.data import (
    SourcedRecord,
    check_video_exists,
    check_videos,
    decodes_every_video,
    read_instruction_file,
    skipped_summary,
)
from vlm_rlaif.train.loop import TrainSettings
from vlm_rlaif.train.sharding import is_sharded
from vlm_rlaif.train.tracking import LoggingSettings

log = logging.getLogger(__name__)

# The LoRA adapters' names on the two bases.
POLICY, REFERENCE, VALUE = "policy", "reference", "value"

# Answers to the RL prompts' questions given to the reward model: (prompts, answer texts) -> scores (B,).
RewardFn = Callable[[Sequence[VideoExample], Sequence[str]], torch.Tensor]


# ---------------------------------------------------------------------------- settings (PPO and GRPO)


@dataclass
class PolicySettings:
    """model: the SFT model directory, base of the policy and the reference. finetune "lora" (the
    paper: r=64, alpha=16 on attention and MLP projections) or "full" (reference = a frozen copy)."""

    model: str = ""
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=16))


@dataclass
class InitSettings:
    """Policy initialisation: SFT on data.init_data (one epoch in the paper: lr 1e-4 cosine, batch 128).
    adapter: start from an already initialised policy LoRA instead (e.g. the paper's released one)."""

    enabled: bool = True
    adapter: str | None = None
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(batch_size=8, lr=1e-4, schedule="cosine", warmup_ratio=0.03, save_every=50)
    )


@dataclass
class RewardSettings:
    """model: a reward model saved by `vlm-rlaif rm` (its directory or run directory); its base becomes
    the value base. value_init "reward_model": the value LoRA starts as a copy of the RM's (the paper);
    "fresh": a new LoRA (value_lora)."""

    model: str | None = None
    value_init: Literal["reward_model", "fresh"] = "reward_model"
    value_lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=16))


@dataclass
class DataSettings:
    """Files are relative to root, and so are the records' videos (unless video_root is set).
    prompts: RL prompts (instruction records; the first human turn is the question).
    init_data: the same prompts with reference answers, for the policy initialisation.
    num_frames: frames per video (0: the policy model's own setting). Prompts whose rendered query
    (system sentence, template, video placeholder as one token, question) is over max_prompt_tokens
    tokens are dropped, together with their videos (the released code drops queries over 128 tokens,
    counted that way). on_bad_video: a prompt's or an initialisation record's video that is missing
    or does not decode stops the run ("fail", naming the file, the record and the video) or is
    skipped ("skip": its records are dropped and counted in the summary)."""

    root: str = "."
    prompts: str = "rl/prompts.json"
    init_data: str = "rl/PPO_init.json"
    video_root: str | None = None
    num_frames: int = 0
    max_prompt_tokens: int = 128
    frame_cache_videos: int = 1024
    on_bad_video: str = "fail"


@dataclass
class RuntimeSettings:
    """dtype: e.g. bfloat16 (default: as saved). quantization "4bit": QLoRA bases (CUDA + bitsandbytes).
    mixed_precision "bf16" runs every forward under autocast. feature_cache_mb 0 turns the shared
    visual-feature cache off (every pass re-encodes its videos: only for measuring)."""

    dtype: str | None = None
    quantization: str | None = None
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"
    cpu: bool = False
    engine: EngineKind = "hf"
    vllm_gpu_memory_utilization: float = 0.3
    # engine "openai": the servers that sample rollouts, hot-loading each iteration's policy adapter
    # (vLLM's server with runtime LoRA updating, or `vlm-rlaif serve --lora-root`; rollout/openai_engine.py).
    rollout_server: GeneratorSettings = field(default_factory=GeneratorSettings)
    feature_cache_mb: int = 2048


class RLConfig(Protocol):
    """What the setup reads of a PPO or GRPO config."""

    out: str
    seed: int
    policy: PolicySettings
    init: InitSettings
    data: DataSettings
    runtime: RuntimeSettings
    logging: LoggingSettings  # the dashboards (open_rl_run hands the run directory its tracker)

    @property
    def initialises(self) -> bool: ...


class ValueRewardConfig(RLConfig, Protocol):
    """A PPO config: also the reward model and PPO's batch sizes."""

    reward: RewardSettings
    ppo: Any


def initialises(config: RLConfig) -> bool:
    """Whether a run reads data.init_data: only until the initialisation has finished."""
    init_done = (Path(config.out) / "policy_init" / "summary.json").is_file()
    return config.init.enabled and not config.init.adapter and not init_done


def check_policy_settings(config: RLConfig, stage: str) -> None:
    """The checks PPO and GRPO configs share."""
    from vlm_rlaif.data.frames import check_on_bad_video

    if not config.policy.model:
        raise ConfigError("policy.model (the SFT model directory) is required")
    lora = config.policy.lora
    if lora.train_projector or lora.train_vision_tower:
        raise ConfigError(
            f"the visual path stays frozen in {stage.upper()}: policy.lora.train_projector/train_vision_tower must be false"
        )
    if config.init.adapter and config.policy.finetune == "full":
        raise ConfigError("init.adapter is a LoRA adapter; it needs policy.finetune: lora")
    check_on_bad_video(config.data.on_bad_video, f"{stage}: data")


def policy_inputs(config: RLConfig) -> dict[str, str | Path | None]:
    """The paths the policy's side of a run reads, by config key (None: not used)."""
    data, root = config.data, Path(config.data.root)
    return {
        "policy.model": config.policy.model,
        "init.adapter": config.init.adapter,
        "data.prompts": root / data.prompts,
        "data.init_data": root / data.init_data if config.initialises else None,
        "data.video_root" if data.video_root else "data.root": data.video_root or root,
    }


# ---------------------------------------------------------------------------- the bases


@dataclass
class RLData:
    """The RL prompts' and the initialisation data's records whose videos open (read_rl_data), and the
    records skipped for a bad video (on_bad_video "skip")."""

    prompts: list[SourcedRecord]
    prompts_skipped: list[dict]
    init: list[SourcedRecord] | None = None  # None: this run does not read the initialisation data
    init_skipped: list[dict] = field(default_factory=list)


def read_rl_data(config: RLConfig) -> RLData:
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
    config: RLConfig, out: Path, accelerator, cache: FeatureCache | None, rl_data: RLData | None = None
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
        if is_sharded(accelerator):
            # FSDP2 sharded the initialisation's model in place (train/loop.py): drop it and its
            # optimizer, and start again from what the initialisation saved, as a resumed run does.
            del policy
            accelerator.free_memory()
            return load_policy(config, out, accelerator, cache, rl_data)
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
    config: RLConfig,
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
        run=run, accelerator=accelerator, desc="policy init", keep_whole=list(policy.visual_modules().values()),
    )
    if result.consolidated is not None:  # FSDP2: the trained full weights, on the main process
        policy.model = result.consolidated
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
    config: ValueRewardConfig, policy: VideoLM, accelerator, cache: FeatureCache | None, reward_fn: RewardFn | None
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


def num_frames_of(config: RLConfig, lm: VideoLM) -> int:
    frames = config.data.num_frames or getattr(lm.processor, "num_frames", 0)
    if not frames:
        raise ConfigError("data.num_frames is 0 and the policy's processor names no frame count; set data.num_frames")
    return frames


def frame_store(config: RLConfig, lm: VideoLM) -> FrameStore:
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
    "DataSettings",
    "InitSettings",
    "PolicySettings",
    "Prompt",
    "RLConfig",
    "RLData",
    "RewardFn",
    "RewardSettings",
    "RuntimeSettings",
    "check_policy_settings",
    "decode_prompt_videos",
    "frame_store",
    "initialise_policy",
    "initialises",
    "load_policy",
    "load_value_and_reward",
    "num_frames_of",
    "policy_inputs",
    "prompt_examples",
    "read_prompts",
    "read_rl_data",
    "share_feature_cache",
]
