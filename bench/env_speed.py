"""Environment speed: `python bench/env_speed.py [--steps 5000]`.

Random actions, one process. For each world, compares the raw gymnasium env (``gymnasium.make(id)`` for
minigrid ids; the hinted ``MiniGridEnv`` subclass itself for the hinted worlds, both auto-reset on episode
end) with the dm_env adapter from ``envs.make`` (RGB 64x64 and symbolic). Overhead = 1 - adapted / raw.
Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.hinted_grid import WORLDS  # noqa: E402

MINIGRID_IDS = ("BabyAI-GoToLocal-v0", "MiniGrid-DoorKey-8x8-v0")


def raw_speed(env: gym.Env, steps: int, seed: int = 0) -> float:
    """Steps/s of a gymnasium env under random actions (resets included)."""
    rng = np.random.default_rng(seed)
    n = env.action_space.n
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(n)))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def adapted_speed(env, steps: int, seed: int = 0) -> float:
    """Steps/s of a dm_env world under random actions (auto-reset after LAST included)."""
    rng = np.random.default_rng(seed)
    n = env.action_spec().num_values
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        env.step(int(rng.integers(n)))
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per measurement")
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated hinted worlds")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps={args.steps} must be >= 1")

    rows = []
    for env_id in MINIGRID_IDS:
        raw = raw_speed(gym.make(env_id), args.steps)
        rgb = adapted_speed(envs.make("minigrid", id=env_id), args.steps)
        sym = adapted_speed(envs.make("minigrid", id=env_id, obs="symbolic"), args.steps)
        rows.append({"world": f"minigrid:{env_id}", "raw": raw, "rgb": rgb, "symbolic": sym})
    for name in args.worlds.split(","):
        cls, sizes, _ = WORLDS[name]
        raw = raw_speed(cls(**sizes), args.steps)
        rgb = adapted_speed(envs.make(name), args.steps)
        sym = adapted_speed(envs.make(name, obs="symbolic"), args.steps)
        rows.append({"world": name, "raw": raw, "rgb": rgb, "symbolic": sym})

    print(f"{'world':34s} {'raw/s':>8s} {'rgb/s':>8s} {'sym/s':>8s} {'rgb ovh':>8s} {'sym ovh':>8s}")
    for r in rows:
        r["rgb_overhead"] = 1.0 - r["rgb"] / r["raw"]
        r["symbolic_overhead"] = 1.0 - r["symbolic"] / r["raw"]
        print(
            f"{r['world']:34s} {r['raw']:8.0f} {r['rgb']:8.0f} {r['symbolic']:8.0f} "
            f"{r['rgb_overhead']:8.1%} {r['symbolic_overhead']:8.1%}"
        )
    summary = {
        "steps": args.steps,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "median_rgb_overhead": float(np.median([r["rgb_overhead"] for r in rows])),
        "median_symbolic_overhead": float(np.median([r["symbolic_overhead"] for r in rows])),
        "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
