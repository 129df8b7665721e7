"""Host-side ``dm_env`` adapter of the defusal world (one world, three agents acting together).

Conventions (leading agent axis, alpha / bravo / charlie = 0 / 1 / 2):

* Observation dict: ``vector`` float32 [3, D], ``action_mask`` bool [3, 9], ``tokens`` int32 [3, token_len].
* Action: ``{"move": int [3] in 0..8, "talk": int [3, message_len] in 0..len(MESSAGE_WORDS)}``; a plain integer
  array of shape [3] is accepted as ``move`` with silence. ``talk`` is ignored when ``silence=True``.
* Reward: the team reward (float). Termination (no bomb left) → discount 0; ``max_rounds`` → discount 1.
* ``log_text()`` returns the three agents' current text observations as strings (host only).
"""

from __future__ import annotations

from typing import Any

import dm_env
import jax
import numpy as np
from dm_env import specs

from envs.defusal import core

NAME = "defusal"
DEFAULTS: dict[str, Any] = {
    "num_rooms": 5,
    "num_bombs": 5,
    "random_graph": False,
    "start": "same",
    "tools_per_agent": 2,
    "wrong_cut": "noop",
    "teammates": "hidden",
    "max_rounds": 30,
    "shaping": False,
    "silence": False,
    "message_len": 4,
    "token_len": 64,
    "seed": 0,
}
SMALL_DEFAULTS: dict[str, Any] = {**DEFAULTS, "num_rooms": 2, "num_bombs": 1, "max_rounds": 10}
DESCRIPTION = (
    "Three agents (alpha, bravo, charlie) defuse 5 multi-phase bombs in a 5-room graph with coloured cutters; "
    "inspect reveals a sequence to the inspector only, so the team must talk (Li et al. 2023). Team score 0..90."
)
SMALL_DESCRIPTION = "Defusal world with 2 rooms and one 1-phase bomb: a quick learning check."

_reset = jax.jit(core.reset, static_argnames="params")
_step = jax.jit(core.step, static_argnames="params")


def _fail(what: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{NAME}: {what} {value!r} is not allowed; allowed: {allowed}")


class DefusalEnv(dm_env.Environment):
    """dm_env adapter over :mod:`envs.defusal.core` (jitted reset / step, numpy outputs)."""

    def __init__(self, seed: int = 0, **switches: Any) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise _fail("seed", seed, "an int >= 0")
        unknown = sorted(set(switches) - set(core.Params._fields) - {"num_agents"})
        if unknown:
            raise ValueError(f"{NAME}: unknown option(s) {unknown}; valid: {sorted(DEFAULTS)}")
        self.params = core.check_params(core.Params(**switches))
        self.vocab = core.vocabulary(self.params)
        p = self.params
        self._key = jax.random.key(int(seed))
        self._counter = 0
        a = p.num_agents
        self._obs_spec = {
            "vector": specs.Array((a, core.vector_size(p)), np.float32, name="vector"),
            "action_mask": specs.Array((a, core.NUM_ACTIONS), np.bool_, name="action_mask"),
            "tokens": specs.BoundedArray((a, p.token_len), np.int32, 0, len(self.vocab) - 1, name="tokens"),
        }
        self._action_spec = {
            "move": specs.BoundedArray((a,), np.int32, 0, core.NUM_ACTIONS - 1, name="move"),
            "talk": specs.BoundedArray((a, p.message_len), np.int32, 0, core.NUM_MESSAGE_IDS - 1, name="talk"),
        }
        self._state: core.State | None = None
        self._obs: dict[str, np.ndarray] | None = None

    # -- dm_env API --------------------------------------------------------------------------
    def observation_spec(self) -> dict[str, specs.Array]:
        return dict(self._obs_spec)

    def action_spec(self) -> dict[str, specs.BoundedArray]:
        return dict(self._action_spec)

    def _next_key(self) -> jax.Array:
        self._counter += 1
        return jax.random.fold_in(self._key, self._counter)

    def reset(self) -> dm_env.TimeStep:
        obs, self._state = _reset(self._next_key(), params=self.params)
        self._obs = jax.tree.map(np.asarray, obs)
        return dm_env.restart(self._obs)

    def step(self, action: Any) -> dm_env.TimeStep:
        move, talk = self._validate(action)
        if self._state is None or bool(self._state.done):
            return self.reset()
        obs, self._state, reward, done, info = _step(self._next_key(), self._state, move, talk, params=self.params)
        self._obs = jax.tree.map(np.asarray, obs)
        reward = float(reward)
        if bool(info["terminated"]):
            return dm_env.termination(reward, self._obs)
        if bool(done):
            return dm_env.truncation(reward, self._obs)
        return dm_env.transition(reward, self._obs)

    # -- validation ----------------------------------------------------------------------------
    def _array(self, name: str, value: Any, spec: specs.BoundedArray) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
            raise ValueError(f"{NAME}: action {name!r} has dtype {arr.dtype}, expected integers per {spec!r}")
        if arr.shape != spec.shape:
            raise ValueError(f"{NAME}: action {name!r} has shape {arr.shape}, expected {spec.shape} per {spec!r}")
        bad = (arr < spec.minimum) | (arr > spec.maximum)
        if np.any(bad):
            raise ValueError(
                f"{NAME}: action {name!r} value {arr[bad].tolist()} outside {spec.minimum}..{spec.maximum} per {spec!r}"
            )
        return arr.astype(np.int32)

    def _validate(self, action: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(action, dict):
            extra = sorted(set(action) - {"move", "talk"})
            if extra or "move" not in action:
                raise ValueError(
                    f"{NAME}: action dict keys {sorted(action)} invalid; expected 'move' and optional 'talk'"
                )
            move = self._array("move", action["move"], self._action_spec["move"])
            talk_spec = self._action_spec["talk"]
            talk = (
                self._array("talk", action["talk"], talk_spec)
                if "talk" in action
                else np.zeros(talk_spec.shape, np.int32)
            )
            return move, talk
        if isinstance(action, int | np.integer | bool):
            raise ValueError(
                f"{NAME}: action {action!r} is a scalar; expected one move per agent, shape "
                f"{self._action_spec['move'].shape}, or a dict {{'move', 'talk'}}"
            )
        move = self._array("move", action, self._action_spec["move"])
        return move, np.zeros(self._action_spec["talk"].shape, np.int32)

    # -- extras --------------------------------------------------------------------------------
    @property
    def state(self) -> core.State:
        """The current core state (raises before the first reset)."""
        if self._state is None:
            raise RuntimeError(f"{NAME}: no episode has started; call reset() first")
        return self._state

    def log_text(self) -> list[str]:
        """The agents' current text observations, decoded."""
        if self._obs is None:
            raise RuntimeError(f"{NAME}: no episode has started; call reset() first")
        return [self.vocab.decode(row) for row in self._obs["tokens"]]

    def metrics(self) -> dict[str, float]:
        """Team score, rounds to completion, valid-action %, explosions, messages sent (so far)."""
        s = self.state
        return {
            "score": float(s.score),
            "rounds": float(s.completed_round),
            "valid_pct": float(100.0 * s.valid_count.sum() / max(int(s.action_count.sum()), 1)),
            "explosions": float(s.explosions),
            "messages_sent": float(s.messages_sent),
        }

    def __repr__(self) -> str:
        return f"DefusalEnv({self.params})"


def make_defusal(**options: Any) -> DefusalEnv:
    """Registry factory for ``defusal`` / ``defusal_small``."""
    return DefusalEnv(**options)
