"""Steps a batch of dm_env environments in lock-step with a batched policy; keeps episode statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dm_env
import numpy as np

from lwm.envpool import EnvPool


class ObservationError(ValueError):
    """An environment returned an observation that does not match its own spec."""


def check_observation(obs: Any, spec: Mapping[str, dm_env.specs.Array], where: str) -> None:
    if not isinstance(obs, Mapping):
        raise ObservationError(f"{where}: the observation must be a dict, got {type(obs).__name__}.")
    for key, s in spec.items():
        if key not in obs:
            raise ObservationError(f"{where}: observation lacks key {key!r} declared in its spec; got {sorted(obs)}.")
        if key.startswith("log_"):
            continue
        value = np.asarray(obs[key])
        if value.shape != tuple(s.shape) or value.dtype != np.dtype(s.dtype):
            raise ObservationError(
                f"{where}: observation {key!r} has shape {value.shape} and dtype {value.dtype}, but its spec is "
                f"shape {tuple(s.shape)} dtype {np.dtype(s.dtype)} ({s}).")
        if isinstance(s, dm_env.specs.BoundedArray) and value.size and (
                np.any(value < s.minimum) or np.any(value > s.maximum)):
            raise ObservationError(f"{where}: observation {key!r} = {value} is outside its bounds "
                                   f"[{s.minimum}, {s.maximum}].")


def act(current: dict, policy: Callable, on_step: Callable[[dict], None] | None) -> tuple[dict, dict]:
    """Runs the policy on an observed batch step and hands the step with its actions to `on_step` (replay)."""
    actions, extra = policy(current["obs"], current["is_first"])
    actions = {k: np.asarray(v) for k, v in actions.items()}
    if on_step is not None:
        on_step({**current, "action": actions, **extra})
    return current, actions


class Driver:
    """Runs `policy(obs [N, ...], is_first [N]) -> actions dict [N]` against N environments.

    `on_step(step)` receives, per iteration, a dict with every stream's observation (agent keys only),
    reward, is_first, is_last, is_terminal and whatever `policy` returned as `extra` (stored in replay).
    """

    def __init__(self, envs: Sequence[dm_env.Environment], keys: Sequence[str], name: str = "env",
                 pool: EnvPool | None = None):
        """`pool` (optional): an `lwm.envpool.EnvPool` of the same environments that steps them in worker
        processes; `envs` then only needs its first environment (for the specs)."""
        self.envs = list(envs)
        self.pool = pool
        self.keys = list(keys)
        self.name = name
        self.spec = self.envs[0].observation_spec()
        self.act_spec = self.envs[0].action_spec()
        num = len(pool) if pool is not None else len(self.envs)
        self.timesteps = [None] * num
        self.returns = np.zeros(num)
        self.lengths = np.zeros(num, np.int64)
        self.episodes: list[dict] = []  # finished episodes since the last `pop_episodes`
        self.steps = 0

    def _advance(self, actions: Mapping[int, Any]) -> None:
        """Resets (action None, or the episode ended) or steps the environments at the given indices."""
        actions = {i: None if self.timesteps[i] is None or self.timesteps[i].last() else a
                   for i, a in actions.items()}
        if self.pool is not None:
            steps = self.pool.advance(actions)
        else:
            steps = {i: self.envs[i].reset() if a is None else self.envs[i].step(a) for i, a in actions.items()}
        for i, ts in steps.items():
            check_observation(ts.observation, self.spec, f"{self.name}[{i}]")
            self.timesteps[i] = ts

    def _env_action(self, actions: Mapping[str, np.ndarray], i: int) -> Any:
        if isinstance(self.act_spec, Mapping):
            return {k: int(v[i]) for k, v in actions.items()}
        return int(actions["action"][i])

    def observe(self) -> dict:
        """The current batched step (resetting environments that have not started)."""
        fresh = {i: None for i, ts in enumerate(self.timesteps) if ts is None}
        if fresh:
            self._advance(fresh)
        tss = self.timesteps
        obs = {k: np.stack([np.asarray(ts.observation[k]) for ts in tss]) for k in self.keys}
        return {
            "obs": obs,
            "reward": np.array([0.0 if ts.first() else float(ts.reward) for ts in tss], np.float32),
            "is_first": np.array([ts.first() for ts in tss]),
            "is_last": np.array([ts.last() for ts in tss]),
            "is_terminal": np.array([ts.last() and float(ts.discount) == 0.0 for ts in tss]),
        }

    def step(self, policy: Callable, on_step: Callable[[dict], None] | None = None) -> None:
        """One iteration: act in the current states of all environments, then advance them."""
        current, actions = act(self.observe(), policy, on_step)
        num = len(self.timesteps)
        for i in range(num):
            if current["is_first"][i]:
                self.returns[i], self.lengths[i] = 0.0, 0
            else:
                self.returns[i] += current["reward"][i]
                self.lengths[i] += 1
            if current["is_last"][i]:
                self.episodes.append({"return": float(self.returns[i]), "length": int(self.lengths[i]),
                                      "terminated": float(current["is_terminal"][i])})
        self._advance({i: self._env_action(actions, i) for i in range(num)})
        self.steps += num

    def pop_episodes(self) -> list[dict]:
        out, self.episodes = self.episodes, []
        return out
