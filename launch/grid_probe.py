"""Does the world model learn what a task world's reward depends on? Offline, no actor in the loop.

A scripted explorer walks `grid_task_*` worlds and picks up whatever is in front of it with probability 0.6
(about one step in seven is a pickup, a share `1 / objects` of them rewarding). The agent's world model is
trained on that data with the agent's own train step, and on held-out episodes of the same explorer
:func:`probe` reports

- the reward the model predicts (from the posterior) at pickups of the *right* and of a *wrong* object, with
  the words as heard and with every token replaced by `<pad>` (the control: the object in front is the same,
  only the words are gone, so a model that uses them loses the gap);
- how often the decoder reproduces the held object (`carrying`) at pickups, and the whole token vector.

Used by `bench/grid_wm_probe.py` (the full-size study) and by the CI learning check in
`tests/test_grid_learning.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

OBJECTS = (5, 6, 7)  # minigrid object codes of key, ball, box
PICKUP = 3
FRONT = (5, 3)  # the cell in front of the agent in minigrid's 7x7 egocentric view (row, column)


def check_world(config: Any) -> None:
    """The explorer and the right / wrong labels are those of the task worlds."""
    if not str(config.env.name).startswith("grid_task"):
        raise ValueError(f"env.name={config.env.name!r}: the probe's explorer and labels are for the grid_task_* "
                         "worlds (grid_task_xs, grid_task_s, grid_task_m)")
    if config.env.options.get("obs", "rgb") != "symbolic":
        raise ValueError(f"env.options.obs={config.env.options.get('obs')!r}: the explorer reads the symbolic view; "
                         "use obs: symbolic")


def collect(agent: Any, params: Any, make_env: Callable[[int], Any], first: int, steps: int, event_frac: float,
            batch_length: int, seed: int, num_envs: int = 16) -> Any:
    """A replay of `steps` explorer steps in worlds `make_env(first + i)`; the model's latents are stored too."""
    from lwm.driver import Driver
    from lwm.loop import _policy_fn
    from lwm.replay import Replay

    rng = np.random.default_rng(seed)
    worlds = [make_env(first + i) for i in range(num_envs)]
    latents = _policy_fn(agent, num_envs, first, False, lambda: params)  # stores the model's latents
    keys = sorted({k.name for k in agent.keys} | {"grid"})  # the explorer looks at the grid

    def act(obs, is_first):
        actions, extra = latents(obs, is_first)
        front = np.asarray(obs["grid"])[:, FRONT[0], FRONT[1], 0]
        move = np.where(rng.random(num_envs) < 0.6, 2, rng.integers(0, 2, num_envs))
        choice = np.where(np.isin(front, OBJECTS) & (rng.random(num_envs) < 0.6), PICKUP, move)
        if isinstance(actions, dict):
            return {k: choice.astype(np.asarray(v).dtype) for k, v in actions.items()}, extra
        return choice.astype(np.asarray(actions).dtype), extra

    replay = Replay(steps + 100, num_envs, batch_length, seed=first, event_frac=event_frac)
    driver = Driver(worlds, keys)
    while driver.steps < steps:
        driver.step(act, on_step=replay.add)
    for world in worlds:
        world.close()
    return replay


def probe(agent: Any, params: Any, batches: list[dict], context: int) -> dict[str, float]:
    """Predicted reward at right / wrong pickups (words heard and words masked) and decoding rates."""
    import jax

    out: dict[str, list] = {"right": [], "wrong": [], "right_masked": [], "wrong_masked": [], "carrying": [],
                            "tokens": []}
    for b in batches:
        pickup = np.asarray(b["is_terminal"])
        reward = np.asarray(b["reward"])
        right, wrong = pickup & (reward > 0.5), pickup & (reward < 0.5)
        masked = {**b, "obs": {**b["obs"], "tokens": np.zeros_like(np.asarray(b["obs"]["tokens"]))}}
        for suffix, batch in (("", b), ("_masked", masked)):
            report = agent.report(params, batch, jax.random.key(0), context=context)
            pred = np.asarray(report["reward"])
            out["right" + suffix] += list(pred[right])
            out["wrong" + suffix] += list(pred[wrong])
            if not suffix:
                held = (np.asarray(report["pred"]["carrying"]).argmax(-1) == np.asarray(b["obs"]["carrying"])).all(-1)
                words = (np.asarray(report["pred"]["tokens"]).argmax(-1) == np.asarray(b["obs"]["tokens"])).all(-1)
                out["carrying"] += list(held[pickup])
                out["tokens"] += list(words.reshape(-1))
    names = {"right": "reward_right", "wrong": "reward_wrong", "right_masked": "reward_right_masked",
             "wrong_masked": "reward_wrong_masked", "carrying": "carrying_decoded", "tokens": "tokens_decoded"}
    result = {names[k]: float(np.mean(v)) if v else float("nan") for k, v in out.items()}
    result["pickups_right"], result["pickups_wrong"] = len(out["right"]), len(out["wrong"])
    return result


def run(config: Any, steps: int, updates: int, every: int, heldout_steps: int = 4000, heldout_batches: int = 4,
        log: Callable[[dict], None] | None = None) -> list[dict]:
    """Collects, trains the world model `updates` times, probes every `every` updates; returns the probe rows."""
    import time

    from launch.train import env_factory
    from lwm.agent import Agent

    check_world(config)
    make_env = env_factory(config)
    spec_env = make_env(0)
    agent = Agent(spec_env.observation_spec(), spec_env.action_spec(), config)
    spec_env.close()
    ts = agent.init(config.seed)
    t0 = time.time()
    train = collect(agent, ts["params"], make_env, 0, steps, config.replay.event_frac, config.batch_length,
                    config.seed)
    held = collect(agent, ts["params"], make_env, 90_000, heldout_steps, 1.0, config.batch_length,
                   config.seed + 1)  # every held-out chunk holds a pickup or a time-out
    tests = [held.sample(64, config.agent.rssm.classes)[0] for _ in range(heldout_batches)]
    rows = []
    for update in range(updates + 1):
        if update % every == 0 or update == updates:
            row = {"update": update, "seconds": round(time.time() - t0, 1),
                   **probe(agent, ts["params"], tests, config.batch_length)}
            rows.append(row)
            if log is not None:
                log(row)
        if update < updates:
            batch, _ = train.sample(config.batch_size, config.agent.rssm.classes)
            ts, _, _ = agent.train(ts, agent.shard_batch(batch))
    return rows
