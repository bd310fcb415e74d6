"""Typed settings from `ZTMESH_*` environment variables and an optional YAML file.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`. Values come
from, in increasing precedence: the field default, the YAML file named by `ZTMESH_CONFIG` (top-level
keys for the mesh settings, a section per service for service settings), and the environment.
Anything wrong stops start-up with one `SettingsError` line naming the variable or key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ztmesh.mesh.errors import SettingsError

T = TypeVar("T")
ENV_PREFIX = "ZTMESH_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a settings field. `check` returns a problem description, or None when the value is fine."""
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def port_check(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"port {value} is outside 0-65535"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"


def _convert(raw: Any, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _convert(raw, inner[0], name)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(name, f"expected true or false, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise SettingsError(name, f"expected an integer, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise SettingsError(name, f"expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(str(raw).strip())
        except ValueError:
            raise SettingsError(name, f"expected a number, got {raw!r}") from None
    if kind is Path:
        return Path(str(raw)).expanduser()
    if origin is tuple:
        items = raw if isinstance(raw, list | tuple) else [s for s in str(raw).split(",") if s.strip()]
        return tuple(str(i).strip() for i in items)
    if kind is str:
        if isinstance(raw, dict | list):
            raise SettingsError(name, f"expected a string, got {type(raw).__name__}")
        return str(raw)
    raise TypeError(f"settings field {name} has unsupported type {kind!r}")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the YAML settings file; errors name the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SettingsError("ZTMESH_CONFIG", f"file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SettingsError("ZTMESH_CONFIG", f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SettingsError("ZTMESH_CONFIG", f"{path} must hold a mapping of settings")
    return data


def load_settings(
    cls: type[T],
    *,
    env: Mapping[str, str] | None = None,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    ignore_keys: frozenset[str] = frozenset(),
) -> T:
    """Build `cls` from defaults, the YAML file (its `section`, or the top level), the environment and
    explicit overrides (e.g. command-line flags), validating every field.

    `ignore_keys` lists top-level YAML keys that belong to other settings classes (service sections)."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    file_values: dict[str, Any] = {}
    config_path = env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        data = read_config_file(Path(config_path))
        scope = data.get(section, {}) if section else {k: v for k, v in data.items() if k not in ignore_keys}
        where = f"{config_path}: {section + '.' if section else ''}"
        if not isinstance(scope, dict):
            raise SettingsError(where.rstrip(". "), "must be a mapping of settings")
        for key, value in scope.items():
            if key not in fields:
                raise SettingsError(f"{where}{key}", "unknown setting")
            file_values[key] = (value, f"{where}{key}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        raw: Any
        if overrides and name in overrides and overrides[name] is not None:
            raw, source = overrides[name], f"--{name.replace('_', '-')}"
        elif env_name(name) in env:
            raw, source = env[env_name(name)], env_name(name)
        elif name in file_values:
            raw, source = file_values[name]
        elif field.default is not dataclasses.MISSING:
            values[name] = field.default
            continue
        elif field.default_factory is not dataclasses.MISSING:
            values[name] = field.default_factory()
            continue
        else:
            raise SettingsError(env_name(name), "is required but not set")
        value = _convert(raw, hints[name], source)
        check = field.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise SettingsError(source, problem)
        values[name] = value
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(environment variable, default, doc) for each field: the README's settings table."""
    rows = []
    for f in dataclasses.fields(cls):
        default = "" if f.default is dataclasses.MISSING else str(f.default)
        rows.append((env_name(f.name), default, f.metadata.get("doc", "")))
    return rows
