"""``tokenchoice``: a minimal world that cannot be solved without reading the language tokens.

Episode timeline (``delay = D``; the agent makes ``D + 1`` decisions, the last one is the choice)::

    t = 0      reset() -> FIRST   phase "listen"  tokens = [id(target colour), <pad>, ...]
    t = 1..D-1 step(a)  -> MID    phase "wait"    tokens = all <pad>   (action ignored)
    t = D      step(a)  -> MID    phase "choose"  tokens = all <pad>   (action ignored)
               step(k)  -> LAST   reward 1.0 if k == target else 0.0, discount 0.0

Example with ``delay=2``: reset -> listen(word); step(a0) -> wait; step(a1) -> choose;
step(a2 = choice) -> LAST with the reward. Non-final steps have reward 0.0 and discount 1.0.
Ignored actions are still validated. ``step()`` on a fresh env or after LAST resets (dm_env convention).

Observations (dict):

* ``vector``  float32 [4]: one-hot phase (listen, wait, choose) followed by ``t / delay``. The LAST
  observation has an all-zero phase and time 1.0.
* ``tokens``  int32 [token_len], bounded to the vocabulary; the word sits at position 0.
* ``image``   uint8 [16, 16, 3] (only if ``image=True``): a grey bar per phase, a progress line and,
  at the choice step, ``num_choices`` identical doors. It never depends on the target.

Optimal return is 1.0; a policy that ignores the tokens gets ``1 / num_choices`` in expectation.
"""

from __future__ import annotations

from typing import Any

import dm_env
import numpy as np
from dm_env import specs

