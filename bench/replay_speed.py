"""Host-side replay cost per update (`add` of one env step, `sample`, `update_priorities`, `update_latents`).

`python bench/replay_speed.py [--capacities 100000 1000000 5000000] [--streams 768] [--batch 16 64]`

Fills a replay of each capacity (full, wrapped around) with small observations, one terminal step in 50, then
times one cycle of the training loop (add one environment step for every stream, then one update) with
DreamerV3's prioritised half (`priority_frac 0.5`) and the event quarter (`event_frac 0.25`), and `add`
alone. Prints the median
over `--repeats` calls in milliseconds; the last line is JSON. These calls run on the host between two train
steps, so at 30 updates/s on a GPU every millisecond here is 3% of the loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lwm.replay import Replay  # noqa: E402

T, DETER, STOCH, CLASSES = 64, 8, 4, 4


def _step(streams: int, t: int) -> dict:
    return {"obs": {"vector": np.full((streams, 4), t, np.float32)}, "action": {"a": np.zeros(streams, np.int32)},
            "reward": np.zeros(streams, np.float32), "is_first": np.zeros(streams, bool),
            "is_terminal": np.full(streams, t % 50 == 0),
            "latent": {"deter": np.zeros((streams, DETER), np.float32),
                       "stoch": np.zeros((streams, STOCH, CLASSES), np.float32)}}


def fill(capacity: int, streams: int) -> Replay:
    replay = Replay(capacity, streams, T, seed=0, priority_frac=0.5, event_frac=0.25)
    per = replay.per
    # Write the arrays directly (as `per` add calls would), then rebuild the sampling trees as `load` does.
    for t in range(2):
        replay.add(_step(streams, t))
    for key, value in replay.data.items():
        if key == "is_terminal":
            value[:] = (np.arange(per) % 50 == 0)[None]
    replay.pos, replay.count = 0, per
    replay.weight[:] = 1.0
    path = Path("/tmp/lwm_replay_bench.npz")
    replay.save(path)
    out = Replay.load(path, priority_frac=0.5, event_frac=0.25)
    path.unlink()
    return out


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacities", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--streams", type=int, default=768, help="env streams (defusal_gpu: 256 worlds x 3)")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print(f"replay cost, numpy {np.__version__}, {platform.machine()}; batch_length {T}, {args.streams} streams")
    print(f"{'capacity':>10} {'batch':>6} {'add+update ms':>14} {'add ms':>8}")
    for capacity in args.capacities:
        replay = fill(capacity, args.streams)
        add_ms = median_ms(lambda r=replay: r.add(_step(args.streams, 1)), args.repeats)
        for batch in args.batch:
            def update(r=replay, b=batch):
                r.add(_step(args.streams, 1))  # one env step between updates, as at train_ratio = B * T / streams
                chunk, index = r.sample(b, CLASSES)
                r.update_priorities(index, rng.random((b, T)))
                r.update_latents(index, {"deter": np.zeros((b, T, DETER), np.float32),
                                         "stoch": np.zeros((b, T, STOCH, CLASSES), np.float32)})
            ms = median_ms(update, args.repeats)
            rows.append({"capacity": capacity, "batch": batch, "update_ms": ms, "add_ms": add_ms})
            print(f"{capacity:>10,} {batch:>6} {ms:>14.2f} {add_ms:>8.3f}")
    result = {"rows": rows, "streams": args.streams, "batch_length": T}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
