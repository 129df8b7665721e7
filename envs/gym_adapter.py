"""gymnasium → dm_env adapter for minigrid / BabyAI worlds, with HomeGrid-style token streaming.

Registered world: ``minigrid`` with option ``id`` (any ``MiniGrid-*`` or ``BabyAI-*`` gymnasium id,
default ``BabyAI-GoToLocal-v0``), e.g. ``envs.make("minigrid", id="BabyAI-PickupLoc-v0", obs="symbolic")``.

Episode ends: ``terminated`` → LAST with discount 0.0 (termination wins when both are set);
``truncated`` → LAST with discount 1.0. ``step()`` on a fresh env or after LAST resets.

Observation dict:

* ``image``  uint8 [S, S, 3] egocentric RGB of the 7×7 view (``obs="rgb"``; S = ``image_size``), drawn
  from minigrid's own tiles and resized with numpy (nearest neighbour); the agent is the red triangle
  at the bottom centre, pointing up. Or ``grid`` int32 [7, 7, 3] (``obs="symbolic"``): minigrid's
  (object, colour, state) codes, row-major (row = distance ahead, last row = the agent's row).
* ``direction``  int32 scalar in 0..3 (minigrid's compass direction).
* ``carrying``  int32 [2]: minigrid's (object, colour) codes of the object the agent holds; (0, 0) when it
  holds nothing (minigrid's view never shows the held object).
* ``tokens``  int32 [token_len]: the language of this step (see :mod:`envs.stream`); for plain minigrid
  worlds the mission is the task, repeated every ``repeat_every`` steps.
* ``is_read_step``  bool scalar: True while pre-read hints are streamed; the world is then frozen and
  the action taken on such an observation is validated but ignored (no reward, no env step).
* ``log_text``  object scalar: the sentence being said (for logging only).

The vocabulary is closed: the words of the BabyAI mission grammar (enumerated from minigrid's colour
and object lists) plus every word the wrapped env's mission space can produce (enumerated from its
placeholders) plus, for hinted worlds, the words the world declares via ``language_words()``.

A wrapped env may optionally implement the hinted-world protocol (see :mod:`envs.hinted_grid`):
``language_words()``, ``utterances()`` → ``[(kind, sentence)]`` with kind ``"task"`` or ``"event"``,
``preread_sentences()``, ``idle_sentences()`` → ``(corrections, descriptions)`` (sequences; asked for only on the
steps where the stream could say one), ``oracle_action()``.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable
from typing import Any

import dm_env
import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* and BabyAI-* ids)
import numpy as np
from dm_env import specs
from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.world_object import WorldObj

from envs.stream import TokenStream
from envs.text import Vocabulary, normalise

NAME = "minigrid"
_MID = dm_env.StepType.MID
_INT32, _BOOL, _OBJECT = np.dtype(np.int32), np.dtype(np.bool_), np.dtype(np.object_)
DEFAULTS: dict[str, Any] = {
    "id": "BabyAI-GoToLocal-v0",
    "obs": "rgb",
    "image_size": 64,
    "token_len": 1,
    "seed": 0,
    "max_steps": 0,
    "repeat_every": 20,
}
DESCRIPTION = (
    "Any minigrid/BabyAI gymnasium id (option `id`) as a dm_env world: egocentric RGB or symbolic 7x7 view, "
    "direction, and the mission streamed as tokens (one word per step, repeated every 20 steps)."
)
OBS_KINDS = ("rgb", "symbolic")
VIEW = 7
_N_CODES = len(OBJECT_TO_IDX) * len(COLOR_TO_IDX) * 3
OBJECT_NAMES = ("door", "key", "ball", "box")
BABYAI_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        normalise(
            "go to pick up open put next to and then after you a the object in front of you behind you "
            "on your left right"
        )
        + list(COLOR_NAMES)
        + list(OBJECT_NAMES)
    )
)


# ---------------------------------------------------------------------------------------------
# Helpers shared with the hinted worlds
# ---------------------------------------------------------------------------------------------


def minigrid_ids() -> list[str]:
    """Every registered gymnasium id of minigrid (``MiniGrid-*``) and BabyAI (``BabyAI-*``)."""
    return sorted(k for k in gym.registry if k.startswith(("MiniGrid-", "BabyAI-")))


def check_choice(world: str, option: str, value: Any, choices: Iterable[Any]) -> Any:
    """Raises a ``ValueError`` listing ``choices`` unless ``value`` is one of them."""
    choices = list(choices)
    if value not in choices:
        match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ValueError(f"{world}: {option}={value!r} is not valid{hint}; valid: {', '.join(map(str, choices))}")
    return value


def check_int(world: str, option: str, value: Any, low: int, high: int | None = None) -> int:
    """Raises a ``ValueError`` naming the allowed range unless ``low <= value <= high``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{world}: {option} must be an int, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{world}: {option}={int(value)} is out of range; allowed: {allowed}")
    return int(value)


