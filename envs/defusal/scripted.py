"""Scripted teams for the defusal world, as pure JAX policies ``policy(key, state, params) -> (actions, messages)``.

* :func:`random_legal` — each agent picks uniformly among its legal actions; silent.
* :func:`heuristic` — decentralised: each agent acts on what it has seen or been told (``state.knows``) and on
  what it believes its teammates know (``state.knows_that``); it inspects unknown bombs, announces the bomb
  here as ``"<room label> <colours...>"``, cuts with its own tools (the lowest-index capable agent in the room
  cuts, so two agents never cut one bomb in a round), and otherwise walks (shortest path) to a known bomb whose
  next colour it owns, else to an uninspected bomb, else to a known bomb where it owns a later colour. Bomb
  status (defused / exploded) is treated as public, like the team score.
* :func:`planner` — centralised with full information (all sequences, all positions): every agent walks to the
  nearest bomb whose next colour it owns and the lowest-index capable agent cuts. Greedy, not optimal.

* pack teams (silent, never inspect; need :func:`check_pack_world`): :func:`pack` (together, nearest room first,
  three colours a round), :func:`pack_two_colours`, :func:`pack_tour` (a shortest tour: the best a team that never
  splits can do) and :func:`pack_scouts` (an agent walks ahead once its colour is spent on the bomb here).

:func:`evaluate` runs any of them over many seeds at once (``vmap`` over worlds, ``lax.scan`` over rounds).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from envs.defusal import core

Policy = Callable[[jax.Array, core.State, core.Params], tuple[jax.Array, jax.Array]]
_BIG = 1000


def distances(adjacency: jax.Array) -> jax.Array:
    """All-pairs shortest path lengths (int32 [R, R]; ``_BIG`` if unreachable) by Floyd–Warshall."""
    r = adjacency.shape[0]
    d = jnp.where(adjacency, 1, _BIG)
    d = jnp.where(jnp.eye(r, dtype=bool), 0, d)
    for m in range(r):
        d = jnp.minimum(d, d[:, m : m + 1] + d[m : m + 1, :])
    return d


def _hop(adjacency: jax.Array, dist: jax.Array, room: jax.Array, target: jax.Array) -> jax.Array:
    """The neighbour of ``room`` on a shortest path to ``target`` (the lowest index on ties)."""
    return jnp.argmin(jnp.where(adjacency[room], dist[:, target], _BIG))


def _random_legal_actions(key: jax.Array, mask: jax.Array) -> jax.Array:
    """int32 [...]: uniform among the True entries of each row of ``mask`` [..., N] (0 where a row has none)."""
    return legal_from_bits(jax.random.bits(key, mask.shape[:-1], jnp.uint32), mask)


def legal_from_bits(bits: jax.Array, mask: jax.Array) -> jax.Array:
    """int32 [...]: the legal action that 32 random ``bits`` [...] pick in each row of ``mask`` [..., N].

    One 32-bit draw per row (not one Gumbel variate per entry): its top 24 bits give u in [0, 1), the row picks
    its k-th legal entry with k = floor(u * count) (off uniform by at most count / 2**24); 0 where a row has none.
    Packs each row into a bit set and calls :func:`pick_legal` (N <= 31).
    """
    n = mask.shape[-1]
    if n > 31:
        raise ValueError(f"legal_from_bits: rows of {n} actions; at most 31 fit a bit set")
    packed = jnp.sum(jnp.where(mask, jnp.left_shift(1, jnp.arange(n, dtype=jnp.int32)), 0), axis=-1, dtype=jnp.int32)
    return pick_legal(bits, packed, n)


def pick_legal(bits: jax.Array, legal: jax.Array, n: int = core.NUM_ACTIONS) -> jax.Array:
    """int32 [...]: :func:`legal_from_bits` on rows given as bit sets ``legal`` [...] (bit j: action j legal,
    j < ``n``), e.g. from :func:`core.legal_set`; the same action for the same bits.

    The k-th set bit is found by a binary search on population counts: elementwise integer operations only.
    """
    legal = legal.astype(jnp.int32)
    count = jax.lax.population_count(legal)
    u = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    k = jnp.minimum(jnp.floor(u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
    idx = jnp.zeros_like(legal)
    width = 1 << max(0, (n - 1).bit_length() - 1)  # the k-th set bit lies in the low 2 * width bits
    while width >= 1:
        below = jax.lax.population_count(legal & ((1 << width) - 1))
        up = k >= below  # the k-th set bit is in the upper half of the window
        k = jnp.where(up, k - below, k)
        legal = jnp.where(up, jnp.right_shift(legal, width), legal)
        idx = jnp.where(up, idx + width, idx)
        width //= 2
    return jnp.where(count > 0, idx, 0).astype(jnp.int32)


def random_legal(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """Uniform over each agent's legal actions; no messages."""
    bits = jax.random.bits(key, (params.num_agents,), jnp.uint32)
    silent = jnp.zeros((params.num_agents, params.message_len), jnp.int32)
    return pick_legal(bits, core.legal_set(state, params)), silent


