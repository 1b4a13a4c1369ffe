import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from vlm_rlaif.config import load_config, save_config, to_dict
from vlm_rlaif.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.0


@dataclass
class Stage:
    output_dir: Path = Path("runs/x")
    epochs: int = 1
    seed: int = 0
    use_lora: bool = True
    optim: Optim = field(default_factory=Optim)
    files: list[str] = field(default_factory=list)
    note: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 2\noptim:\n  lr: 2.0e-5\nfiles: [a.json, b.json]\n")
    cfg = load_config(Stage, cfg_file, ["optim.schedule=constant", "optim.lr=1e-4", "note=hi"])
    assert cfg.epochs == 2
    assert cfg.optim.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: coerced
    assert cfg.optim.schedule == "constant"
    assert cfg.files == ["a.json", "b.json"]
    assert cfg.note == "hi"
    assert isinstance(cfg.output_dir, Path)


def test_recipe_section_is_selected(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sft:\n  epochs: 3\nrm:\n  epochs: 5\n")
    assert load_config(Stage, recipe, section="sft").epochs == 3
    assert load_config(Stage, recipe, section="rm").epochs == 5


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("epoch=3", "unknown key 'epoch'; did you mean 'epochs'?"),
        ("optim.schedule=linear", "key 'optim.schedule' must be one of 'cosine', 'constant'"),
        ("epochs=two", "key 'epochs' expects int"),
        ("use_lora=maybe", "key 'use_lora' expects bool"),
        ("optim=3", "'optim' must be a mapping"),
        ("noequals", "is not of the form key.sub=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(Stage, None, [override])
    assert message in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  warmup_ration: 0.03\n")
    with pytest.raises(ConfigError) as err:
        load_config(Stage, cfg_file)
    assert str(cfg_file) in str(err.value)
    assert "did you mean 'optim.warmup_ratio'" in str(err.value)


def test_non_utf8_config_file_names_the_file_and_line(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_bytes(b"optim:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: not UTF-8 text"):
        load_config(Stage, cfg_file)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Stage, Path("/nonexistent/c.yaml"))


def test_save_round_trip(tmp_path):
    cfg = load_config(Stage, None, ["epochs=4", "optim.lr=3e-5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Stage, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(cfg)


def test_recipe_variables(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_dir: runs/toy\nsft:\n  output_dir: ${run_dir}/sft\n  files: ['${run_dir}/a.json']\n")
    cfg = load_config(Stage, recipe, section="sft")
    assert cfg.output_dir == Path("runs/toy/sft") and cfg.files == ["runs/toy/a.json"]
    cfg = load_config(Stage, recipe, ["note=${run_dir}/x"], section="sft", variables={"run_dir": "/tmp/r"})
    assert cfg.output_dir == Path("/tmp/r/sft") and cfg.note == "/tmp/r/x"
    # a variable may refer to another, and a variable given by the caller wins
    recipe.write_text("run_dir: runs/toy\nmodel: ${run_dir}/sft/model\nsft:\n  note: ${model}\n")
    assert load_config(Stage, recipe, section="sft").note == "runs/toy/sft/model"
    assert load_config(Stage, recipe, section="sft", variables={"run_dir": "/r"}).note == "/r/sft/model"
    assert load_config(Stage, recipe, section="sft", variables={"model": "/shipped"}).note == "/shipped"
    recipe.write_text("sft:\n  note: ${nope}\n")
    with pytest.raises(ConfigError, match=r"unknown variable \$\{nope\}"):
        load_config(Stage, recipe, section="sft")


@dataclass
class Phase:
    data: str = ""
    epochs: int = 1


@dataclass
class Curriculum:
    phases: list[Phase] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


def test_overrides_index_into_lists(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("phases:\n  - {data: short.json}\n  - {data: long.json, epochs: 3}\nsizes: [1, 2]\n")
    cfg = load_config(Curriculum, cfg_file, ["phases.0.epochs=2", "phases.1.data=other.json", "sizes.1=5"])
    assert cfg.phases == [Phase("short.json", 2), Phase("other.json", 3)]
    assert cfg.sizes == [1, 5]
    out_of_range = r"override 'phases.2.epochs': index 2 is out of range \(the list has 2 items\)"
    with pytest.raises(ConfigError, match=out_of_range):
        load_config(Curriculum, cfg_file, ["phases.2.epochs=2"])
    with pytest.raises(ConfigError, match=r"override 'phases.first.epochs': a list is indexed by a number \(0, 1, ...\), not 'first'"):
        load_config(Curriculum, cfg_file, ["phases.first.epochs=2"])
    with pytest.raises(ConfigError, match="override 'sizes.-1'"):
        load_config(Curriculum, cfg_file, ["sizes.-1=2"])


def test_var_arguments_reach_the_recipe(tmp_path):
    import argparse

    from vlm_rlaif.config import add_config_arguments, config_variables

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_dir: runs/toy\nsft:\n  output_dir: ${run_dir}/sft\n")
    args = parser.parse_args(["--config", str(recipe), "--var", "run_dir=/tmp/exp", "epochs=2"])
    cfg = load_config(Stage, args.config, args.overrides, section="sft", variables=config_variables(args))
    assert cfg.output_dir == Path("/tmp/exp/sft") and cfg.epochs == 2
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        config_variables(parser.parse_args(["--var", "no-equals"]))


def test_a_mistyped_override_is_reported_as_the_command_lines_not_the_files(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_dir: runs/toy\nsft:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Stage, recipe, ["optim.lrr=1"], section="sft")
    assert str(err.value).startswith("command line, override 'optim.lrr=1': unknown key 'optim.lrr'; did you mean 'optim.lr'?")
    with pytest.raises(ConfigError, match=r"^command line, override 'epochs=two': key 'epochs' expects int"):
        load_config(Stage, recipe, ["epochs=two"], section="sft")
    # the file's own mistakes are still the file's
    recipe.write_text("sft:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(recipe))}: unknown key 'epoch'"):
        load_config(Stage, recipe, ["epochs=3"], section="sft")


def test_a_recipe_variable_given_as_an_override_points_to_var(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_dir: runs/toy\nsft:\n  output_dir: ${run_dir}/sft\n")
    with pytest.raises(ConfigError, match=r"'run_dir' is a recipe variable \(\$\{run_dir\}\), not a config key; set it with --var run_dir=/tmp/x"):
        load_config(Stage, recipe, ["run_dir=/tmp/x"], section="sft")
    # an override may use the variables
    assert load_config(Stage, recipe, ["note=${run_dir}/n"], section="sft").note == "runs/toy/n"


def test_an_override_inside_a_list_of_dataclasses_is_checked_against_the_items_class(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("phases:\n  - {data: short.json}\n")
    with pytest.raises(ConfigError, match=r"^command line, override 'phases.0.epoch=2': unknown key 'phases.0.epoch'; did you mean 'phases.0.epochs'"):
        load_config(Curriculum, cfg_file, ["phases.0.epoch=2"])
