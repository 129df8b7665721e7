"""Pure-JAX core of the multi-agent bomb-defusal graph world (Li et al., EMNLP 2023; ENVIRONMENTS.md §2).

Everything here is a pure function of fixed-shape arrays: ``jit``-able and ``vmap``-able over thousands of
worlds. ``Params`` is static (hashable Python values); pass it as a static argument.

Per-agent action layout (int32 in ``0..8``)::

    0      inspect the bomb in this room
    1..5   go to room index k-1 (only along an edge; rooms are indices 0..num_rooms-1,
           shown with the released map's labels 0, 3, 5, 6, 8)
    6..8   apply the red / green / blue cutter

Messages: per agent ``message_len`` ids in ``0..len(MESSAGE_WORDS)``; 0 is silence, id ``m >= 1`` is
``MESSAGE_WORDS[m - 1]``. A message sent in a round is delivered to both teammates in the observation
returned by that round's ``step`` (i.e. they read it before choosing the next round's actions).

Text (``tokens``) is built inside ``jit`` from fixed-slot templates (word-id tables plus placeholders), then
compacted (pads removed) and padded / truncated to ``token_len``.

Conventions and choices where ENVIRONMENTS.md leaves room:

* Bombs get phases ``(k % 3) + 1`` for bomb index k (5 bombs: 1, 2, 3, 1, 2 = two 1-phase, two 2-phase, one
  3-phase); bombs are placed in distinct random rooms (so ``num_bombs <= num_rooms``).
* A wrong-colour cut with an owned cutter on an active bomb is a *legal* action (the mask cannot know the
  sequence) and counts as valid; under ``wrong_cut="explode"`` the bomb is lost (-1 reward if ``shaping``).
* ``shaping`` adds +1 per correct cut (the defusing cut included). ``score`` counts only the 10·phases
  defusal points (0..90).
* The round ends after the three actions are applied one by one in a fresh random order.
* Ending: termination when no bomb is active; truncation at ``max_rounds``. ``step`` on a finished state
  returns it unchanged with zero reward.
* Theory of mind: ``knows[i, k]``: agent i has inspected bomb k or was told its remaining sequence by a teammate
  that knew it. ``knows_that[j, i, k]``: j knows that i knows k — set when j was in the room while i inspected
  k (j sees "<name> inspected the bomb"), or when any agent told k to the team (a message reaches both
  teammates, so a told sequence becomes common knowledge: every j knows that every i knows it). A message
  *tells* bomb k when k is active, it contains k's room label, and its colour words, in order, are exactly k's
  remaining sequence (e.g. ``6 red blue``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.text import Vocabulary

NUM_ACTIONS = 9
NUM_COLOURS = 3
MAX_ROOMS = 5
MAX_PHASES = 3
AGENT_NAMES: tuple[str, ...] = ("alpha", "bravo", "charlie")
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue")
ROOM_LABELS: tuple[int, ...] = (0, 3, 5, 6, 8)
RELEASED_EDGES: tuple[tuple[int, int], ...] = ((0, 3), (0, 5), (0, 6), (0, 8), (3, 8), (5, 6), (6, 8))
ACTION_NAMES: tuple[str, ...] = (
    "inspect",
    *(f"go to room {label}" for label in ROOM_LABELS),
    *(f"cut {c}" for c in COLOUR_NAMES),
)
MESSAGE_WORDS: tuple[str, ...] = (
    *COLOUR_NAMES,
    *(str(label) for label in ROOM_LABELS),
    "bomb",
    "room",
    "need",
    "help",
    "here",
    "done",
    "come",
    "wait",
    "yes",
    "no",
)
NUM_MESSAGE_IDS = len(MESSAGE_WORDS) + 1  # + silence (0)

# Bomb status.
ACTIVE, DEFUSED, EXPLODED = 0, 1, 2

# Result codes (feedback of an agent's last action).
(
    R_START,
    R_INSPECT_OK,
    R_INSPECT_NONE,
    R_MOVE_OK,
    R_MOVE_BAD,
    R_CUT_ADVANCE,
    R_CUT_DEFUSED,
    R_CUT_WRONG_NOOP,
    R_CUT_WRONG_EXPLODE,
    R_CUT_NO_TOOL,
    R_CUT_NO_BOMB,
) = range(11)

# Template placeholders.
P_COLOUR, P_ROOM, P_S0, P_S1, P_S2, P_LEFT = -1, -2, -3, -4, -5, -6
RESULT_TEMPLATES: tuple[str, ...] = (
    "the game started",
    "you inspected the bomb its sequence is {s0} {s1} {s2}",
    "you inspected but there is no bomb here",
    "you moved to room {room}",
    "you cannot go to room {room} from here",
    "you cut {colour} correctly {left} phases left",
    "you cut {colour} and defused the bomb",
    "you cut {colour} wrong color apply other color tool first",
    "you cut {colour} wrong color the bomb exploded",
    "you do not have the {colour} cutter",
    "you cut {colour} but there is no active bomb here",
)
_PLACEHOLDERS = {"{colour}": P_COLOUR, "{room}": P_ROOM, "{s0}": P_S0, "{s1}": P_S1, "{s2}": P_S2, "{left}": P_LEFT}
TEMPLATE_LEN = 12
_EXTRA_WORDS: tuple[str, ...] = ("round", "score", "contents", "phases", "left", "sequence", "says", "in")


class Params(NamedTuple):
    """Static world configuration (hashable); every ENVIRONMENTS.md §2 switch with its default."""

    num_agents: int = 3
    num_rooms: int = 5
    num_bombs: int = 5
    random_graph: bool = False
    start: str = "same"  # "same" | "separate"
    tools_per_agent: int = 2  # 2 | 1
    tools_mix: float = 0.0  # share of worlds (drawn at each reset) in which each agent holds only its first tool
    wrong_cut: str = "noop"  # "noop" | "explode"
    teammates: str = "hidden"  # "hidden" | "visible"
    max_rounds: int = 30
    shaping: bool = False
    silence: bool = False
    message_len: int = 4
    token_len: int = 64


class State(NamedTuple):
    """World state: a pytree of fixed-shape arrays (A agents, B bombs, R rooms, M message length)."""

    agent_room: jax.Array  # int32 [A]
    tools: jax.Array  # bool [A, 3] the cutters each agent holds (``tools(params)``, or one each with ``tools_mix``)
    adjacency: jax.Array  # bool [R, R]
    bomb_room: jax.Array  # int32 [B]
    bomb_seq: jax.Array  # int32 [B, 3] colour ids, -1 beyond the bomb's phases
    bomb_phases: jax.Array  # int32 [B]
    bomb_progress: jax.Array  # int32 [B] phases already cut
    bomb_status: jax.Array  # int32 [B] ACTIVE / DEFUSED / EXPLODED
    knows: jax.Array  # bool [A, B] i knows bomb k's sequence
    knows_that: jax.Array  # bool [A, A, B] [j, i, k]: j knows that i knows k
    witnessed: jax.Array  # bool [A, A] [j, i]: j saw i inspect this round
    messages: jax.Array  # int32 [A, M] messages sent in the last round
    last_action: jax.Array  # int32 [A]
    last_result: jax.Array  # int32 [A]
    valid_count: jax.Array  # int32 [A]
    action_count: jax.Array  # int32 [A]
    round: jax.Array  # int32 []
    score: jax.Array  # int32 [] defusal points
    explosions: jax.Array  # int32 []
    messages_sent: jax.Array  # int32 []
    together_rounds: jax.Array  # int32 [] rounds after which the whole team stood in one room
    completed_round: jax.Array  # int32 [] round at which no bomb was left active (max_rounds if never)
    terminated: jax.Array  # bool []
    done: jax.Array  # bool []


# ---------------------------------------------------------------------------------------------
# Parameters, vocabulary and static tables
# ---------------------------------------------------------------------------------------------


def check_params(params: Params) -> Params:
    """Validates every switch; raises ValueError naming the bad value and what is allowed."""
    if not isinstance(params, Params):
        raise TypeError(f"expected defusal Params, got {type(params).__name__}")

    def need(name: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ValueError(f"defusal: {name}={getattr(params, name)!r} is not allowed; allowed: {allowed}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need("num_agents", params.num_agents == 3 and is_int(params.num_agents), "3")
    need("num_rooms", is_int(params.num_rooms) and 1 <= params.num_rooms <= MAX_ROOMS, f"1..{MAX_ROOMS}")
    need(
        "num_bombs",
        is_int(params.num_bombs) and 1 <= params.num_bombs <= params.num_rooms,
        f"1..num_rooms ({params.num_rooms})",
    )
    need("random_graph", isinstance(params.random_graph, bool), "True or False")
    need("start", params.start in ("same", "separate"), "'same' or 'separate'")
    need("tools_per_agent", params.tools_per_agent in (1, 2) and is_int(params.tools_per_agent), "1 or 2")
    need(
        "tools_mix",
        isinstance(params.tools_mix, int | float) and not isinstance(params.tools_mix, bool)
        and 0.0 <= params.tools_mix <= 1.0 and (params.tools_mix == 0 or params.tools_per_agent == 2),
        "a number in [0, 1]; above 0 only with tools_per_agent 2 (a curriculum: a share of one-tool worlds)",
    )
    need("wrong_cut", params.wrong_cut in ("noop", "explode"), "'noop' or 'explode'")
    need("teammates", params.teammates in ("hidden", "visible"), "'hidden' or 'visible'")
    need("max_rounds", is_int(params.max_rounds) and 1 <= params.max_rounds <= 1000, "1..1000")
    need("shaping", isinstance(params.shaping, bool), "True or False")
    need("silence", isinstance(params.silence, bool), "True or False")
    need("message_len", is_int(params.message_len) and 1 <= params.message_len <= 16, "1..16")
    need("token_len", is_int(params.token_len) and 1 <= params.token_len <= 512, "1..512")
    return params


def bomb_phases(params: Params) -> np.ndarray:
    """Phases of bomb k: ``k % 3 + 1`` (int32 [B])."""
    return (np.arange(params.num_bombs) % MAX_PHASES + 1).astype(np.int32)


def max_score(params: Params) -> int:
    """Score for defusing every bomb (90 for the default world)."""
    return int(10 * bomb_phases(params).sum())


def tools(params: Params) -> np.ndarray:
    """bool [A, 3]: 2 tools: alpha red+green, bravo green+blue, charlie blue+red; 1 tool: alpha red, ..."""
    t = np.zeros((params.num_agents, NUM_COLOURS), dtype=bool)
    for a in range(params.num_agents):
        t[a, a % NUM_COLOURS] = True
        if params.tools_per_agent == 2:
            t[a, (a + 1) % NUM_COLOURS] = True
    return t


def released_adjacency(num_rooms: int = MAX_ROOMS) -> np.ndarray:
    """The released fixed map (induced on its first ``num_rooms`` rooms), bool [R, R]."""
    adj = np.zeros((MAX_ROOMS, MAX_ROOMS), dtype=bool)
    for a, b in RELEASED_EDGES:
        i, j = ROOM_LABELS.index(a), ROOM_LABELS.index(b)
        adj[i, j] = adj[j, i] = True
    return adj[:num_rooms, :num_rooms]


def _max_number(params: Params) -> int:
    return max(params.max_rounds, max_score(params), max(ROOM_LABELS), MAX_PHASES)


def vocabulary(params: Params) -> Vocabulary:
    """The world's closed vocabulary: template words, names, colours, message words, numbers 0..N."""
    words: list[str] = []
    for text in RESULT_TEMPLATES:
        words += [w for w in text.split() if not w.startswith("{")]
    words += [str(n) for n in range(_max_number(params) + 1)]  # contiguous ids: id(str(n)) = id("0") + n
    words += [*_EXTRA_WORDS, *AGENT_NAMES, *COLOUR_NAMES, *MESSAGE_WORDS]
    return Vocabulary(words)


