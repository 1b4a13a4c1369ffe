#!/usr/bin/env bash
# The lowest supported versions (pyproject.toml's lower bounds: what CUDA images and vLLM 0.33 carry):
# a second venv with them, and a fast subset of the suite on it (models, data and video, one small
# training run per trainer). CI runs it after the whole suite on the newest set.
#   bash tests/lowest_versions.sh            # venv in .venv-lowest
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LOWEST_VENV:-.venv-lowest}
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 tokenizers==0.23.1 \
  peft==0.21.0 accelerate==1.15.0 -e '.[test]'
"$venv/bin/python" -c "import torch, transformers; print('lowest set: torch', torch.__version__, 'transformers', transformers.__version__)"
"$venv/bin/python" -m pytest -q \
  tests/test_models_tiny.py tests/test_models_llava_video.py tests/test_models_hf_native.py \
  tests/test_models_adapter.py tests/test_models_cache.py tests/test_models_heads_lora.py \
  tests/test_records.py tests/test_frames.py tests/test_video_io.py tests/test_config.py \
  tests/test_train_loop.py tests/test_generator.py tests/test_dpo.py \
  tests/test_bench_smoke.py::test_gpu_check_tiny_mode \
  tests/test_sft.py::test_video_reaches_the_loss_forward_with_grad \
  tests/test_sft.py::test_lora_with_length_split_saves_adapter_and_merged_model \
  tests/test_rm.py::test_the_video_reaches_the_loss_forward_and_both_answers_share_one_encode \
  tests/test_rm.py::test_training_lowers_the_loss_and_beats_chance_on_held_out_videos \
  tests/test_ppo.py::test_video_reaches_every_pass_and_is_encoded_once \
  tests/test_ppo.py::test_known_reward_rises_with_policy_initialisation \
  tests/test_grpo.py::test_video_reaches_the_loss_forward_through_the_cache \
  tests/test_grpo.py::test_known_reward_rises_and_none_rewards_are_counted