_INTEGERS = (int, np.integer)


def validate_action(action: Any, spec: specs.DiscreteArray, world: str) -> int:
    """Returns ``action`` as an int or raises a ``ValueError`` naming ``spec`` and ``world``."""
    if isinstance(action, _INTEGERS) and not isinstance(action, bool):  # the common case, kept cheap
        value = int(action)
        if 0 <= value < spec.num_values:
            return value
    where = f"{spec!r} for {world!r}"  # only built for errors and array-like actions: repr(spec) is slow
    if isinstance(action, bool | np.bool_):
        raise ValueError(f"action {action!r} is a bool, not an integer in {where}")
    if isinstance(action, int | np.integer):
        value = int(action)
    elif hasattr(action, "shape") and hasattr(action, "dtype"):
        arr = np.asarray(action)
        if arr.shape != () or arr.dtype.kind not in "iu":
            raise ValueError(f"action {action!r} is not an integer scalar per {where}")
        value = int(arr)
    else:
        raise ValueError(f"action {action!r} ({type(action).__name__}) is not an integer scalar per {where}")
    if not 0 <= value < spec.num_values:
        raise ValueError(f"action {value} is outside {where}")
    return value


def mission_words(env: gym.Env, limit: int = 20000) -> list[str]:
    """Words of every mission ``env``'s mission space can produce (enumerated), plus the BabyAI grammar."""
    words: dict[str, None] = dict.fromkeys(BABYAI_WORDS)
    space = getattr(env, "observation_space", None)
    mission = space.spaces.get("mission") if isinstance(space, gym.spaces.Dict) else None
    func = getattr(mission, "mission_func", None)
    if func is not None:
        holders = getattr(mission, "ordered_placeholders", None) or []
        for combo in itertools.islice(itertools.product(*holders), limit):
            words.update(dict.fromkeys(normalise(func(*combo))))
        for values in holders:  # in case the product was cut short
            for value in values:
                words.update(dict.fromkeys(normalise(str(value))))
    words.update(dict.fromkeys(normalise(str(getattr(env, "mission", "") or ""))))
    return list(words)


# (where, offset, runs): see EgoRenderer._layout
_Layout = tuple[np.ndarray, np.ndarray, tuple[tuple[int, int, int, int, np.ndarray], ...]]


