"""Train-step throughput: `python bench/train_step.py --preset size1m`.

Builds the agent for a 64x64x3 image + one token per step (+ 9 discrete actions), batch 16 x 64 by default,
then prints compile seconds, XLA's FLOPs per update, steady-state updates/s (median over >= 20 timed updates
after warm-up), imagined steps/s, and peak RSS. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="size1m", help="config preset(s), comma-separated (e.g. size1m)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--image", type=int, default=64, help="image height = width")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--updates", type=int, default=20, help="timed updates (>= 20 for a median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="", help="override jax.compute_dtype (float32 | bfloat16)")
    parser.add_argument("--platform", default="cpu")
    parser.add_argument("--cache", action="store_true",
                        help="use the persistent compilation cache ($LWM_JAX_CACHE, else .jax_cache in the repo)")
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted overrides key=value")
    args = parser.parse_args()
    if args.updates < 1:
        parser.error(f"--updates={args.updates} must be >= 1")

    from lwm.runtime import setup_jax

    cache = os.environ.get("LWM_JAX_CACHE") or str(Path(__file__).resolve().parents[1] / ".jax_cache")
    setup_jax(args.platform, cache if args.cache else "")
    import dm_env
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm import config as lwm_config
    from lwm.agent import Agent

    overrides = {"batch_size": args.batch, "batch_length": args.length, "jax.platform": args.platform}
    if args.dtype:
        overrides["jax.compute_dtype"] = args.dtype
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    config = lwm_config.load(args.preset.split(","), overrides)

    H = W = args.image
    obs_spec = {
        "image": dm_env.specs.BoundedArray((H, W, 3), np.uint8, 0, 255, "image"),
        "tokens": dm_env.specs.BoundedArray((1,), np.int32, 0, args.vocab - 1, "tokens"),
    }
    act_spec = dm_env.specs.DiscreteArray(9, name="action")
    agent = Agent(obs_spec, act_spec, config)
    ts = agent.init(config.seed)

    B, T = args.batch, args.length
    r = config.agent.rssm
    rng = np.random.default_rng(0)
    first = np.zeros((B, T), bool)
    first[:, 0] = rng.random(B) < 0.1
    batch = jax.device_put({
        "obs": {"image": rng.integers(0, 256, (B, T, H, W, 3), np.uint8),
                "tokens": rng.integers(0, args.vocab, (B, T, 1)).astype(np.int32)},
        "action": {"action": rng.integers(0, 9, (B, T)).astype(np.int32)},
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": first,
        "is_terminal": rng.random((B, T)) < 0.01,
        "start": {"deter": np.zeros((B, r.deter), np.float32),
                  "stoch": np.eye(r.classes, dtype=np.float32)[rng.integers(0, r.classes, (B, r.stoch))]},
        "start_action": {"action": np.zeros((B,), np.int32)},
    })

    t0 = time.perf_counter()
    compiled = agent.train.lower(ts, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", 0.0))

    def update(state):
        state, metrics, post = compiled(state, batch)
        jax.block_until_ready((state, metrics, post))
        return state, metrics

    for _ in range(args.warmup):
        ts, metrics = update(ts)
    times = []
    for _ in range(args.updates):
        t = time.perf_counter()
        ts, metrics = update(ts)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    finite = all(bool(jnp.isfinite(v)) for v in jax.tree.leaves(metrics))
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    result = {
        "preset": args.preset, "params": agent.param_count(), "batch": B, "length": T,
        "image": H, "vocab": args.vocab, "dtype": jnp.dtype(agent.dtype).name,
        "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "compile_s": round(compile_s, 2), "flops_per_update": flops,
        "updates_per_s": round(1.0 / median, 4), "s_per_update": round(median, 4),
        "s_per_update_min": round(min(times), 4), "s_per_update_max": round(max(times), 4),
        "imagined_steps_per_s": round(B * T * config.agent.imag.horizon / median, 1),
        "replayed_steps_per_s": round(B * T / median, 1),
        "gflops_per_s": round(flops / median / 1e9, 2) if flops else None,
        "peak_rss_gb": round(peak_rss_gb, 3), "timed_updates": len(times), "metrics_finite": finite,
    }
    print(f"preset {args.preset}: {agent.param_count() / 1e6:.2f}M params, batch {B}x{T}, image {H}x{W}x3 + tokens, "
          f"{result['dtype']} on {result['device']}")
    print(f"  compile            {compile_s:8.2f} s")
    print(f"  FLOPs / update     {flops:10.3e}")
    print(f"  updates/s (median) {1 / median:8.3f}   ({median:.3f} s/update, min {min(times):.3f}, "
          f"max {max(times):.3f}, n={len(times)})")
    print(f"  imagined steps/s   {result['imagined_steps_per_s']:10.0f}")
    print(f"  achieved GFLOP/s   {result['gflops_per_s']}")
    print(f"  peak RSS           {peak_rss_gb:8.2f} GB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
