"""The training loop: environments <-> policy <-> replay, with `train_ratio` updates per environment step.

Knows nothing about particular environments: `launch/train.py` passes a factory `make_env(index)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dm_env
import jax
import numpy as np

from lwm.agent import Agent, describe_size
from lwm.driver import Driver
from lwm.logger import Logger, mean_metrics
from lwm.replay import Replay


def _policy_fn(agent: Agent, num: int, seed: int, greedy: bool, get_params: Callable[[], Any]):
    """A host-side policy for the driver: keeps the recurrent carry and the key across calls."""
    state = {"carry": agent.init_policy(num), "key": jax.random.key(seed)}

    def act(obs, is_first):
        state["key"], sub = jax.random.split(state["key"])
        carry, actions, latent = agent.policy(get_params(), state["carry"], obs, is_first, sub, greedy=greedy)
        state["carry"] = carry
        return jax.device_get(actions), {"latent": jax.device_get(latent)}

    return act


def evaluate(agent: Agent, params, make_env: Callable[[int], dm_env.Environment], episodes: int, num_envs: int,
             seed: int, greedy: bool = True) -> dict[str, float]:
    """Runs `episodes` episodes (in batches of `num_envs` worlds) and returns return statistics."""
    envs = [make_env(10_000 + i) for i in range(num_envs)]
    driver = Driver(envs, [k.name for k in agent.keys], name="eval")
    act = _policy_fn(agent, num_envs, seed + 7, greedy, lambda: params)
    done: list[dict] = []
    while len(done) < episodes:
        driver.step(act)
        done += driver.pop_episodes()
    returns = np.array([e["return"] for e in done[:episodes]])
    lengths = np.array([e["length"] for e in done[:episodes]])
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "length_mean": float(lengths.mean()), "episodes": int(len(returns))}


def train_loop(config, logdir: str | Path, make_env: Callable[[int], dm_env.Environment]) -> dict:
    """Trains an agent as configured; writes config.yaml, metrics.jsonl and summary.json to `logdir`."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    config.save(logdir / "config.yaml")
    t_start = time.time()
    num_envs = config.env.num_envs
    if num_envs < 1:
        raise ValueError(f"env.num_envs={num_envs} must be >= 1.")
    envs = [make_env(i) for i in range(num_envs)]
    obs_spec, act_spec = envs[0].observation_spec(), envs[0].action_spec()
    agent = Agent(obs_spec, act_spec, config)
    ts = agent.init(config.seed)
    B, T = config.batch_size, config.batch_length
    replay = Replay(config.replay.capacity, num_envs, T, seed=config.seed,
                    priority_frac=config.replay.priority_frac, priority_exponent=config.replay.priority_exponent)
    driver = Driver(envs, [k.name for k in agent.keys], name=config.env.name)
    act = _policy_fn(agent, num_envs, config.seed, False, lambda: ts["params"])
    logger = Logger(logdir, console_every=config.run.log_every)
    print(f"lwm: {config.env.name} | agent {describe_size(agent.param_count())} params | "
          f"{num_envs} envs | batch {B}x{T} | train_ratio {config.run.train_ratio} | logdir {logdir}", flush=True)

    per_step = config.run.train_ratio / (B * T)
    credit, updates, history, returns = 0.0, 0, [], []
    first_update_s = None
    t_log, steps_log, updates_log = time.time(), 0, 0
    classes = config.agent.rssm.classes

    def log(force: bool = False):
        nonlocal t_log, steps_log, updates_log, history, returns
        now = time.time()
        if not force and now - t_log < config.run.log_every:
            return
        dt = max(now - t_log, 1e-9)
        row = {"step": driver.steps, "updates": updates, **mean_metrics(history),
               "fps/env_steps_per_s": (driver.steps - steps_log) / dt,
               "fps/updates_per_s": (updates - updates_log) / dt, "replay/size": len(replay)}
        if returns:
            row["episode/return"] = float(np.mean(returns))
            row["episode/count"] = len(returns)
        logger.write(row)
        ret = f"{row['episode/return']:.3f}" if returns else "-"
        logger.console(f"step {driver.steps:>8} | updates {updates:>6} | return {ret} | "
                       f"{row['fps/env_steps_per_s']:.0f} env steps/s | {row['fps/updates_per_s']:.1f} updates/s",
                       force=True)
        t_log, steps_log, updates_log, history, returns = now, driver.steps, updates, [], []

    while driver.steps < config.run.steps:
        driver.step(act, on_step=replay.add)
        returns += [e["return"] for e in driver.pop_episodes()]
        if driver.steps >= config.run.train_fill and replay.ready():
            credit += num_envs * per_step
            while credit >= 1.0:
                batch, index = replay.sample(B, classes)
                ts, metrics, post = agent.train(ts, batch)
                post = jax.device_get(post)
                replay.update_latents(index, post)
                replay.update_priorities(index, post["loss"])
                history.append(metrics)
                credit -= 1.0
                updates += 1
                if first_update_s is None:
                    first_update_s = time.time() - t_start
        log()
    log(force=True)

    summary: dict[str, Any] = {
        "env": config.env.name, "env_steps": driver.steps, "updates": updates,
        "params": agent.param_count(), "wall_s": round(time.time() - t_start, 2),
        "first_update_s": None if first_update_s is None else round(first_update_s, 2),
    }
    if config.run.eval_episodes > 0:
        summary["eval"] = evaluate(agent, ts["params"], make_env, config.run.eval_episodes, num_envs, config.seed)
        for name in ("optimal_return", "chance_return"):
            value = getattr(envs[0], name, None)
            if value is not None:
                summary[name] = float(value)
        logger.write({"step": driver.steps, "updates": updates,
                      **{f"eval/{k}": v for k, v in summary["eval"].items()}})
    logger.close()
    (logdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
