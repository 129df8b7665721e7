"""Rounds per second of the JAX defusal world on this machine, random legal actions.

Single world (jitted step called from Python, and a jitted ``lax.scan`` over rounds) and ``vmap`` over
1, 64, 4096 worlds with ``lax.scan`` over rounds inside ``jit``, each with and without building observations
(``step`` vs ``step_state``). Finished worlds reset automatically. Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from envs.defusal import core, scripted  # noqa: E402


def _make_rollout(params: core.Params, num_worlds: int, rounds: int, with_obs: bool):
    def one_world(state, key):
        k_act, k_env = jax.random.split(key)
        acts, msgs = scripted.random_legal(k_act, state, params)
        if with_obs:
            obs, state, reward, _, _ = core.step(k_env, state, acts, msgs, params)
            return state, reward + obs["tokens"][0, 0] + obs["vector"][0, 0]
        state, reward, _ = core.step_state(k_env, state, acts, msgs, params)
        return state, reward

    def one_round(states, key):
        k_worlds, k_reset = jax.random.split(key)
        states, checksum = jax.vmap(one_world)(states, jax.random.split(k_worlds, num_worlds))
        # Finished worlds start over: only they are reset (core.reset_where), not every world every round.
        states = core.reset_where(jax.random.split(k_reset, num_worlds), states, states.done, params)
        return states, checksum

    def rollout(key):
        _, states = jax.vmap(lambda k: core.reset(k, params))(jax.random.split(key, num_worlds))
        states, sums = jax.lax.scan(one_round, states, jax.random.split(jax.random.fold_in(key, 1), rounds))
        return sums.sum()

    return jax.jit(rollout)


def _time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 64, 4096])
    parser.add_argument("--round_budget", type=int, default=2_000_000, help="about this many rounds per timing")
    args = parser.parse_args(argv)
    params = core.Params()
    key = jax.random.key(0)
    rows = []

    # Single world, jitted step called from Python per round.
    step = jax.jit(core.step, static_argnames="params")
    policy = jax.jit(scripted.random_legal, static_argnames="params")
    _, state = jax.jit(core.reset, static_argnames="params")(key, params)
    n_py = 300
    acts, msgs = policy(key, state, params)
    jax.block_until_ready(step(key, state, acts, msgs, params=params))
    t0 = time.perf_counter()
    for i in range(n_py):
        k = jax.random.fold_in(key, i)
        acts, msgs = policy(k, state, params)
        _, state, _, _, _ = step(k, state, acts, msgs, params=params)
        if bool(state.done):
            _, state = jax.jit(core.reset, static_argnames="params")(k, params)
    jax.block_until_ready(state)
    rows.append(
        {
            "mode": "python loop, jitted step",
            "worlds": 1,
            "obs": True,
            "rounds_per_s": n_py / (time.perf_counter() - t0),
        }
    )

    for with_obs in (False, True):
        for n in args.worlds:
            rounds = max(30, min(3000, args.round_budget // n))
            fn = _make_rollout(params, n, rounds, with_obs)
            dt = _time(fn, key)
            rows.append(
                {"mode": "jit(scan(vmap(step)))", "worlds": n, "obs": with_obs, "rounds_per_s": n * rounds / dt}
            )
    print(f"defusal speed, jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    print(f"{'mode':<28}{'worlds':>8}{'obs':>6}{'rounds/s':>14}{'agent-steps/s':>16}")
    for r in rows:
        print(
            f"{r['mode']:<28}{r['worlds']:>8}{'yes' if r['obs'] else 'no':>6}{r['rounds_per_s']:>14,.0f}"
            f"{3 * r['rounds_per_s']:>16,.0f}"
        )
    out = {"rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
