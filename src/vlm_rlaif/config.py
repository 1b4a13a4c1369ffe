"""Typed stage configs: dataclasses loaded from YAML, every key overridable as `key.sub=value`.

A stage declares its config as a (nested) dataclass. `load_config` reads a YAML file (either a flat
stage file or a recipe with one section per stage), applies command-line overrides, checks every key
and type, and returns the dataclass. An unknown or mistyped key is an error that names the key and
suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vlm_rlaif.errors import ConfigError

T = TypeVar("T")


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    section: str | None = None,
    variables: dict[str, Any] | None = None,
    overrides_from: str = "command line",
) -> T:
    """Build `cls` from YAML at `path` (optional) plus `overrides` ("a.b=value" strings).

    Each override is checked against `cls` on its own before it is merged, so that a mistyped key or
    value is reported as coming from `overrides_from`, not from the file.

    If the YAML's top level has a mapping under `section` (a recipe file holding several stages), only
    that mapping is used. Strings may refer to `${name}`: a top-level scalar of the file (a recipe's
    `run_dir`, say), or an entry of `variables`, which wins (the pipeline sets run_dir this way).
    """
    data: dict = {}
    scope: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            line = path.read_bytes().count(b"\n", 0, err.start) + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte offset {err.start}); save the file as UTF-8") from None
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping")
        if section and isinstance(loaded.get(section), dict):
            scope = {k: v for k, v in loaded.items() if isinstance(v, (str, int, float))}
            loaded = loaded[section]
        data = loaded
    scope.update(variables or {})
    # A variable may refer to others (`sft_model: ${run_dir}/sft/model`); two rounds allow a chain of three.
    for _ in range(2):
        scope = {k: _substitute(v, scope, where=str(path or "config")) for k, v in scope.items()}
    for item in overrides or []:
        key, value = _parse_override(item)
        _check_override(cls, key, _substitute(value, scope, overrides_from), item, scope, overrides_from)
        _set_dotted(data, key, value)
    where = str(path) if path else "config"
    return from_dict(cls, _substitute(data, scope, where), where=where)


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(node: Any, scope: dict[str, Any], where: str) -> Any:
    """Replace ${name} in every string of a loaded config."""
    if isinstance(node, dict):
        return {k: _substitute(v, scope, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, scope, where) for v in node]
    if isinstance(node, str):

        def value(match: re.Match) -> str:
            name = match.group(1)
            if name not in scope:
                raise ConfigError(f"{where}: unknown variable ${{{name}}} (known: {', '.join(sorted(scope)) or 'none'})")
            return str(scope[name])

        return _VARIABLE.sub(value, node)
    return node


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def _check_override(cls: type, key: str, value: Any, item: str, variables: dict[str, Any], source: str) -> None:
    """Raise a ConfigError for an override whose key is not in `cls` or whose value does not fit it,
    naming the override and `source` (merged with the file first, it would be blamed on the file).
    A top-level key that is a recipe variable points to --var, which is how variables are set."""
    where = f"{source}, override {item!r}"
    tp: Any = cls
    done: list[str] = []
    for part in key.split("."):
        tp = _without_none(tp)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                if not done and part in variables:
                    raise ConfigError(
                        f"{where}: '{part}' is a recipe variable (${{{part}}}), not a config key; "
                        f"set it with --var {part}={item.split('=', 1)[1]}"
                    )
                full, valid = ".".join(done + [part]), [".".join(done + [n]) for n in names]
                close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
                raise ConfigError(f"{where}: unknown key '{full}'{hint}")
            tp = get_type_hints(tp)[part]
        elif get_origin(tp) in (list, tuple) and part.isdigit():
            tp = (get_args(tp) or (Any,))[0]
        else:
            return  # a mapping or Any field takes any key; a bad list index is _set_dotted's to report
        done.append(part)
    _coerce(tp, value, where=where, key=key)


def _without_none(tp: Any) -> Any:
    """X for `X | None`; other types unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b"; missing mappings are created on the way. A number indexes
    an existing list: "curriculum.phases.0.epochs" sets the first phase's epochs."""
    node: dict | list = data
    *path, last = key.split(".")
    for part in path:
        slot = _slot(node, part, key)
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if not isinstance(child, (dict, list)):
            child = {}
            node[slot] = child
        node = child
    node[_slot(node, last, key)] = value


def _slot(node: dict | list, part: str, key: str) -> str | int:
    """The mapping key, or the list index, that one part of override `key` names in `node`."""
    if isinstance(node, dict):
        return part
    if not part.isdigit():
        raise ConfigError(f"override '{key}': a list is indexed by a number (0, 1, ...), not '{part}'")
    if int(part) >= len(node):
        raise ConfigError(f"override '{key}': index {part} is out of range (the list has {len(node)} items)")
    return int(part)


def from_dict(cls: type[T], data: dict, *, where: str = "config", prefix: str = "") -> T:
    """Validate `data` against dataclass `cls` (recursively), coercing scalar types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or cls.__name__}' must be a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            full = prefix + str(key)
            valid = [prefix + name for name in fields]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key '{full}'{hint}")
        kwargs[key] = _coerce(hints[key], value, where=where, key=prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from None


def _coerce(tp: Any, value: Any, *, where: str, key: str) -> Any:
    origin = get_origin(tp)
    fail = ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where=where, key=key)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        if value in get_args(tp):
            return value
        choices = ", ".join(repr(a) for a in get_args(tp))
        raise ConfigError(f"{where}: key '{key}' must be one of {choices}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=where, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is float:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a config dataclass (Paths as strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_config_arguments(parser, *, required: bool = False) -> None:
    """The CLI arguments every stage shares: --config FILE and KEY=VALUE overrides (a stage that
    writes a run directory adds its own --overwrite)."""
    parser.add_argument("--config", "-c", type=Path, required=required, help="YAML config or recipe")
    parser.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE",
        help="set a recipe variable used as ${NAME}, e.g. --var run_dir=runs/exp1 (repeatable)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override any config key, e.g. train.lr=1e-4"
    )


def add_run_arguments(parser, *, required: bool = True) -> None:
    """The CLI arguments of a stage that writes a run directory: add_config_arguments, --out and
    --overwrite."""
    add_config_arguments(parser, required=required)
    parser.add_argument("--out", help="output directory (overrides the config's 'out')")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in the output directory")


def load_stage_config(cls: type[T], args, section: str) -> T:
    """A stage's config from its command line: the `section` of --config, the KEY=VALUE overrides
    and --var variables, and --out as the last override of `out`."""
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    return load_config(cls, args.config, overrides, section=section, variables=config_variables(args))


def config_variables(args) -> dict[str, Any]:
    """The --var NAME=VALUE arguments as a dict for load_config(variables=...)."""
    out = {}
    for item in getattr(args, "var", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"--var {item!r} is not of the form NAME=VALUE")
        out[name] = value
    return out


__all__ = [
    "add_config_arguments",
    "add_run_arguments",
    "config_variables",
    "from_dict",
    "load_config",
    "load_stage_config",
    "save_config",
    "to_dict",
]