class _Tables(NamedTuple):
    templates: np.ndarray  # int32 [num_results, TEMPLATE_LEN] word ids / placeholders
    colour: np.ndarray  # int32 [3]
    name: np.ndarray  # int32 [A]
    number0: int  # id of "0"; numbers are contiguous
    room_label: np.ndarray  # int32 [MAX_ROOMS] word ids of the labels
    message_to_vocab: np.ndarray  # int32 [NUM_MESSAGE_IDS]
    message_colour: np.ndarray  # int32 [NUM_MESSAGE_IDS] colour id or -1
    message_room: np.ndarray  # int32 [NUM_MESSAGE_IDS] room index or -1
    w: dict[str, int]


def _tables(params: Params) -> _Tables:
    vocab = vocabulary(params)
    templates = np.zeros((len(RESULT_TEMPLATES), TEMPLATE_LEN), dtype=np.int32)
    for r, text in enumerate(RESULT_TEMPLATES):
        for p, word in enumerate(text.split()):
            templates[r, p] = _PLACEHOLDERS[word] if word.startswith("{") else vocab.id(word)
    msg_vocab = np.array([0] + [vocab.id(w) for w in MESSAGE_WORDS], dtype=np.int32)
    msg_colour = np.full(NUM_MESSAGE_IDS, -1, dtype=np.int32)
    msg_room = np.full(NUM_MESSAGE_IDS, -1, dtype=np.int32)
    for m, word in enumerate(MESSAGE_WORDS, start=1):
        if word in COLOUR_NAMES:
            msg_colour[m] = COLOUR_NAMES.index(word)
        if word.isdigit() and int(word) in ROOM_LABELS:
            msg_room[m] = ROOM_LABELS.index(int(word))
    return _Tables(
        templates=templates,
        colour=np.array([vocab.id(c) for c in COLOUR_NAMES], dtype=np.int32),
        name=np.array([vocab.id(n) for n in AGENT_NAMES[: params.num_agents]], dtype=np.int32),
        number0=vocab.id("0"),
        room_label=np.array([vocab.id(str(label)) for label in ROOM_LABELS], dtype=np.int32),
        message_to_vocab=msg_vocab,
        message_colour=msg_colour,
        message_room=msg_room,
        w={
            w: vocab.id(w)
            for w in (
                "bomb",
                "round",
                "score",
                "room",
                "contents",
                "phases",
                "left",
                "sequence",
                "says",
                "in",
                "inspected",
                "the",
            )
        },
    )


