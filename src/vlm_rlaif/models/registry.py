"""Model families by name, and loading a saved model directory into the right VideoLM subclass.

A family subclass registers itself with `@register_family`. `load_adapter_model(dir)` picks the
family from the directory's vlm_rlaif_model.json (written by VideoLM.save), or else from the
transformers model_type in its config.json (a plain transformers checkpoint).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from vlm_rlaif.errors import UserError
from vlm_rlaif.models.adapter import MODEL_INFO_FILE, VideoLM

FAMILIES: dict[str, type[VideoLM]] = {}

# Modules that define families; optional ones may not exist yet (imported on demand, like cli.py).
FAMILY_MODULES = ("vlm_rlaif.models.llava_video_adapter", "vlm_rlaif.models.hf_native")


def register_family(cls: type[VideoLM]) -> type[VideoLM]:
    """Class decorator: make `cls` loadable under `cls.family` and its `model_types`."""
    if not cls.family:
        raise TypeError(f"{cls.__name__} has no family name")
    FAMILIES[cls.family] = cls
    return cls


def _import_families() -> None:
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def known_families() -> list[str]:
    _import_families()
    return sorted(FAMILIES)


def family_class(family: str, where: str = "") -> type[VideoLM]:
    """The VideoLM subclass of a family name; an unknown name is an error naming the known ones."""
    _import_families()
    if family not in FAMILIES:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def family_of_directory(directory: str | os.PathLike) -> str:
    """The family a saved model directory belongs to (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model directory")
    info_file = directory / MODEL_INFO_FILE
    if info_file.is_file():
        info = _read_json(info_file)
        if "family" not in info:
            raise UserError(f"{info_file}: no 'family' key")
        family_class(info["family"], where=str(info_file))
        return info["family"]
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"{directory} is not a model directory (it has neither {MODEL_INFO_FILE} nor config.json)")
    model_type = _read_json(config_file).get("model_type")
    _import_families()
    for family, cls in FAMILIES.items():
        if model_type in cls.model_types:
            return family
    known = {family: list(cls.model_types) for family, cls in sorted(FAMILIES.items())}
    raise UserError(
        f"{config_file}: model_type {model_type!r} belongs to no known family (families and their model types: {known})"
    )


def load_adapter_model(directory: str | os.PathLike, **load_kwargs) -> VideoLM:
    """Load a saved model directory with its family's VideoLM class (kwargs: see VideoLM.load)."""
    family = family_of_directory(directory)
    return FAMILIES[family].load(directory, **load_kwargs)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


__all__ = ["FAMILIES", "family_class", "family_of_directory", "known_families", "load_adapter_model", "register_family"]
