"""Command-line helpers shared by the entry points (`launch.visualize`, `launch.eval`): `--flag value` parsing,
integer flags and the one error type, each naming the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any


def fail(message: str) -> SystemExit:
    """The error an entry point raises for bad input (`error: ...` on stderr, exit status 1)."""
    return SystemExit(f"error: {message}")


def parse_flags(argv: Sequence[str], flags: Sequence[str], multi: Collection[str] = ()) -> dict[str, Any]:
    """`--flag value` or `--flag=value`; flags in `multi` take one or more values (a list). Unknown flags, missing
    values and extra values are errors that list the flags."""
    out: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in flags:
            raise fail(f"unknown argument {arg!r}; flags: {', '.join('--' + f for f in flags)}.")
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if not values:
            raise fail(f"--{name} needs a value.")
        if len(values) > 1 and name not in multi:
            raise fail(f"--{name} takes one value, got {values}.")
        out[name] = values if name in multi else values[0]
    return out


def to_int(text: str, flag: str, low: int) -> int:
    """`text` as an integer >= `low`, or an error naming `--flag`."""
    try:
        value = int(text)
    except ValueError:
        raise fail(f"--{flag} {text!r} is not an integer (it must be >= {low}).") from None
    if value < low:
        raise fail(f"--{flag} {value} must be >= {low}.")
    return value


def arguments(argv: Sequence[str] | None, doc: str | None) -> list[str]:
    """The command line (`sys.argv[1:]` by default); with none, `-h` or `--help`, prints `doc` and exits 0."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(doc)
        raise SystemExit(0)
    return args


def world_changes(items: Sequence[str]) -> dict[str, Any]:
    """`--world KEY=VALUE ...` as {'env.options.KEY': value} (values read as YAML: `2`, `true`, `0.5`), to play a
    checkpoint in its world with some switches changed; the world itself checks the keys and values."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise fail(f"--world {item!r} is not KEY=VALUE (e.g. --world tools_mix=0).")
        try:
            out[f"env.options.{key.strip()}"] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise fail(f"--world {item!r}: {text!r} is not a YAML value.") from None
    return out