def _team_policy(key: jax.Array, state: core.State, params: core.Params, full_info: bool) -> tuple[jax.Array, ...]:
    a_n, m_len = params.num_agents, params.message_len
    tool = core.held_tools(state, params)  # [A, 3]
    rem = core.remaining_sequence(state)  # [B, 3]
    active = state.bomb_status == core.ACTIVE
    next_col = rem[:, 0]
    owns_next = (next_col[None, :] >= 0) & tool[:, jnp.maximum(next_col, 0)]  # [A, B]
    owns_col = (rem[None, :, :] >= 0) & tool[:, jnp.maximum(rem, 0)]  # [A, B, 3]
    owns_any = jnp.any(owns_col, axis=-1)  # [A, B]
    dist = distances(state.adjacency)
    mask = core.action_mask(state, params)
    agents = jnp.arange(a_n)
    k_tie, k_fallback = jax.random.split(key)
    ties = jax.random.uniform(k_tie, (a_n, params.num_bombs)) * 0.5

    def one(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        my_room = state.agent_room[a]
        here = (state.bomb_room == my_room) & active
        present = jnp.any(here)
        kh = jnp.argmax(here)
        if full_info:
            know = jnp.ones_like(active)
            believed = jnp.ones((a_n,), bool)
        else:
            know = state.knows[a]
            believed = jnp.where(agents == a, know[kh], state.knows_that[a, :, kh])
        in_room = state.agent_room == my_room
        cutters = in_room & believed & owns_next[:, kh] & present
        designated = cutters[a] & (jnp.argmax(cutters) == a)
        cat1 = active & know & owns_next[a] & ~(here & present)
        cat2 = active & ~know
        cat3 = active & know & owns_any[a]
        prio = jnp.where(cat1, 0, jnp.where(cat2, 1, jnp.where(cat3, 2, 9)))
        cost = prio * 100 + dist[my_room, state.bomb_room] + ties[a]
        best = jnp.argmin(cost)
        has_target = prio[best] < 9
        target_room = state.bomb_room[best]
        hop = _hop(state.adjacency, dist, my_room, target_room)
        move = jnp.where(target_room == my_room, 0, 1 + hop)
        act = jnp.where(
            present & ~know[kh],
            0,
            jnp.where(designated, 1 + core.MAX_ROOMS + jnp.maximum(next_col[kh], 0), jnp.where(has_target, move, -1)),
        )
        # Announce the bomb here: "<room label> <remaining colours>".
        say = present & know[kh] & jnp.logical_not(full_info)
        words = jnp.concatenate([jnp.stack([1 + core.NUM_COLOURS + my_room]), jnp.where(rem[kh] >= 0, 1 + rem[kh], 0)])
        words = jnp.pad(words, (0, max(0, m_len - words.shape[0])))[:m_len]
        return act.astype(jnp.int32), jnp.where(say, words, 0).astype(jnp.int32)

    acts, msgs = jax.vmap(one)(agents)
    legal = jnp.take_along_axis(mask, jnp.maximum(acts, 0)[:, None], 1)[:, 0] & (acts >= 0)
    safe = mask.at[:, 1 + core.MAX_ROOMS :].set(False)  # never fall back to a (possibly wrong) cut
    acts = jnp.where(legal, acts, _random_legal_actions(k_fallback, safe))
    return acts, msgs


def heuristic(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """Decentralised explore / inspect / announce / cut team (see module docstring)."""
    return _team_policy(key, state, params, full_info=False)


def planner(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """Centralised full-information greedy team (see module docstring)."""
    return _team_policy(key, state, params, full_info=True)


TEAMS: dict[str, Policy] = {"random_legal": random_legal, "heuristic": heuristic, "planner": planner}

CUT = 1 + core.MAX_ROOMS  # action id of the red cutter; green and blue follow


def check_pack_world(params: core.Params) -> None:
    """The pack teams need one shared start room, three agents (one per colour) and refused wrong cuts."""
    want = {"start": "same", "num_agents": 3, "wrong_cut": "noop"}
    bad = {k: getattr(params, k) for k, v in want.items() if getattr(params, k) != v}
    if bad:
        raise ValueError(f"the pack teams need start='same', num_agents=3, wrong_cut='noop'; got {bad}.")


def _tour_target(room: jax.Array, dist: jax.Array, bomb_room: jax.Array, active: jax.Array,
                 wanted: jax.Array | None = None) -> jax.Array:
    """The room of the first bomb on a shortest walk from ``room`` through every active bomb's room (or the first
    ``wanted`` one on it): all orders of the bombs (B! of them, static) are scored at once, inactive bombs cost
    nothing; the lowest order wins ties."""
    wanted = active if wanted is None else wanted & active
    orders = jnp.asarray(list(itertools.permutations(range(bomb_room.shape[0]))), jnp.int32)  # [P, B]
    pos = jnp.full(orders.shape[:1], room)
    cost = jnp.zeros(orders.shape[:1], jnp.int32)
    first = jnp.full(orders.shape[:1], -1)
    for i in range(orders.shape[1]):
        b = orders[:, i]
        on = active[b]
        cost = cost + jnp.where(on, dist[pos, bomb_room[b]], 0)
        pos = jnp.where(on, bomb_room[b], pos)
        first = jnp.where(wanted[b] & (first < 0), b, first)
    return bomb_room[jnp.maximum(first[jnp.argmin(cost)], 0)]


def _pack(state: core.State, params: core.Params, cut: jax.Array, tour: bool = False) -> tuple[jax.Array, jax.Array]:
    """All agents in agent 0's room: `cut` [A] while its bomb is active, else one hop towards the nearest room
    with an active bomb (shortest path, lowest index on ties, so a pack stays together), or with ``tour`` towards
    the first room of a shortest walk through all of them; silent."""
    active = state.bomb_status == core.ACTIVE
    room = state.agent_room[0]
    dist = distances(state.adjacency)
    if tour:
        target = _tour_target(room, dist, state.bomb_room, active)
    else:
        target = state.bomb_room[jnp.argmin(jnp.where(active, dist[room, state.bomb_room], _BIG))]
    hop = _hop(state.adjacency, dist, room, target)
    here = jnp.any((state.bomb_room == room) & active)
    acts = jnp.where(here, cut, jnp.full((params.num_agents,), 1 + hop, jnp.int32))
    return acts.astype(jnp.int32), jnp.zeros((params.num_agents, params.message_len), jnp.int32)


def pack(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """Pack team, three colours a round: never inspects or talks; together from room to room, where alpha cuts
    red, bravo green and charlie blue until the bomb is defused (wrong cuts are refused, so trying colours
    replaces knowing the sequence). Needs :func:`check_pack_world`."""
    del key
    return _pack(state, params, jnp.array([CUT, CUT + 1, CUT + 2], jnp.int32))


def pack_tour(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """:func:`pack` walking a shortest tour of the active bombs' rooms instead of to the nearest one: the fewest
    moves a pack can make, so (knowing nothing, and knowing cannot order the cuts within a round) the best a
    team that never splits can do. Needs :func:`check_pack_world`."""
    del key
    return _pack(state, params, jnp.array([CUT, CUT + 1, CUT + 2], jnp.int32), tour=True)


def pack_scouts(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """Decentralised and silent, the pack with one change: an agent leaves a bomb as soon as its own colour has cut
    one of its phases (no colour repeats within a bomb, so it can no longer help there; it knows this from its own
    cut's result) and walks ahead on a shortest tour of the active bombs it may still help with. Each agent cuts
    only its colour (alpha red, bravo green, charlie blue), so those who stay always hold every colour still
    needed. Needs :func:`check_pack_world`."""
    del key
    colour = jnp.arange(params.num_agents, dtype=jnp.int32)  # alpha red, bravo green, charlie blue
    active = state.bomb_status == core.ACTIVE
    phase = jnp.arange(state.bomb_seq.shape[1])
    cut_so_far = (phase[None, :] < state.bomb_progress[:, None]) & (state.bomb_seq >= 0)  # [B, 3]
    spent = jnp.any(cut_so_far[None] & (state.bomb_seq[None] == colour[:, None, None]), -1)  # [A, B]
    useful = active[None, :] & ~spent  # [A, B]: bombs an agent may still help with
    dist = distances(state.adjacency)

    def one(a: jax.Array) -> jax.Array:
        room = state.agent_room[a]
        # Everyone here cut last round and every cut was refused: the colour this bomb needs next is elsewhere, so
        # move on (else two groups can wait for each other for ever). Each of them sees the phases left not change.
        with_me = state.agent_room == room
        stalled = jnp.all(~with_me | (state.last_result == core.R_CUT_WRONG_NOOP))
        wanted = useful[a] & ~(stalled & (state.bomb_room == room))
        here = jnp.any((state.bomb_room == room) & wanted)
        target = _tour_target(room, dist, state.bomb_room, active, wanted)
        hop = _hop(state.adjacency, dist, room, target)
        return jnp.where(here | ~jnp.any(wanted), CUT + colour[a], 1 + hop)

    acts = jax.vmap(one)(jnp.arange(params.num_agents))
    return acts.astype(jnp.int32), jnp.zeros((params.num_agents, params.message_len), jnp.int32)


def pack_two_colours(key: jax.Array, state: core.State, params: core.Params) -> tuple[jax.Array, jax.Array]:
    """:func:`pack` applying two colours a round: (green, green, red) in even rounds, (red, blue, blue) in odd
    ones, the convention the README's full-world runs learned."""
    del key
    even = jnp.array([CUT + 1, CUT + 1, CUT], jnp.int32)
    odd = jnp.array([CUT, CUT + 2, CUT + 2], jnp.int32)
    return _pack(state, params, jnp.where(state.round % 2 == 0, even, odd))


def evaluate(policy: Policy, params: core.Params, key: jax.Array, num_episodes: int) -> dict[str, np.ndarray]:
    """Runs ``num_episodes`` episodes in parallel; returns each episode's :func:`core.episode_metrics`."""
    run = _runner(policy, params, num_episodes)
    out = run(key)
    return {k: np.asarray(v) for k, v in out.items()}


@functools.lru_cache(maxsize=32)
def _runner(policy: Policy, params: core.Params, num_episodes: int) -> Callable[[jax.Array], dict]:
    """One jitted runner per (team, world, episode count), kept so that repeated evaluations compile once."""
    def episode(key: jax.Array) -> dict[str, jax.Array]:
        k_reset, k_run = jax.random.split(key)
        _, state = core.reset(k_reset, params)

        def body(s: core.State, k: jax.Array) -> tuple[core.State, None]:
            k_pol, k_env = jax.random.split(k)
            acts, msgs = policy(k_pol, s, params)
            s, _, _ = core.step_state(k_env, s, acts, msgs, params)
            return s, None

        state, _ = jax.lax.scan(body, state, jax.random.split(k_run, params.max_rounds))
        return core.episode_metrics(state)

    return jax.jit(lambda key: jax.vmap(episode)(jax.random.split(key, num_episodes)))