def message_ids(words: str) -> list[int]:
    """Message ids of a space-separated message, e.g. ``message_ids("6 red blue") == [5, 1, 3]``."""
    return [MESSAGE_WORDS.index(w) + 1 for w in words.split()]


def vector_size(params: Params) -> int:
    """Length of the per-agent ``vector`` observation."""
    a = params.num_agents
    return MAX_ROOMS + NUM_COLOURS + a + 3 + MAX_PHASES * NUM_COLOURS + 2 + a * MAX_ROOMS + a


# ---------------------------------------------------------------------------------------------
# Cheap exact equivalents of small random permutations and small-table lookups
# ---------------------------------------------------------------------------------------------


def _ranks(bits: jax.Array) -> jax.Array:
    """int32 [..., n]: the rank of each of the n random words of a row among them (ties broken by position).

    For independent uniform words this is a uniformly random permutation (word i goes to position rank[i]),
    found with pairwise comparisons: no sort."""
    n = bits.shape[-1]
    earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [i, j]: j before i
    below = bits[..., None, :] < bits[..., :, None]
    tie = bits[..., None, :] == bits[..., :, None]
    return jnp.sum(below | (tie & earlier), axis=-1, dtype=jnp.int32)


def _order(rank: jax.Array) -> jax.Array:
    """int32 [..., n]: the inverse of ``rank`` (order[p] = the i with rank[i] == p), by one-hot sums."""
    n = rank.shape[-1]
    at = rank[..., None, :] == jnp.arange(n)[:, None]  # [..., p, i]
    return jnp.sum(jnp.where(at, jnp.arange(n), 0), axis=-1, dtype=jnp.int32)


def _below(bits: jax.Array, n: jax.Array | int) -> jax.Array:
    """int32: a uniform integer in [0, n) from each random 32-bit word (its top 24 bits; n <= 256)."""
    return jnp.right_shift(jnp.right_shift(bits, 8) * jnp.asarray(n, jnp.uint32), 24).astype(jnp.int32)


def _lookup(table: np.ndarray, index: jax.Array) -> jax.Array:
    """``table[index]`` for a small constant 1-D table, as a chain of selects (no gather)."""
    out = jnp.full(jnp.shape(index), int(table[0]), jnp.int32)
    for v in range(1, len(table)):
        out = jnp.where(index == v, int(table[v]), out)
    return out


# ---------------------------------------------------------------------------------------------
# Reset
# ---------------------------------------------------------------------------------------------


def _graph_words(num_rooms: int) -> int:
    """Random words one random graph takes: a room order, a parent per non-root room, one per other edge."""
    return 2 * num_rooms - 1 + num_rooms * (num_rooms - 1) // 2


def _adjacency_from_bits(words: jax.Array, num_rooms: int, extra_prob: float) -> jax.Array:
    """A random connected graph from ``_graph_words(num_rooms)`` random words: a random spanning tree (rooms in a
    random order, each attached to a uniformly chosen earlier one) plus each other edge with prob ``extra_prob``."""
    r = num_rooms
    rooms = jnp.arange(r)
    order = _order(_ranks(words[:r]))
    parent_pos = _below(words[r : 2 * r - 1], np.arange(1, r))  # uniform in 0..i-1 for the i-th room, i >= 1
    parent = jnp.sum(jnp.where(parent_pos[:, None] == rooms[None, :], order[None, :], 0), axis=1)
    child_at = order[1:, None] == rooms[None, :]  # [r-1, r] one-hot
    parent_at = parent[:, None] == rooms[None, :]
    tree = jnp.any((child_at[:, :, None] & parent_at[:, None, :]) | (parent_at[:, :, None] & child_at[:, None, :]), 0)
    iu, ju = np.triu_indices(r, 1)
    pairs = np.zeros((len(iu), r, r), bool)
    pairs[np.arange(len(iu)), iu, ju] = pairs[np.arange(len(iu)), ju, iu] = True
    threshold = int(round(extra_prob * (1 << 24)))
    extra = jnp.right_shift(words[2 * r - 1 :], 8) < threshold  # one per pair i < j
    return tree | jnp.any(extra[:, None, None] & jnp.asarray(pairs), axis=0)


