"""The training loop: environments <-> policy <-> replay, with `train_ratio` updates per environment step.

Knows nothing about particular environments: `launch/train.py` passes a factory `make_env(index)`.

The loop checkpoints the whole run (`lwm.checkpoint`) every `ckpt.every_s` seconds and/or `ckpt.every_updates`
updates, at the end, and on SIGTERM/SIGINT (after finishing the current update). Started again with the same
logdir it resumes from the newest complete checkpoint: train state, replay, counters, and the logs rewound to
that point. Environments are not checkpointed: they start new episodes on resume.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dm_env
import jax
import numpy as np

from lwm import checkpoint as ckpt_lib
from lwm import parallel
from lwm.agent import Agent, describe_size
from lwm.driver import Driver
from lwm.envpool import EnvPool
from lwm.logger import Logger, log_positions, mean_metrics, rewind
from lwm.replay import Replay
from lwm.team import TeamDriver, evaluate_team, is_team_env, team_specs

NONFINITE = ("stop", "skip")
SIGNALS = (None, "SIGINT", "SIGTERM")  # codes agreed across processes (a higher code wins)


class NonFiniteLoss(FloatingPointError):
    """An update produced a NaN or infinite loss (with run.nonfinite=stop)."""


class Interrupt:
    """Turns the first SIGTERM/SIGINT into a flag the loop polls (so the current update finishes and the
    run is saved); a second one raises KeyboardInterrupt at once. Handlers are restored on exit."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal = signal.Signals(signum).name
        print(f"lwm: received {self.signal}: finishing the current update, then saving a checkpoint "
              "(send it again to stop at once).", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _policy_fn(agent: Agent, num: int, seed: int, greedy: bool, get_params: Callable[[], Any],
               explore: bool = False):
    """A host-side policy for the driver: keeps the recurrent carry and the key (in `act.state`) across calls.
    `explore`: the training collector's (`agent.actor.explore`); evaluation never explores."""
    explore = bool(explore and agent.config.agent.actor.explore > 0)  # off: the same compiled policy as before
    state = {"carry": agent.init_policy(num), "key": jax.random.key(seed)}

    def act(obs, is_first, force=None):
        state["key"], sub = jax.random.split(state["key"])
        carry, actions, latent = agent.policy(get_params(), state["carry"], obs, is_first, sub, greedy=greedy,
                                               explore=explore, **({} if force is None else {"force": force}))
        state["carry"] = carry
        return jax.device_get(actions), {"latent": jax.device_get(latent)}

    act.state = state
    return act


def evaluate(agent: Agent, params, make_env: Callable[[int], dm_env.Environment], episodes: int, num_envs: int,
             seed: int, greedy: bool = True) -> dict[str, float]:
    """Runs `episodes` episodes (in batches of `num_envs` worlds) and returns return statistics.

    A team environment (`lwm.team`) is one batch of worlds, played twice on the same worlds: with sampled actions
    (the plain keys; `greedy` is not used) and with each agent's most likely action (the same keys prefixed
    `greedy_`). Which is better depends on the team: early on, agents with shared parameters that all take their
    argmax tend to move in lock-step; a trained team wastes fewer rounds without the sampling noise."""
    first = make_env(10_000)
    if is_team_env(first):
        sampled = evaluate_team(agent, params, first, episodes, seed + 7, greedy=False, policy_fn=_policy_fn)
        argmax = evaluate_team(agent, params, make_env(10_000), episodes, seed + 7, greedy=True,
                               policy_fn=_policy_fn)
        return {**sampled, **{f"greedy_{k}": v for k, v in argmax.items()}}
    envs = [first] + [make_env(10_000 + i) for i in range(1, num_envs)]
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


def check_run_config(config) -> None:
    """Range checks of the run/ckpt keys the loop reads; errors name the key, the value and what is allowed."""
    if config.env.num_envs < 1:
        raise ValueError(f"env.num_envs={config.env.num_envs} must be >= 1.")
    workers = config.env.workers
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= config.env.num_envs:
        raise ValueError(f"env.workers={workers!r} must be an int from 0 (environments in this process) to "
                         f"env.num_envs={config.env.num_envs} (one worker process per environment).")
    guide_worlds = config.env.guide_worlds
    if (isinstance(guide_worlds, bool) or not isinstance(guide_worlds, int)
            or not 0 <= guide_worlds <= config.env.num_envs):
        raise ValueError(f"env.guide_worlds={guide_worlds!r} must be an int from 0 (no guide) to "
                         f"env.num_envs={config.env.num_envs}.")
    if (config.env.guide == "none") != (guide_worlds == 0):
        raise ValueError(f"env.guide={config.env.guide!r} with env.guide_worlds={guide_worlds}: a scripted guide "
                         "plays guide_worlds >= 1 worlds; without one use env.guide none, env.guide_worlds 0.")
    if config.run.nonfinite not in NONFINITE:
        raise ValueError(f"run.nonfinite={config.run.nonfinite!r} is not known; use one of {', '.join(NONFINITE)}.")
    for key in ("run.log_every", "run.summary_every", "run.report_every", "run.minutes", "ckpt.every_s",
                "ckpt.every_updates"):
        section, name = key.split(".")
        if config[section][name] < 0:
            raise ValueError(f"{key}={config[section][name]} must be >= 0 (0 turns it off).")
    if config.ckpt.keep < 1:
        raise ValueError(f"ckpt.keep={config.ckpt.keep} must be >= 1.")
    if config.ckpt.from_only not in ckpt_lib.FROM_ONLY:
        raise ValueError(f"ckpt.from_only={config.ckpt.from_only!r} is not known; use one of "
                         f"{', '.join(ckpt_lib.FROM_ONLY)}.")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def train_loop(config, logdir: str | Path, make_env: Callable[[int], dm_env.Environment]) -> dict:
    """Trains an agent as configured, resuming from `<logdir>/ckpt` when it holds a checkpoint.

    Writes config.yaml, metrics.jsonl, TensorBoard events, checkpoints and summary.json to `logdir`. Raises
    `ckpt_lib.CheckpointError` for a checkpoint of a different config and `NonFiniteLoss` for a NaN loss (with
    run.nonfinite=stop).
    """
    check_run_config(config)
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    num_envs = config.env.num_envs
    # Multi-host: every process steps its own environments into its own replay shard and trains on its own
    # batch rows; process 0 writes the logs (others write theirs to process_<i>/), all write checkpoints.
    rank = jax.process_index()
    seed = config.seed + 1_000_003 * rank  # this process's experience; the train state is seeded with config.seed
    log_dir = logdir if rank == 0 else logdir / f"process_{rank}"
    # A team environment (several agents per world, many worlds per batch; `lwm.team`) is made once and holds
    # env.num_envs worlds; its W·A agents are the streams of policy and replay.
    envs = [make_env(rank * num_envs)]
    team = is_team_env(envs[0])
    pool = None
    if team:
        if config.env.workers:
            raise ValueError(f"env.workers={config.env.workers}: {config.env.name} is a batched JAX world that "
                             "runs in this process; use env.workers 0.")
        obs_spec, act_spec = team_specs(envs[0])
        num_streams = envs[0].num_worlds * envs[0].num_agents
    else:
        if config.env.workers:  # worker processes step their own copies; envs[0] stays for specs and attributes
            pool = EnvPool(make_env, range(rank * num_envs, (rank + 1) * num_envs), config.env.workers)
        else:
            envs += [make_env(rank * num_envs + i) for i in range(1, num_envs)]
        obs_spec, act_spec = envs[0].observation_spec(), envs[0].action_spec()
        num_streams = num_envs
    if config.env.guide != "none" or config.env.guide_worlds:  # the collector's env only, never an evaluation's
        if not team or not hasattr(envs[0], "set_guide"):
            raise ValueError(f"env.guide={config.env.guide!r}: world {config.env.name!r} has no scripted guide "
                             "(team worlds with set_guide, e.g. defusal, have); use env.guide none.")
        envs[0].set_guide(config.env.guide, config.env.guide_worlds)
    mesh = parallel.mesh_from_config(config)
    agent = Agent(obs_spec, act_spec, config, mesh=mesh)
    ts = agent.init(config.seed)
    B, T = config.batch_size, config.batch_length
    replay_kwargs = {"seed": seed, "priority_frac": config.replay.priority_frac,
                     "priority_exponent": config.replay.priority_exponent, "event_frac": config.replay.event_frac,
                     "group": agent.team_group}  # joint imagination: batches of whole teams
    replay = Replay(config.replay.capacity, num_streams, T, **replay_kwargs)
    keys = [k.name for k in agent.keys]
    driver = (TeamDriver(envs[0], keys, name=config.env.name, mates=agent.mates > 0) if team
              else Driver(envs, keys, name=config.env.name, pool=pool))
    act = _policy_fn(agent, num_streams, seed, False, lambda: ts["params"], explore=True)
    counters = {"env_steps": 0, "updates": 0, "credit": 0.0, "episodes": 0, "skipped": 0}

    # ------------------------------------------------------------------------------- resume or start fresh
    ckpt = None
    resumed = None
    if config.ckpt.enabled:
        ckpt = ckpt_lib.Checkpointer(logdir / "ckpt", keep=config.ckpt.keep, async_save=config.ckpt.async_save)
        try:
            resumed = ckpt.restore_latest_good({"agent": ts}, local_like={"policy_key": act.state["key"]},
                                               config=config, replay_kwargs=replay_kwargs,
                                               quarantine=logdir / "ckpt_corrupt")
        except BaseException:
            ckpt.close()
            raise
    if resumed is not None:
        ts, act.state["key"] = resumed.state["agent"], resumed.local["policy_key"]
        replay = resumed.replay
        counters.update({k: type(v)(resumed.meta[k]) for k, v in counters.items() if k in resumed.meta})
        driver.steps = counters["env_steps"]
        if team:
            driver.rounds = driver.steps // driver.A
        # Each process rewinds its own log files to their sizes at the checkpoint (kept in its part of it).
        dropped = rewind(log_dir, resumed.local_meta.get("logs", resumed.meta.get("logs", {}) if rank == 0 else {}),
                         step=driver.steps)
        print(f"lwm: resumed from {resumed.path} (step {driver.steps}, {counters['updates']} updates, replay "
              f"{len(replay)} steps, {counters['episodes']} episodes"
              + (f"; dropped {dropped} metric rows written after it" if dropped else "") + ")", flush=True)
        if config.ckpt["from"]:
            print(f"lwm: --from_checkpoint {config.ckpt['from']} is ignored: this logdir has its own checkpoint.",
                  flush=True)
    else:
        if ckpt is not None and log_positions(log_dir):
            dropped = rewind(log_dir, {})
            print(f"lwm: no checkpoint in {logdir / 'ckpt'}: starting afresh"
                  + (f" (dropped {dropped} metric rows of an earlier attempt)" if dropped else ""), flush=True)
        if config.ckpt["from"]:
            ts, used = ckpt_lib.load_into(config.ckpt["from"], ts, config.ckpt.from_only)
            print(f"lwm: started from {used} (ckpt.from_only={config.ckpt.from_only}).", flush=True)
            changes = ckpt_lib.config_changes(config.ckpt["from"], config)
            if changes:
                print(f"lwm: {changes}.", flush=True)
    if rank == 0:
        config.save(logdir / "config.yaml")  # after the checks: a mismatched config never overwrites the saved one

    logger = Logger(log_dir, console_every=config.run.log_every)
    print(f"lwm: {config.env.name} | agent {describe_size(agent.param_count())} params | "
          + (f"team: {num_envs} worlds x {driver.A} agents = {num_streams} streams" if team else f"{num_envs} envs")
          + (f" in {config.env.workers} worker processes" if pool else "")
          + f" | batch {B}x{T} | train_ratio {config.run.train_ratio} | {parallel.describe(mesh)} | "
          f"logdir {logdir}", flush=True)

    per_step = config.run.train_ratio / (B * T)
    history: list[dict] = []
    returns: list[float] = []
    episode_extras: list[dict] = []  # env metrics of finished episodes (team worlds: score, rounds, ...)
    last_return: float | None = None
    first_update_s = None
    skipped_log = 0
    t_log, steps_log, updates_log = time.time(), driver.steps, counters["updates"]
    t_summary = time.time()
    last_losses: dict[str, float] = {}
    classes = config.agent.rssm.classes
    last_save = {"time": time.time(), "updates": counters["updates"], "step": resumed.step if resumed else None}

    def log(force: bool = False):
        nonlocal t_log, steps_log, updates_log, history, returns, skipped_log, last_losses, t_summary, last_return
        nonlocal episode_extras
        now = time.time()
        if not force and now - t_log < config.run.log_every:
            return
        dt = max(now - t_log, 1e-9)
        updates = counters["updates"]
        row = {"step": driver.steps, "updates": updates, **mean_metrics(parallel.to_host(history)),
               "fps/env_steps_per_s": (driver.steps - steps_log) / dt,
               "fps/updates_per_s": (updates - updates_log) / dt, "replay/size": len(replay),
               "train/skipped": skipped_log, "train/skipped_total": counters["skipped"]}
        if returns:
            last_return = float(np.mean(returns))
            row["episode/return"] = last_return
            row["episode/count"] = len(returns)
        for name in sorted({k for e in episode_extras for k in e}):
            row[f"episode/{name}"] = float(np.mean([e[name] for e in episode_extras if name in e]))
        if team:
            row["env_rounds"] = driver.rounds
        logger.write(row)
        if history:
            keys = ("loss/total", "loss/dyn", "loss/reward", "imag/return", "imag/entropy", "opt/grad_norm")
            last_losses = {k: row[k] for k in keys if k in row}
        rate = row["fps/env_steps_per_s"]
        left = max(config.run.steps - driver.steps, 0)
        eta = _duration(left / rate) if rate > 0 else "?"
        ret = f"{last_return:.3f}" if last_return is not None else "-"
        pct = 100.0 * min(driver.steps / max(config.run.steps, 1), 1.0)
        logger.console(f"step {driver.steps:>8}/{config.run.steps} {pct:3.0f}% | updates {updates:>6} | "
                       f"{row['fps/updates_per_s']:.1f} updates/s | {rate:.0f} env steps/s | return {ret} | "
                       f"ETA {eta}", force=True)
        t_log, steps_log, updates_log, history, returns, skipped_log = now, driver.steps, updates, [], [], 0
        episode_extras = []
        if config.run.summary_every > 0 and (now - t_summary >= config.run.summary_every or force):
            t_summary = now
            parts = [f"{k} {v:.4g}" for k, v in last_losses.items()]
            age = (f"{_duration(now - last_save['time'])} ago (step {last_save['step']})"
                   if last_save["step"] is not None else "none yet")
            logger.console(f"summary | {_duration(now - t_start)} elapsed | step {driver.steps} | "
                           f"{counters['episodes']} episodes | " + " | ".join(parts)
                           + f" | skipped {counters['skipped']} | checkpoint {age}", force=True)

    def save(reason: str) -> None:
        if ckpt is None:
            return
        counters["env_steps"] = driver.steps
        meta = {**counters, "replay_size": len(replay), "config": config.to_dict(), "logs": logger.positions(),
                "time": time.time(), "reason": reason}
        if ckpt.save(driver.steps, {"agent": ts}, meta, replay, local={"policy_key": act.state["key"]},
                     local_meta={"logs": meta["logs"]}):
            last_save["step"] = driver.steps
        last_save["time"], last_save["updates"] = time.time(), counters["updates"]

    def save_due() -> bool:
        c = config.ckpt
        return ckpt is not None and (
            (c.every_s > 0 and time.time() - last_save["time"] >= c.every_s)
            or (c.every_updates > 0 and counters["updates"] - last_save["updates"] >= c.every_updates))

    def nonfinite_message(metrics: dict) -> str:
        values = parallel.to_host(metrics)
        bad = {k: float(np.asarray(v)) for k, v in values.items()
               if k != "train/finite" and not np.all(np.isfinite(np.asarray(v, np.float64)))}
        names = ", ".join(f"{k}={v}" for k, v in bad.items()) or "(no metric; the state)"
        where = (f"the last good checkpoint is {ckpt.path(last_save['step'])}" if ckpt and last_save["step"]
                 is not None else "no checkpoint was written before it")
        return (f"non-finite loss at update {counters['updates'] + 1} (env step {driver.steps}): {names}. "
                f"Stopped without saving; {where}. Lower agent.opt.lr, check the environment's rewards and "
                "observations, or pass --run.nonfinite skip to skip such updates.")

    t_report, reporter = time.time(), []

    def report(params, step: int) -> None:
        """The imagination report (`run.report_every`): <logdir>/report.html and a TensorBoard image."""
        if jax.process_index() != 0:
            return
        if not reporter:
            from lwm.visualize import TrainingReport
            reporter.append(TrainingReport(agent, make_env, logdir, logger.events, seed=config.seed))
        reporter[0].write(params, step)

    # Several processes (multi-host) run this loop in lock step: the same number of env steps and updates, each
    # update one collective train step, each checkpoint one collective write. Decisions taken from a process's
    # own clock or signals (save now, stop now) are therefore agreed once per iteration (`parallel.agree_max`):
    # a SIGTERM on any one host stops every host after the same update, and all of them write the checkpoint.
    multi = parallel.is_multiprocess()
    agreed: dict[str, Any] = {"signal": None, "time_up": False}
    budget_s = 60.0 * config.run.minutes
    train_step = agent.train
    lined_up = not multi

    def stopping() -> str | None:
        return agreed["signal"] if multi else stop.signal

    def agree(local_stop: str | None) -> bool:
        """Agrees on stop and periodic save across processes; returns whether to save now."""
        time_up = budget_s > 0 and time.time() - t_start >= budget_s
        code, due, who, up = parallel.agree_max([SIGNALS.index(local_stop), int(save_due()),
                                                 (rank + 1) if local_stop else 0, int(time_up)])
        agreed["time_up"] = agreed["time_up"] or bool(up)
        if code and agreed["signal"] is None:
            agreed["signal"] = SIGNALS[code] if local_stop or not multi else f"{SIGNALS[code]} on process {who - 1}"
            if not local_stop:
                print(f"lwm: process {who - 1} received {SIGNALS[code]}: this process stops with it after this "
                      "update and saves its part of the checkpoint.", flush=True)
        return bool(due)

    interrupted = None
    try:
        with Interrupt() as stop:
            while driver.steps < config.run.steps and not stopping() and not agreed["time_up"]:
                driver.step(act, on_step=replay.add)
                if not lined_up:  # the policy compiled (first step): line up before the first collective
                    parallel.barrier("lwm_loop_started")
                    lined_up = True
                episodes = driver.pop_episodes()
                own = [e for e in episodes if not e.get("guided")]  # a scripted guide's worlds are not the agent's
                returns += [e["return"] for e in own]
                episode_extras += [{k: v for k, v in e.items() if k not in ("return", "guided")} for e in own]
                episode_extras += [{f"guide_{k}": e[k] for k in ("return", "score", "rounds") if k in e}
                                   for e in episodes if e.get("guided")]
                counters["episodes"] += len(episodes)
                if driver.steps >= config.run.train_fill and replay.ready():
                    counters["credit"] += num_streams * per_step
                    while counters["credit"] >= 1.0 and not stopping():
                        batch, index = replay.sample(B, classes)
                        batch = agent.shard_batch(batch)
                        if multi and train_step is agent.train:  # compile here, then wait for every process
                            train_step = agent.train.lower(ts, batch).compile()
                            parallel.barrier("lwm_train_compiled")
                        ts, metrics, post = train_step(ts, batch)
                        finite = bool(parallel.to_host(metrics.pop("train/finite")))
                        counters["credit"] -= 1.0
                        if not finite:
                            if config.run.nonfinite == "stop":
                                raise NonFiniteLoss(nonfinite_message(metrics))
                            counters["skipped"] += 1
                            skipped_log += 1
                        else:
                            post = parallel.to_host(post)
                            replay.update_latents(index, post)
                            replay.update_priorities(index, post["loss"])
                            history.append(metrics)
                        counters["updates"] += 1
                        if first_update_s is None:
                            first_update_s = time.time() - t_start
                            print(f"lwm: first update after {first_update_s:.1f} s (environment fill and "
                                  "compilation)", flush=True)
                log()
                if agree(stop.signal) and not stopping() and not agreed["time_up"]:
                    save("periodic")
                if config.run.report_every > 0 and time.time() - t_report >= config.run.report_every:
                    report(ts["params"], driver.steps)
                    t_report = time.time()
            interrupted = stopping()
            log(force=True)
            save(f"stopped by {interrupted}" if interrupted else "end of run")
            if config.run.report_every > 0 and not interrupted:
                report(ts["params"], driver.steps)
            if ckpt is not None:
                ckpt.wait()

        summary: dict[str, Any] = {
            "env": config.env.name, "env_steps": driver.steps, "updates": counters["updates"],
            "params": agent.param_count(), "wall_s": round(time.time() - t_start, 2),
            "first_update_s": None if first_update_s is None else round(first_update_s, 2),
            "skipped_updates": counters["skipped"],
        }
        if team:
            summary.update({"env_rounds": driver.rounds, "worlds": driver.W, "agents": driver.A})
        if agreed["time_up"] and not interrupted:
            summary["stopped"] = f"run.minutes ({config.run.minutes:g}) reached"
        if resumed is not None:
            summary["resumed_from"] = str(resumed.path)
        if ckpt is not None and last_save["step"] is not None:
            summary["checkpoint"] = str(ckpt.path(last_save["step"]))
        if interrupted:
            summary["interrupted"] = interrupted
            print(f"lwm: stopped by {interrupted} at step {driver.steps}; checkpoint {summary.get('checkpoint')}. "
                  "Run the same command again to resume.", flush=True)
        elif config.run.eval_episodes > 0:
            summary["eval"] = evaluate(agent, ts["params"], make_env, config.run.eval_episodes, num_envs,
                                       config.seed)
            for name in ("optimal_return", "chance_return"):
                value = getattr(envs[0], name, None)
                if value is not None:
                    summary[name] = float(value)
            logger.write({"step": driver.steps, "updates": counters["updates"],
                          **{f"eval/{k}": v for k, v in summary["eval"].items()}})
    finally:
        if pool is not None:
            pool.close()
        if ckpt is not None:
            ckpt.close()
        logger.close()
    if rank == 0:
        (logdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
