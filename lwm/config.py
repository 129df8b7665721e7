"""Typed, immutable configuration: YAML presets merged in order plus dotted command-line overrides.

`configs/defaults.yaml` defines every key and, through its value, the key's type. Presets and overrides
may only set keys that exist there, with a value of the same type (an int is accepted for a float).
A mapping whose default is empty (`{}`) is free-form: its keys are checked by whoever consumes it
(for example `env.options` by the environment registry).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(os.environ.get("LWM_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))


class ConfigError(ValueError):
    """A preset or override names an unknown key or has a value of the wrong type."""


class Config(Mapping):
    """A read-only nested mapping with attribute access: `config.agent.rssm.deter`."""

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", {k: Config(v) if isinstance(v, Mapping) else v for k, v in data.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(_unknown_message(name, list(self._data))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable; use config.update({'dotted.key': value}).")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == _plain(other)

    def __hash__(self) -> int:
        return hash(yaml.safe_dump(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def flat(self) -> dict[str, Any]:
        """All leaves as {'dotted.key': value}."""
        return dict(_flatten(self.to_dict()))

    def update(self, changes: Mapping[str, Any], *, where: str = "update") -> Config:
        """A new config with `changes` ({'dotted.key': value} or nested) applied and validated."""
        data = self.to_dict()
        for key, value in _flatten(_plain(changes), free_form=_free_form_paths(data)):
            _set(data, key, value, where)
        return Config(data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _free_form_paths(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if not value or path in FREE_FORM:
                out.add(path)
            else:
                out |= _free_form_paths(value, path + ".")
    return out


# Mappings whose keys are not checked here (their consumer validates them).
FREE_FORM = {"env.options", "agent.rec_scales"}


def _flatten(data: Mapping[str, Any], prefix: str = "", free_form: set[str] | None = None) -> Iterable:
    free_form = free_form if free_form is not None else set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path not in free_form:
            yield from _flatten(value, path + ".", free_form)
        else:
            yield path, value


def _unknown_message(key: str, valid: Sequence[str], where: str = "", every: Sequence[str] = ()) -> str:
    close = difflib.get_close_matches(key, list(every) or valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(sorted(valid)[:40]) + (" ..." if len(valid) > 40 else "")
    src = f" (in {where})" if where else ""
    return f"Unknown config key {key!r}{src}.{hint} Valid keys here: {shown}"


def _set(data: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not isinstance(node, dict) or part not in node:
            if isinstance(node, dict) and ".".join(parts[:i]) in FREE_FORM | _empty_maps(data):
                node[part] = _set_free(node, parts[i:], value)
                return
            siblings = [f"{prefix}.{k}" if prefix else k for k in node] if isinstance(node, dict) else []
            raise ConfigError(_unknown_message(dotted, siblings, where, [k for k, _ in _flatten(data)]))
        if i == len(parts) - 1:
            node[part] = _coerce(dotted, node[part], value, where, free=prefix in FREE_FORM)
        else:
            node = node[part]


def _empty_maps(data: Mapping[str, Any]) -> set[str]:
    return {path for path, value in _flatten(data) if isinstance(value, Mapping) and not value}


def _set_free(node: dict, parts: list[str], value: Any) -> Any:
    """Builds the nested value for a key inside a free-form mapping."""
    out = parse_scalar(value) if isinstance(value, str) else value
    for part in reversed(parts[1:]):
        out = {part: out}
    existing = node.get(parts[0])
    if isinstance(existing, dict) and isinstance(out, dict):
        merged = dict(existing)
        merged.update(out)
        return merged
    return out


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _type_name(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, Mapping) else "mapping"


def _coerce(key: str, default: Any, value: Any, where: str, free: bool = False) -> Any:
    """Checks (and, for strings from the command line, parses) `value` against the default's type."""
    if free:
        return parse_scalar(value) if isinstance(value, str) else value
    if key in FREE_FORM:  # a whole free-form mapping: merged, keys checked by its consumer
        if isinstance(value, str):
            value = _parse_string(key, value, dict, where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key {key!r} expects a mapping, got {value!r} ({where}).")
        return {**default, **{k: parse_scalar(v) if isinstance(v, str) else v for k, v in value.items()}}
    expected = type(default)
    if isinstance(default, Mapping) and isinstance(value, str):
        value = _parse_string(key, value, dict, where)
    if isinstance(default, Mapping):
        if isinstance(value, Mapping):
            merged = dict(default)
            for k, v in value.items():
                if default and k not in default:
                    raise ConfigError(_unknown_message(f"{key}.{k}", [f"{key}.{d}" for d in default], where))
                merged[k] = _coerce(f"{key}.{k}", default[k], v, where) if k in default else v
            return merged
        raise ConfigError(f"Config key {key!r} expects a mapping, got {value!r} ({where}).")
    if isinstance(value, str) and expected is not str:
        value = _parse_string(key, value, expected, where)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"Config key {key!r} expects a bool (true/false), got {value!r} ({where}).")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"Config key {key!r} expects an int, got {value!r} ({_type_name(value)}) ({where}).")
    if expected in (list, tuple) and isinstance(value, list | tuple):
        return list(value)
    if not isinstance(value, expected):
        raise ConfigError(
            f"Config key {key!r} expects {_article(expected.__name__)}, got {value!r} ({_type_name(value)}) ({where})."
        )
    return value


