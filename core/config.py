"""Typed config trees: dataclass defaults, then a TOML file, then `section.key=value` overrides.

Every command owns one dataclass tree (e.g. `data_prep.config.PrepConfig`). `load_config` fills it
strictly: unknown keys and values of the wrong type or outside a `Literal` raise `ConfigError`
naming the field and what would be valid. A dataclass may define `validate()` for checks that span
fields. `save_resolved` writes the final tree next to an output so a run can be reproduced.

Standard library only, like all of `core`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from core.errors import ConfigError
from core.files import write_text_atomic

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from its defaults, the TOML file at `path`, then `a.b=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    cfg = from_dict(cls, data)
    _validate_tree(cfg)
    return cfg


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file (see configs/)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). Values parse as TOML (numbers, booleans, [lists], "strings");
    anything that is not valid TOML is taken as a bare string, so `source.path=/data/x` works."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like source.path")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Strictly convert a nested dict into the dataclass `cls`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table of keys, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section [{prefix}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key {_join(prefix, unknown[0])!r} in {where}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(prefix, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            shown = ", ".join(str(c) if c != "" else '""' for c in choices)  # "" (off) must stay visible
            raise ConfigError(f"{name}={value!r} is not valid; choose one of: {shown}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}={value!r} has the wrong type ({tp})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, e.g. {name}=[1, 2], got {value!r}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    raise ConfigError(f"{name}: unsupported config type {tp}")


def _validate_tree(cfg: Any) -> None:
    """Call `validate()` on every dataclass in the tree, children first."""
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_resolved(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as TOML (and nothing else) so the run can be repeated with
    `--config <that file>`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dumps_toml(to_dict(cfg)))
    return path


def dumps_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for config trees (scalars, lists of scalars, nested tables).
    None values are left out: a missing key means the default, which is None where allowed."""
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _dump_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, path + [key], lines)


def toml_value(value: Any) -> str:
    """One TOML value (bool, number, string, list), e.g. for a `key=value` override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


__all__ = [
    "load_config", "from_dict", "to_dict", "save_resolved", "dumps_toml", "parse_override", "read_toml", "toml_value",
]
