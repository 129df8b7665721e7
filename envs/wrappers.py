"""dm_env wrappers used by the registry."""

from __future__ import annotations

from typing import Any

import dm_env
import numpy as np


class Wrapper(dm_env.Environment):
    """Base wrapper: forwards every call, spec and unknown attribute to the wrapped environment."""

    def __init__(self, env: dm_env.Environment) -> None:
        if not isinstance(env, dm_env.Environment):
            raise TypeError(f"{type(self).__name__} wraps a dm_env.Environment, got {type(env).__name__}")
        self._env = env

    @property
    def env(self) -> dm_env.Environment:
        """The wrapped environment."""
        return self._env

    @property
    def unwrapped(self) -> dm_env.Environment:
        """The innermost (non-wrapper) environment."""
        env = self._env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def reset(self) -> dm_env.TimeStep:
        return self._env.reset()

    def step(self, action: Any) -> dm_env.TimeStep:
        return self._env.step(action)

    def observation_spec(self) -> Any:
        return self._env.observation_spec()

    def action_spec(self) -> Any:
        return self._env.action_spec()

    def reward_spec(self) -> Any:
        return self._env.reward_spec()

    def discount_spec(self) -> Any:
        return self._env.discount_spec()

    def close(self) -> None:
        self._env.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails. Guard against recursion before __init__ ran.
        if name.startswith("__"):
            raise AttributeError(name)
        env = self.__dict__.get("_env")
        if env is None:
            raise AttributeError(name)
        return getattr(env, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._env!r})"


class MaskTokens(Wrapper):
    """Language ablation: every ``tokens`` observation is replaced by zeros (all ``<pad>``).

    Specs (shape, dtype, bounds) are unchanged, so an agent built for the unmasked world runs as-is.
    """

    def __init__(self, env: dm_env.Environment, key: str = "tokens") -> None:
        super().__init__(env)
        spec = env.observation_spec()
        if not isinstance(spec, dict) or key not in spec:
            keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
            raise ValueError(f"MaskTokens needs a dict observation with a {key!r} entry; got {keys}")
        self._key = key

    def _mask(self, timestep: dm_env.TimeStep) -> dm_env.TimeStep:
        obs = dict(timestep.observation)
        obs[self._key] = np.zeros_like(obs[self._key])
        return timestep._replace(observation=obs)

    def reset(self) -> dm_env.TimeStep:
        return self._mask(self._env.reset())

    def step(self, action: Any) -> dm_env.TimeStep:
        return self._mask(self._env.step(action))
