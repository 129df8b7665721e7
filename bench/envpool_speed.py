"""Env steps/s with the environments in the trainer's process or in worker processes (`env.workers`).

`python bench/envpool_speed.py [--world grid_task_s] [--envs 8] [--workers 0,1,2] [--obs symbolic,rgb]
[--iters 300] [--repeats 3]`

Drives `lwm.driver.Driver` (what the training loop uses: batched observations, episode statistics) with a
uniform random policy over `--envs` environments built by `launch.train.env_factory`, for each worker count
(0 = in-process) and observation kind. Wall clock (the workers' CPU time is not this process's); worker start-up
and 10 warm-up iterations are not timed; each setting is measured `--repeats` times in rotating order and the
median is shown. Rates are env steps per second summed over the environments. No policy network runs, so this
is the most the env side can gain; in training the policy and the updates share the same cores. The last line
is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from launch.train import env_factory  # noqa: E402
from lwm import config as lwm_config  # noqa: E402
from lwm.driver import Driver  # noqa: E402
from lwm.envpool import EnvPool  # noqa: E402


def measure(world: str, obs: str, num_envs: int, workers: int, iters: int, seed: int) -> float:
    """Env steps per second of `iters` driver iterations (after 10 untimed ones)."""
    config, _ = lwm_config.parse_args(["--env", world, "--env.num_envs", str(num_envs), "--env.options.obs", obs,
                                       "--seed", str(seed)])
    make_env = env_factory(config)
    first = make_env(0)
    keys = [k for k in first.observation_spec() if not k.startswith("log_")]
    pool = EnvPool(make_env, range(num_envs), workers) if workers else None
    envs = [first] if pool else [first] + [make_env(i) for i in range(1, num_envs)]
    driver = Driver(envs, keys, name=world, pool=pool)
    rng = np.random.default_rng(seed)
    n = first.action_spec().num_values

    def policy(obs, is_first):
        return {"action": rng.integers(0, n, size=num_envs)}, {}

    try:
        for _ in range(10):
            driver.step(policy)
        start = time.perf_counter()
        for _ in range(iters):
            driver.step(policy)
        return iters * num_envs / (time.perf_counter() - start)
    finally:
        if pool is not None:
            pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="grid_task_s")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (0 = in-process)")
    parser.add_argument("--obs", default="symbolic,rgb", help="comma-separated observation kinds")
    parser.add_argument("--iters", type=int, default=300, help="timed driver iterations (each steps every env)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w]
    kinds = [k for k in args.obs.split(",") if k]
    if args.envs < 1 or args.iters < 1 or args.repeats < 1:
        parser.error("--envs, --iters and --repeats must be >= 1")
    if any(not 0 <= w <= args.envs for w in workers):
        parser.error(f"--workers {args.workers}: each must be in [0, {args.envs}]")
    settings = [(k, w) for k in kinds for w in workers]
    rates: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # minigrid's "Sampling rejected"
        for r in range(args.repeats):
            for kind, w in settings[r % len(settings):] + settings[:r % len(settings)]:
                rates[kind, w].append(measure(args.world, kind, args.envs, w, args.iters, args.seed))
    print(f"{args.world}, {args.envs} envs, {args.iters} iterations x {args.repeats} repeats, wall clock, medians; "
          f"{os.cpu_count()} CPUs")
    print(f"{'obs':10s} {'workers':>7s} {'steps/s':>9s} {'vs 0':>7s}")
    rows = []
    for kind in kinds:
        base = float(np.median(rates[kind, workers[0]])) if workers else 1.0
        for w in workers:
            rate = float(np.median(rates[kind, w]))
            rows.append({"obs": kind, "workers": w, "steps_per_s": round(rate, 1),
                         "range": [round(min(rates[kind, w]), 1), round(max(rates[kind, w]), 1)]})
            print(f"{kind:10s} {w:7d} {rate:9.0f} {rate / base:7.2f}x")
    print(json.dumps({"world": args.world, "envs": args.envs, "iters": args.iters, "repeats": args.repeats,
                      "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows}))


if __name__ == "__main__":
    main()
