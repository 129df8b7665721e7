"""Language-hinted gridworlds on minigrid: the language says what the pixels do not.

Registered worlds (each in sizes ``_s`` and ``_m``; all share one vocabulary):

* ``grid_task_s`` / ``grid_task_m``: one room, 3 / 5 objects; "pick up the red ball" names the target
  (``grid_task_xs``: a 3×3 room with 2 objects, for the short learning check in CI).
  Picking up any other object ends the episode (reward 0); the target gives +1 and ends it.
* ``grid_future_s`` / ``grid_future_m``: 2 / 4 rooms, one ball per room; the target is in another room.
  Pre-read hints "the red ball is in the kitchen" say where (the agent is frozen while reading).
* ``grid_dynamics_s`` / ``grid_dynamics_m``: two rooms split by a grey locked door, 2 / 3 keys; a
  pre-read rule "the blue key opens the door" (random each episode) says which key works; the task is
  "open the door". Toggling the door with the right key opens it: +1, the episode ends (HomeGrid's
  "open the X" task). With a wrong key the door breaks and the episode ends. Picking up a key gives +0.5
  and dropping it gives -0.5 (a progress reward like HomeGrid's +0.5 for holding the task's object, paid
  back on drop so that it depends only on the observed transition; it does not tell which key is right).
  Optimal return 1.5; without the hint 0.5 + 1 / keys.
* ``grid_correction_s`` / ``grid_correction_m``: one room, 3 / 4 identical balls; only corrections
  ("no turn around", when the distance to the target grew) tell them apart. Wrong pickup ends (0).
* ``grid_home_s`` / ``grid_home_m``: a house of 3 / 4 named rooms with balls, keys and bins; continual
  tasks "find the X", "get the X", "put the X in the Y bin", "move the X to the R", "open the Y bin"
  (+1 on completion; for put / move tasks +0.5 on picking up the task's object and -0.5 on dropping it
  short of completion, so the progress reward depends only on the observed transition), a new task each time.

Episodes last ``max_steps`` = 100 env steps (+ pre-read steps). Options of every world: ``obs``
("rgb" | "symbolic"), ``image_size``, ``token_len``, ``seed``, ``max_steps``, ``talk_p`` (probability of an
idle correction/description), ``repeat_every`` (task repetition period). Observations: see
:mod:`envs.gym_adapter`. Rooms are named by position (``ROOM_NAMES`` in row-major order).

Every world offers ``oracle_action()`` (a scripted policy reading the privileged state: the upper bound);
:func:`run_baseline` runs ``"random"`` or ``"oracle"`` (or any callable) and returns the mean return.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dm_env
import numpy as np
from minigrid.core.constants import COLOR_NAMES
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Box, Door, Key, WorldObj
from minigrid.minigrid_env import MiniGridEnv
from minigrid.utils.rendering import fill_coords, point_in_rect

from envs.gym_adapter import GymAdapter, check_int
from envs.stream import LazySentences

ROOM_NAMES: tuple[str, ...] = ("kitchen", "bedroom", "bathroom", "office", "garage", "hall")
PICKABLE = ("ball", "key")
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*ROOM_NAMES, *COLOR_NAMES, *PICKABLE, "box", "bin", "door", "goal"]
        + "pick up the is in opens get to no turn around find put move open closed".split()
    )
)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
DEFAULTS: dict[str, Any] = {
    "obs": "rgb",
    "image_size": 64,
    "token_len": 1,
    "seed": 0,
    "max_steps": 100,
    "talk_p": 0.2,
    "repeat_every": 20,
}


def _name(obj: WorldObj) -> str:
    kind = "bin" if isinstance(obj, Bin) else obj.type
    return f"{obj.color} {kind}"


class Bin(Box):
    """A container: toggle opens / closes it; dropping an object into an open bin stores it.

    (In :class:`HomeWorld` a stored object is then put back at a random free cell of the house.)
    """

    def __init__(self, color: str) -> None:
        super().__init__(color)
        self.is_open = False
        self.contents: list[WorldObj] = []

    def can_pickup(self) -> bool:
        return False

    def toggle(self, env: MiniGridEnv, pos: tuple[int, int]) -> bool:
        self.is_open = not self.is_open
        return True

    def encode(self) -> tuple[int, int, int]:
        code = super().encode()
        return code[0], code[1], 0 if self.is_open else 1

    def render(self, img: np.ndarray) -> None:
        super().render(img)
        if self.is_open:
            fill_coords(img, point_in_rect(0.12, 0.88, 0.12, 0.3), (0, 0, 0))


class RuleDoor(Door):
    """A grey locked door that only the episode's chosen key opens; a wrong key breaks it."""

    def __init__(self, key_color: str) -> None:
        super().__init__("grey", is_open=False, is_locked=True)
        self.key_color = key_color
        self.broken = False

    def toggle(self, env: MiniGridEnv, pos: tuple[int, int]) -> bool:
        if self.is_locked:
            if isinstance(env.carrying, Key):
                if env.carrying.color == self.key_color:
                    self.is_locked, self.is_open = False, True
                    return True
                self.broken = True
            return False
        return super().toggle(env, pos)


