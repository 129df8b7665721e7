"""Scripted-team baselines of the defusal world: mean ± std team score, rounds to completion, valid-action %.

Usage: ``python bench/defusal_baselines.py [--seeds 300] [--option value ...]`` (e.g. ``--wrong_cut explode``).
Episodes run batched (``vmap`` over seeds, ``lax.scan`` over rounds). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from envs.defusal import core, scripted  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Prints the baseline table; returns it as a dict."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    for field, default in core.Params._field_defaults.items():
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)
        parser.add_argument(f"--{field}", type=kind, default=default)
    args = parser.parse_args(argv)
    params = core.check_params(core.Params(**{f: getattr(args, f) for f in core.Params._fields}))
    print(f"defusal baselines over {args.seeds} seeds, {params}")
    print(f"{'team':<14}{'score':>16}{'rounds':>16}{'valid %':>10}{'explosions':>12}{'time s':>8}")
    table: dict[str, dict[str, float]] = {}
    for name, policy in scripted.TEAMS.items():
        t0 = time.perf_counter()
        r = scripted.evaluate(policy, params, jax.random.key(args.seed), args.seeds)
        dt = time.perf_counter() - t0
        row = {
            "score_mean": float(r["score"].mean()),
            "score_std": float(r["score"].std()),
            "rounds_mean": float(r["rounds"].mean()),
            "rounds_std": float(r["rounds"].std()),
            "valid_pct": float(r["valid_pct"].mean()),
            "explosions": float(r["explosions"].mean()),
        }
        table[name] = row
        print(
            f"{name:<14}{row['score_mean']:>8.1f} ± {row['score_std']:<5.1f}{row['rounds_mean']:>8.1f} ± "
            f"{row['rounds_std']:<5.1f}{row['valid_pct']:>10.1f}{row['explosions']:>12.2f}{dt:>8.1f}"
        )
    out = {"seeds": args.seeds, "params": params._asdict(), "teams": table}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