def _parse_string(key: str, text: str, expected: type, where: str) -> Any:
    try:
        if expected is bool:
            low = text.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if expected is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if expected is float:
            return float(text)
        if expected in (list, tuple) or issubclass(expected, Mapping):
            return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        pass
    raise ConfigError(f"Config key {key!r} expects {_article(expected.__name__)}, got {text!r} ({where}).")


def parse_scalar(text: str) -> Any:
    """Parses a command-line value for a free-form key: int, float, bool, or string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "defaults")


def _read_preset(name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(name, preset_names(), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown preset {name!r}.{hint} Presets: {', '.join(preset_names())} (or a .yaml path).")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r} ({path}) holds {_type_name(data)}; a preset is a mapping of config keys.")
    return data


def _expand(name: str, chain: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """[(name, keys)] to merge for preset `name`: the presets it includes first (recursively), then its own.

    A preset file may start from others (`presets: [grid_cpu]`); its own keys are merged after them.
    """
    if name in chain:
        raise ConfigError(f"preset {name!r} includes itself: {' -> '.join([*chain, name])}.")
    data = dict(_read_preset(name))
    included = data.pop("presets", [])
    if isinstance(included, str):
        included = [included]
    if not isinstance(included, list) or not all(isinstance(n, str) for n in included):
        raise ConfigError(f"preset {name!r}: presets={included!r} must be a list of preset names.")
    out: list[tuple[str, dict]] = []
    for inner in included:
        out += _expand(inner, (*chain, name))
    return [*out, (name, data)]


def load(presets: Sequence[str] = (), overrides: Mapping[str, Any] | None = None) -> Config:
    """defaults.yaml, then each preset in order (after the presets it includes), then the dotted overrides."""
    config = Config(_read_preset(str(CONFIG_DIR / "defaults.yaml")))
    for outer in presets:
        for name, data in _expand(outer):
            where = f"preset {name!r}" if name == outer else f"preset {name!r} (included by {outer!r})"
            config = config.update(data, where=where)
    if overrides:
        config = config.update(dict(overrides), where="command line")
    return config


def parse_args(argv: Sequence[str], known: Sequence[str] = ("logdir",)) -> tuple[Config, dict[str, str]]:
    """Parses `--configs A B --dotted.key value ... --logdir DIR` into (config, extra flags).

    `known` flags (not config keys) are returned in the second value. `--env NAME` is shorthand for
    `--env.name NAME`.
    """
    presets: list[str] = []
    overrides: dict[str, str] = {}
    extras: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"Unexpected argument {arg!r}: flags look like --configs NAME or --key.sub VALUE.")
        name, _, inline = arg[2:].partition("=")
        values = [inline] if inline else []
        i += 1
        while not inline and i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if name == "configs":
            presets += [v for value in values for v in value.split(",") if v]
            continue
        if not values:
            raise ConfigError(f"Flag --{name} needs a value.")
        value = values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"
        if name in known:
            extras[name] = value
        elif name == "env":
            overrides["env.name"] = value
        else:
            overrides[name] = value
    return load(presets, overrides), extras
