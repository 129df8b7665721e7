"""Tests for the defusal graph world: rules and switches, ToM ground truth, vmap, dm_env adapter, baselines."""

from __future__ import annotations

import hashlib
import math
import unittest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import test_utils

import envs
from envs.defusal import core, scripted
from envs.defusal.env import DefusalEnv

_reset = jax.jit(core.reset, static_argnames="params")
_step = jax.jit(core.step, static_argnames="params")
P = core.Params()
VOCAB = core.vocabulary(P)
# Room indices 0..4 have labels 0, 3, 5, 6, 8. Bomb k sits in room k; phases 1, 2, 3, 1, 2.
SEQ = np.array([[0, -1, -1], [1, 2, -1], [0, 1, 2], [2, -1, -1], [2, 0, -1]], np.int32)
INSPECT, RED, GREEN, BLUE = 0, 6, 7, 8


def go(room: int) -> int:
    return 1 + room


def world(params: core.Params = P, rooms=(0, 0, 0)) -> core.State:
    _, s = _reset(jax.random.key(0), params=params)
    return s._replace(
        agent_room=jnp.asarray(rooms, jnp.int32),
        bomb_room=jnp.arange(params.num_bombs, dtype=jnp.int32),
        bomb_seq=jnp.asarray(SEQ[: params.num_bombs]),
    )


def play(state, actions, params=P, messages=None, seed=1):
    msgs = jnp.zeros((3, params.message_len), jnp.int32) if messages is None else jnp.asarray(messages, jnp.int32)
    return _step(jax.random.key(seed), state, jnp.asarray(actions, jnp.int32), msgs, params=params)


def text(obs, i: int) -> str:
    return VOCAB.decode(np.asarray(obs["tokens"][i]))


# ---------------------------------------------------------------------------------------------
# Map, reset, switches
# ---------------------------------------------------------------------------------------------


def test_released_map_and_reset_layout():
    adj = core.released_adjacency()
    edges = {(core.ROOM_LABELS[i], core.ROOM_LABELS[j]) for i in range(5) for j in range(i + 1, 5) if adj[i, j]}
    assert edges == set(core.RELEASED_EDGES)
    keys = jax.random.split(jax.random.key(3), 64)
    obs, s = jax.jit(jax.vmap(lambda k: core.reset(k, P)))(keys)
    assert obs["vector"].shape == (64, 3, core.vector_size(P)) and obs["tokens"].shape == (64, 3, P.token_len)
    assert np.all(np.sort(np.asarray(s.bomb_room), axis=1) == np.arange(5))  # one bomb per room
    np.testing.assert_array_equal(np.asarray(s.bomb_phases[0]), [1, 2, 3, 1, 2])
    seq = np.asarray(s.bomb_seq)
    for row, n in zip(seq.reshape(-1, 3), np.tile([1, 2, 3, 1, 2], 64), strict=True):
        assert np.all(row[n:] == -1) and len(set(row[:n])) == n  # no repeated colour within a bomb
    assert np.all(np.asarray(s.agent_room) == np.asarray(s.agent_room)[:, :1])  # start: same room
    assert len(np.unique(np.asarray(s.agent_room)[:, 0])) > 1


def test_start_separate_and_random_graph_connected():
    params = core.Params(start="separate", random_graph=True)
    _, s = jax.jit(jax.vmap(lambda k: core.reset(k, params)))(jax.random.split(jax.random.key(1), 200))
    rooms = np.asarray(s.agent_room)
    assert all(len(set(r)) == 3 for r in rooms)
    d = np.asarray(jax.jit(jax.vmap(scripted.distances))(s.adjacency))
    assert d.max() < 5  # connected
    adj = np.asarray(s.adjacency)
    assert np.all(adj == adj.transpose(0, 2, 1)) and not adj[:, range(5), range(5)].any()
    assert len({a.tobytes() for a in adj}) > 20  # graphs differ across worlds


