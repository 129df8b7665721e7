"""Can the world model learn what a hinted gridworld's reward depends on? Offline, no actor in the loop.

`python bench/grid_wm_probe.py [--configs grid_task] [--steps 20000] [--updates 1500] [--every 500]
 [--set KEY=VALUE ...]`

Collects `--steps` env steps of `grid_task_*` with a scripted explorer that picks up whatever is in front with
probability 0.6 (so about one step in seven is a pickup, a third of them rewarding), then trains the agent's
world model on them (the full train step; its actor is not used for acting) and every `--every` updates
reports, on held-out episodes of the same explorer:

- the reward the model predicts (from the posterior) at pickups of the *right* and of a *wrong* object: the
  language agent can only learn the task once these separate;
- how often the decoder reproduces the held object (`carrying`) at pickups, and the whole task sentence.

`--set` applies dotted config overrides (e.g. `--set agent.opt.lr=1e-3 env.options.token_len=6`). The last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lwm import config as lwm_config  # noqa: E402
from lwm.runtime import default_cache_dir, setup_jax  # noqa: E402

OBJECTS = (5, 6, 7)  # minigrid key, ball, box
PICKUP = 3


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
    if not cfg.env.name.startswith("grid_task"):
        parser.error(f"env.name={cfg.env.name!r}: the probe's explorer and labels are for grid_task_s / grid_task_m")
    setup_jax("cpu", default_cache_dir("runs/probe"))
    import jax

    from launch.train import env_factory
    from lwm.agent import Agent
    from lwm.driver import Driver
    from lwm.loop import _policy_fn
    from lwm.replay import Replay

    make_env = env_factory(cfg)
    n = 16
    spec_env = make_env(0)
    agent = Agent(spec_env.observation_spec(), spec_env.action_spec(), cfg)
    ts = agent.init(cfg.seed)
    keys = sorted({k.name for k in agent.keys} | {"grid"})  # the explorer looks at the grid
    rng = np.random.default_rng(cfg.seed)

    def collect(first: int, steps: int, event_frac: float) -> Replay:
        worlds = [make_env(first + i) for i in range(n)]
        latents = _policy_fn(agent, n, first, False, lambda: ts["params"])  # stores the model's latents

        def act(obs, is_first):
            actions, extra = latents(obs, is_first)
            front = np.asarray(obs["grid"])[:, 5, 3, 0]  # the cell in front of the agent
            move = np.where(rng.random(n) < 0.6, 2, rng.integers(0, 2, n))
            choice = np.where(np.isin(front, OBJECTS) & (rng.random(n) < 0.6), PICKUP, move)
            if isinstance(actions, dict):
                return {k: choice.astype(np.asarray(v).dtype) for k, v in actions.items()}, extra
            return choice.astype(np.asarray(actions).dtype), extra

        replay = Replay(steps + 100, n, cfg.batch_length, seed=first, event_frac=event_frac)
        driver = Driver(worlds, keys)
        while driver.steps < steps:
            driver.step(act, on_step=replay.add)
        return replay

    t0 = time.time()
    train = collect(0, args.steps, cfg.replay.event_frac)
    held = collect(90_000, 4000, 1.0)  # every held-out chunk holds a pickup or a time-out
    tests = [held.sample(64, cfg.agent.rssm.classes)[0] for _ in range(4)]
    print(f"collected {args.steps:,} + 4,000 held-out steps in {time.time() - t0:.0f} s", flush=True)

    def probe(params) -> dict:
        right, wrong, held_ok, sentence_ok = [], [], [], []
        for b in tests:
            out = agent.report(params, b, jax.random.key(0), context=cfg.batch_length)
            pickup = np.asarray(b["is_terminal"])
            reward = np.asarray(b["reward"])
            pred = np.asarray(out["reward"])
            right += list(pred[pickup & (reward > 0.5)])
            wrong += list(pred[pickup & (reward < 0.5)])
            carrying = (np.asarray(out["pred"]["carrying"]).argmax(-1) == np.asarray(b["obs"]["carrying"])).all(-1)
            tokens = (np.asarray(out["pred"]["tokens"]).argmax(-1) == np.asarray(b["obs"]["tokens"])).all(-1)
            held_ok += list(carrying[pickup])
            sentence_ok += list(tokens.reshape(-1))
        return {"reward_right": float(np.mean(right)), "reward_wrong": float(np.mean(wrong)),
                "carrying_decoded": float(np.mean(held_ok)), "sentence_decoded": float(np.mean(sentence_ok))}

    rows = []
    for update in range(args.updates + 1):
        if update % args.every == 0:
            row = {"update": update, "seconds": round(time.time() - t0, 1), **probe(ts["params"])}
            rows.append(row)
            print(f"update {update:5d} | {row['seconds']:6.0f} s | predicted reward at pickups: right "
                  f"{row['reward_right']:.3f}, wrong {row['reward_wrong']:.3f} | held object decoded "
                  f"{row['carrying_decoded']:.2f} | sentence decoded {row['sentence_decoded']:.2f}", flush=True)
        if update < args.updates:
            batch, _ = train.sample(cfg.batch_size, cfg.agent.rssm.classes)
            ts, _, _ = agent.train(ts, agent.shard_batch(batch))
    result = {"configs": args.configs, "overrides": overrides, "steps": args.steps, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