from envs.text import Vocabulary

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
EXTRA_WORDS: tuple[str, ...] = ("pick", "the", "door")
PHASES: tuple[str, ...] = ("listen", "wait", "choose")
IMAGE_SHAPE: tuple[int, int, int] = (16, 16, 3)
NAME = "tokenchoice"
DEFAULTS: dict[str, Any] = {"num_choices": 4, "delay": 2, "seed": 0, "token_len": 1, "image": False}
DESCRIPTION = (
    "Hear a colour word at step 0, wait `delay - 1` steps with silent tokens, then pick the matching "
    "choice out of `num_choices`. Reward 1 for the right choice; unsolvable without the tokens."
)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{NAME}: {name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{NAME}: {name}={value} is out of range; allowed: {allowed}")
    return value


def _render(phase: int | None, t: int, delay: int, num_choices: int) -> np.ndarray:
    """Renders the target-independent image for phase ``phase`` (None = terminal) at step ``t``."""
    img = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    if phase is not None:
        top = 1 + 5 * phase
        img[top : top + 4, 1:15] = 90
        if phase == 2:
            slot = IMAGE_SHAPE[1] // num_choices
            width = max(1, slot // 2)
            for k in range(num_choices):
                left = k * slot + (slot - width) // 2
                img[top : top + 4, left : left + width] = 220
    progress = 16 if phase is None else round(16 * t / delay)
    img[15, :progress] = 255
    return img


class TokenChoiceEnv(dm_env.Environment):
    """Remember the colour word heard at step 0 and pick that choice after ``delay`` steps."""

    def __init__(
        self,
        num_choices: int = 4,
        delay: int = 2,
        seed: int = 0,
        token_len: int = 1,
        image: bool = False,
    ) -> None:
        self._num_choices = _check_int("num_choices", num_choices, 2, len(COLOURS))
        self._delay = _check_int("delay", delay, 1)
        self._token_len = _check_int("token_len", token_len, 1)
        seed = _check_int("seed", seed, 0)
        if not isinstance(image, bool | np.bool_):
            raise TypeError(f"{NAME}: image must be a bool, got {image!r} ({type(image).__name__})")
        self._image = bool(image)
        self._rng = np.random.default_rng(seed)
        self.vocab = Vocabulary(EXTRA_WORDS + COLOURS)
        self._target_ids = np.array([self.vocab.id(c) for c in COLOURS[: self._num_choices]], dtype=np.int32)

        self._action_spec = specs.DiscreteArray(num_values=self._num_choices, dtype=np.int32, name="action")
        obs_spec: dict[str, specs.Array] = {
            "vector": specs.Array(shape=(len(PHASES) + 1,), dtype=np.float32, name="vector"),
            "tokens": specs.BoundedArray(
                shape=(self._token_len,),
                dtype=np.int32,
                minimum=0,
                maximum=len(self.vocab) - 1,
                name="tokens",
            ),
        }
        if self._image:
            obs_spec["image"] = specs.BoundedArray(
                shape=IMAGE_SHAPE, dtype=np.uint8, minimum=0, maximum=255, name="image"
            )
        self._obs_spec = obs_spec
        n, d = self._num_choices, self._delay
        self._images = [_render(self._phase_of(t), t, d, n) for t in range(d + 1)]
        self._terminal_image = _render(None, d, d, n)

        self._t = 0
        self._target: int | None = None
        self._needs_reset = True

    # -- rules -------------------------------------------------------------------------------
    @property
    def num_choices(self) -> int:
        return self._num_choices

    @property
    def delay(self) -> int:
        return self._delay

    @property
    def optimal_return(self) -> float:
        """Return of a policy that heard the word: always 1.0."""
        return 1.0

    @property
    def chance_return(self) -> float:
        """Expected return of a policy that ignores the tokens: ``1 / num_choices``."""
        return 1.0 / self._num_choices

    @property
    def target(self) -> int:
        """Index of the current episode's correct choice."""
        if self._target is None:
            raise RuntimeError(f"{NAME}: no episode has started; call reset() first")
        return self._target

    @property
    def phase(self) -> str:
        """Current phase name: 'listen', 'wait', 'choose' or 'done' (after LAST / before reset)."""
        if self._needs_reset:
            return "done"
        return PHASES[self._phase_of(self._t)]

    def oracle_action(self) -> int:
        """Action of an oracle that heard the word: the target index (optimal at every step)."""
        return self.target

    def _phase_of(self, t: int) -> int:
        return 0 if t == 0 else (2 if t == self._delay else 1)

    # -- dm_env API --------------------------------------------------------------------------
    def observation_spec(self) -> dict[str, specs.Array]:
        return dict(self._obs_spec)

    def action_spec(self) -> specs.DiscreteArray:
        return self._action_spec

    def reset(self) -> dm_env.TimeStep:
        self._target = int(self._rng.integers(self._num_choices))
        self._t = 0
        self._needs_reset = False
        return dm_env.restart(self._observation())

    def step(self, action: Any) -> dm_env.TimeStep:
        choice = self._validate_action(action)
        if self._needs_reset:
            return self.reset()
        if self._t < self._delay:
            self._t += 1
            return dm_env.transition(reward=0.0, observation=self._observation(), discount=1.0)
        self._needs_reset = True
        reward = 1.0 if choice == self._target else 0.0
        return dm_env.termination(reward=reward, observation=self._observation(terminal=True))

    def _validate_action(self, action: Any) -> int:
        spec = self._action_spec
        where = f"{spec!r} for {NAME!r}"
        if isinstance(action, bool | np.bool_):
            raise ValueError(f"action {action!r} is a bool, not an integer in {where}")
        if isinstance(action, int | np.integer):
            value = int(action)
        elif hasattr(action, "shape") and hasattr(action, "dtype"):
            arr = np.asarray(action)
            if arr.shape != ():
                raise ValueError(f"action {action!r} has shape {arr.shape}, expected a scalar per {where}")
            if arr.dtype.kind not in "iu":
                raise ValueError(f"action {action!r} has dtype {arr.dtype}, expected an integer per {where}")
            value = int(arr)
        else:
            raise ValueError(
                f"action {action!r} ({type(action).__name__}) is not an integer scalar per {where}"
            )
        if not 0 <= value < spec.num_values:
            raise ValueError(f"action {value} is outside {where}")
        return value

    def _observation(self, terminal: bool = False) -> dict[str, np.ndarray]:
        vector = np.zeros(len(PHASES) + 1, dtype=np.float32)
        tokens = np.zeros(self._token_len, dtype=np.int32)
        if terminal:
            vector[-1] = 1.0
        else:
            vector[self._phase_of(self._t)] = 1.0
            vector[-1] = self._t / self._delay
            if self._t == 0:
                tokens[0] = self._target_ids[self._target]
        obs = {"vector": vector, "tokens": tokens}
        if self._image:
            obs["image"] = (self._terminal_image if terminal else self._images[self._t]).copy()
        return obs

    def __repr__(self) -> str:
        return (
            f"TokenChoiceEnv(num_choices={self._num_choices}, delay={self._delay}, "
            f"token_len={self._token_len}, image={self._image})"
        )


def make_tokenchoice(**options: Any) -> TokenChoiceEnv:
    """Registry factory for ``tokenchoice``."""
    return TokenChoiceEnv(**options)
