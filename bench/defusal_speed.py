"""Rounds per second of the JAX defusal world on this machine, random legal actions.

Single world (jitted step called from Python per round), and ``vmap`` over 1, 64, 4096 worlds with ``lax.scan``
over rounds inside ``jit``, each with and without building observations (``step`` vs ``step_state``). Finished
worlds reset automatically (``core.reset_where``). The worlds are split over the backend's devices with
``shard_map``; on a CPU, ``--devices`` (default: one per core) makes XLA:CPU show that many host devices, so that
each core steps its own share (one CPU device runs much of a step on one core). Prints a table; the last line is
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _host_devices(argv: list[str]) -> int:
    """``--devices`` (before jax is imported: XLA reads its flags once)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--devices", type=int, default=os.cpu_count() or 1)
    n = pre.parse_known_args(argv)[0].devices
    if n < 1:
        raise SystemExit(f"--devices {n}: must be at least 1")
    return n


if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    _n = _host_devices(sys.argv[1:])
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_n}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from envs.defusal import core, scripted  # noqa: E402


def _make_rollout(params: core.Params, rounds: int, with_obs: bool, devices: list):
    """jit(keys [W] -> checksums [W]): reset W worlds, then ``rounds`` rounds of random legal play.

    Per round one draw of bits for every agent's action (``scripted.pick_legal`` on ``core.legal_set``, the
    sampler of ``scripted.random_legal``), one key per world for the step, and one key for ``reset_where``.
    """
    a_n = params.num_agents
    silent = jnp.zeros((a_n, params.message_len), jnp.int32)

    def one_world(state, bits, key):
        acts = scripted.pick_legal(bits, core.legal_set(state, params))
        if with_obs:
            obs, state, reward, _, _ = core.step(key, state, acts, silent, params)
            return state, reward + obs["tokens"][0, 0] + obs["vector"][0, 0]
        state, reward, _ = core.step_state(key, state, acts, silent, params)
        return state, reward

    def rollout(keys):  # this device's worlds
        w = keys.shape[0]

        def one_round(states, key):
            k_act, k_env, k_reset = jax.random.split(key, 3)
            bits = jax.random.bits(k_act, (w, a_n), jnp.uint32)
            states, checksum = jax.vmap(one_world)(states, bits, jax.random.split(k_env, w))
            states = core.reset_where(k_reset, states, states.done, params)  # only the finished worlds
            return states, checksum

        _, states = jax.vmap(lambda k: core.reset(k, params))(keys)
        states, sums = jax.lax.scan(one_round, states, jax.random.split(jax.random.fold_in(keys[0], 1), rounds))
        return sums.sum(axis=0)

    if len(devices) > 1:
        mesh = Mesh(devices, ("worlds",))
        return jax.jit(jax.shard_map(rollout, mesh=mesh, in_specs=P("worlds"), out_specs=P("worlds"), check_vma=False))
    return jax.jit(rollout)


def _time(fn, *args, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls after one compiling call."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 64, 4096])
    parser.add_argument("--round_budget", type=int, default=2_000_000, help="about this many rounds per timing")
    parser.add_argument(
        "--devices", type=int, default=os.cpu_count() or 1, help="CPU: host devices to split the worlds over"
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.worlds):
        parser.error(f"--worlds {args.worlds}: every count must be at least 1")
    params = core.Params()
    key = jax.random.key(0)
    rows = []

    # Single world, jitted step called from Python per round.
    step = jax.jit(core.step, static_argnames="params")
    policy = jax.jit(scripted.random_legal, static_argnames="params")
    reset = jax.jit(core.reset, static_argnames="params")
    _, state = reset(key, params)
    n_py = 300
    acts, msgs = policy(key, state, params)
    jax.block_until_ready(step(key, state, acts, msgs, params=params))
    t0 = time.perf_counter()
    for i in range(n_py):
        k = jax.random.fold_in(key, i)
        acts, msgs = policy(k, state, params)
        _, state, _, _, _ = step(k, state, acts, msgs, params=params)
        if bool(state.done):
            _, state = reset(k, params)
    jax.block_until_ready(state)
    rows.append(
        {
            "mode": "python loop, jitted step",
            "worlds": 1,
            "devices": 1,
            "obs": True,
            "rounds_per_s": n_py / (time.perf_counter() - t0),
        }
    )

    all_devices = jax.devices()
    for with_obs in (False, True):
        for n in args.worlds:
            # As many devices as divide the worlds evenly (1 world: one device).
            d = max(k for k in range(1, len(all_devices) + 1) if n % k == 0)
            rounds = max(30, min(3000, args.round_budget // n))
            fn = _make_rollout(params, rounds, with_obs, all_devices[:d])
            keys = jax.random.split(key, n)
            if d > 1:
                keys = jax.device_put(keys, NamedSharding(Mesh(all_devices[:d], ("worlds",)), P("worlds")))
            dt = _time(fn, keys)
            rows.append(
                {
                    "mode": "jit(scan(vmap(step)))",
                    "worlds": n,
                    "devices": d,
                    "obs": with_obs,
                    "rounds_per_s": n * rounds / dt,
                }
            )
    print(
        f"defusal speed, jax {jax.__version__}, {all_devices[0].platform}, {len(all_devices)} device(s), "
        f"{os.cpu_count()} CPUs; median of 5 timings"
    )
    print(f"{'mode':<28}{'worlds':>8}{'devices':>9}{'obs':>6}{'rounds/s':>14}{'agent-steps/s':>16}")
    for r in rows:
        print(
            f"{r['mode']:<28}{r['worlds']:>8}{r['devices']:>9}{'yes' if r['obs'] else 'no':>6}"
            f"{r['rounds_per_s']:>14,.0f}{3 * r['rounds_per_s']:>16,.0f}"
        )
    out = {"rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