@pytest.mark.parametrize("options", [{"start": "separate", "random_graph": True}, {"num_rooms": 2, "num_bombs": 1}])
def test_reset_draws_are_uniform(options):
    """Bomb rooms, colour sequences and start rooms are uniform over their possibilities, the random graphs
    cover the connected graphs (728 on 5 labelled rooms; the rarest trees come up about once in 20,000 draws),
    every room pair is joined equally often, and a turn order is a uniform permutation."""
    params = core.Params(**options)
    n = 24_000
    _, s = jax.jit(jax.vmap(lambda k: core.reset(k, params)))(jax.random.split(jax.random.key(7), n))

    def assert_uniform(rows, count):
        _, freq = np.unique(np.asarray(rows).reshape(n, -1), axis=0, return_counts=True)
        assert len(freq) == count
        # Each count is binomial(n, 1/count): within 5 standard deviations.
        np.testing.assert_allclose(freq, n / count, atol=5 * np.sqrt(n / count))

    r, b = params.num_rooms, params.num_bombs
    assert_uniform(s.bomb_room, math.perm(r, b))
    k = int(np.argmax(core.bomb_phases(params)))  # the bomb with the most phases: its colour order
    assert_uniform(s.bomb_seq[:, k], math.perm(3, int(core.bomb_phases(params)[k])))
    assert_uniform(s.agent_room, r if params.start == "same" else math.perm(r, 3))
    if params.random_graph:
        adj = np.asarray(s.adjacency)
        assert len({a.tobytes() for a in adj}) > 700
        pair = adj.mean(axis=0)[np.triu_indices(r, 1)]
        np.testing.assert_allclose(pair, pair.mean(), atol=0.02)
    ranks = jax.jit(jax.vmap(lambda k: core._ranks(jax.random.bits(k, (3,), jnp.uint32))))(
        jax.random.split(jax.random.key(8), n))
    assert_uniform(ranks, 6)


def test_moves_only_along_edges():
    s = world(rooms=(1, 1, 1))  # room label 3: neighbours 0 and 8
    obs, s2, r, done, info = play(s, [go(0), go(2), go(4)])
    np.testing.assert_array_equal(np.asarray(s2.agent_room), [0, 1, 4])
    np.testing.assert_array_equal(np.asarray(info["valid"]), [True, False, True])
    np.testing.assert_array_equal(np.asarray(s2.last_result), [core.R_MOVE_OK, core.R_MOVE_BAD, core.R_MOVE_OK])
    mask = np.asarray(core.action_mask(s, P))
    np.testing.assert_array_equal(mask[0, 1:6], [True, False, False, False, True])
    assert "you moved to room 0" in text(obs, 0) and "you cannot go to room 5" in text(obs, 1)


def test_inspect_reveals_to_inspector_only_and_tom():
    s = world(rooms=(2, 2, 0))  # alpha, bravo with the 3-phase bomb (red green blue); charlie elsewhere
    obs, s2, *_, info = play(s, [INSPECT, go(0), INSPECT])
    knows = np.asarray(s2.knows)
    assert knows[0, 2] and not knows[1].any() and knows[2, 0] and knows.sum() == 2
    assert "you inspected the bomb its sequence is red green blue" in text(obs, 0)
    assert "sequence" not in text(obs, 1)
    intro, first, second = (np.asarray(info[k]) for k in ("tom_introspection", "tom_first_order", "tom_second_order"))
    np.testing.assert_array_equal(intro, knows)
    assert first[1, 0, 2] and not first[0, 1, 2]  # bravo's view: alpha knows bomb 2; alpha's view: bravo does not
    # Bravo moved this round: it saw alpha's inspect only if alpha acted first (random order).
    order_alpha_first = bool(second[0, 1, 2])
    assert order_alpha_first == ("alpha inspected the bomb" in text(obs, 1))
    assert not second[2, 0, 0]  # nobody saw charlie inspect bomb 0