# ---------------------------------------------------------------------------------------------
# Base world: rooms, the language protocol, a planner
# ---------------------------------------------------------------------------------------------


class HintedGrid(MiniGridEnv):
    """Rooms in a ``rows``×``cols`` layout of ``room``×``room`` interiors, joined by doorways."""

    def __init__(self, rows: int, cols: int, room: int, max_steps: int = 100) -> None:
        self.rows, self.cols, self.room = rows, cols, room
        super().__init__(
            mission_space=MissionSpace(mission_func=lambda: ""),
            width=cols * (room + 1) + 1,
            height=rows * (room + 1) + 1,
            max_steps=max_steps,
        )
        self._said: list[tuple[str, str]] = []
        self._hints: list[str] = []
        self.doorways: list[tuple[int, int]] = []

    # -- language protocol (read by envs.gym_adapter.GymAdapter) --------------------------------
    @staticmethod
    def language_words() -> tuple[str, ...]:
        """Every word any hinted world can say."""
        return WORDS

    def utterances(self) -> list[tuple[str, str]]:
        """``(kind, sentence)`` said since the last call; kind is ``"task"`` or ``"event"``."""
        out, self._said = self._said, []
        return out

    def preread_sentences(self) -> list[str]:
        """Hints streamed before the episode starts (the world is frozen meanwhile)."""
        return list(self._hints)

    def idle_sentences(self) -> tuple[list[str], list[str]]:
        """``(corrections, descriptions)`` the stream may pick when idle."""
        return [], list(self._hints)

    def say_task(self, sentence: str) -> None:
        self.mission = sentence
        self._said.append(("task", sentence))

    def sentences(self) -> list[str]:
        """Every sentence this episode could say so far (for vocabulary tests)."""
        return [self.mission, *self._hints]

    def oracle_action(self) -> int:
        raise NotImplementedError

    # -- reference returns (read by the launcher's summary and the learning benchmark) ----------
    @property
    def optimal_return(self) -> float | None:
        """Return of the oracle that reads the language (1.0 in the one-target worlds)."""
        return 1.0

    @property
    def chance_return(self) -> float | None:
        """Best expected return without the language: a uniform guess among the candidates it names."""
        return None

    # -- layout ---------------------------------------------------------------------------------
    def _reward(self) -> float:
        return 1.0

    def _layout(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        step, mid = self.room + 1, 1 + self.room // 2
        self.doorways = []
        for c in range(1, self.cols):
            self.grid.vert_wall(c * step, 0, height)
            self.doorways += [(c * step, r * step + mid) for r in range(self.rows)]
        for r in range(1, self.rows):
            self.grid.horz_wall(0, r * step, width)
            self.doorways += [(c * step + mid, r * step) for c in range(self.cols)]
        for x, y in self.doorways:
            self.grid.set(x, y, None)

    def room_of(self, pos: Iterable[int]) -> int:
        x, y = (int(v) for v in pos)
        step = self.room + 1
        return min((y - 1) // step, self.rows - 1) * self.cols + min((x - 1) // step, self.cols - 1)

    def room_name(self, pos: Iterable[int]) -> str:
        return ROOM_NAMES[self.room_of(pos)]

    def _room_box(self, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
        r, c = divmod(index, self.cols)
        step = self.room + 1
        return (c * step + 1, r * step + 1), (self.room, self.room)

    def _near_doorway(self, pos: Iterable[int]) -> bool:
        x, y = (int(v) for v in pos)
        return any(abs(x - dx) + abs(y - dy) <= 1 for dx, dy in self.doorways)

    def _place(self, obj: WorldObj | None, room: int) -> tuple[int, int]:
        top, size = self._room_box(room)
        return tuple(self.place_obj(obj, top, size, reject_fn=lambda env, p: env._near_doorway(p)))

    def _place_agent_in(self, room: int) -> None:
        top, size = self._room_box(room)
        self.place_agent(top, size)

    def _colours(self, n: int) -> list[str]:
        return [COLOR_NAMES[i] for i in self.np_random.permutation(len(COLOR_NAMES))[:n]]

    # -- planning -------------------------------------------------------------------------------
    def plan(self, goal: Callable[[tuple[int, int]], bool]) -> int | None:
        """First action (left/right/forward) of a shortest path to face a cell satisfying ``goal``.

        Returns ``DONE`` if the agent already faces such a cell, ``None`` if none is reachable.
        """
        w, h = self.width, self.height
        free = np.zeros((w, h), dtype=bool)
        for i, cell in enumerate(self.grid.grid):
            free[i % w, i // w] = cell is None or cell.can_overlap()
        vec = ((1, 0), (0, 1), (-1, 0), (0, -1))
        start = (int(self.agent_pos[0]), int(self.agent_pos[1]), int(self.agent_dir))
        first: dict[tuple[int, int, int], int | None] = {start: None}
        queue = deque([start])
        while queue:
            x, y, d = state = queue.popleft()
            fx, fy = x + vec[d][0], y + vec[d][1]
            if goal((fx, fy)):
                return DONE if first[state] is None else first[state]
            moves = [(LEFT, (x, y, (d - 1) % 4)), (RIGHT, (x, y, (d + 1) % 4))]
            if free[fx, fy]:
                moves.append((FORWARD, (fx, fy, d)))
            for action, nxt in moves:
                if nxt not in first:
                    first[nxt] = action if first[state] is None else first[state]
                    queue.append(nxt)
        return None

    def face(self, target: WorldObj) -> int | None:
        """Plan towards facing ``target`` (``DONE`` when already facing it)."""
        return self.plan(lambda p: self.grid.get(*p) is target)

    def drop_somewhere(self, room: int | None = None) -> int:
        """Action towards dropping the carried object on a free, non-doorway cell (in ``room``)."""

        def ok(p: tuple[int, int]) -> bool:
            inside = 0 < p[0] < self.width - 1 and 0 < p[1] < self.height - 1
            return (
                inside
                and self.grid.get(*p) is None
                and not self._near_doorway(p)
                and tuple(p) != tuple(self.agent_pos)
                and (room is None or self.room_of(p) == room)
            )

        action = self.plan(ok)
        return DROP if action == DONE else (LEFT if action is None else action)


# ---------------------------------------------------------------------------------------------
# The worlds
# ---------------------------------------------------------------------------------------------


class _PickTarget(HintedGrid):
    """Shared rules: picking up the target gives +1; picking up anything else ends with 0."""

    target: WorldObj

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if self.carrying is not None:
            reward, terminated = (1.0 if self.carrying is self.target else 0.0), True
        return obs, reward, terminated, truncated, info

    def oracle_action(self) -> int:
        action = self.face(self.target)
        return PICKUP if action == DONE else (LEFT if action is None else action)


class TaskWorld(_PickTarget):
    """One room with distinct objects; only the task sentence names the target."""

    def __init__(self, room: int, objects: int, max_steps: int = 100) -> None:
        self.n_objects = objects
        super().__init__(1, 1, room, max_steps)

    @property
    def chance_return(self) -> float:
        return 1.0 / self.n_objects

    def _gen_grid(self, width: int, height: int) -> None:
        self._layout(width, height)
        kinds = [(c, t) for c in COLOR_NAMES for t in (*PICKABLE, "box")]
        chosen = [kinds[i] for i in self.np_random.permutation(len(kinds))[: self.n_objects]]
        make = {"ball": Ball, "key": Key, "box": Box}
        objs = [make[t](c) for c, t in chosen]
        for obj in objs:
            self._place(obj, 0)
        self._place_agent_in(0)
        self.target = objs[int(self.np_random.integers(len(objs)))]
        self._hints = []
        self.say_task(f"pick up the {_name(self.target)}")


class FutureWorld(_PickTarget):
    """One ball per room; hints say which room holds which ball; the target is never in the start room."""

    def __init__(self, rows: int, cols: int, room: int, max_steps: int = 100) -> None:
        super().__init__(rows, cols, room, max_steps)

    @property
    def chance_return(self) -> float:
        return 1.0 / (self.rows * self.cols - 1)  # the target is never in the start room

    def _gen_grid(self, width: int, height: int) -> None:
        self._layout(width, height)
        n = self.rows * self.cols
        balls = [Ball(c) for c in self._colours(n)]
        for i, ball in enumerate(balls):
            self._place(ball, i)
        start = int(self.np_random.integers(n))
        self._place_agent_in(start)
        others = [i for i in range(n) if i != start]
        self.target = balls[others[int(self.np_random.integers(len(others)))]]
        shown = [self.target] + [balls[i] for i in others if balls[i] is not self.target][:2]
        hints = [f"the {_name(b)} is in the {self.room_name(b.cur_pos)}" for b in shown]
        self._hints = [hints[i] for i in self.np_random.permutation(len(hints))]
        self.say_task(f"pick up the {_name(self.target)}")


class DynamicsWorld(HintedGrid):
    """Two rooms split by a locked grey door; the hint names the one key that opens it this episode."""

    def __init__(self, room: int, keys: int, max_steps: int = 100) -> None:
        self.n_keys = keys
        super().__init__(1, 2, room, max_steps)

    @property
    def optimal_return(self) -> float:
        return 1.5

    @property
    def chance_return(self) -> float:
        return 0.5 + 1.0 / self.n_keys  # any key pays 0.5; one try at the door: a wrong key breaks it

    def _gen_grid(self, width: int, height: int) -> None:
        self._layout(width, height)
        colours = [c for c in self._colours(len(COLOR_NAMES)) if c != "grey"][: self.n_keys]
        self.keys = [Key(c) for c in colours]
        right = colours[int(self.np_random.integers(len(colours)))]
        self.door = RuleDoor(right)
        self.grid.set(*self.doorways[0], self.door)
        for key in self.keys:
            self._place(key, 0)
        self._place_agent_in(0)
        self.right_key = next(k for k in self.keys if k.color == right)
        self._hints = [f"the {right} key opens the door"]
        self.say_task("open the door")

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        held = isinstance(self.carrying, Key)
        obs, reward, terminated, truncated, info = super().step(action)
        if self.door.broken:
            reward, terminated = 0.0, True
        elif self.door.is_open:
            reward, terminated = 1.0, True
        else:
            # Holding a key is worth +0.5, paid on pickup and paid back on drop: the reward is a function of
            # the observed transition (was / is a key held), so no hidden "already paid" state must be learned.
            reward = 0.5 * (float(isinstance(self.carrying, Key)) - float(held))
        return obs, reward, terminated, truncated, info

    def oracle_action(self) -> int:
        if self.carrying is not self.right_key:
            if self.carrying is not None:
                return self.drop_somewhere(0)
            action = self.face(self.right_key)
            return PICKUP if action == DONE else (LEFT if action is None else action)
        action = self.face(self.door)
        return TOGGLE if action == DONE else (LEFT if action is None else action)


class CorrectionWorld(_PickTarget):
    """Identical balls; corrections ("no turn around") are the only clue to which one is the target."""

    def __init__(self, room: int, balls: int, max_steps: int = 100) -> None:
        self.n_balls = balls
        self._last_dist = 0
        super().__init__(1, 1, room, max_steps)

    @property
    def chance_return(self) -> float:
        return 1.0 / self.n_balls

    def _gen_grid(self, width: int, height: int) -> None:
        self._layout(width, height)
        colour = self._colours(1)[0]
        balls = [Ball(colour) for _ in range(self.n_balls)]
        for ball in balls:
            self._place(ball, 0)
        self._place_agent_in(0)
        self.target = balls[int(self.np_random.integers(len(balls)))]
        self._hints = []
        self._last_dist = self._dist()
        self._grew = False
        self.say_task(f"pick up the {_name(self.target)}")

    def _dist(self) -> int:
        return int(np.abs(np.asarray(self.agent_pos) - np.asarray(self.target.cur_pos)).sum())

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        out = super().step(action)
        dist = self._dist() if self.carrying is None else 0
        self._grew, self._last_dist = dist > self._last_dist, dist
        return out

    def idle_sentences(self) -> tuple[list[str], list[str]]:
        return (["no turn around"] if self._grew else []), []

    def sentences(self) -> list[str]:
        return [*super().sentences(), "no turn around"]


TASK_KINDS = ("find", "get", "put", "move", "open")


class HomeWorld(HintedGrid):
    """A house of named rooms with objects and bins; tasks are sampled continually (HomeGrid-like)."""

    def __init__(self, rows: int, cols: int, room: int, objects: int, bins: int, max_steps: int = 100) -> None:
        self.n_objects, self.n_bins = objects, bins
        super().__init__(rows, cols, room, max_steps)

    @property
    def optimal_return(self) -> None:
        return None  # continual tasks: measure the oracle with run_baseline

    def _gen_grid(self, width: int, height: int) -> None:
        self._layout(width, height)
        n_rooms = self.rows * self.cols
        kinds = [(c, t) for c in COLOR_NAMES for t in PICKABLE]
        chosen = [kinds[i] for i in self.np_random.permutation(len(kinds))[: self.n_objects]]
        self.objects: list[WorldObj] = [(Ball if t == "ball" else Key)(c) for c, t in chosen]
        self.bins = [Bin(c) for c in self._colours(self.n_bins)]
        for obj in self.objects + self.bins:
            self._place(obj, int(self.np_random.integers(n_rooms)))
        self._place_agent_in(int(self.np_random.integers(n_rooms)))
        self._hints = []
        self._new_task()

    # -- tasks ----------------------------------------------------------------------------------
    def _available(self) -> list[WorldObj]:
        return [o for o in self.objects if o is self.carrying or (o.cur_pos[0] >= 0 and self.grid.get(*o.cur_pos) is o)]

    def _new_task(self) -> None:
        objs = self._available()
        loose = [o for o in objs if o is not self.carrying]
        closed = [b for b in self.bins if not b.is_open]
        pools = {"find": loose, "get": loose, "put": objs, "move": objs, "open": closed}
        kinds = [k for k in TASK_KINDS if pools[k]]
        kind = kinds[int(self.np_random.integers(len(kinds)))]
        objs = pools[kind]
        self.task_kind, self.task_obj, self.task_bin, self.task_room = kind, None, None, -1
        if kind == "open":
            self.task_bin = closed[int(self.np_random.integers(len(closed)))]
            sentence = f"open the {_name(self.task_bin)}"
        else:
            self.task_obj = objs[int(self.np_random.integers(len(objs)))]
            what = _name(self.task_obj)
            if kind == "put":
                self.task_bin = self.bins[int(self.np_random.integers(len(self.bins)))]
                sentence = f"put the {what} in the {_name(self.task_bin)}"
            elif kind == "move":
                here = self.room_of(self.agent_pos if self.task_obj is self.carrying else self.task_obj.cur_pos)
                rooms = [r for r in range(self.rows * self.cols) if r != here]
                self.task_room = rooms[int(self.np_random.integers(len(rooms)))]
                sentence = f"move the {what} to the {ROOM_NAMES[self.task_room]}"
            else:
                sentence = f"{kind} the {what}"
        self.say_task(sentence)

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        front = self.grid.get(*self.front_pos)
        held = self.task_obj is not None and self.carrying is self.task_obj
        stored: WorldObj | None = None
        opened: Bin | None = None
        if action == DROP and self.carrying is not None and isinstance(front, Bin) and front.is_open:
            stored, self.carrying = self.carrying, None
            front.contents.append(stored)
            stored.cur_pos = np.array([-1, -1])
            action = DONE
        elif action == TOGGLE and isinstance(front, Bin):
            opened = front if not front.is_open else None
            self._said.append(("event", f"the {_name(front)} is {'open' if opened else 'closed'}"))
        dropped = action == DROP and self.carrying is not None
        obs, _, terminated, truncated, info = super().step(action)
        if stored is not None:  # a stored object reappears somewhere in the house
            front.contents.remove(stored)
            self._place(stored, int(self.np_random.integers(self.rows * self.cols)))
        reward, done = 0.0, False
        kind, obj = self.task_kind, self.task_obj
        if kind == "find":
            done = self.grid.get(*self.front_pos) is obj
        elif kind == "get":
            done = self.carrying is obj
        elif kind == "put":
            done = stored is obj and front is self.task_bin
        elif kind == "move":
            done = dropped and self.carrying is None and self.room_of(obj.cur_pos) == self.task_room
        elif kind == "open":
            done = opened is self.task_bin
        if kind in ("put", "move"):
            # HomeGrid's +0.5 for holding the task's object, paid on pickup and paid back on a drop that does
            # not complete the task: a function of the observed transition, with no hidden "already paid" flag
            # (which let an agent farm drop / re-pickup in the dynamics world).
            holds = self.carrying is obj
            reward = 0.5 * (float(holds) - float(held and not done))
        if done:
            reward += 1.0
            self._new_task()
        return obs, reward, terminated, truncated, info

    def idle_sentences(self) -> tuple[list[str], Sequence[str]]:
        seen = [o for o in self._available() if o is not self.carrying]
        # built only if the stream picks one (the stream asks on most silent steps, speaks on few)
        return [], LazySentences(seen, lambda o: f"the {_name(o)} is in the {self.room_name(o.cur_pos)}")

    def sentences(self) -> list[str]:
        out = [self.mission, *self.idle_sentences()[1]]
        for b in self.bins:
            out += [f"the {_name(b)} is open", f"the {_name(b)} is closed", f"open the {_name(b)}"]
        for o in self.objects:
            out += [f"{k} the {_name(o)}" for k in ("find", "get")]
            out += [f"put the {_name(o)} in the {_name(b)}" for b in self.bins]
            out += [f"move the {_name(o)} to the {r}" for r in ROOM_NAMES[: self.rows * self.cols]]
        return out

    def oracle_action(self) -> int:
        kind, obj = self.task_kind, self.task_obj

        def go(target: WorldObj, then: int) -> int:
            action = self.face(target)
            return then if action == DONE else (LEFT if action is None else action)

        if kind == "open":
            return go(self.task_bin, TOGGLE)
        if kind == "find":
            return go(obj, DONE)
        if self.carrying is not obj:
            if self.carrying is not None:
                return self.drop_somewhere()
            return go(obj, PICKUP)
        if kind == "put":
            return go(self.task_bin, DROP if self.task_bin.is_open else TOGGLE)
        return self.drop_somewhere(self.task_room)


# ---------------------------------------------------------------------------------------------
# Registration and baselines
# ---------------------------------------------------------------------------------------------

WORLDS: dict[str, tuple[Callable[..., HintedGrid], dict[str, int], str]] = {
    "grid_task_xs": (TaskWorld, {"room": 3, "objects": 2}, "pick up the object named by the task (1 small room, 2 "
                     "objects; sized for a learning check in CI)"),
    "grid_task_s": (TaskWorld, {"room": 5, "objects": 3}, "pick up the object named by the task (1 room, 3 objects)"),
    "grid_task_m": (TaskWorld, {"room": 7, "objects": 5}, "pick up the object named by the task (1 room, 5 objects)"),
    "grid_future_s": (FutureWorld, {"rows": 1, "cols": 2, "room": 4}, "hints say which room holds the target (2)"),
    "grid_future_m": (FutureWorld, {"rows": 2, "cols": 2, "room": 4}, "hints say which room holds the target (4)"),
    "grid_dynamics_s": (DynamicsWorld, {"room": 4, "keys": 2}, "a hint says which of 2 keys opens the door"),
    "grid_dynamics_m": (DynamicsWorld, {"room": 5, "keys": 3}, "a hint says which of 3 keys opens the door"),
    "grid_correction_s": (CorrectionWorld, {"room": 5, "balls": 3}, "corrections point to 1 of 3 identical balls"),
    "grid_correction_m": (CorrectionWorld, {"room": 7, "balls": 4}, "corrections point to 1 of 4 identical balls"),
    "grid_home_s": (
        HomeWorld,
        {"rows": 1, "cols": 3, "room": 4, "objects": 3, "bins": 2},
        "HomeGrid-like house, 3 rooms, continual find/get/put/move/open tasks",
    ),
    "grid_home_m": (
        HomeWorld,
        {"rows": 2, "cols": 2, "room": 5, "objects": 4, "bins": 3},
        "HomeGrid-like house, 4 rooms, continual find/get/put/move/open tasks",
    ),
}


def make_world(name: str, **options: Any) -> GymAdapter:
    """Builds hinted world ``name`` (a key of ``WORLDS``) as a dm_env ``GymAdapter``."""
    if name not in WORLDS:
        raise ValueError(f"unknown hinted world {name!r}; valid: {', '.join(WORLDS)}")
    opts = {**DEFAULTS, **options}
    cls, sizes, _ = WORLDS[name]
    max_steps = check_int(name, "max_steps", opts["max_steps"], 1)
    talk_p = float(opts["talk_p"])
    if not 0.0 <= talk_p <= 1.0:
        raise ValueError(f"{name}: talk_p={talk_p} is out of range; allowed: 0..1")
    env = cls(**sizes, max_steps=max_steps)
    return GymAdapter(
        env,
        name=name,
        obs=opts["obs"],
        image_size=opts["image_size"],
        token_len=opts["token_len"],
        seed=opts["seed"],
        repeat_every=opts["repeat_every"],
        talk_p=talk_p,
    )


def factory(name: str) -> Callable[..., GymAdapter]:
    """Registry factory for ``name``."""

    def build(**options: Any) -> GymAdapter:
        return make_world(name, **options)

    build.__name__ = f"make_{name}"
    return build


Policy = Callable[[dm_env.Environment, dm_env.TimeStep, np.random.Generator], int]


def random_policy(env: dm_env.Environment, timestep: dm_env.TimeStep, rng: np.random.Generator) -> int:
    """Uniformly random action."""
    return int(rng.integers(env.action_spec().num_values))


def oracle_policy(env: dm_env.Environment, timestep: dm_env.TimeStep, rng: np.random.Generator) -> int:
    """The world's privileged scripted action."""
    return int(env.oracle_action())


def run_baseline(env: dm_env.Environment, policy: str | Policy, episodes: int, seed: int = 0) -> float:
    """Mean undiscounted return of ``policy`` ("random", "oracle" or a callable) over ``episodes``."""
    policies = {"random": random_policy, "oracle": oracle_policy}
    if isinstance(policy, str):
        if policy not in policies:
            raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(policies)} or a callable")
        policy = policies[policy]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(episodes):
        ts = env.reset()
        while not ts.last():
            ts = env.step(policy(env, ts, rng))
            total += ts.reward
    return total / max(episodes, 1)