def random_adjacency(key: jax.Array, num_rooms: int, extra_prob: float = 0.5) -> jax.Array:
    """A random connected graph: a random spanning tree plus each other edge with prob ``extra_prob``."""
    words = jax.random.bits(key, (_graph_words(num_rooms),), jnp.uint32)
    return _adjacency_from_bits(words, num_rooms, extra_prob)


_TOOLS_STREAM = 0x7001  # fold_in tag of the draw of a world's tool set with ``tools_mix``


def held_tools(state: State, params: Params) -> jax.Array:
    """bool [A, 3] the cutters each agent holds: ``state.tools``, or without ``tools_mix`` the static
    ``tools(params)`` (the same values, kept a compile-time constant that XLA folds into the step)."""
    return state.tools if params.tools_mix else jnp.asarray(tools(params))


def _reset_words(params: Params) -> tuple[int, int, int, int]:
    """Random words a reset draws for (the graph, the bomb rooms, the colour sequences, the start rooms)."""
    a, b, r = params.num_agents, params.num_bombs, params.num_rooms
    start = 1 if params.start == "same" else (r if r >= a else a)
    return (_graph_words(r) if params.random_graph else 0), r, b * NUM_COLOURS, start


def reset(key: jax.Array, params: Params) -> tuple[dict[str, jax.Array], State]:
    """Starts an episode; returns (observation, state). Observation arrays have a leading agent axis.

    Every random choice comes from one draw of 32-bit words: permutations rank a row of words, uniform
    integers take a word's top 24 bits."""
    a, b, r, m = params.num_agents, params.num_bombs, params.num_rooms, params.message_len
    n_graph, n_bomb, n_seq, n_start = _reset_words(params)
    words = jax.random.bits(key, (n_graph + n_bomb + n_seq + n_start,), jnp.uint32)
    w_graph, w_bomb, w_seq, w_start = jnp.split(words, np.cumsum([n_graph, n_bomb, n_seq])[:3])
    if params.random_graph:
        adjacency = _adjacency_from_bits(w_graph, r, 0.5)
    else:
        adjacency = jnp.asarray(released_adjacency(r))
    bomb_room = _order(_ranks(w_bomb))[:b]
    phases = jnp.asarray(bomb_phases(params))
    perms = _order(_ranks(w_seq.reshape(b, NUM_COLOURS)))
    seq = jnp.where(jnp.arange(MAX_PHASES)[None, :] < phases[:, None], perms, -1).astype(jnp.int32)
    if params.start == "same":
        agent_room = jnp.full((a,), _below(w_start[0], r), dtype=jnp.int32)
    elif r >= a:
        agent_room = _order(_ranks(w_start))[:a]
    else:
        agent_room = _below(w_start, r)
    zero = jnp.zeros((), jnp.int32)
    held = jnp.asarray(tools(params))
    if params.tools_mix > 0:  # its own stream: the other draws stay those of a world without the mix
        one = jax.random.uniform(jax.random.fold_in(key, _TOOLS_STREAM)) < params.tools_mix
        held = jnp.where(one, jnp.asarray(tools(params._replace(tools_per_agent=1))), held)
    state = State(
        agent_room=agent_room,
        tools=held,
        adjacency=adjacency,
        bomb_room=bomb_room,
        bomb_seq=seq,
        bomb_phases=phases,
        bomb_progress=jnp.zeros((b,), jnp.int32),
        bomb_status=jnp.zeros((b,), jnp.int32),
        knows=jnp.zeros((a, b), bool),
        knows_that=jnp.zeros((a, a, b), bool),
        witnessed=jnp.zeros((a, a), bool),
        messages=jnp.zeros((a, m), jnp.int32),
        last_action=jnp.full((a,), -1, jnp.int32),
        last_result=jnp.full((a,), R_START, jnp.int32),
        valid_count=jnp.zeros((a,), jnp.int32),
        action_count=jnp.zeros((a,), jnp.int32),
        round=zero,
        score=zero,
        explosions=zero,
        messages_sent=zero,
        together_rounds=zero,
        completed_round=jnp.asarray(params.max_rounds, jnp.int32),
        terminated=jnp.zeros((), bool),
        done=jnp.zeros((), bool),
    )
    return observe(state, params), state


# The fields of a fresh world that reset draws at random (plus ``adjacency`` with ``random_graph``); the others
# are the same in every fresh world.
_DRAWN_FIELDS = ("agent_room", "bomb_room", "bomb_seq")


