"""Can the world model learn what a hinted gridworld's reward depends on? Offline, no actor in the loop.

`python bench/grid_wm_probe.py [--configs grid_task] [--steps 20000] [--updates 1500] [--every 500]
 [--set KEY=VALUE ...]`

Collects `--steps` env steps of `grid_task_*` with a scripted explorer that picks up whatever is in front with
probability 0.6 (so about one step in seven is a pickup, a third of them rewarding), then trains the agent's
world model on them (the full train step; its actor is not used for acting) and every `--every` updates
reports, on held-out episodes of the same explorer:

- the reward the model predicts (from the posterior) at pickups of the *right* and of a *wrong* object: the
  language agent can only learn the task once these separate; and the same with every token replaced by
  `<pad>` (the control: a model that uses the words loses the gap);
- how often the decoder reproduces the held object (`carrying`) at pickups, and the whole token vector.

The work is done by `launch/grid_probe.py` (also used by the CI learning check).

`--set` applies dotted config overrides (e.g. `--set agent.opt.lr=1e-3 env.options.token_len=6`). The last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from launch.grid_probe import check_world, run  # noqa: E402
from lwm import config as lwm_config  # noqa: E402
from lwm.runtime import default_cache_dir, setup_jax  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["grid_task"])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = lwm_config.parse_scalar(value)
    cfg = lwm_config.load(args.configs, overrides)
    try:
        check_world(cfg)
    except ValueError as e:
        parser.error(str(e))
    setup_jax("cpu", default_cache_dir("runs/probe"))

    def show(row: dict) -> None:
        print(f"update {row['update']:5d} | {row['seconds']:6.0f} s | predicted reward at pickups: right "
              f"{row['reward_right']:.3f}, wrong {row['reward_wrong']:.3f} (words masked: "
              f"{row['reward_right_masked']:.3f}, {row['reward_wrong_masked']:.3f}) | held object decoded "
              f"{row['carrying_decoded']:.2f} | tokens decoded {row['tokens_decoded']:.2f}", flush=True)

    rows = run(cfg, args.steps, args.updates, args.every, log=show)
    result = {"configs": args.configs, "overrides": overrides, "steps": args.steps, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
