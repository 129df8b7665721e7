"""Environment speed: `python bench/env_speed.py [--steps 3000] [--repeats 5] [--clock cpu|wall]`.

For each world, the gymnasium env that the dm_env adapter wraps, driven directly ("raw"), against the adapter
from ``envs.make`` (RGB 64x64 and symbolic), doing the same work:

* the same env: the raw env is the adapter's own unwrapped env (``envs.make(...).gym_env``, a fresh one per
  measurement), i.e. ``gymnasium.make(id, disable_env_checker=True).unwrapped`` for minigrid ids and the world
  class with its sizes and ``max_steps`` for the hinted worlds. (Going through gymnasium's wrappers, which the
  adapter skips, would slow the raw side down and hide part of the adapter's cost.)
* the same actions and episodes: one random action sequence per world, the same seed on the first reset and
  a reset after every episode end, so raw and adapted runs visit the same states step for step (checked: the
  number of episodes must match). Pre-read steps of the hinted worlds (world frozen, action ignored) are
  adapter work: they are timed but take no action from the sequence.

The RGB renderer skips its gathering when the view did not change since the last step (a failed pickup or
toggle, "done", bumping into a wall): about 60% of the steps of a random policy, few of a purposeful one.
``--redraw`` turns that off, giving the cost for a policy that never repeats a view.

Timing: CPU time of this process (``--clock cpu``, the default; unlike wall time it is not inflated when
other jobs take the CPU away) or wall time (``--clock wall``); each (world, kind) is measured ``--repeats``
times, interleaved in rotating order; the table shows medians. Rates are env steps (actions) per second.
Overhead = adapter time per step / raw time per step - 1, i.e. the extra cost over raw minigrid (the median of
the per-repeat ratios, each against the raw run of the same repeat). Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.hinted_grid import WORLDS  # noqa: E402

MINIGRID_IDS = ("BabyAI-GoToLocal-v0", "MiniGrid-DoorKey-8x8-v0")
KINDS = ("raw", "rgb", "symbolic")
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def build(world: str, obs: str, seed: int):
    """A fresh adapter for ``world`` ("minigrid:<id>" or a hinted world name)."""
    if world.startswith("minigrid:"):
        return envs.make("minigrid", id=world.split(":", 1)[1], obs=obs, seed=seed)
    return envs.make(world, obs=obs, seed=seed)


class RawRunner:
    """Steps the gymnasium env itself through actions, resetting at episode ends."""

    def __init__(self, world: str, seed: int) -> None:
        self.env = build(world, "symbolic", seed).gym_env  # the adapter's own (unwrapped) env, fresh
        self.env.reset(seed=seed)
        self.episodes = 0

    def run(self, actions: list[int]) -> None:
        env = self.env
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
                self.episodes += 1


class AdaptedRunner:
    """Steps the dm_env adapter through the same actions: pre-read steps take no action."""

    def __init__(self, world: str, obs: str, seed: int, redraw: bool = False) -> None:
        self.env = build(world, obs, seed)
        if redraw and getattr(self.env, "_renderer", None) is not None:
            self.env._renderer.reuse = False
        self.ts = self.env.reset()  # the adapter seeds its env on its first reset
        self.episodes = 0

    def run(self, actions: list[int]) -> None:
        env, ts = self.env, self.ts
        for a in actions:
            while ts.observation["is_read_step"]:  # frozen world: the action is ignored
                ts = env.step(a)
            ts = env.step(a)
            if ts.last():
                ts = env.reset()
                self.episodes += 1
        self.ts = ts


def measure(
    world: str, actions: list[int], seed: int, clock: Callable[[], float], chunk: int, redraw: bool = False
) -> dict[str, float]:
    """Seconds per side for one pass over ``actions``, the three sides taking turns every ``chunk`` actions.

    Taking turns in short chunks (a few ms) exposes all sides to the same background load.
    """
    runners = {"raw": RawRunner(world, seed), **{k: AdaptedRunner(world, k, seed, redraw) for k in KINDS[1:]}}
    seconds = dict.fromkeys(KINDS, 0.0)
    for i, lo in enumerate(range(0, len(actions), chunk)):
        part = actions[lo : lo + chunk]
        for kind in KINDS[i % 3 :] + KINDS[: i % 3]:  # rotate which side goes first
            start = clock()
            runners[kind].run(part)
            seconds[kind] += clock() - start
    episodes = {k: r.episodes for k, r in runners.items()}
    if len(set(episodes.values())) != 1:
        raise RuntimeError(f"{world}: raw and adapted runs diverged (episodes ended: {episodes})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="env steps (actions) per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per world and kind (medians shown)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: process CPU time; wall")
    parser.add_argument("--seed", type=int, default=0, help="seed of the actions and of the envs")
    parser.add_argument("--chunk", type=int, default=50, help="actions per turn when the sides alternate")
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated hinted worlds")
    parser.add_argument("--redraw", action="store_true", help="draw every RGB frame (no reuse of an unchanged view)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps={args.steps} must be >= 1")
    if args.chunk < 1:
        parser.error(f"--chunk={args.chunk} must be >= 1")
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    hinted = [w for w in args.worlds.split(",") if w]
    unknown = [w for w in hinted if w not in WORLDS]
    if unknown:
        parser.error(f"unknown hinted worlds {unknown}; valid: {', '.join(WORLDS)}")
    worlds = [f"minigrid:{i}" for i in MINIGRID_IDS] + hinted
    clock = CLOCKS[args.clock]

    actions = {}
    for world in worlds:
        n = build(world, "symbolic", args.seed).action_spec().num_values
        actions[world] = np.random.default_rng(args.seed).integers(n, size=args.steps).tolist()
    times: dict[tuple[str, str], list[float]] = {(w, k): [] for w in worlds for k in KINDS}
    # minigrid prints "Sampling rejected: ..." on some resets; the same resets happen on both sides
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        for _ in range(args.repeats):
            for world in worlds:
                for kind, seconds in measure(world, actions[world], args.seed, clock, args.chunk, args.redraw).items():
                    times[world, kind].append(seconds)

    rows = []
    for world in worlds:
        raw = np.array(times[world, "raw"])
        row: dict = {"world": world}
        for kind in KINDS:
            row[kind] = args.steps / float(np.median(times[world, kind]))
        for kind in ("rgb", "symbolic"):
            ratios = np.array(times[world, kind]) / raw - 1.0
            row[f"{kind}_overhead"] = float(np.median(ratios))
            row[f"{kind}_overhead_range"] = [float(ratios.min()), float(ratios.max())]
        rows.append(row)

    redraw = ", every RGB frame drawn" if args.redraw else ""
    print(
        f"{args.steps} steps x {args.repeats} repeats, {args.clock} clock{redraw}, medians; "
        "overhead = adapted/raw time - 1"
    )
    print(f"{'world':34s} {'raw/s':>8s} {'rgb/s':>8s} {'sym/s':>8s} {'rgb ovh':>8s} {'sym ovh':>8s}")
    for r in rows:
        print(
            f"{r['world']:34s} {r['raw']:8.0f} {r['rgb']:8.0f} {r['symbolic']:8.0f} "
            f"{r['rgb_overhead']:8.1%} {r['symbolic_overhead']:8.1%}"
        )
    summary = {
        "steps": args.steps,
        "repeats": args.repeats,
        "clock": args.clock,
        "redraw": args.redraw,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "median_rgb_overhead": float(np.median([r["rgb_overhead"] for r in rows])),
        "median_symbolic_overhead": float(np.median([r["symbolic_overhead"] for r in rows])),
        "max_rgb_overhead": max(r["rgb_overhead"] for r in rows),
        "max_symbolic_overhead": max(r["symbolic_overhead"] for r in rows),
        "rows": [
            {
                k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list) else v)
                for k, v in r.items()
            }
            for r in rows
        ],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