def reset_where(keys: jax.Array, states: State, where: jax.Array, params: Params, chunk: int = 0) -> State:
    """Batched auto-reset: world w of ``states`` (leading axis W) becomes ``reset(keys[w], params)`` where
    ``where[w]``, and is kept otherwise.

    ``keys`` is [W] keys, or one key standing for ``keys[w] = fold_in(key, w)`` (only the worlds that reset pay
    for theirs). Bit-identical to ``vmap(reset)`` over every world followed by ``where(where, fresh, states)``,
    the usual auto-reset under ``vmap``, but only the worlds that end are reset: ``chunk`` of them at a time
    (their indices gathered with a static size), repeated while any is left, so the cost follows the number of
    episodes that end rather than the number of worlds. ``chunk`` 0 picks ``max(1, W // 8)``; up to 16 worlds
    are all reset and selected (cheaper than the bookkeeping).
    """
    w = where.shape[0]
    chunk = min(w, chunk or max(1, w // 8))
    if keys.ndim == 0:
        key = keys
        keys_of = lambda idx: jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)  # noqa: E731
    else:
        keys_of = lambda idx: keys[idx]  # noqa: E731
    if w <= 16 or chunk == w:  # a few worlds: resetting all of them costs less than the bookkeeping
        _, fresh = jax.vmap(lambda k: reset(k, params))(keys_of(jnp.arange(w)))
        return jax.tree.map(lambda f, s: jnp.where(jnp.reshape(where, (w,) + (1,) * (s.ndim - 1)), f, s), fresh, states)

    # Only the drawn fields go through the loop (a loop carries its arrays through copies, and XLA:CPU cannot
    # fuse across it); every other field of a fresh world is the same in all worlds, and is selected outside it.
    drawn = _DRAWN_FIELDS + (("adjacency",) if params.random_graph else ()) + (("tools",) if params.tools_mix else ())
    _, template = reset(jax.random.key(0), params)

    def body(carry: tuple[tuple[jax.Array, ...], jax.Array]) -> tuple[tuple[jax.Array, ...], jax.Array]:
        fields, left = carry
        idx = jnp.nonzero(left, size=chunk, fill_value=w)[0]  # w: no world (dropped by the scatter)
        _, fresh = jax.vmap(lambda k: reset(k, params))(keys_of(jnp.minimum(idx, w - 1)))
        fields = tuple(x.at[idx].set(getattr(fresh, f), mode="drop") for f, x in zip(drawn, fields, strict=True))
        return fields, left.at[idx].set(False, mode="drop")

    fields, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (tuple(getattr(states, f) for f in drawn), where))
    out = dict(zip(drawn, fields, strict=True))
    for f in State._fields:
        if f not in out:
            s, t = getattr(states, f), getattr(template, f)
            out[f] = jnp.where(jnp.reshape(where, (w,) + (1,) * (s.ndim - 1)), t[None], s)
    return State(**out)



# ---------------------------------------------------------------------------------------------
# Step
# ---------------------------------------------------------------------------------------------


def action_mask(state: State, params: Params) -> jax.Array:
    """bool [A, 9]: legal actions per agent (inspect / move along an edge / cut with an owned cutter); the bit set
    :func:`legal_set` unpacked."""
    return (jnp.right_shift(legal_set(state, params)[:, None], jnp.arange(NUM_ACTIONS)) & 1).astype(bool)


def legal_set(state: State, params: Params) -> jax.Array:
    """int32 [A]: each agent's legal actions as a bit set (bit j set: action j legal; :func:`action_mask` is it
    unpacked), by elementwise integer arithmetic (no [A, 9] mask, cumulative sums or argmaxes; the sampler
    :func:`scripted.pick_legal` reads it). Action 0 inspects (a bomb is active here), 1 + j moves to room j (an
    edge), 1 + MAX_ROOMS + c cuts with colour c (an owned cutter and an active bomb here)."""
    r = params.num_rooms
    rooms = jnp.arange(r)
    # Rooms holding an active bomb, as a bit set (bombs lie in distinct rooms).
    live = jnp.sum(jnp.where(state.bomb_status == ACTIVE, jnp.left_shift(1, state.bomb_room), 0))
    active_here = jnp.right_shift(live, state.agent_room) & 1  # [A]
    # Each room's neighbours as a bit set (bit 1 + j: the move to room j), then the agent's room's row.
    row_bits = jnp.sum(jnp.where(state.adjacency, jnp.left_shift(2, rooms)[None, :], 0), axis=1)  # [R]
    moves = jnp.zeros_like(state.agent_room)
    for v in range(r):
        moves = jnp.where(state.agent_room == v, row_bits[v], moves)
    bits = jnp.left_shift(1, 1 + MAX_ROOMS + jnp.arange(NUM_COLOURS))
    tool_bits = jnp.sum(jnp.where(held_tools(state, params), bits, 0), axis=1)
    cuts = jnp.where(active_here > 0, tool_bits, 0)  # [A]
    return (active_here | moves | cuts).astype(jnp.int32)


class _Round(NamedTuple):
    """What changes while the agents' actions of one round are applied one after another (the knowledge
    arrays are updated once, after the round, from the inspections recorded in :class:`_Inspection`)."""

    room: jax.Array
    progress: jax.Array
    status: jax.Array
    result: jax.Array
    valid: jax.Array
    reward: jax.Array
    score: jax.Array
    explosions: jax.Array


class _Inspection(NamedTuple):
    """One agent's turn as seen by the knowledge arrays: who inspected (one-hot or empty), which bomb (one-hot
    or empty) and who was in the room (the inspector included)."""

    inspector: jax.Array  # bool [A]
    bomb: jax.Array  # bool [B]
    watchers: jax.Array  # bool [A]