def test_witness_and_message_second_order():
    s = world(rooms=(2, 2, 0))
    _, s, *_, info = play(s, [INSPECT, INSPECT, go(2)])  # charlie walks in (arrives before or after)
    second = np.asarray(info["tom_second_order"])
    assert second[0, 1, 2] and second[1, 0, 2]  # alpha and bravo saw each other inspect
    # Alpha tells the team "5 red green blue": charlie learns it; everyone knows everyone knows.
    msgs = np.zeros((3, 4), np.int32)
    msgs[0] = core.message_ids("5 red green blue")
    obs, s, *_, info = play(s, [go(0), go(0), go(0)], messages=msgs)
    assert np.asarray(s.knows)[2, 2]
    assert np.asarray(info["tom_second_order"])[:, :, 2].all()
    assert "alpha says 5 red green blue" in text(obs, 2) and "says" not in text(obs, 0)
    # A wrong sequence or a sender who does not know teaches nothing.
    _, s, *_ = play(world(rooms=(2, 0, 0)), [INSPECT, INSPECT, go(2)])
    msgs[0] = core.message_ids("5 red blue green")  # alpha knows, but the order is wrong
    msgs[1] = core.message_ids("5 red green blue")  # right, but bravo never inspected bomb 2
    _, s, *_ = play(s, [go(0), go(2), go(0)], messages=msgs)
    assert not np.asarray(s.knows)[1:, 2].any() and int(s.messages_sent) == 2


@pytest.mark.parametrize("wrong_cut", ["noop", "explode"])
@pytest.mark.parametrize("shaping", [False, True])
def test_cuts(wrong_cut, shaping):
    params = core.Params(wrong_cut=wrong_cut, shaping=shaping)
    s = world(params, rooms=(2, 0, 4))  # alpha (red, green) at bomb 2 (red green blue); charlie at bomb 4
    obs, s, r, *_ = play(s, [RED, INSPECT, RED], params)  # right for alpha; charlie: wrong (blue first)
    assert int(s.bomb_progress[2]) == 1
    exploded = wrong_cut == "explode"
    assert int(s.bomb_status[4]) == (core.EXPLODED if exploded else core.ACTIVE)
    assert float(r) == (1.0 - exploded if shaping else 0.0)
    assert int(s.explosions) == exploded
    assert ("exploded" if exploded else "apply other color tool first") in text(obs, 2)
    assert "correctly 2 phases left" in text(obs, 0)
    obs, s, r, *_ = play(s, [GREEN, INSPECT, INSPECT], params)
    s = s._replace(agent_room=jnp.array([2, 2, 0]))
    obs, s, r, *_ = play(s, [BLUE, BLUE, INSPECT], params)  # alpha has no blue; bravo (green, blue) does
    assert int(s.bomb_status[2]) == core.DEFUSED and int(s.score) == 30
    assert float(r) == 30.0 + shaping
    assert "you do not have the blue cutter" in text(obs, 0) and "defused the bomb" in text(obs, 1)
    assert "round 3 score 30" in text(obs, 0)


