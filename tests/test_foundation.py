"""The demo's shipped foundation: shipping a from-scratch run's SFT model (fp16) and installing it
as a run's SFT stage (float32)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors import safe_open

from vlm_rlaif.demo.foundation import INFO_FILE, SHIPPED, install_foundation, ship_foundation, shipped_foundation
from vlm_rlaif.errors import UserError
from vlm_rlaif.models import build_tiny_model, load_adapter_model, train_tokenizer


def fake_from_scratch_run(root):
    lm = build_tiny_model("tiny", train_tokenizer(["a red circle moves left"] * 20, vocab_size=300))
    lm.save(root / "sft" / "model")
    (root / "sft" / "summary.json").write_text(json.dumps({"steps": 7, "eval_loss_after": 1.5}))
    (root / "sft" / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.001}}))
    (root / "sft" / "env.json").write_text(json.dumps({"torch": torch.__version__}))
    return lm


def test_ship_then_install_round_trips_the_weights(tmp_path):
    lm = fake_from_scratch_run(tmp_path / "run")
    dest = tmp_path / "shipped"
    info = ship_foundation(tmp_path / "run", dest)
    assert info["sft_summary"]["steps"] == 7 and (dest / INFO_FILE).is_file()
    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}

    summary = install_foundation(tmp_path / "demo" / "sft", dest)
    assert summary["foundation"] == str(dest) and summary["steps"] == 7
    installed = load_adapter_model(summary["model"])
    for name, weight in lm.unwrapped_model.state_dict().items():
        got = installed.unwrapped_model.state_dict()[name]
        assert got.dtype == torch.float32 and torch.equal(got, weight.half().float()), name
    assert install_foundation(tmp_path / "demo" / "sft", dest) == summary  # a second call keeps it


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="missing"):
        ship_foundation(tmp_path / "nothing", tmp_path / "shipped")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "summary.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(UserError, match="holds another SFT run"):
        install_foundation(tmp_path / "sft", tmp_path / "shipped")


def test_the_package_ships_a_foundation_that_loads():
    path = shipped_foundation()
    assert path == SHIPPED
    info = json.loads((path / INFO_FILE).read_text())
    assert info["sft_summary"]["steps"] > 1000 and info["vision_summary"]["heldout_accuracy"] > 0.9
    assert sum(p.stat().st_size for p in path.rglob("*")) < 30 * 2**20
    load_adapter_model(path)
