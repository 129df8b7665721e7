"""Open-loop and free imagination from real episodes: what the world model predicts, step by step.

From episodes collected with the agent's own policy (`collect_episodes`; `collect_team_episodes` for a team
environment, one stream per agent of every world), `Imagination.run` computes in one
jitted call per (episodes, padded length, context):

* **open loop** — the posterior observes the first K steps (`context`), then the prior alone imagines the
  rest of the episode from the *real* actions; predictions sit beside the true observations, so errors per
  horizon (steps after the context) measure how well the model dreams;
* **free imagination** — from the same last observed state the *actor* picks the actions inside the dream.

Per step: decoded predictions of every observation key (image means, token top-k with probabilities, the
argmax of every one-hot key such as a symbolic grid, vectors back in their own units), reward, continue
probability and critic value. Everything returned is numpy, ready for `lwm.visualize`.

Knows no particular environment: worlds come in as dm_env environments, a vocabulary as any object with
`word(id)` (or a list of words), renderers for symbolic grids as callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm import actor_critic as ac
from lwm import dists, parallel

TOP_K = 5


# ------------------------------------------------------------------------------------------------ episodes
def _env_action(act_spec: Any, actions: Mapping[str, np.ndarray], i: int) -> Any:
    if isinstance(act_spec, Mapping):
        return {k: int(v[i]) for k, v in actions.items()}
    return int(actions["action"][i])


def collect_episodes(agent, params, envs: Sequence[dm_env.Environment], seed: int = 0, greedy: bool = False,
                     max_steps: int = 500, capture: Callable[[dm_env.Environment], Any] | None = None
                     ) -> list[dict]:
    """Runs one episode in each of `envs` (in lock-step) with the agent's policy; at most `max_steps` steps each.

    Returns per episode: `obs` {key: [n, ...]} (every key, `log_*` included), `action` {head: [n]} (taken after
    observation t; the last one is never executed), `reward`, `discount`, `is_first`, `is_last`, `is_terminal`
    [n], `return`, `length` n and, with `capture(env)`, its value after every step in `extra` (e.g. a state
    for a drawing).
    """
    if not envs:
        raise ValueError("collect_episodes needs at least one environment.")
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1.")
    n = len(envs)
    act_spec = envs[0].action_spec()
    names = [k.name for k in agent.keys]
    carry = agent.init_policy(n)
    key = jax.random.key(seed)
    steps = [env.reset() for env in envs]
    records: list[list[dict]] = [[] for _ in envs]
    active = [True] * n
    for _ in range(max_steps):
        if not any(active):
            break
        obs = {k: np.stack([np.asarray(ts.observation[k]) for ts in steps]) for k in names}
        is_first = np.array([ts.first() for ts in steps])
        key, sub = jax.random.split(key)
        carry, actions, _ = agent.policy(params, carry, obs, is_first, sub, greedy=greedy)
        actions = {k: np.asarray(v) for k, v in jax.device_get(actions).items()}
        for i, ts in enumerate(steps):
            if not active[i]:
                continue
            rec = {
                "obs": {k: np.asarray(v) for k, v in ts.observation.items()},
                "action": {k: v[i] for k, v in actions.items()},
                "reward": 0.0 if ts.first() else float(ts.reward),
                "discount": 1.0 if ts.first() else float(ts.discount),
                "is_first": ts.first(), "is_last": ts.last(),
                "is_terminal": ts.last() and float(ts.discount) == 0.0,
            }
            if capture is not None:
                rec["extra"] = capture(envs[i])
            records[i].append(rec)
            if ts.last():
                active[i] = False
            else:
                steps[i] = envs[i].step(_env_action(act_spec, actions, i))
    return [_stack(r) for r in records]


def collect_team_episodes(agent, params, env: Any, seed: int = 0, greedy: bool = False, max_steps: int = 500,
                          capture: Callable[[Any], Sequence[Any]] | None = None) -> list[dict]:
    """Plays the first episode of every world of a team environment (`lwm.team`: W worlds x A agents) with the
    shared-parameter agent, as `TeamDriver` trains it: N = W·A streams (row w·A + a), each with its own RSSM
    carry and its `agent_id`; at most `max_steps` rounds.

    Returns N episodes in `collect_episodes`' layout (the team reward in every stream of a world; `obs` holds
    `agent_id`), each with `world` w and `agent` a; with `capture(env)` (one value per world, read before the
    round's actions are applied) its world's value after every step in `extra` (e.g. a drawing of the state).
    """
    from lwm.team import TeamDriver, is_team_env, team_specs

    if not is_team_env(env):
        raise TypeError(f"collect_team_episodes needs a team environment (num_worlds, num_agents), got {env!r}.")
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1.")
    spec, _ = team_specs(env)
    driver = TeamDriver(env, list(spec), name="visualize", mates=agent.mates > 0)
    W, A, N = driver.W, driver.A, driver.num_streams
    wanted = [k.name for k in agent.keys] + ([agent.mask[0]] if agent.mask is not None else [])
    state = {"carry": agent.init_policy(N), "key": jax.random.key(seed)}

    def policy(obs, is_first):
        state["key"], sub = jax.random.split(state["key"])
        inputs = {k: obs[k] for k in dict.fromkeys(wanted)}
        state["carry"], actions, _ = agent.policy(params, state["carry"], inputs, is_first, sub, greedy=greedy)
        return jax.device_get(actions), {}

    records: list[list[dict]] = [[] for _ in range(N)]
    active = np.ones(W, bool)

    def record(step: dict) -> None:
        extra = capture(env) if capture is not None else None
        for w in np.flatnonzero(active):
            for a in range(A):
                n = w * A + a
                terminal = bool(step["is_terminal"][n])
                rec = {"obs": {k: np.asarray(v[n]) for k, v in step["obs"].items()},
                       "action": {k: np.asarray(v[n]) for k, v in step["action"].items()},
                       "reward": 0.0 if step["is_first"][n] else float(step["reward"][n]),
                       "discount": 0.0 if terminal else 1.0, "is_first": bool(step["is_first"][n]),
                       "is_last": bool(step["is_last"][n]), "is_terminal": terminal}
                if extra is not None:
                    rec["extra"] = extra[w]
                if "mates" in step:  # the teammates' actions (agent.team_model)
                    rec["mates"] = {k: np.asarray(v[n]) for k, v in step["mates"].items()}
                records[n].append(rec)
        active[np.asarray(step["is_last"][::A], bool)] = False

    for _ in range(max_steps):
        driver.step(policy, record)
        if not active.any():
            break
    episodes = []
    for n, steps in enumerate(records):
        ep = _stack(steps)
        ep["world"], ep["agent"] = n // A, n % A
        episodes.append(ep)
    return episodes


def _stack(steps: list[dict]) -> dict:
    obs = {k: np.stack([s["obs"][k] for s in steps]) for k in steps[0]["obs"]}
    out = {
        "obs": obs,
        "action": {k: np.stack([s["action"][k] for s in steps]) for k in steps[0]["action"]},
        "length": len(steps),
        "return": float(sum(s["reward"] for s in steps)),
    }
    for name, dtype in (("reward", np.float32), ("discount", np.float32), ("is_first", bool), ("is_last", bool),
                        ("is_terminal", bool)):
        out[name] = np.array([s[name] for s in steps], dtype)
    if "extra" in steps[0]:
        out["extra"] = [s["extra"] for s in steps]
    if "mates" in steps[0]:
        out["mates"] = {k: np.stack([s["mates"][k] for s in steps]) for k in steps[0]["mates"]}
    return out


def pad_batch(agent, episodes: Sequence[Mapping], length: int) -> dict:
    """The episodes as one report batch [N, length] (cut or padded by repeating the last step; masks aside)."""
    B = len(episodes)
    obs = {}
    for k in agent.keys:
        rows = []
        for ep in episodes:
            x = np.asarray(ep["obs"][k.name])[:length]
            if len(x) < length:
                x = np.concatenate([x, np.repeat(x[-1:], length - len(x), 0)])
            rows.append(x)
        obs[k.name] = np.stack(rows)

    def seq(name: str, dtype) -> np.ndarray:
        out = np.zeros((B, length), dtype)
        for i, ep in enumerate(episodes):
            x = np.asarray(ep[name])[:length]
            out[i, :len(x)] = x
        return out

    action = {}
    for h in agent.heads:
        a = np.full((B, length), h.low, np.int32)
        for i, ep in enumerate(episodes):
            x = np.asarray(ep["action"][h.name])[:length]
            a[i, :len(x)] = x
        action[h.name] = a
    r = agent.config.agent.rssm
    batch = {
        "obs": obs, "action": action, "reward": seq("reward", np.float32),
        "is_first": seq("is_first", bool), "is_terminal": seq("is_terminal", bool),
        "start": {"deter": np.zeros((B, r.deter), np.float32), "stoch": np.zeros((B, r.stoch, r.classes), np.float32)},
        "start_action": {h.name: np.full((B,), h.low, np.int32) for h in agent.heads},
    }
    if agent.mates:  # the teammates' actions, padded like the own ones
        if any("mates" not in ep for ep in episodes):
            raise ValueError("agent.team_model: the episodes hold no teammates' actions ('mates'); collect them with "
                             "collect_team_episodes.")
        mates = {}
        for h in agent.heads:
            m = np.full((B, length, agent.mates), h.low, np.int32)
            for i, ep in enumerate(episodes):
                x = np.asarray(ep["mates"][h.name])[:length]
                m[i, :len(x)] = x
            mates[h.name] = m
        batch["mates"] = mates
        batch["start_mates"] = {h.name: np.full((B, agent.mates), h.low, np.int32) for h in agent.heads}
    return batch


def default_context(length: int) -> int:
    """Observed steps when none are given: a quarter of the episode, between 1 and 5."""
    return max(1, min(5, length // 4))


# ------------------------------------------------------------------------------------------- the rollouts
class Imagination:
    """Open-loop and free-imagination rollouts of one agent; one compile per (N, padded length, context)."""

    def __init__(self, agent, top_k: int = TOP_K):
        self.agent = agent
        self.top_k = top_k
        self.traces = 0
        self._fn = jax.jit(self._rollouts, static_argnames=("context",))

    def _compact(self, pred: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Predictions in display form: images in [0, 1], token top-k, one-hot argmax, vectors unsquashed."""
        out = {}
        for k in self.agent.keys:
            p = pred[k.name].astype(jnp.float32)
            if k.kind == "image":
                out[k.name] = jnp.clip(p, 0.0, 1.0)
            elif k.kind == "tokens":
                probs, ids = jax.lax.top_k(jax.nn.softmax(p, -1), min(self.top_k, k.classes))
                out[k.name] = ids.astype(jnp.int32)  # [..., L, k]: column 0 is the argmax
                out[k.name + "/prob"] = probs
            elif k.kind == "onehot":
                out[k.name] = jnp.argmax(p, -1).astype(jnp.int32) + k.low
                out[k.name + "/prob"] = jnp.max(jax.nn.softmax(p, -1), -1)
            else:
                out[k.name] = p  # symlog space (errors are measured there, as in training)
                out[k.name + "/value"] = dists.symexp(p)
        return out

    def _rollouts(self, params, batch, key, context: int):
        self.traces += 1
        agent = self.agent
        k_open, k_dream = jax.random.split(key)
        rep = agent._report(params, batch, k_open, context)
        nets = nnx.merge(agent.graph, params)
        wm = nets.wm
        T = batch["reward"].shape[1]
        open_loop = {"pred": self._compact(rep["pred"]), "reward": rep["reward"], "cont": rep["cont"],
                     "value": rep["value"]}
        start = jax.tree.map(lambda x: x[:, context - 1], rep["state"])

        def policy(state, k):
            k_own, k_mates = jax.random.split(k) if agent.mates else (k, k)
            feat = wm.rssm.feat(state)
            logits = agent.dream_logits(nets.actor, wm, feat)  # masked as in training's imagination
            own = ac.onehot_actions(agent.heads, ac.sample_actions(agent.heads, logits, k_own))
            return agent.joint_action(nets, feat, own, k_mates)  # teammates drawn with agent.team_model

        states, actions = wm.rssm.imagine(start, policy, T - context, k_dream)  # [N, H+1]
        feat = wm.rssm.feat(states)[:, 1:]
        idx = ac.split_onehot(agent.heads, actions[:, :-1])  # the action that led to dream step j
        dream = {"pred": self._compact(wm.decoder.predict(feat)), "reward": wm.reward_mean(feat),
                 "cont": wm.cont_prob(feat), "value": nets.critic.mean(feat),
                 "action": {h.name: idx[h.name].astype(jnp.int32) + h.low for h in agent.heads}}
        return {"open": open_loop, "dream": dream}

    def run(self, params, episodes: Sequence[Mapping], context: int | None = None, seed: int = 0,
            pad_multiple: int = 8) -> dict:
        """Rollouts of `episodes` (from `collect_episodes`); returns numpy results and per-horizon errors.

        `context` K: steps observed by the posterior (default `default_context` of the longest episode); it must
        leave at least one step to imagine. The batch length is the longest episode rounded up to
        `pad_multiple` (fewer recompiles); padded steps are masked out of every error.
        """
        if not episodes:
            raise ValueError("No episodes to imagine: collect at least one.")
        longest = max(int(ep["length"]) for ep in episodes)
        if longest < 2:
            raise ValueError(f"The longest episode has {longest} step; open-loop prediction needs at least 2.")
        if context is None:
            context = default_context(longest)
        if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context < longest:
            raise ValueError(f"context={context!r} must be an int in 1..{longest - 1} (observed steps; the longest "
                             f"episode has {longest} steps and at least one must be imagined).")
        length = int(math.ceil(longest / pad_multiple) * pad_multiple)
        batch = pad_batch(self.agent, episodes, length)
        if self.agent.mesh is not None:
            params = parallel.local_view(params)
        out = jax.device_get(self._fn(params, batch, jax.random.key(seed), context=context))
        out = jax.tree.map(np.asarray, out)
        result = {"context": context, "length": length, "keys": [_key_info(k) for k in self.agent.keys],
                  "heads": [{"name": h.name, "num": h.num, "low": h.low} for h in self.agent.heads],
                  "episodes": []}
        for i, ep in enumerate(episodes):
            n = min(int(ep["length"]), length)
            item = dict(ep)
            item["length"] = n
            item["open"] = _row(out["open"], i, 0, n)
            item["dream"] = _row(out["dream"], i, 0, n - context)  # dream step j is time context + j
            result["episodes"].append(item)
        result["horizon"], result["observed"] = horizon_errors(self.agent.keys, episodes, out["open"], context,
                                                               length)
        return result


def _key_info(k) -> dict:
    return {"name": k.name, "kind": k.kind, "shape": list(k.shape), "classes": k.classes, "low": k.low}


def _row(tree: Any, i: int, start: int, stop: int) -> Any:
    return jax.tree.map(lambda x: np.asarray(x[i, start:stop]), tree)


def _step_errors(keys, obs: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-step error [n] of every key: image/vector MSE, token/one-hot accuracy."""
    out = {}
    for k in keys:
        x, p = np.asarray(obs[k.name]), np.asarray(pred[k.name])
        axes = tuple(range(1, x.ndim))
        if k.kind == "image":
            out[f"{k.name}_mse"] = np.square(p - x.astype(np.float32) / 255.0).mean(axes)
        elif k.kind == "tokens":
            hit = p[..., 0] == x
            out[f"{k.name}_acc"] = hit.mean(axes) if axes else hit.astype(np.float32)
        elif k.kind == "onehot":
            hit = p == x
            out[f"{k.name}_acc"] = hit.mean(axes) if axes else hit.astype(np.float32)
        else:
            sym = np.sign(x.astype(np.float32)) * np.log1p(np.abs(x.astype(np.float32)))
            err = np.square(p - sym)
            out[f"{k.name}_mse"] = err.mean(axes) if axes else err
    return out


def horizon_errors(keys, episodes: Sequence[Mapping], open_out: Mapping, context: int, length: int
                   ) -> tuple[dict[str, list], dict[str, float]]:
    """Open-loop errors by horizon h = 1.. (h = t - context + 1), averaged over the episodes that reach it.

    Returns ({'h': [...], 'count': [...], metric: [...]}, {metric: mean over the observed steps}) with metrics
    `<key>_mse` / `<key>_acc` and `reward_abs` (|predicted - true reward|).
    """
    H = length - context
    sums: dict[str, np.ndarray] = {}
    count = np.zeros(H, np.int64)
    seen: dict[str, list[float]] = {}
    for i, ep in enumerate(episodes):
        n = min(int(ep["length"]), length)
        obs = {k.name: np.asarray(ep["obs"][k.name])[:n] for k in keys}
        pred = {k.name: np.asarray(open_out["pred"][k.name][i, :n]) for k in keys}
        errs = _step_errors(keys, obs, pred)
        errs["reward_abs"] = np.abs(np.asarray(open_out["reward"][i, :n]) - np.asarray(ep["reward"])[:n])
        m = n - context
        if m > 0:
            count[:m] += 1
        for name, e in errs.items():
            sums.setdefault(name, np.zeros(H))
            if m > 0:
                sums[name][:m] += e[context:n]
            seen.setdefault(name, []).extend(e[:min(context, n)].tolist())
    last = int(np.max(np.nonzero(count)[0])) + 1 if count.any() else 0
    table: dict[str, list] = {"h": list(range(1, last + 1)), "count": count[:last].tolist()}
    for name, s in sums.items():
        table[name] = (s[:last] / np.maximum(count[:last], 1)).tolist()
    observed = {name: float(np.mean(v)) if v else float("nan") for name, v in seen.items()}
    return table, observed


def format_horizon_table(table: Mapping[str, list], observed: Mapping[str, float] | None = None,
                         max_rows: int = 20) -> str:
    """The per-horizon errors as aligned text (rows: horizons; every row after `max_rows` is summarised)."""
    metrics = [k for k in table if k not in ("h", "count")]
    head = ["h", "n"] + metrics
    rows = []
    if observed:
        rows.append(["obs", "-"] + [f"{observed.get(m, float('nan')):.4f}" for m in metrics])
    for j, h in enumerate(table["h"]):
        if j >= max_rows:
            rows.append([f"{h}..{table['h'][-1]}", "..."] + [f"{np.mean(table[m][j:]):.4f}" for m in metrics])
            break
        rows.append([str(h), str(table["count"][j])] + [f"{table[m][j]:.4f}" for m in metrics])
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in [head] + rows)
