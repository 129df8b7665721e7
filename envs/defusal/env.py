"""Host-side ``dm_env`` adapter of the defusal world (one world, three agents acting together).

Conventions (leading agent axis, alpha / bravo / charlie = 0 / 1 / 2):

* Observation dict: ``vector`` float32 [3, D], ``action_mask`` bool [3, 9], ``tokens`` int32 [3, token_len].
* Action: ``{"move": int [3] in 0..8, "talk": int [3, message_len] in 0..len(MESSAGE_WORDS)}``; a plain integer
  array of shape [3] is accepted as ``move`` with silence. ``talk`` is ignored when ``silence=True``.
* Reward: the team reward (float). Termination (no bomb left) → discount 0; ``max_rounds`` → discount 1.
* ``log_text()`` returns the three agents' current text observations as strings (host only).

:class:`BatchedDefusal` (``envs.make_batched("defusal", W)``) steps W worlds as one jitted ``vmap`` for team
training (``lwm.team``): per-agent specs, numpy outputs with leading [W, A] axes, automatic restarts.
"""

from __future__ import annotations

import functools
from typing import Any

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from dm_env import specs

from envs.defusal import core, scripted

NAME = "defusal"
DEFAULTS: dict[str, Any] = {
    "num_rooms": 5,
    "num_bombs": 5,
    "random_graph": False,
    "start": "same",
    "tools_per_agent": 2,
    "tools_mix": 0.0,
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
        """The team's episode metrics so far (:func:`core.episode_metrics`: score, rounds to completion,
        valid-action %, explosions, messages sent, % of rounds together)."""
        return {k: float(v) for k, v in core.episode_metrics(self.state).items()}

    def __repr__(self) -> str:
        return f"DefusalEnv({self.params})"


def make_defusal(**options: Any) -> DefusalEnv:
    """Registry factory for ``defusal`` / ``defusal_small``."""
    return DefusalEnv(**options)


# ---------------------------------------------------------------------------------------------
# Batched worlds for team training
# ---------------------------------------------------------------------------------------------


def _batched_step(
    key: jax.Array, state: core.State, move: jax.Array, talk: jax.Array, params: core.Params
) -> tuple[dict[str, jax.Array], core.State, dict[str, jax.Array]]:
    """One round of W worlds (vmapped); a world whose previous round ended starts a new episode instead."""

    keys = jax.vmap(jax.random.split)(jax.random.split(key, move.shape[0]))  # [W, 2]: step, reset
    stepped, reward, _ = jax.vmap(lambda k, s, a, m: core.step_state(k, s, a, m, params))(
        keys[:, 0], state, move, talk)
    first = state.done
    new = core.reset_where(keys[:, 1], stepped, first, params)  # only the worlds that start over are reset
    out = {
        "reward": jnp.where(first, 0.0, reward),
        "is_first": first,
        "is_last": ~first & new.done,
        "is_terminal": ~first & new.terminated,
        **jax.vmap(core.episode_metrics)(new),
    }
    return jax.vmap(lambda s: core.observe(s, params))(new), new, out


def _batched_reset(key: jax.Array, num_worlds: int, params: core.Params) -> tuple[dict, core.State, dict]:
    obs, state = jax.vmap(lambda k: core.reset(k, params))(jax.random.split(key, num_worlds))
    false = jnp.zeros((num_worlds,), bool)
    out = {"reward": jnp.zeros((num_worlds,), jnp.float32), "is_first": ~false, "is_last": false,
           "is_terminal": false, **jax.vmap(core.episode_metrics)(state)}
    return obs, state, out


_batched_step_jit = jax.jit(_batched_step, static_argnames="params")
_batched_reset_jit = jax.jit(_batched_reset, static_argnames=("num_worlds", "params"))

# Scripted teams that can guide some of the training worlds (`BatchedDefusal.set_guide`); the pack teams need
# `scripted.check_pack_world`.
GUIDES: dict[str, scripted.Policy] = {**scripted.TEAMS, "pack": scripted.pack, "tour": scripted.pack_tour,
                                      "scouts": scripted.pack_scouts}
_PACK_GUIDES = ("pack", "tour", "scouts")


@functools.partial(jax.jit, static_argnames=("team", "params"))
def _guide_actions(key: jax.Array, state: core.State, team: str, params: core.Params) -> tuple[jax.Array, jax.Array]:
    keys = jax.random.split(key, state.round.shape[0])
    return jax.vmap(lambda k, s: GUIDES[team](k, s, params))(keys, state)


METRICS = core.METRICS


class BatchedDefusal:
    """``num_worlds`` defusal worlds stepped together on the device (one jitted ``vmap`` per round).

    The batched multi-agent interface that ``lwm.team.TeamDriver`` reads (duck typing; ``envs`` never imports the
    agent):

    * ``num_worlds`` W, ``num_agents`` A (3); ``observation_spec()`` / ``action_spec()`` describe *one agent*:
      ``vector`` float32 [D], ``action_mask`` bool [9], ``tokens`` int32 [token_len]; actions
      ``{"move": int in 0..8, "talk": int in 0..len(MESSAGE_WORDS)}`` (``talk`` has shape [message_len] when
      ``message_len > 1``, a scalar when 1). ``talk`` is ignored when ``silence=True``.
    * ``reset()`` and ``step(actions)`` return a dict: ``obs`` {key: numpy [W, A, ...]}, ``reward`` [W] (the team
      reward), ``is_first`` / ``is_last`` / ``is_terminal`` [W], and ``metrics`` {score, rounds, valid_pct,
      explosions, messages_sent} [W] (the episode's values so far; final where ``is_last``).
    * ``step`` takes ``move`` [W, A] and ``talk`` [W, A] (or [W, A, message_len]). A world whose last round
      ended (``is_last``) starts a new episode in the next ``step`` and ignores its actions there, as a dm_env
      driver resets a finished environment. Termination (no bomb left) and truncation (``max_rounds``) follow
      :class:`DefusalEnv`.
    * ``mask_tokens=True`` replaces every token with padding (the registry's no-language ablation).
    * ``set_guide(team, worlds)`` hands the first ``worlds`` worlds to a scripted team (``GUIDES``) for training:
      ``guide_actions()`` then gives, before each ``step``, that team's actions in the current state
      (``{"guided": bool [W], "move": [W, A], "talk": [W, A(, message_len)]}``, None without a guide), which the
      driver takes in those worlds instead of the agent's (``lwm.team.TeamDriver``), so replay holds them.
    """

    def __init__(self, num_worlds: int = 1, seed: int = 0, mask_tokens: bool = False, **switches: Any) -> None:
        if isinstance(num_worlds, bool) or not isinstance(num_worlds, int | np.integer) or num_worlds < 1:
            raise _fail("num_worlds", num_worlds, "an int >= 1")
        single = DefusalEnv(seed=seed, **switches)  # validates seed and switches
        self.params, self.vocab = single.params, single.vocab
        self.num_worlds, self.num_agents = int(num_worlds), self.params.num_agents
        self.mask_tokens = bool(mask_tokens)
        obs_spec, act_spec = single.observation_spec(), single.action_spec()
        self._obs_spec = {k: _drop_agent_axis(s) for k, s in obs_spec.items()}
        talk = act_spec["talk"]
        self._action_spec = {
            "move": specs.BoundedArray((), np.int32, 0, core.NUM_ACTIONS - 1, name="move"),
            "talk": specs.BoundedArray(() if self.params.message_len == 1 else talk.shape[1:], np.int32, 0,
                                       core.NUM_MESSAGE_IDS - 1, name="talk"),
        }
        self._key = jax.random.key(int(seed))
        self._counter = 0
        self._state: core.State | None = None
        self.guide, self.guided = "none", np.zeros(self.num_worlds, bool)

    def set_guide(self, team: str, worlds: int) -> None:
        """Worlds 0..``worlds``-1 are played by scripted ``team`` (a name in ``GUIDES``; "none" with 0 worlds: no
        guide). Raises ValueError for an unknown team, a world count outside 0..num_worlds, or a pack team in a
        world it cannot play."""
        if team != "none" and team not in GUIDES:
            raise _fail("guide", team, f"none or one of {', '.join(GUIDES)}")
        if isinstance(worlds, bool) or not isinstance(worlds, int | np.integer) or not 0 <= worlds <= self.num_worlds:
            raise _fail("guide_worlds", worlds, f"an int from 0 to num_worlds={self.num_worlds}")
        if (team == "none") != (worlds == 0):
            raise ValueError(f"{NAME}: guide {team!r} with guide_worlds={worlds}: a guide needs guide_worlds >= 1 "
                             "and guide_worlds > 0 needs a guide (none of them: guide none, guide_worlds 0)")
        if team in _PACK_GUIDES:
            scripted.check_pack_world(self.params)
        self.guide = team
        self.guided = np.arange(self.num_worlds) < int(worlds)

    def guide_actions(self) -> dict[str, np.ndarray] | None:
        """The guide team's actions in the current state of every world, with ``guided`` [W] marking the worlds
        that take them; None without a guide (see :meth:`set_guide`)."""
        if self.guide == "none":
            return None
        move, talk = _guide_actions(self._next_key(), self.state, team=self.guide, params=self.params)
        talk = np.asarray(talk).reshape((self.num_worlds, self.num_agents) + self._action_spec["talk"].shape)
        return {"guided": self.guided.copy(), "move": np.asarray(move), "talk": talk}

    def observation_spec(self) -> dict[str, specs.Array]:
        """Per-agent observation spec (no world or agent axis)."""
        return dict(self._obs_spec)

    def action_spec(self) -> dict[str, specs.BoundedArray]:
        """Per-agent action spec (no world or agent axis)."""
        return dict(self._action_spec)

    def _next_key(self) -> jax.Array:
        self._counter += 1
        return jax.random.fold_in(self._key, self._counter)

    def _out(self, obs: dict, out: dict) -> dict[str, Any]:
        obs = {k: np.asarray(v) for k, v in obs.items()}
        if self.mask_tokens:
            obs["tokens"] = np.zeros_like(obs["tokens"])
        out = {k: np.asarray(v) for k, v in out.items()}
        return {"obs": obs, **{k: out[k] for k in ("reward", "is_first", "is_last", "is_terminal")},
                "metrics": {k: out[k] for k in METRICS}}

    def reset(self) -> dict[str, Any]:
        """Starts a new episode in every world."""
        obs, self._state, out = _batched_reset_jit(self._next_key(), self.num_worlds, params=self.params)
        return self._out(obs, out)

    def step(self, actions: Any) -> dict[str, Any]:
        """One round in every world (resets worlds that have not started or whose episode ended)."""
        move, talk = self._validate(actions)
        if self._state is None:
            return self.reset()
        obs, self._state, out = _batched_step_jit(self._next_key(), self._state, move, talk, params=self.params)
        return self._out(obs, out)

    def _validate(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        w, a, m = self.num_worlds, self.num_agents, self.params.message_len
        if not isinstance(actions, dict) or "move" not in actions or set(actions) - {"move", "talk"}:
            got = sorted(actions) if isinstance(actions, dict) else type(actions).__name__
            raise ValueError(f"{NAME}: batched actions must be a dict with 'move' [W, A] and optional 'talk'; "
                             f"got {got}")

        def check(name: str, value: Any, shapes: tuple[tuple[int, ...], ...], high: int) -> np.ndarray:
            arr = np.asarray(value)
            if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
                raise ValueError(f"{NAME}: action {name!r} has dtype {arr.dtype}, expected integers")
            if arr.shape not in shapes:
                raise ValueError(f"{NAME}: action {name!r} has shape {arr.shape}, expected "
                                 f"{' or '.join(map(str, shapes))} (worlds, agents[, message_len])")
            bad = (arr < 0) | (arr > high)
            if np.any(bad):
                raise ValueError(f"{NAME}: action {name!r} value {arr[bad].tolist()[:8]} outside 0..{high}")
            return arr.astype(np.int32)

        move = check("move", actions["move"], ((w, a),), core.NUM_ACTIONS - 1)
        if "talk" not in actions:
            return move, np.zeros((w, a, m), np.int32)
        talk_shapes = ((w, a, m), (w, a)) if m == 1 else ((w, a, m),)
        talk = check("talk", actions["talk"], talk_shapes, core.NUM_MESSAGE_IDS - 1)
        return move, talk.reshape(w, a, m)

    @property
    def state(self) -> core.State:
        """The current batched core state (leading world axis; raises before the first reset)."""
        if self._state is None:
            raise RuntimeError(f"{NAME}: no episode has started; call reset() first")
        return self._state

    def close(self) -> None:
        """Nothing to release (kept for symmetry with dm_env)."""

    def __repr__(self) -> str:
        return f"BatchedDefusal(num_worlds={self.num_worlds}, {self.params})"


def _drop_agent_axis(spec: specs.Array) -> specs.Array:
    if isinstance(spec, specs.BoundedArray):
        return specs.BoundedArray(spec.shape[1:], spec.dtype, spec.minimum, spec.maximum, name=spec.name)
    return specs.Array(spec.shape[1:], spec.dtype, name=spec.name)


def make_defusal_batched(num_worlds: int = 1, **options: Any) -> BatchedDefusal:
    """Registry factory (``envs.make_batched``) for ``defusal`` / ``defusal_small``."""
    return BatchedDefusal(num_worlds=num_worlds, **options)