def _apply_one(
    is_me: jax.Array, actions: jax.Array, carry: _Round, state: State, params: Params
) -> tuple[_Round, _Inspection]:
    """Applies the action of the agent selected by the one-hot ``is_me`` [A] to the partial round state.

    One-hot arithmetic over the small agent / bomb / room / colour axes: no gathers, scatters or control flow.
    """
    room, progress, status, result, valid, reward, score, explosions = carry
    seq, bomb_room, adjacency, phases = state.bomb_seq, state.bomb_room, state.adjacency, state.bomb_phases
    r_n = params.num_rooms
    tool = held_tools(state, params)
    action = jnp.sum(jnp.where(is_me, actions, 0))
    my_room = jnp.sum(jnp.where(is_me, room, 0))
    bomb_here = (bomb_room == my_room) & (status == ACTIVE)  # [B] one-hot or empty
    active = jnp.any(bomb_here)
    first = bomb_here & (jnp.cumsum(bomb_here) == 1)  # the bomb argmax(bomb_here) picks (zeros if none)
    prog_k = jnp.sum(jnp.where(first, progress, 0))
    seq_k = jnp.sum(jnp.where(first[:, None], seq, 0), axis=0)  # [3]
    next_colour = jnp.sum(jnp.where(jnp.arange(MAX_PHASES) == jnp.minimum(prog_k, MAX_PHASES - 1), seq_k, 0))
    phases_k = jnp.sum(jnp.where(first, phases, 0))

    is_inspect = action == 0
    is_move = (action >= 1) & (action <= MAX_ROOMS)
    is_cut = action >= 1 + MAX_ROOMS
    target = jnp.clip(action - 1, 0, r_n - 1)
    colour = jnp.clip(action - 1 - MAX_ROOMS, 0, NUM_COLOURS - 1)
    rooms = jnp.arange(r_n)
    edge = jnp.any(adjacency & (rooms == my_room)[:, None] & (rooms == target)[None, :])
    move_ok = is_move & (action - 1 < r_n) & edge
    owned = jnp.any(tool & is_me[:, None] & (jnp.arange(NUM_COLOURS) == colour)[None, :])
    cut_ok = is_cut & owned & active
    right = cut_ok & (next_colour == colour)
    wrong = cut_ok & (next_colour != colour)
    inspect_ok = is_inspect & active
    defuse = right & (prog_k + 1 >= phases_k)
    explode = wrong & (params.wrong_cut == "explode")

    # Inspect: the inspector learns k; everyone in the room sees it happen (applied after the round).
    seen = _Inspection(inspector=is_me & inspect_ok, bomb=bomb_here & inspect_ok, watchers=room == my_room)

    # Move, cut.
    room = jnp.where(is_me & move_ok, target, room)
    cut_k = bomb_here & right
    progress = progress + cut_k.astype(jnp.int32)
    status = jnp.where(bomb_here & defuse, DEFUSED, status)
    status = jnp.where(bomb_here & explode, EXPLODED, status)
    points = jnp.where(defuse, 10 * phases_k, 0)
    score = score + points
    reward = reward + points.astype(jnp.float32)
    if params.shaping:
        reward = reward + right.astype(jnp.float32) - explode.astype(jnp.float32)
    explosions = explosions + explode.astype(jnp.int32)

    code = jnp.select(
        [
            is_inspect & inspect_ok,
            is_inspect,
            move_ok,
            is_move,
            defuse,
            right,
            explode,
            wrong,
            is_cut & ~owned,
        ],
        [
            R_INSPECT_OK,
            R_INSPECT_NONE,
            R_MOVE_OK,
            R_MOVE_BAD,
            R_CUT_DEFUSED,
            R_CUT_ADVANCE,
            R_CUT_WRONG_EXPLODE,
            R_CUT_WRONG_NOOP,
            R_CUT_NO_TOOL,
        ],
        R_CUT_NO_BOMB,
    )
    result = jnp.where(is_me, code, result)
    valid = valid | (is_me & (inspect_ok | move_ok | cut_ok))
    return _Round(room, progress, status, result, valid, reward, score, explosions), seen


def _message_colour_room(messages: jax.Array, params: Params) -> tuple[jax.Array, jax.Array]:
    """(colour id or -1, room index or -1) of each message id, by select chains over the constant tables."""
    t = _tables(params)
    return _lookup(t.message_colour, messages), _lookup(t.message_room, messages)


def _tells(messages: jax.Array, state: State, params: Params) -> jax.Array:
    """bool [A, B]: the message of sender i names bomb k's remaining sequence (k active)."""
    cols, rooms = _message_colour_room(messages, params)  # [A, M]
    names_room = jnp.any(rooms[:, None, :] == state.bomb_room[None, :, None], axis=-1)  # [A, B]
    # Colour words of the message, compacted in order, first MAX_PHASES of them; count them.
    is_col = cols >= 0
    pos = jnp.cumsum(is_col, axis=1) - 1
    n_col = is_col.sum(axis=1)  # [A]
    slots = jnp.arange(MAX_PHASES)
    # said[i, s] = colour at colour-position s (or -1)
    said = jnp.max(
        jnp.where(is_col[:, :, None] & (pos[:, :, None] == slots[None, None, :]), cols[:, :, None], -1), axis=1
    )
    # remaining sequence of each bomb, left-aligned: rem[k, s] = seq[k, progress + s]
    idx = state.bomb_progress[:, None] + slots[None, :]
    rem = jnp.where(idx < MAX_PHASES, _take_slots(state.bomb_seq, jnp.minimum(idx, MAX_PHASES - 1)), -1)
    n_rem = state.bomb_phases - state.bomb_progress  # [B]
    same = jnp.all(said[:, None, :] == rem[None, :, :], axis=-1) & (n_col[:, None] == n_rem[None, :])
    return names_room & same & (state.bomb_status == ACTIVE)[None, :]


def _take_slots(seq: jax.Array, idx: jax.Array) -> jax.Array:
    """``take_along_axis(seq, idx, 1)`` for [B, 3] arrays with ``idx`` in 0..2, by one-hot sums."""
    pick = idx[:, :, None] == jnp.arange(MAX_PHASES)[None, None, :]  # [B, s, src]
    return jnp.sum(jnp.where(pick, seq[:, None, :], 0), axis=-1)


def step(
    key: jax.Array, state: State, actions: jax.Array, messages: jax.Array, params: Params
) -> tuple[dict[str, jax.Array], State, jax.Array, jax.Array, dict[str, jax.Array]]:
    """One round: ``actions`` int32 [A] in 0..8, ``messages`` int32 [A, M] in 0..NUM_MESSAGE_IDS-1.

    Returns (observation, state, team reward float32 [], done bool [], info). Out-of-range ids are clipped
    here (the host adapter validates them); a finished state is returned unchanged with reward 0.
    """
    new_state, reward, info = step_state(key, state, actions, messages, params)
    return observe(new_state, params), new_state, reward, new_state.done, info