def test_tools_per_agent():
    np.testing.assert_array_equal(core.tools(P), [[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    p1 = core.Params(tools_per_agent=1)
    np.testing.assert_array_equal(core.tools(p1), np.eye(3, dtype=bool))
    mask = np.asarray(core.action_mask(world(p1, rooms=(2, 2, 2)), p1))
    np.testing.assert_array_equal(mask[:, 6:], np.eye(3, dtype=bool))
    _, s, *_, info = play(world(p1, rooms=(0, 0, 0)), [GREEN, INSPECT, INSPECT], p1)
    assert not np.asarray(info["valid"])[0] and int(s.last_result[0]) == core.R_CUT_NO_TOOL


def test_tools_mix():
    """``tools_mix``: that share of fresh worlds gives every agent only its first cutter (the rules, the mask and
    the observation follow the world's own tool set); every other draw is the one of a world without the mix."""
    from envs.defusal.render import read_vector

    pm = core.Params(tools_mix=0.25)
    keys = jax.random.split(jax.random.key(11), 2000)
    obs, s = jax.vmap(lambda k: core.reset(k, pm))(keys)
    _, s0 = jax.vmap(lambda k: core.reset(k, P))(keys)
    held = np.asarray(s.tools)
    one = np.all(held == np.eye(3, dtype=bool), axis=(1, 2))
    assert np.all(one | np.all(held == core.tools(P), axis=(1, 2)))
    assert 0.22 < one.mean() < 0.28, one.mean()
    for f in s._fields:
        if f != "tools":
            np.testing.assert_array_equal(np.asarray(getattr(s, f)), np.asarray(getattr(s0, f)), err_msg=f)
    w1, w2 = int(np.flatnonzero(one)[0]), int(np.flatnonzero(~one)[0])
    for w in (w1, w2):
        for a in range(3):
            np.testing.assert_array_equal(read_vector(np.asarray(obs["vector"])[w, a], pm)["tools"], held[w, a])
    # World w1 holds one tool each: alpha's green is refused; in w2 alpha (red, green) cuts green.
    for w, owned in ((w1, False), (w2, True)):
        st = jax.tree.map(lambda x, w=w: x[w], s)
        st = st._replace(agent_room=jnp.zeros(3, jnp.int32), bomb_room=jnp.arange(5, dtype=jnp.int32),
                         bomb_seq=jnp.asarray(SEQ))
        mask = np.asarray(core.action_mask(st, pm))
        np.testing.assert_array_equal(mask[:, 6:], held[w])
        _, st, *_ = play(st, [GREEN, INSPECT, INSPECT], pm)
        assert (int(st.last_result[0]) == core.R_CUT_NO_TOOL) != owned
    # Batched auto-reset draws the same tool sets as resetting every world.
    done = jnp.asarray(np.arange(64) % 3 == 0)
    s64 = jax.tree.map(lambda x: x[:64], s0)
    got = jax.jit(core.reset_where, static_argnames=("params", "chunk"))(keys[:64], s64, done, pm)
    np.testing.assert_array_equal(np.asarray(got.tools), np.where(np.asarray(done)[:, None, None], held[:64],
                                                                    np.asarray(s64.tools)))
    with pytest.raises(ValueError, match="tools_mix=0.5.*tools_per_agent 2"):
        core.check_params(core.Params(tools_mix=0.5, tools_per_agent=1))
    with pytest.raises(ValueError, match="tools_mix=1.5"):
        envs.make("defusal", tools_mix=1.5)


def test_teammates_hidden_vs_visible():
    pv = core.Params(teammates="visible")
    vec = {}
    for params in (P, pv):
        obs, _ = _reset(jax.random.key(0), params=params)
        s = world(params, rooms=(0, 3, 4))
        obs = core.observe(s, params)
        vec[params.teammates] = np.asarray(obs["vector"])
        said = "bravo in room 6" in VOCAB.decode(np.asarray(obs["tokens"][0]))
        assert said == (params.teammates == "visible")
    mates = slice(core.vector_size(P) - 3 - 15, core.vector_size(P) - 3)
    assert not vec["hidden"][:, mates].any()
    assert vec["visible"][0, mates].reshape(3, 5)[1, 3] == 1 and vec["visible"][0, mates].reshape(3, 5)[0].sum() == 0
    np.testing.assert_array_equal(np.delete(vec["hidden"], mates, 1), np.delete(vec["visible"], mates, 1))


def test_silence_removes_channel():
    ps = core.Params(silence=True)
    s = world(ps, rooms=(2, 2, 0))
    _, s, *_ = play(s, [INSPECT, go(0), go(0)], ps)
    msgs = np.zeros((3, 4), np.int32)
    msgs[0] = core.message_ids("5 red green blue")
    obs, s, *_ = play(s, [go(0), INSPECT, INSPECT], ps, messages=msgs)
    assert not np.asarray(s.knows)[1:, 2].any() and int(s.messages_sent) == 0
    assert "says" not in text(obs, 1)


def test_max_rounds_truncation_and_termination():
    pm = core.Params(max_rounds=3)
    s = world(pm)
    for t in range(3):
        _, s, r, done, info = play(s, [INSPECT, INSPECT, INSPECT], pm, seed=t)
    assert bool(done) and bool(info["truncated"]) and not bool(info["terminated"]) and int(s.round) == 3
    _, s2, r, *_ = play(s, [go(1), go(1), go(1)], pm)  # finished: frozen, no reward
    assert int(s2.round) == 3 and float(r) == 0.0
    # Termination: every bomb gone (statuses set directly except the 1-phase bomb 0).
    s = world(rooms=(0, 0, 0))._replace(bomb_status=jnp.array([0, 1, 2, 1, 1]))
    _, s, r, done, info = play(s, [RED, INSPECT, INSPECT])
    assert bool(done) and bool(info["terminated"]) and int(s.completed_round) == 1 and float(r) == 10.0


def test_vmap_matches_single_world():
    keys = jax.random.split(jax.random.key(5), 8)
    obs_b, s_b = jax.jit(jax.vmap(lambda k: core.reset(k, P)))(keys)
    acts = jax.jit(jax.vmap(lambda k, s: scripted.heuristic(k, s, P)))(keys, s_b)
    out_b = jax.jit(jax.vmap(lambda k, s, a, m: core.step(k, s, a, m, P)))(keys, s_b, *acts)
    heuristic = jax.jit(scripted.heuristic, static_argnames="params")
    for i in (0, 5):
        obs, s = _reset(keys[i], params=P)
        a, m = heuristic(keys[i], s, params=P)
        out = _step(keys[i], s, a, m, params=P)
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(out_b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y)[i])


LATER_FIELDS = ("together_rounds", "tools")


def _trajectory_digest(params: core.Params, seed: int, worlds: int = 16, rounds: int = 34) -> str:
    """sha256 of every output (observations, states, rewards, dones, infos) of reset + ``rounds`` steps in
    ``worlds`` worlds, with a per-round random mix of uniform (partly out-of-range) actions, random-legal
    actions and heuristic actions, and of random or heuristic messages. Runs past ``max_rounds`` too. States are
    hashed without the fields added after the digests were recorded (bookkeeping only, tested on their own)."""

    def recorded(s):
        return tuple(v for f, v in zip(s._fields, s, strict=True) if f not in LATER_FIELDS)

    def one(key):
        k0, k1 = jax.random.split(key)
        obs0, s0 = core.reset(k0, params)

        def body(s, k):
            ka, km, kc, ke, kh = jax.random.split(k, 5)
            ha, hm = scripted.heuristic(kh, s, params)
            ra = jax.random.randint(ka, (3,), -1, 11)
            rm = jax.random.randint(km, (3, params.message_len), -1, core.NUM_MESSAGE_IDS + 1)
            c = jax.random.randint(kc, (2,), 0, 3)
            acts = jnp.where(c[0] == 0, ra, jnp.where(c[0] == 1, ha, scripted.random_legal(kh, s, params)[0]))
            msgs = jnp.where(c[1] == 0, rm, hm)
            obs, s2, r, d, info = core.step(ke, s, acts, msgs, params)
            return s2, (obs, recorded(s2), r, d, info)

        _, out = jax.lax.scan(body, s0, jax.random.split(k1, rounds))
        return obs0, recorded(s0), out

    tree = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), worlds))
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        a = np.round(a.astype(np.float64), 5) if a.dtype.kind == "f" else a.astype(np.int64)
        h.update(f"{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# Digests recorded with the original (gather / scatter / sort based) implementation: any change of behaviour,
# randomness included, in reset, step, observe, theory of mind or the scripted teams changes them. Re-recorded
# once, when the random-legal sampler changed from one Gumbel variate per action to one draw per agent (with the
# Gumbel sampler put back, the new core still gave the original digests), and again when reset drew every
# choice from one draw of words and the turn order from one draw of three words (new random streams).
_RECORDED = [
    (core.Params(), "62375867cdf393445341629ff78caee16f691985e4e411e5e7ad16d65c4bac69"),
    (
        core.Params(random_graph=True, start="separate", tools_per_agent=1, wrong_cut="explode", shaping=True),
        "558f87d73f4399fc379d876133eb9e068c58708faf6d123c2bc90163536b65ef",
    ),
    (
        core.Params(num_rooms=4, num_bombs=3, teammates="visible", silence=True, max_rounds=12, token_len=96),
        "012f6e5c7106847476d5900543d3f88c1f532530d31b891f7594f92f58ead008",
    ),
]


@pytest.mark.parametrize("index", range(len(_RECORDED)))
def test_recorded_trajectories(index):
    params, digest = _RECORDED[index]
    assert _trajectory_digest(params, seed=200 + index) == digest


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_baselines_sanity():
    key = jax.random.key(0)
    rnd = scripted.evaluate(scripted.random_legal, P, key, 200)
    assert 40 < rnd["score"].mean() < 70 and rnd["valid_pct"].mean() > 95
    for team in (scripted.heuristic, scripted.planner):
        r = scripted.evaluate(team, P, key, 200)
        assert np.all(r["score"] == 90) and r["rounds"].mean() < 20
    r = scripted.evaluate(scripted.planner, P, key, 200)
    h = scripted.evaluate(scripted.heuristic, P, key, 200)
    assert r["rounds"].mean() < h["rounds"].mean()


def test_together_metric():
    """`together_rounds` counts the rounds after which all three stood in one room; `together_pct` divides by the
    rounds played, and neither moves once the episode is over."""
    neighbour = int(np.flatnonzero(np.asarray(core.released_adjacency())[0])[0])
    s = world()
    for acts in ([go(neighbour), INSPECT, INSPECT], [go(0), INSPECT, INSPECT], [INSPECT] * 3):  # apart, back, stay
        _, s, *_ = play(s, acts)
    m = core.episode_metrics(s)
    assert int(s.together_rounds) == 2 and int(s.round) == 3 and abs(float(m["together_pct"]) - 200 / 3) < 1e-4
    done = s._replace(done=jnp.array(True))
    _, after, *_ = play(done, [go(neighbour), INSPECT, INSPECT])
    assert int(after.together_rounds) == 2 and int(after.round) == 3


def test_pack_teams():
    """Trying all three colours a round beats two colours a round by over two rounds; a shortest tour beats the
    nearest-room walk; silent scouts that split up beat any pack; all defuse everything."""
    key = jax.random.key(0)
    three = scripted.evaluate(scripted.pack, P, key, 200)
    two = scripted.evaluate(scripted.pack_two_colours, P, key, 200)
    assert np.all(three["score"] == 90) and np.all(two["score"] == 90)
    # Cuts after the bomb went in the same round find no active bomb: invalid, as with the trained team.
    assert np.all(three["messages_sent"] == 0) and 70 < three["valid_pct"].mean() < 100
    assert 10.0 < three["rounds"].mean() < 12.5 < 13.0 < two["rounds"].mean() < 15.0, (three, two)
    # The shortest tour saves the nearest-room walk's detours (4 moves from every start of the fixed map, plus
    # 1 + 1 + 1.5 + 1.5 + 2.08 expected cut rounds = 11.08); scouts leave a bomb their colour is spent on.
    tour = scripted.evaluate(scripted.pack_tour, P, key, 200)
    scouts = scripted.evaluate(scripted.pack_scouts, P, key, 200)
    assert np.all(tour["score"] == 90) and np.all(scouts["score"] == 90)
    assert 10.8 < tour["rounds"].mean() < 11.35 and three["rounds"].mean() - tour["rounds"].mean() > 0.2, (tour, three)
    assert scouts["rounds"].mean() < tour["rounds"].mean() - 0.3 and scouts["messages_sent"].sum() == 0, scouts
    # Packs never split (together after every round); scouts do (measured: 83% of rounds together on average).
    assert np.all(three["together_pct"] == 100) and np.all(tour["together_pct"] == 100)
    assert 50 < scouts["together_pct"].mean() < 95 and scouts["together_pct"].min() < 50, scouts["together_pct"]
    scripted.check_pack_world(P._replace(tools_per_agent=1))  # one tool each: alpha red, bravo green, charlie blue
    for change in ({"start": "separate"}, {"wrong_cut": "explode"}):
        with pytest.raises(ValueError, match=f"pack teams need.*{next(iter(change.values()))}"):
            scripted.check_pack_world(P._replace(**change))


# ---------------------------------------------------------------------------------------------
# dm_env adapter
# ---------------------------------------------------------------------------------------------


class _Conformance(test_utils.EnvironmentTestMixin):
    name = "defusal"

    def make_object_under_test(self):
        return envs.make(self.name, seed=1)

    def make_action_sequence(self):
        rng = np.random.default_rng(0)
        for _ in range(40):
            yield {"move": rng.integers(0, 9, 3).astype(np.int32), "talk": rng.integers(0, 19, (3, 4)).astype(np.int32)}


class TestDefusalDmEnv(_Conformance, unittest.TestCase):
    pass


class TestDefusalSmallDmEnv(_Conformance, unittest.TestCase):
    name = "defusal_small"


def test_adapter_episode_and_specs():
    env = envs.make("defusal_small", seed=3)
    assert env.params.num_rooms == 2 and env.params.num_bombs == 1
    ts = env.reset()
    assert ts.observation["tokens"].shape == (3, 64) and ts.observation["action_mask"].shape == (3, 9)
    assert set(env.action_spec()) == {"move", "talk"}
    for t in range(10):
        move, talk = scripted.heuristic(jax.random.key(t), env.state, env.params)
        ts = env.step({"move": np.asarray(move), "talk": np.asarray(talk)})
        if ts.last():
            break
    assert ts.last() and ts.discount == 0.0 and ts.reward == 10.0
    m = env.metrics()
    assert m["score"] == 10 and m["rounds"] == t + 1 and isinstance(env.log_text()[0], str)
    assert env.step(np.zeros(3, np.int32)).first()  # auto-reset after LAST


@pytest.mark.parametrize(
    "action, match",
    [
        (3, "scalar"),
        (np.array([0, 0, 9]), r"\[9\] outside 0\.\.8"),
        (np.array([0, 0]), "shape"),
        (np.array([0.0, 0, 0]), "dtype"),
        ({"move": np.zeros(3, int), "talk": np.full((3, 4), 99)}, "talk"),
        ({"mover": np.zeros(3, int)}, "keys"),
    ],
)
def test_bad_actions_raise(action, match):
    env = envs.make("defusal_small")
    env.reset()
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"start": "apart"}, "start='apart'.*'same' or 'separate'"),
        ({"wrong_cut": "boom"}, "wrong_cut"),
        ({"teammates": "all"}, "teammates"),
        ({"tools_per_agent": 3}, "tools_per_agent=3.*1 or 2"),
        ({"num_bombs": 6}, "num_bombs"),
        ({"num_rooms": 7}, "num_rooms"),
    ],
)
def test_bad_switches_raise(options, match):
    with pytest.raises(ValueError, match=match):
        envs.make("defusal", **options)
    with pytest.raises(TypeError):
        envs.make("defusal", shaping=1)
    assert isinstance(envs.make("defusal", random_graph=True), DefusalEnv)


