"""Data-parallel scaling: `python bench/scaling.py [--devices 1,2,4] [--preset debug] [--batch 16]`.

For each device count, a fresh subprocess builds the agent (one token + an 8-vector per step, as in the
`tokenchoice` world, 4 actions; `--image 16` adds a 16x16x3 image and the CNN, which compiles much longer),
places it on a `data` mesh of that many devices (1 = the plain single-device jit, no mesh) and times the
train step as the training loop runs it: host batch -> `agent.shard_batch` -> `agent.train` -> metrics
ready. The global batch is the same for every count (strong scaling: each device gets batch / devices).
Each subprocess compiles once, warms up, then times `--repeats` blocks of `--updates` updates; the table
shows the median block's updates/s. The last line is JSON.

On the CPU (the default) the devices are fake: `--xla_force_host_platform_device_count=N` splits one host's
cores into N XLA devices, so more devices cannot be faster than the cores allow; the table then measures
the overhead of sharding (collectives, per-device dispatch, smaller per-device work). With
`--platform gpu` (or tpu) the real devices of the machine are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> dict:
    """One device count, in this process: compile, warm up, time. Returns the figures as a dict."""
    from lwm.runtime import setup_jax

    setup_jax(args.platform, "" if args.no_cache else str(ROOT / ".jax_cache"))
    import dm_env
    import jax
    import numpy as np

    from lwm import config as lwm_config
    from lwm import parallel
    from lwm.agent import Agent

    n = args.devices_one
    config = lwm_config.load(args.preset.split(","), {"batch_size": args.batch, "batch_length": args.length,
                                                      "jax.platform": args.platform, "jax.devices": n})
    mesh = parallel.mesh_from_config(config)
    obs_spec = {"tokens": dm_env.specs.BoundedArray((1,), np.int32, 0, 31, "tokens"),
                "vector": dm_env.specs.Array((8,), np.float32, "vector")}
    if args.image:
        obs_spec["image"] = dm_env.specs.BoundedArray((args.image, args.image, 3), np.uint8, 0, 255, "image")
    agent = Agent(obs_spec, dm_env.specs.DiscreteArray(4, name="action"), config, mesh=mesh)
    ts = agent.init(config.seed)
    B, T, r = args.batch, args.length, config.agent.rssm
    rng = np.random.default_rng(0)
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    batch = {
        "obs": {"tokens": rng.integers(0, 32, (B, T, 1)).astype(np.int32),
                "vector": rng.normal(size=(B, T, 8)).astype(np.float32)},
        "action": {"action": rng.integers(0, 4, (B, T)).astype(np.int32)},
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": first, "is_terminal": rng.random((B, T)) < 0.01,
        "start": {"deter": np.zeros((B, r.deter), np.float32),
                  "stoch": np.zeros((B, r.stoch, r.classes), np.float32)},
        "start_action": {"action": np.zeros((B,), np.int32)},
    }
    if args.image:
        batch["obs"]["image"] = rng.integers(0, 256, (B, T, args.image, args.image, 3), np.uint8)

    def update(state):
        state, metrics, post = agent.train(state, agent.shard_batch(batch))
        jax.block_until_ready(metrics)
        return state

    t0 = time.perf_counter()
    ts = update(ts)  # compiles (or loads from the persistent cache)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        ts = update(ts)
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.updates):
            ts = update(ts)
        jax.block_until_ready(ts)
        rates.append(args.updates / (time.perf_counter() - t))
    return {"devices": n, "mesh": parallel.describe(mesh), "batch": B, "batch_per_device": B // n,
            "first_update_s": round(compile_s, 2), "updates_per_s": round(statistics.median(rates), 3),
            "updates_per_s_min": round(min(rates), 3), "updates_per_s_max": round(max(rates), 3),
            "repeats": len(rates), "traces": agent.traces["train"], "params": agent.param_count(),
            "device_kind": jax.devices()[0].device_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2,4", help="device counts, comma-separated")
    parser.add_argument("--preset", default="debug", help="config preset(s), comma-separated")
    parser.add_argument("--batch", type=int, default=16, help="global batch (same for every device count)")
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--image", type=int, default=0, help="add an image observation of this size (0: none)")
    parser.add_argument("--updates", type=int, default=5, help="updates per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks; the median is reported")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--platform", default="cpu", help="cpu (fake devices) | gpu | tpu (real devices)")
    parser.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices-one", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        counts = [int(c) for c in args.devices.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--devices={args.devices!r} must be comma-separated integers, e.g. 1,2,4")
    bad = [c for c in counts if c < 1 or args.batch % c]
    if bad or not counts:
        parser.error(f"--devices={args.devices!r}: every count must be >= 1 and divide --batch={args.batch}")
    if min(args.updates, args.repeats) < 1:
        parser.error("--updates and --repeats must be >= 1")

    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    for n in counts:
        env = dict(os.environ)
        if args.platform == "cpu":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--worker", "--devices-one", str(n)] + [
            a for a in sys.argv[1:] if a != "--worker"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            raise SystemExit(f"scaling: the {n}-device run failed (exit {proc.returncode}).")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(f"  {n} device(s): {row['updates_per_s']:.3f} updates/s ({row['wall_s']} s)", flush=True)

    base = rows[0]["updates_per_s"]
    obs = "token + vector" + (f" + {args.image}x{args.image}x3 image" if args.image else "")
    print(f"\npreset {args.preset}, {rows[0]['params'] / 1e6:.2f}M params, global batch {args.batch}x{args.length}, "
          f"{obs}, {args.platform} ({rows[0]['device_kind']}), {os.cpu_count()} CPU cores")
    print("| devices | batch / device | first update (s) | updates/s (median) | min – max | vs 1st row |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['devices']} | {row['batch_per_device']} | {row['first_update_s']} | "
              f"**{row['updates_per_s']:.3f}** | {row['updates_per_s_min']:.3f} – {row['updates_per_s_max']:.3f} | "
              f"{row['updates_per_s'] / base:.2f}× |")
    print(json.dumps({"preset": args.preset, "platform": args.platform, "batch": args.batch, "length": args.length,
                      "image": args.image,
                      "cpu_count": os.cpu_count(), "machine": platform.machine(), "rows": rows}))


if __name__ == "__main__":
    main()