def step_state(
    key: jax.Array, state: State, actions: jax.Array, messages: jax.Array, params: Params
) -> tuple[State, jax.Array, dict[str, jax.Array]]:
    """``step`` without building the observation: (state, reward, info)."""
    a_n = params.num_agents
    actions = jnp.clip(jnp.asarray(actions, jnp.int32), 0, NUM_ACTIONS - 1)
    messages = jnp.clip(jnp.asarray(messages, jnp.int32), 0, NUM_MESSAGE_IDS - 1)
    if params.silence:
        messages = jnp.zeros_like(messages)
    rank = _ranks(jax.random.bits(key, (a_n,), jnp.uint32))  # agent i acts rank[i]-th: a random turn order
    carry = _Round(
        room=state.agent_room,
        progress=state.bomb_progress,
        status=state.bomb_status,
        result=state.last_result,
        valid=jnp.zeros((a_n,), bool),
        reward=jnp.zeros((), jnp.float32),
        score=state.score,
        explosions=state.explosions,
    )
    seen = []
    for p in range(a_n):
        carry, inspection = _apply_one(rank == p, actions, carry, state, params)
        seen.append(inspection)
    room, progress, status, result, valid, reward, score, explosions = carry

    # The round's inspections, applied once: the inspector learns the bomb's sequence, everyone in the room
    # (inspector included) knows that the inspector knows it, and the others saw it happen.
    knows, knows_that, witnessed = state.knows, state.knows_that, jnp.zeros((a_n, a_n), bool)
    not_self = ~jnp.eye(a_n, dtype=bool)  # [j, i]
    for ins in seen:
        knows = knows | (ins.inspector[:, None] & ins.bomb[None, :])
        knows_that = knows_that | (ins.watchers[:, None, None] & ins.inspector[None, :, None] & ins.bomb[None, None, :])
        witnessed = witnessed | (ins.watchers[:, None] & ins.inspector[None, :] & not_self)

    # Messages: a sender who knows k and names k's remaining sequence tells both teammates.
    if not params.silence:  # silent messages tell nothing
        tells = _tells(messages, state._replace(bomb_progress=progress, bomb_status=status), params) & knows
        others = ~jnp.eye(a_n, dtype=bool)  # [i, j]
        told = others[:, :, None] & tells[:, None, :]  # [i(sender), j(receiver), k]
        knows = knows | jnp.any(told, axis=0)
        # A message reaches the whole team, so the told bomb becomes common knowledge: everyone knows everyone knows.
        knows_that = knows_that | jnp.any(told, axis=(0, 1))[None, None, :]
    sent = jnp.sum(jnp.any(messages > 0, axis=1)).astype(jnp.int32)

    rnd = state.round + 1
    no_active = jnp.all(status != ACTIVE)
    new = State(
        agent_room=room,
        tools=state.tools,
        adjacency=state.adjacency,
        bomb_room=state.bomb_room,
        bomb_seq=state.bomb_seq,
        bomb_phases=state.bomb_phases,
        bomb_progress=progress,
        bomb_status=status,
        knows=knows,
        knows_that=knows_that,
        witnessed=witnessed,
        messages=messages,
        last_action=actions,
        last_result=result,
        valid_count=state.valid_count + valid.astype(jnp.int32),
        action_count=state.action_count + 1,
        round=rnd,
        score=score,
        explosions=explosions,
        messages_sent=state.messages_sent + sent,
        together_rounds=state.together_rounds + jnp.all(room == room[0]).astype(jnp.int32),
        completed_round=jnp.where(no_active, rnd, state.completed_round),
        terminated=no_active,
        done=no_active | (rnd >= params.max_rounds),
    )
    constant = ("tools", "adjacency", "bomb_room", "bomb_seq", "bomb_phases")  # never change within an episode
    new = State(
        **{
            f: nw if f in constant else jnp.where(state.done, old, nw)
            for f, old, nw in zip(State._fields, state, new, strict=True)
        }
    )
    reward = jnp.where(state.done, 0.0, reward)
    valid = valid & ~state.done
    info = {
        "valid": valid,
        "result": new.last_result,
        "terminated": new.terminated,
        "truncated": new.done & ~new.terminated,
        **theory_of_mind(new),
    }
    return new, reward, info


METRICS = ("score", "rounds", "valid_pct", "explosions", "messages_sent", "together_pct")


def episode_metrics(state: State) -> dict[str, jax.Array]:
    """The team's episode metrics so far (final once ``done``), float32 scalars named as :data:`METRICS`: defusal
    points, rounds to completion (``max_rounds`` if never), valid-action %, explosions, messages sent and the % of
    rounds after which all agents stood in one room (100 for a pack; scouts split up)."""
    played = jnp.maximum(state.round, 1)
    return {
        "score": state.score.astype(jnp.float32),
        "rounds": state.completed_round.astype(jnp.float32),
        "valid_pct": 100.0 * state.valid_count.sum() / jnp.maximum(state.action_count.sum(), 1),
        "explosions": state.explosions.astype(jnp.float32),
        "messages_sent": state.messages_sent.astype(jnp.float32),
        "together_pct": 100.0 * state.together_rounds / played,
    }


def theory_of_mind(state: State) -> dict[str, jax.Array]:
    """Ground truth for agent i, teammate j, bomb k (diagonal j == i is i itself).

    ``tom_introspection`` [i, k]: i knows k's sequence; ``tom_first_order`` [i, j, k]: j knows it;
    ``tom_second_order`` [i, j, k]: j knows that i knows it.
    """
    a = state.knows.shape[0]
    return {
        "tom_introspection": state.knows,
        "tom_first_order": jnp.broadcast_to(state.knows[None, :, :], (a, *state.knows.shape)),
        "tom_second_order": state.knows_that.transpose(1, 0, 2),
    }


# ---------------------------------------------------------------------------------------------
# Observation
# ---------------------------------------------------------------------------------------------


def remaining_sequence(state: State) -> jax.Array:
    """int32 [B, 3]: each bomb's remaining colours left-aligned, -1 padded (all -1 once inactive)."""
    slots = jnp.arange(MAX_PHASES)
    idx = state.bomb_progress[:, None] + slots[None, :]
    rem = _take_slots(state.bomb_seq, jnp.minimum(idx, MAX_PHASES - 1))
    ok = (idx < state.bomb_phases[:, None]) & (state.bomb_status == ACTIVE)[:, None]
    return jnp.where(ok, rem, -1)