def test_random_legal_sampler_is_uniform_over_legal_actions():
    mask = jnp.asarray([[True, False, True, True, False, False, False, False, True],  # 4 legal
                        [False] * 8 + [True],  # 1 legal
                        [False] * 9])  # none: 0
    draws = jax.jit(jax.vmap(lambda k: scripted._random_legal_actions(k, mask)))(
        jax.random.split(jax.random.key(0), 40_000))
    draws = np.asarray(draws)
    assert set(np.unique(draws[:, 0])) == {0, 2, 3, 8}
    freq = np.bincount(draws[:, 0], minlength=9)[[0, 2, 3, 8]] / len(draws)
    np.testing.assert_allclose(freq, 0.25, atol=0.01)  # 4 sigma is about 0.009
    assert np.all(draws[:, 1] == 8) and np.all(draws[:, 2] == 0)


def _cumsum_sampler(bits, mask):
    """The first packed-free form of the random-legal sampler: k = floor(u * count), the k-th legal entry found
    with a cumulative sum (the reference for :func:`scripted.pick_legal`)."""
    count = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    u = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    k = jnp.minimum(jnp.floor(u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
    kth = mask & (jnp.cumsum(mask, axis=-1, dtype=jnp.int32) == (k + 1)[..., None])
    return jnp.argmax(kth, axis=-1).astype(jnp.int32)


@pytest.mark.parametrize("n", [1, 2, 5, 9, 16, 31])
def test_bit_set_sampler_matches_the_mask_sampler(n):
    rng = np.random.default_rng(n)
    mask = jnp.asarray(rng.random((5000, n)) < rng.random((5000, 1)))  # from empty to full rows
    bits = jnp.asarray(rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(scripted.legal_from_bits(bits, mask)),
                                  np.asarray(_cumsum_sampler(bits, mask)))


def _one_hot_mask(state, params):
    """bool [A, 9]: the legal actions by one-hot arithmetic (the reference for :func:`core.legal_set`)."""
    here = state.bomb_room[None, :] == state.agent_room[:, None]  # [A, B]
    active_here = jnp.any(here & (state.bomb_status == core.ACTIVE)[None, :], axis=1)
    at = state.agent_room[:, None] == jnp.arange(params.num_rooms)[None, :]
    moves = jnp.any(at[:, :, None] & state.adjacency[None, :, :], axis=1)
    moves = jnp.pad(moves, ((0, 0), (0, core.MAX_ROOMS - params.num_rooms)))
    cuts = state.tools & active_here[:, None]
    return jnp.concatenate([active_here[:, None], moves, cuts], axis=1)


@pytest.mark.parametrize("options", [{}, {"random_graph": True, "start": "separate", "tools_per_agent": 1},
                                     {"num_rooms": 3, "num_bombs": 2, "tools_per_agent": 3}])
def test_legal_set_and_action_mask_match_one_hot_rules(options):
    params = core.Params(**options)
    rng = np.random.default_rng(0)
    _, s = jax.vmap(lambda k: core.reset(k, params))(jax.random.split(jax.random.key(2), 500))
    s = s._replace(bomb_status=jnp.asarray(rng.integers(0, 3, s.bomb_status.shape), jnp.int32),
                   agent_room=jnp.asarray(rng.integers(0, params.num_rooms, s.agent_room.shape), jnp.int32))
    want = np.asarray(jax.vmap(lambda x: _one_hot_mask(x, params))(s))
    packed = np.sum(want << np.arange(core.NUM_ACTIONS), axis=-1)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda x: core.legal_set(x, params))(s)), packed)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda x: core.action_mask(x, params))(s)), want)


