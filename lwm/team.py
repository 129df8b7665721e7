"""Several agents per world, many worlds per batch: one shared-parameter agent controls every agent of a team.

A *team environment* (duck-typed; `lwm` never imports `envs`) steps W worlds of A agents at once:

* attributes `num_worlds` (W) and `num_agents` (A); `observation_spec()` / `action_spec()` describe one agent;
* `reset()` and `step(actions)` return `{"obs": {key: [W, A, ...]}, "reward": [W] (the team reward),
  "is_first", "is_last", "is_terminal": [W], "metrics": {name: [W]}}` (metrics optional: the episode's values
  so far, read where `is_last`); `step` takes `{head: [W, A, ...]}`; a world whose episode ended starts a new
  one in the next `step` and ignores its actions there (as a dm_env driver resets a finished environment).

`TeamDriver` presents it to the agent as N = W·A independent streams, **row n = w·A + a** (world-major): every
row has its own RSSM carry and replay stream, every stream of world w gets world w's team reward and episode
flags, and an `agent_id` observation (int in 0..A-1, a one-hot to the world model) tells the shared parameters
which agent a row is. Teammates' messages reach a row only through its environment observation (in the defusal
world a `talk` action becomes the teammates' next `tokens`).

A team environment may also have a scripted *guide* (`guide_actions()`, e.g. `BatchedDefusal.set_guide`): it
returns None, or `{"guided": bool [W], head: [W, A, ...]}`, the guide's actions in the current state; the driver
then calls `policy(obs, is_first, force=...)` so that the agent takes them in the guided worlds (its recurrent
state sees the action taken), and replay stores them like any other step. Episodes of guided worlds carry
`guided: 1.0`, so that the trainer can keep them out of the agent's own figures.

Counting: `steps` counts agent-steps (N per round, as replay stores them; `run.steps` and `train_ratio` use it),
`rounds` counts world-steps (W per round).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dm_env
import numpy as np

from lwm.driver import ObservationError, act

AGENT_ID = "agent_id"


def is_team_env(env: Any) -> bool:
    """Whether `env` is a batched team environment (has `num_worlds` and `num_agents`)."""
    return hasattr(env, "num_worlds") and hasattr(env, "num_agents")


def team_specs(env: Any) -> tuple[dict[str, dm_env.specs.Array], Any]:
    """(observation spec of one stream: the env's per-agent spec plus `agent_id`, per-agent action spec).

    An action of several tokens (an int array [M], e.g. a message of M words) becomes M scalar actions
    `<key>_0 .. <key>_{M-1}`, one actor head each; `join_actions` puts them back together for the world.
    """
    obs = dict(env.observation_spec())
    if AGENT_ID in obs:
        raise ValueError(f"team environment {env!r} already has an observation {AGENT_ID!r}; lwm adds that key.")
    obs[AGENT_ID] = dm_env.specs.BoundedArray((), np.int32, 0, max(int(env.num_agents) - 1, 0), name=AGENT_ID)
    act = env.action_spec()
    if not isinstance(act, Mapping):
        return obs, act
    flat: dict[str, Any] = {}
    for key, s in act.items():
        if isinstance(s, dm_env.specs.BoundedArray) and len(s.shape) == 1 and s.shape[0] > 1:
            for i in range(s.shape[0]):
                name = f"{key}_{i}"
                if name in act:
                    raise ValueError(f"team environment {env!r}: action {key!r} of shape {s.shape} would be split "
                                     f"into {name!r}, which is already an action key.")
                flat[name] = dm_env.specs.BoundedArray((), s.dtype, np.min(s.minimum), np.max(s.maximum), name=name)
        else:
            flat[key] = s
    return obs, flat


def join_actions(actions: Mapping[str, np.ndarray], act_spec: Any) -> dict[str, np.ndarray]:
    """Inverse of the split in `team_specs`: `<key>_i` arrays [...] -> `<key>` [..., M] for the world's spec."""
    if not isinstance(act_spec, Mapping):
        return dict(actions)
    out = {}
    for key, s in act_spec.items():
        if key in actions:
            out[key] = actions[key]
        elif len(s.shape) == 1 and all(f"{key}_{i}" in actions for i in range(s.shape[0])):
            out[key] = np.stack([np.asarray(actions[f"{key}_{i}"]) for i in range(s.shape[0])], -1)
    return out


def stream_index(world: int, agent: int, num_agents: int) -> int:
    """Row of (world, agent) in the stream batch."""
    return world * num_agents + agent


def to_streams(x: np.ndarray) -> np.ndarray:
    """[W, A, ...] -> [W·A, ...] (row w·A + a)."""
    x = np.asarray(x)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def mates_of(actions: Mapping[str, np.ndarray], num_worlds: int, num_agents: int) -> dict[str, np.ndarray]:
    """Each stream's teammates' actions: {head: [W·A, A-1]}, column j the action of agent (a + 1 + j) mod A of the
    same world (the same relative order for every agent, as one shared-parameter model sees it)."""
    out = {}
    for key, value in actions.items():
        x = from_streams(value, num_worlds, num_agents)  # [W, A]
        cols = [np.roll(x, -(j + 1), axis=1) for j in range(num_agents - 1)]  # agent a sees a+1+j
        out[key] = to_streams(np.stack(cols, axis=2)) if cols else np.zeros((num_worlds * num_agents, 0), x.dtype)
    return out


def split_actions(actions: Mapping[str, np.ndarray], heads: Sequence[str]) -> dict[str, np.ndarray]:
    """Inverse of `join_actions` for one stream per agent: `{key: [W, A, ...]}` -> `{head: [W·A]}` for the
    agent's heads, a head `<key>_i` taking column i of `key`'s last axis."""
    out = {}
    for head in heads:
        if head in actions:
            out[head] = to_streams(actions[head])
            continue
        key, _, i = head.rpartition("_")
        if key not in actions or not i.isdigit():
            raise ValueError(f"guide actions {sorted(actions)} give no value for the agent's head {head!r}.")
        out[head] = to_streams(np.asarray(actions[key])[..., int(i)])
    return out


def from_streams(x: np.ndarray, num_worlds: int, num_agents: int) -> np.ndarray:
    """[W·A, ...] -> [W, A, ...]; raises if the leading axis is not W·A."""
    x = np.asarray(x)
    if x.shape[:1] != (num_worlds * num_agents,):
        raise ValueError(f"team actions have leading shape {x.shape[:1]}, expected ({num_worlds * num_agents},) "
                         f"= {num_worlds} worlds x {num_agents} agents.")
    return x.reshape((num_worlds, num_agents) + x.shape[1:])


class TeamDriver:
    """Steps a team environment with a policy over its N = W·A streams (the `lwm.driver.Driver` interface).

    `policy(obs [N, ...], is_first [N]) -> (actions {head: [N, ...]}, extra)`; `on_step` receives every stream's
    observation (agent keys and `agent_id`), reward, is_first, is_last, is_terminal, the actions and `extra`.
    Finished episodes (one per world) carry the team return, the length in rounds and the env's metrics.
    """

    def __init__(self, env: Any, keys: Sequence[str], name: str = "env", mates: bool = False):
        """`mates`: every step handed to `on_step` also holds `mates` ({head: [N, A-1]}, `mates_of` the actions),
        which replay stores for a world model that takes the teammates' actions (`agent.team_model`)."""
        if not is_team_env(env):
            raise TypeError(f"TeamDriver needs a team environment (num_worlds, num_agents), got {env!r}.")
        self.env = env
        self.keys = list(keys)
        self.name = name
        self.mates = bool(mates)
        self.W, self.A = int(env.num_worlds), int(env.num_agents)
        self.num_streams = self.W * self.A
        self.spec, self.act_spec = team_specs(env)
        self.env_act_spec = env.action_spec()  # the world's own (joined) action spec
        self.agent_id = np.tile(np.arange(self.A, dtype=np.int32), self.W)
        self.current: dict | None = None
        self.returns = np.zeros(self.W)
        self.lengths = np.zeros(self.W, np.int64)
        self.episodes: list[dict] = []
        self.steps = 0  # agent-steps
        self.rounds = 0  # world-steps

    def _check(self, out: Mapping) -> None:
        obs = out.get("obs")
        if not isinstance(obs, Mapping):
            raise ObservationError(f"{self.name}: a team step must hold a dict 'obs', got {type(obs).__name__}.")
        for key, s in self.spec.items():
            if key == AGENT_ID or key.startswith("log_"):
                continue
            if key not in obs:
                raise ObservationError(f"{self.name}: observation lacks key {key!r} declared in its spec; "
                                       f"got {sorted(obs)}.")
            v = np.asarray(obs[key])
            want = (self.W, self.A) + tuple(s.shape)
            if v.shape != want or v.dtype != np.dtype(s.dtype):
                raise ObservationError(f"{self.name}: observation {key!r} has shape {v.shape} dtype {v.dtype}; "
                                       f"expected {want} {np.dtype(s.dtype)} (worlds, agents, *spec).")
        for key in ("reward", "is_first", "is_last", "is_terminal"):
            if np.shape(out.get(key)) != (self.W,):
                raise ObservationError(f"{self.name}: team step {key!r} has shape {np.shape(out.get(key))}, "
                                       f"expected ({self.W},).")

    def _set(self, out: Mapping) -> None:
        self._check(out)
        self.current = out

    def observe(self) -> dict:
        """The current step of every stream (resetting the worlds on the first call)."""
        if self.current is None:
            self._set(self.env.reset())
        out, a = self.current, self.A
        obs = {k: to_streams(out["obs"][k]) for k in self.keys if k != AGENT_ID}
        if AGENT_ID in self.keys:
            obs[AGENT_ID] = self.agent_id
        rep = lambda x, dtype: np.repeat(np.asarray(x, dtype), a)  # noqa: E731
        return {"obs": obs, "reward": rep(out["reward"], np.float32), "is_first": rep(out["is_first"], bool),
                "is_last": rep(out["is_last"], bool), "is_terminal": rep(out["is_terminal"], bool)}

    def step(self, policy: Callable, on_step: Callable[[dict], None] | None = None) -> None:
        """One round: every agent of every world acts, then all worlds advance."""
        observed = self.observe()
        guide = getattr(self.env, "guide_actions", None)
        forced = guide() if guide is not None else None
        guided = None
        if forced is not None:
            guided = np.asarray(forced["guided"], bool)
            heads = list(self.act_spec) if isinstance(self.act_spec, Mapping) else []
            force = {"mask": np.repeat(guided, self.A),
                     **split_actions({k: v for k, v in forced.items() if k != "guided"}, heads)}
            unguided = policy

            def policy(obs, is_first):  # the agent takes them in the policy step, so its carry sees them
                return unguided(obs, is_first, force=force)

        if self.mates:
            inner = policy

            def policy(obs, is_first):
                actions, extra = inner(obs, is_first)
                return actions, {**extra, "mates": mates_of(actions, self.W, self.A)}

        current, actions = act(observed, policy, on_step)
        out = self.current
        first, last = np.asarray(out["is_first"]), np.asarray(out["is_last"])
        reward = np.asarray(out["reward"], np.float64)
        self.returns = np.where(first, 0.0, self.returns + reward)
        self.lengths = np.where(first, 0, self.lengths + 1)
        metrics = out.get("metrics", {})
        for w in np.flatnonzero(last):
            self.episodes.append({"return": float(self.returns[w]), "length": int(self.lengths[w]),
                                  **{k: float(np.asarray(v)[w]) for k, v in metrics.items()},
                                  **({"guided": float(guided[w])} if guided is not None else {})})
        joined = join_actions({k: from_streams(v, self.W, self.A) for k, v in actions.items()}, self.env_act_spec)
        self._set(self.env.step(joined))
        self.steps += self.num_streams
        self.rounds += self.W

    def pop_episodes(self) -> list[dict]:
        out, self.episodes = self.episodes, []
        return out


def evaluate_team(agent: Any, params: Any, env: Any, episodes: int, seed: int, greedy: bool = False,
                  policy_fn: Callable | None = None) -> dict[str, float]:
    """Runs `episodes` team episodes (W worlds at a time) and returns the mean return, length (rounds) and the
    mean and std of every env metric (`<name>_mean`, `<name>_std`)."""
    from lwm.loop import _policy_fn  # late: the loop imports this module

    driver = TeamDriver(env, [k.name for k in agent.keys], name="eval")
    act = (policy_fn or _policy_fn)(agent, driver.num_streams, seed, greedy, lambda: params)
    done: list[dict] = []
    while len(done) < episodes:
        driver.step(act)
        done += driver.pop_episodes()
    done = done[:episodes]
    out = {"return_mean": float(np.mean([e["return"] for e in done])),
           "return_std": float(np.std([e["return"] for e in done])),
           "length_mean": float(np.mean([e["length"] for e in done])), "episodes": len(done)}
    for key in done[0]:
        if key not in ("return", "length"):
            values = np.array([e[key] for e in done])
            out[f"{key}_mean"], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out
