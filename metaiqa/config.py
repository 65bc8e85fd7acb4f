"""Configuration: defaults (pydantic models) < base YAML < YAML file < `--set key=value` overrides.

A YAML file may start from another with `base: other.yaml` (relative to the file that names
it; a base may have its own base). The file's keys are merged over its base's: sections key by
key, any other value (lists included) replaced whole. So a recipe that varies another states
only what it changes.

Every config model forbids unknown keys, so a typo is an error naming the key rather
than a silently ignored setting.
"""

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from metaiqa.errors import MetaIQAError


class ConfigError(MetaIQAError):
    """A config file or override is unreadable, has an unknown key or a bad value."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


C = TypeVar("C", bound=StrictModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'inner.lr=0.01' -> (['inner', 'lr'], 0.01); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set inner.lr=0.01)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def _set_nested(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge_over(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merged key by key, every other value replaced whole."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_over(out[key], value)
        else:
            out[key] = value
    return out


def read_layered_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with its `base:` chain resolved (see the module doc); the `base` key removed."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        names = " -> ".join(p.name for p in (*_chain, resolved))
        raise ConfigError(f"{path}: `base:` chain loops back on itself ({names})")
    data = read_yaml(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `base` must be the path of another YAML config, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: its base {base!r} is not a file (looked for {base_path.resolve()})")
    return merge_over(read_layered_yaml(base_path, (*_chain, resolved)), data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build `cls` from defaults, then the YAML file (over its base), then overrides; errors name the key."""
    data: dict[str, Any] = read_layered_yaml(path) if path else {}
    for item in overrides or []:
        keys, value = parse_override(item)
        _set_nested(data, keys, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" else " (unknown key)")
            for e in exc.errors()
        )
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {cls.__name__}{where}: {problems}") from exc


def dump_config(cfg: StrictModel) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (saved beside every checkpoint)."""
    return cfg.model_dump(mode="json")