@pytest.mark.parametrize("worlds, done_p", [(64, 0.05), (64, 1.0), (8, 0.5)])
def test_reset_where_equals_resetting_every_world(worlds, done_p):
    """Only the finished worlds are reset, in chunks (here 8 at a time: 64 finished worlds take 8 passes), with
    the same result as resetting every world and selecting."""
    params = core.Params(random_graph=True)
    k_state, k_done, k_reset = jax.random.split(jax.random.key(5), 3)
    _, states = jax.vmap(lambda k: core.reset(k, params))(jax.random.split(k_state, worlds))
    states = states._replace(round=states.round + 7, score=states.score + 20)  # differ from any fresh state
    done = jax.random.bernoulli(k_done, done_p, (worlds,))
    keys = jax.random.split(k_reset, worlds)
    got = jax.jit(core.reset_where, static_argnames=("params", "chunk"))(keys, states, done, params)
    _, fresh = jax.vmap(lambda k: core.reset(k, params))(keys)
    want = jax.tree.map(lambda f, s: jnp.where(jnp.reshape(done, (-1,) + (1,) * (s.ndim - 1)), f, s), fresh, states)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.sum(np.asarray(got.round) == 0)) == int(np.sum(np.asarray(done)))


def test_reset_where_with_one_key_folds_in_the_world_index():
    params = core.Params(random_graph=True, start="separate")
    _, states = jax.vmap(lambda k: core.reset(k, params))(jax.random.split(jax.random.key(1), 40))
    states = states._replace(round=states.round + 3)
    done = jnp.arange(40) % 3 == 0
    key = jax.random.key(9)
    got = jax.jit(core.reset_where, static_argnames=("params", "chunk"))(key, states, done, params, chunk=4)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(40))
    want = core.reset_where(keys, states, done, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
