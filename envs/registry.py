"""Registry of named worlds: ``make(name, **options)`` with strict, helpful option checking.

Every world declares all of its keyword options with defaults; the default's type is the option's
type (an ``int`` is also accepted for a ``float`` option; ``bool`` and ``int`` never stand in for each
other). The registry adds one option to every world: ``mask_tokens: bool = False``, which wraps the
environment in :class:`envs.wrappers.MaskTokens` (the no-language ablation).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dm_env
import numpy as np

from envs.wrappers import MaskTokens

REGISTRY_DEFAULTS: dict[str, Any] = {"mask_tokens": False}


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., dm_env.Environment]
    defaults: Mapping[str, Any]
    description: str


_WORLDS: dict[str, _Entry] = {}
_BATCHED: dict[str, Callable[..., Any]] = {}  # worlds that can also be stepped as one batch of many worlds
_MISSING: dict[str, str] = {}  # optional worlds whose package is not installed -> how to install it


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, float):
        return "float (or int)"
    return type(default).__name__


def _coerce(world: str, option: str, value: Any, default: Any) -> Any:
    """Checks ``value`` against the type of ``default``; returns it as a plain Python value."""
    bad = TypeError(
        f"option {option!r} of world {world!r} must be {_type_name(default)}, "
        f"got {value!r} ({type(value).__name__})"
    )
    is_bool = isinstance(value, bool | np.bool_)
    if default is None:
        return value
    if isinstance(default, bool):
        if not is_bool:
            raise bad
        return bool(value)
    if isinstance(default, int):
        if is_bool or not isinstance(value, int | np.integer):
            raise bad
        return int(value)
    if isinstance(default, float):
        if is_bool or not isinstance(value, int | float | np.integer | np.floating):
            raise bad
        return float(value)
    if not isinstance(value, type(default)):
        raise bad
    return value


def register(
    name: str,
    factory: Callable[..., dm_env.Environment],
    *,
    defaults: Mapping[str, Any],
    description: str = "",
    overwrite: bool = False,
) -> None:
    """Registers world ``name``; ``defaults`` must list every keyword option ``factory`` accepts."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"world name must be a non-empty string without whitespace, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for world {name!r} is not callable: {factory!r}")
    if name in _WORLDS and not overwrite:
        raise ValueError(f"world {name!r} is already registered; pass overwrite=True to replace it")
    reserved = sorted(set(defaults) & set(REGISTRY_DEFAULTS))
    if reserved:
        raise ValueError(f"world {name!r} declares registry-level option(s) {reserved}; these are reserved")
    for key in defaults:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"option name {key!r} of world {name!r} is not a valid identifier")
    _WORLDS[name] = _Entry(factory=factory, defaults=dict(defaults), description=description)


def names() -> list[str]:
    """Sorted names of every registered world."""
    return sorted(_WORLDS)


def register_missing(name: str, install_hint: str) -> None:
    """Declares an optional world whose package is absent: ``make(name)`` then raises ``ImportError`` with
    ``install_hint``; the world is not listed by :func:`names`."""
    _MISSING[name] = install_hint


def _entry(name: str) -> _Entry:
    if name in _MISSING and name not in _WORLDS:
        raise ImportError(f"world {name!r} is optional and its package is not installed: {_MISSING[name]}")
    if name not in _WORLDS:
        valid = names()
        hint = _closest(name, valid) if isinstance(name, str) else ""
        raise ValueError(f"unknown world {name!r}{hint}; valid worlds: {', '.join(valid) or '(none)'}")
    return _WORLDS[name]


def describe(name: str) -> dict[str, Any]:
    """Returns ``{"name", "description", "defaults"}`` for ``name``; defaults include registry options."""
    entry = _entry(name)
    return {
        "name": name,
        "description": entry.description,
        "defaults": {**entry.defaults, **REGISTRY_DEFAULTS},
    }


def _checked_options(name: str, entry: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` checked against the world's options (and the registry's own), coerced to their types."""
    allowed = {**entry.defaults, **REGISTRY_DEFAULTS}
    options: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in allowed:
            valid = sorted(allowed)
            raise ValueError(
                f"unknown option {key!r} for world {name!r}{_closest(key, valid)}; "
                f"valid options: {', '.join(valid)}"
            )
        options[key] = _coerce(name, key, value, allowed[key])
    return options


def make(name: str, **overrides: Any) -> dm_env.Environment:
    """Builds world ``name`` with its defaults updated by ``overrides`` (all checked by name and type)."""
    entry = _entry(name)
    options = _checked_options(name, entry, overrides)
    mask_tokens = options.pop("mask_tokens", REGISTRY_DEFAULTS["mask_tokens"])
    kwargs = {**entry.defaults, **options}
    env = entry.factory(**kwargs)
    if not isinstance(env, dm_env.Environment):
        raise TypeError(f"factory for world {name!r} returned {type(env).__name__}, not a dm_env.Environment")
    if mask_tokens:
        env = MaskTokens(env)
    return env


def register_batched(name: str, factory: Callable[..., Any]) -> None:
    """Declares a batched form of the registered world ``name``: ``factory(num_worlds=W, **options)`` returns an
    object stepping W worlds at once (the interface of ``envs.defusal.env.BatchedDefusal``); it takes the same
    options as the world, ``mask_tokens`` included."""
    _entry(name)
    if not callable(factory):
        raise TypeError(f"batched factory for world {name!r} is not callable: {factory!r}")
    _BATCHED[name] = factory


def has_batched(name: str) -> bool:
    """Whether world ``name`` has a batched form (``make_batched``)."""
    return name in _BATCHED


def make_batched(name: str, num_worlds: int, **overrides: Any) -> Any:
    """Builds ``num_worlds`` worlds of ``name`` stepped as one batch; options are checked as in :func:`make`."""
    entry = _entry(name)
    if name not in _BATCHED:
        with_one = ", ".join(sorted(_BATCHED)) or "(none)"
        raise ValueError(f"world {name!r} has no batched form; worlds with one: {with_one}")
    options = _checked_options(name, entry, overrides)
    return _BATCHED[name](num_worlds=num_worlds, **{**entry.defaults, **options})