def _compact(tokens: jax.Array, length: int) -> jax.Array:
    """Removes pads (tokens <= 0) keeping order; pads / truncates to ``length`` (last axis; any leading axes)."""
    if tokens.ndim > 1:
        return jax.vmap(lambda x: _compact(x, length))(tokens)
    keep = tokens > 0
    pos = jnp.where(keep, jnp.cumsum(keep.astype(jnp.int32)) - 1, length)  # int32 cumsum: far cheaper than bool
    return jnp.zeros((length,), jnp.int32).at[pos].set(tokens, mode="drop")


def observe(state: State, params: Params) -> dict[str, jax.Array]:
    """Per-agent observations stacked on a leading agent axis: ``vector`` float32 [A, D], ``action_mask``
    bool [A, 9], ``tokens`` int32 [A, token_len]."""
    a_n = params.num_agents
    t = _tables(params)
    w = t.w
    agents = jnp.arange(a_n)
    rem = remaining_sequence(state)  # [B, 3]
    mask = action_mask(state, params)
    tool = held_tools(state, params)
    number = lambda n: t.number0 + n  # noqa: E731
    colour_word = lambda c: jnp.where(c >= 0, _lookup(t.colour, jnp.maximum(c, 0)), 0)  # noqa: E731
    room_word = lambda r: _lookup(t.room_label, r)  # noqa: E731
    names = [int(v) for v in t.name]
    msg_words = _lookup(t.message_to_vocab, state.messages)  # [A, M]
    visible = params.teammates == "visible"
    phases_left = state.bomb_phases - state.bomb_progress  # [B]
    mate_rooms = room_word(state.agent_room) if visible else None  # [A]

    def one(is_i: jax.Array) -> tuple[jax.Array, jax.Array]:
        pick = lambda x: jnp.sum(jnp.where(is_i.reshape(-1, *[1] * (x.ndim - 1)), x, 0), axis=0)  # noqa: E731
        my_room = pick(state.agent_room)
        here = (state.bomb_room == my_room) & (state.bomb_status == ACTIVE)
        present = jnp.any(here)
        first = here & (jnp.cumsum(here) == 1)  # the bomb argmax(here) picks (zeros if none)
        known = jnp.any(pick(state.knows) & first) & present
        left = jnp.where(present, jnp.sum(jnp.where(first, phases_left, 0)), 0)
        rem_k = jnp.sum(jnp.where(first[:, None], rem, 0), axis=0)  # [3] (only read when present)
        seq_here = jnp.where(known, rem_k, -1)  # [3]
        others = (state.agent_room == my_room) & ~is_i

        # -- vector
        room_oh = jax.nn.one_hot(my_room, MAX_ROOMS)
        who = (state.agent_room == my_room).astype(jnp.float32)
        seq_oh = jax.nn.one_hot(seq_here, NUM_COLOURS).reshape(-1)  # -1 -> zeros
        mates = jax.nn.one_hot(state.agent_room, MAX_ROOMS) * (~is_i)[:, None]
        mates = mates * visible
        vec = jnp.concatenate(
            [
                room_oh,
                pick(tool).astype(jnp.float32),
                who,
                jnp.stack([present, left / MAX_PHASES, known]).astype(jnp.float32),
                seq_oh,
                jnp.stack([state.score / max(max_score(params), 1), state.round / params.max_rounds]),
                mates.reshape(-1),
                is_i.astype(jnp.float32),
            ]
        ).astype(jnp.float32)

        # -- tokens (fixed slots, compacted)
        act = pick(state.last_action)
        fill = {
            P_COLOUR: colour_word(jnp.clip(act - 1 - MAX_ROOMS, 0, NUM_COLOURS - 1)),
            P_ROOM: room_word(jnp.clip(act - 1, 0, MAX_ROOMS - 1)),
            P_S0: colour_word(jnp.where(present, rem_k[0], -1)),
            P_S1: colour_word(jnp.where(present, rem_k[1], -1)),
            P_S2: colour_word(jnp.where(present, rem_k[2], -1)),
            P_LEFT: number(left),
        }
        last_result = pick(state.last_result)
        tpl = jnp.zeros((TEMPLATE_LEN,), jnp.int32)
        for code, row in enumerate(t.templates):
            tpl = jnp.where(last_result == code, jnp.asarray(row), tpl)
        res = tpl
        for ph, val in fill.items():
            res = jnp.where(tpl == ph, val, res)
        header = jnp.stack([w["round"], number(state.round), w["score"], number(state.score)])
        contents = jnp.concatenate(
            [
                jnp.stack([w["room"], room_word(my_room), w["contents"], jnp.where(present, w["bomb"], 0)]),
                jnp.where(others, jnp.asarray(t.name), 0),
            ]
        )
        bomb = jnp.stack(
            [
                jnp.where(present, w["bomb"], 0),
                jnp.where(present, number(left), 0),
                jnp.where(present, w["phases"], 0),
                jnp.where(present, w["left"], 0),
                jnp.where(known, w["sequence"], 0),
                *[colour_word(seq_here[s]) for s in range(MAX_PHASES)],
            ]
        )
        parts = [header, res, contents, bomb]
        saw_row = pick(state.witnessed)  # [A]: i saw j inspect
        for j in range(a_n):
            me = is_i[j]
            saw = saw_row[j] & ~me
            parts.append(jnp.where(saw, jnp.asarray([names[j], w["inspected"], w["the"], w["bomb"]]), 0))
            if visible:
                parts.append(jnp.where(~me, jnp.stack([names[j], w["in"], w["room"], mate_rooms[j]]), 0))
            if not params.silence:
                msg = state.messages[j]
                speaks = jnp.any(msg > 0) & ~me
                words = jnp.concatenate([jnp.asarray([names[j], w["says"]]), msg_words[j]])
                parts.append(jnp.where(speaks, words, 0))
        return vec, jnp.concatenate(parts)

    vector, tokens = jax.vmap(one)(agents[:, None] == agents[None, :])
    return {"vector": vector, "action_mask": mask, "tokens": _compact(tokens, params.token_len)}