class EgoRenderer:
    """Draws minigrid's symbolic 7×7 egocentric view as an RGB image of ``size``×``size`` pixels.

    Each view cell is one of minigrid's tiles (``tile`` = ceil(size / 7) pixels) and the 7·tile image is
    shrunk to ``size`` by nearest neighbour. So cell column ``j`` covers a fixed run of output columns and
    shows a fixed subset of its tile's pixel columns: for every (tile, column, tile row) the bytes of that
    piece of an output row are ready-made. A frame is one dot product (the 49 tile codes), one index gather,
    one gather of pieces per run of equally wide columns (1 to 6 runs; 2 at size 64) and one copy per run
    into the image. Pixel for pixel the same as resizing the full 7·tile image.

    The gathered pieces are kept (private buffers): for a view identical to the previous call's (an action
    that changed nothing in sight) the gathering is skipped. ``reuse = False`` gathers for every frame.
    """

    _tables: dict[int, np.ndarray] = {}
    _layouts: dict[int, _Layout] = {}

    def __init__(self, size: int = 64) -> None:
        self.size = size
        tile = -(-size // VIEW)
        self.table = self._table(tile)
        self._where, self._offset, runs = self._layout(size)
        # code · 7 · tile, code = (object · colours + colour) · 3 + state: one dot product for all 49 cells
        step = VIEW * tile
        self._weights = np.array([len(COLOR_TO_IDX) * 3 * step, 3 * step, step], dtype=np.intp)
        self._index = np.empty_like(self._where)
        # per run: (pieces, its part of the index, gathered pieces, where they go in the image, their bytes)
        self._runs = []
        for start, stop, lo, hi, pieces in runs:
            gathered = np.empty(stop - start, dtype=pieces.dtype)
            place = (slice(None), slice(lo, hi))
            self._runs.append((pieces, slice(start, stop), gathered, place, gathered.view(np.uint8).reshape(size, -1)))
        self.reuse = True
        self._last_view: bytes | None = None

    @classmethod
    def _table(cls, tile: int) -> np.ndarray:
        """[2 * codes, tile, tile, 3]: every (object, colour, state) tile, then the same with the agent on top."""
        if tile not in cls._tables:
            table = np.zeros((2 * _N_CODES, tile, tile, 3), dtype=np.uint8)
            for obj_idx, col_idx, state in itertools.product(range(len(OBJECT_TO_IDX)), range(6), range(3)):
                code = (obj_idx * len(COLOR_TO_IDX) + col_idx) * 3 + state
                if obj_idx == OBJECT_TO_IDX["unseen"]:
                    continue
                obj = None if obj_idx == OBJECT_TO_IDX["agent"] else WorldObj.decode(obj_idx, col_idx, state)
                table[code] = Grid.render_tile(obj, tile_size=tile)
                table[_N_CODES + code] = Grid.render_tile(obj, agent_dir=3, tile_size=tile)
            cls._tables[tile] = table
        return cls._tables[tile]

    @classmethod
    def _layout(cls, size: int) -> _Layout:
        """Gather plan for ``size``: ``(where, offset, runs)``.

        A run is a stretch of equally wide cell columns; ``runs`` holds ``(start, stop, lo, hi, pieces)`` per
        run: ``pieces`` has one numpy void item per (tile, cell column, tile row), in that order, the tile
        row's bytes at the column's output pixels (columns outside the run are left blank, so one formula
        indexes every run and a tile's pieces lie together in memory); the run's pieces fill bytes ``lo:hi``
        of every output row. Items ``start:stop`` of the flat ``where`` / ``offset`` (run by run, then output
        row, then column) give the view cell shown there (flat index into minigrid's [x, y] view) and what
        to add to that cell's ``code · 7 · tile`` to get the piece: ``column · tile + tile row``, plus the
        agent-drawn tiles for the agent's own cell.
        """
        if size not in cls._layouts:
            tile = -(-size // VIEW)
            table = cls._table(tile)
            pix = (np.arange(size) * VIEW * tile) // size  # nearest-neighbour source pixel of each output pixel
            cell, sub = pix // tile, pix % tile
            start = np.searchsorted(cell, np.arange(VIEW + 1))  # first output pixel of each cell (and the end)
            width = np.diff(start)
            agent_cell = (VIEW // 2) * VIEW + VIEW - 1  # minigrid's view is [x, y]; the agent is at x = 3, y = 6
            wheres, offsets, runs = [], [], []
            first = n_items = 0
            while first < VIEW:
                end = first + 1
                while end < VIEW and width[end] == width[first]:
                    end += 1
                w = int(width[first])
                pieces = np.zeros((table.shape[0], VIEW, tile, w, 3), dtype=np.uint8)
                for j in range(first, end):
                    pieces[:, j] = table[:, :, sub[start[j] : start[j + 1]], :]
                pieces = pieces.reshape(-1, w * 3).view(f"V{w * 3}").reshape(-1)
                columns = np.arange(first, end)[None, :]
                where = columns * VIEW + cell[:, None]  # [size, end - first]
                offset = columns * tile + sub[:, None] + (where == agent_cell) * (_N_CODES * VIEW * tile)
                wheres.append(where.reshape(-1))
                offsets.append(offset.reshape(-1))
                runs.append((n_items, n_items + where.size, 3 * int(start[first]), 3 * int(start[end]), pieces))
                n_items += where.size
                first = end
            where_all = np.concatenate(wheres).astype(np.intp)
            offset_all = np.concatenate(offsets).astype(np.intp)
            cls._layouts[size] = (where_all, offset_all, tuple(runs))
        return cls._layouts[size]

    def codes(self, symbolic: np.ndarray) -> np.ndarray:
        """[7, 7] row-major tile codes of minigrid's [x, y, 3] encoding (agent cell marked)."""
        sym = symbolic.astype(np.int64)
        codes = ((sym[..., 0] * len(COLOR_TO_IDX) + sym[..., 1]) * 3 + sym[..., 2]).T
        codes[VIEW - 1, VIEW // 2] += _N_CODES
        return codes

    def __call__(self, symbolic: np.ndarray) -> np.ndarray:
        """A new [size, size, 3] uint8 image of minigrid's [7, 7, 3] encoded view ``symbolic``.

        The codes are assumed valid (as minigrid encodes them): the gathers clip rather than check bounds.
        """
        key = symbolic.tobytes()
        if key != self._last_view or not self.reuse:
            index = self._index
            np.take(symbolic.reshape(VIEW * VIEW, 3) @ self._weights, self._where, out=index, mode="clip")
            index += self._offset
            for pieces, part, gathered, _, _ in self._runs:
                np.take(pieces, index[part], out=gathered, mode="clip")
            self._last_view = key
        size = self.size
        out = np.empty((size, 3 * size), dtype=np.uint8)
        for _, _, _, place, block in self._runs:
            out[place] = block
        return out.reshape(size, size, 3)


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------


class GymAdapter(dm_env.Environment):
    """Wraps a minigrid-style gymnasium env (dict obs with ``image``, ``direction``, ``mission``) as dm_env."""

    def __init__(
        self,
        env: gym.Env,
        *,
        name: str = NAME,
        obs: str = "rgb",
        image_size: int = 64,
        token_len: int = 1,
        seed: int = 0,
        repeat_every: int = 20,
        talk_p: float = 0.2,
        preread_max: int = 28,
        extra_words: Iterable[str] = (),
    ) -> None:
        self._name = name
        self._obs_kind = check_choice(name, "obs", obs, OBS_KINDS)
        image_size = check_int(name, "image_size", image_size, VIEW, 512)
        token_len = check_int(name, "token_len", token_len, 1, 64)
        self._seed = check_int(name, "seed", seed, 0)
        repeat_every = check_int(name, "repeat_every", repeat_every, 1)
        self._gym = env
        self._env = env.unwrapped
        self._hinted = hasattr(self._env, "utterances")
        self._idle_sentences = getattr(self._env, "idle_sentences", None) if self._hinted else None
        words = mission_words(self._env) + list(extra_words)
        if hasattr(self._env, "language_words"):
            words += list(self._env.language_words())
        self.vocab = Vocabulary(dict.fromkeys(words))
        self._stream = TokenStream(
            self.vocab,
            np.random.default_rng([self._seed, 1]),
            tokens_per_step=token_len,
            repeat_every=repeat_every,
            talk_p=talk_p,
            preread_max=preread_max,
        )
        self._renderer = EgoRenderer(image_size) if self._obs_kind == "rgb" else None
        self._action_spec = specs.DiscreteArray(int(env.action_space.n), dtype=np.int32, name="action")
        self._n_actions = self._action_spec.num_values
        obs_spec: dict[str, specs.Array] = {}
        if self._obs_kind == "rgb":
            obs_spec["image"] = specs.BoundedArray(
                (image_size, image_size, 3), np.uint8, minimum=0, maximum=255, name="image"
            )
        else:
            obs_spec["grid"] = specs.BoundedArray(
                (VIEW, VIEW, 3), np.int32, minimum=0, maximum=max(len(OBJECT_TO_IDX), 6) - 1, name="grid"
            )
        obs_spec["direction"] = specs.BoundedArray((), np.int32, minimum=0, maximum=3, name="direction")
        obs_spec["carrying"] = specs.BoundedArray(
            (2,), np.int32, minimum=0, maximum=max(len(OBJECT_TO_IDX), len(COLOR_TO_IDX)) - 1, name="carrying"
        )
        obs_spec["tokens"] = specs.BoundedArray(
            (token_len,), np.int32, minimum=0, maximum=len(self.vocab) - 1, name="tokens"
        )
        obs_spec["is_read_step"] = specs.Array((), np.bool_, name="is_read_step")
        obs_spec["log_text"] = specs.Array((), np.object_, name="log_text")
        self._obs_spec = obs_spec
        self._needs_reset = True
        self._seeded = False
        self._reading = False
        self._last: dict[str, Any] | None = None

    # -- accessors ----------------------------------------------------------------------------
    @property
    def gym_env(self) -> gym.Env:
        """The wrapped (unwrapped) gymnasium env."""
        return self._env

    @property
    def stream(self) -> TokenStream:
        """The token stream (task, queue, pre-read state)."""
        return self._stream

    @property
    def reading(self) -> bool:
        """True if the last observation was a pre-read step (the next action is ignored)."""
        return self._reading

    def oracle_action(self) -> int:
        """The wrapped world's scripted privileged action (0 during pre-read steps)."""
        if self._reading or self._needs_reset:
            return 0
        if not hasattr(self._env, "oracle_action"):
            raise AttributeError(f"{self._name}: the wrapped env {type(self._env).__name__} has no oracle")
        return int(self._env.oracle_action())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.__dict__["_env"], name)

    # -- dm_env API ---------------------------------------------------------------------------
    def observation_spec(self) -> dict[str, specs.Array]:
        return dict(self._obs_spec)

    def action_spec(self) -> specs.DiscreteArray:
        return self._action_spec

    def reset(self) -> dm_env.TimeStep:
        if self._seeded:
            raw, _ = self._env.reset()
        else:
            raw, _ = self._env.reset(seed=self._seed)
            self._seeded = True
        self._needs_reset = False
        self._stream.reset()
        self._listen()
        if self._hinted:
            self._stream.start_preread(self._env.preread_sentences())
        return dm_env.restart(self._observation(raw))

    def step(self, action: Any) -> dm_env.TimeStep:
        if type(action) is int and 0 <= action < self._n_actions:  # fast path of validate_action
            a = action
        else:
            a = validate_action(action, self._action_spec, self._name)
        if self._needs_reset:
            return self.reset()
        if self._reading:  # frozen world: same picture, next hint tokens
            return dm_env.TimeStep(_MID, 0.0, 1.0, self._observation(None))
        raw, reward, terminated, truncated, _ = self._env.step(a)
        self._listen()
        obs = self._observation(raw)
        if terminated:
            self._needs_reset = True
            return dm_env.termination(float(reward), obs)
        if truncated:
            self._needs_reset = True
            return dm_env.truncation(float(reward), obs)
        return dm_env.TimeStep(_MID, float(reward), 1.0, obs)  # = dm_env.transition, one call less

    def close(self) -> None:
        self._gym.close()

    # -- internals ----------------------------------------------------------------------------
    def _listen(self) -> None:
        """Moves what the world wants said into the stream."""
        if self._hinted:
            for kind, sentence in self._env.utterances():
                if kind == "task":
                    self._stream.set_task(sentence)
                else:
                    self._stream.add_event(sentence)
        elif self._env.mission != self._stream.task:
            self._stream.set_task(self._env.mission)

    def _observation(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        if raw is None:
            obs = dict(self._last)  # type: ignore[arg-type]
        elif self._renderer is not None:
            obs = {"image": self._renderer(raw["image"]), "direction": np.array(raw["direction"], dtype=_INT32)}
        else:
            obs = {
                "grid": np.ascontiguousarray(raw["image"].transpose(1, 0, 2), dtype=_INT32),
                "direction": np.array(raw["direction"], dtype=_INT32),
            }
        if raw is not None:
            held = getattr(self._env.unwrapped, "carrying", None)
            obs["carrying"] = (np.array([OBJECT_TO_IDX[held.type], COLOR_TO_IDX[held.color]], dtype=_INT32)
                               if held is not None else np.zeros(2, _INT32))
        # The world's idle sentences are only asked for when the stream could say one (lazy: building them
        # every step cost more than the rest of the language stream).
        tokens, text, reading = self._stream.next(idle=self._idle_sentences)
        self._reading = reading
        obs["tokens"] = tokens
        obs["is_read_step"] = np.array(reading, dtype=_BOOL)
        obs["log_text"] = np.array(text, dtype=_OBJECT)
        self._last = obs
        return obs

    def __repr__(self) -> str:
        return f"GymAdapter({type(self._env).__name__}, obs={self._obs_kind!r}, vocab={len(self.vocab)})"


def make_minigrid(
    id: str = "BabyAI-GoToLocal-v0",
    obs: str = "rgb",
    image_size: int = 64,
    token_len: int = 1,
    seed: int = 0,
    max_steps: int = 0,
    repeat_every: int = 20,
) -> GymAdapter:
    """Registry factory for ``minigrid``: ``gymnasium.make(id)`` wrapped by :class:`GymAdapter`."""
    check_choice(NAME, "id", id, minigrid_ids())
    check_choice(NAME, "obs", obs, OBS_KINDS)
    max_steps = check_int(NAME, "max_steps", max_steps, 0)
    kwargs = {"max_steps": max_steps} if max_steps else {}
    env = gym.make(id, disable_env_checker=True, **kwargs)
    return GymAdapter(
        env, name=NAME, obs=obs, image_size=image_size, token_len=token_len, seed=seed, repeat_every=repeat_every
    )
