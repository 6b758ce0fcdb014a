"""Typed, validated settings: one dataclass per method (and stage), readable from YAML and ``key=value`` overrides.

Every field is declared with :func:`option`, which carries its one-line help and its allowed range or choices, so
that the CLI's ``--help``, the bench config check and the validation before any work starts all read the same
place. Nested settings (``stage1.beta``) are nested :class:`Config` dataclasses.

    @dataclass
    class LightGCNConfig(Config):
        dim: int = option(64, "embedding size", min=1)

    cfg = LightGCNConfig.from_dict({"dim": 32})            # unknown key or bad value -> ConfigError naming it
    cfg = cfg.with_overrides(["dim=16"])                   # values parsed as YAML scalars
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names the key and what is allowed.

    Not a :class:`~explainrec.data.schema.DataError`: a bad setting is the caller's to fix (exit code 2), bad data
    the input's (exit code 1), and code that handles one must not swallow the other."""


# numpy's and torch's generators take seeds up to 2**32 - 1 everywhere (a larger one fails deep inside training)
SEED_MAX = 2**32 - 1


def seed_option(help: str = "random seed") -> Any:  # noqa: A002
    """A seed field: an integer in 0 .. 2**32 - 1, so that every generator it seeds accepts it."""
    return option(0, help, min=0, max=SEED_MAX)


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,  # noqa: A002
           choices: tuple | None = None, above: float | None = None) -> Any:
    """A config field with its help line and limits (``min``/``max`` inclusive, ``above`` exclusive).

    Mutable defaults (lists, dicts, nested configs) are given as a zero-argument callable.
    """
    meta = {"help": help, "min": min, "max": max, "choices": choices, "above": above}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Base of every settings dataclass: dict round trip, validation, overrides, help."""

    # Keys that may differ between a run and its resume without changing what was trained so far (budgets).
    RESUMABLE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ dicts

    def to_dict(self) -> dict:
        """Plain JSON/YAML types (tuples become lists), nested configs as dicts."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Config) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "config") -> "Config":
        """Build from a (possibly partial) mapping; missing keys keep their defaults."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'settings'}: expected a mapping of settings, got {type(data).__name__}")
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in hints]
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown key(s) {unknown}; allowed: {', '.join(names)}")
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as err:  # raised by validate(): "field: message"
            raise ConfigError(f"{where}.{err}" if where else str(err)) from None

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: list[str] | dict, where: str = "override") -> "Config":
        """A copy with ``key=value`` (dotted keys for nested settings) applied; values are YAML scalars."""
        merged = merge_dicts(self.to_dict(), parse_overrides(overrides) if isinstance(overrides, list) else overrides)
        return type(self).from_dict(merged, where)

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check every field against its declared limits, then :meth:`check` for rules across fields."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                continue  # validated when it was built
            _check_value(f.name, value, f.metadata, hints[f.name])
        self.check()

    def check(self) -> None:
        """Rules across fields (e.g. ``top_k <= n_experts``); raise :class:`ConfigError`."""

    # ------------------------------------------------------------------ help

    @classmethod
    def describe(cls, prefix: str = "", defaults: "Config | None" = None) -> list[tuple[str, str, str]]:
        """``(dotted key, default, help)`` for every setting, nested ones flattened."""
        rows = []
        defaults = cls() if defaults is None else defaults
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if isinstance(value, Config):
                rows += type(value).describe(f"{prefix}{f.name}.", value)
                continue
            meta = f.metadata
            limits = []
            if meta.get("choices"):
                limits.append("one of " + "|".join(map(str, meta["choices"])))
            if meta.get("min") is not None:
                limits.append(f">= {meta['min']:g}")
            if meta.get("above") is not None:
                limits.append(f"> {meta['above']:g}")
            if meta.get("max") is not None:
                limits.append(f"<= {meta['max']:g}")
            text = meta.get("help", "") + (f" ({'; '.join(limits)})" if limits else "")
            rows.append((f"{prefix}{f.name}", _show(value), text))
        return rows

    @classmethod
    def help_text(cls) -> str:
        rows = cls.describe()
        width = min(max(len(k) for k, _, _ in rows), 28)
        return "\n".join(f"  {k:<{width}} = {d:<14} {h}" for k, d, h in rows)


# ---------------------------------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str]) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (values parsed as YAML scalars, ``a=`` is null)."""
    import yaml

    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{item!r}: expected key=value (nested keys with dots, e.g. stage1.beta=0.01)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{item!r}: {part} is set both as a value and as a group")
        node[parts[-1]] = value
    return out


def merge_dicts(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``, nested dicts merged key by key (neither input changes)."""
    import copy

    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """A YAML mapping from a file, with the file named in any error."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


# ---------------------------------------------------------------------------------------------------- types


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "[]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` where that is lossless (int -> float, "1e-4" -> float, list -> tuple), else an error."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: must not be null")
    if isinstance(inner, type) and issubclass(inner, Config):
        if isinstance(value, inner):
            return value
        return inner.from_dict(value, key)
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(inner) or (Any,)
        items = [_coerce(v, item_tp, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-4 as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected text, got {value!r}")
    return value


def _check_value(name: str, value: Any, meta: Any, tp: Any) -> None:
    if value is None:
        if not _is_optional(tp)[0]:
            raise ConfigError(f"{name}: must not be null")
        return
    choices = meta.get("choices")
    values = value if isinstance(value, (list, tuple)) else [value]
    if choices:
        bad = [v for v in values if v not in choices]
        if bad:
            raise ConfigError(f"{name}: {bad[0]!r} is not one of {list(choices)}")
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            raise ConfigError(f"{name}: must be a number, got nan")
        if lo is not None and value < lo:
            raise ConfigError(f"{name}: must be >= {_num(lo)}, got {_num(value)}")
        if above is not None and value <= above:
            raise ConfigError(f"{name}: must be > {_num(above)}, got {_num(value)}")
        if hi is not None and value > hi:
            raise ConfigError(f"{name}: must be <= {_num(hi)}, got {_num(value)}")


def _num(x: float) -> str:
    """A limit or value as written: integers in full (a seed's 4294967295, not 4.29497e+09), floats short."""
    return str(x) if isinstance(x, int) else f"{x:g}"


__all__ = ["Config", "ConfigError", "SEED_MAX", "merge_dicts", "option", "seed_option", "parse_overrides", "read_config_file", "MISSING"]
