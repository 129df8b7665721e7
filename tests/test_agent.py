"""The agent end to end on tiny specs: learning, determinism, tracing, policy, report; replay; bad inputs.

One Agent (image + tokens + vector observations, two action heads) is built per module and shared:
compiling the train step dominates the run time.
"""

from __future__ import annotations

import chex
import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import specs
from flax import nnx

import envs
from lwm import config
from lwm.agent import Agent
from lwm.driver import Driver, ObservationError, check_observation
from lwm.replay import Replay

VOCAB = 8
OBS_SPEC = {
    "image": specs.BoundedArray((16, 16, 3), np.uint8, 0, 255, name="image"),
    "tokens": specs.BoundedArray((1,), np.int32, 0, VOCAB - 1, name="tokens"),
    "vector": specs.Array((4,), np.float32, name="vector"),
    "log_text": specs.Array((), np.float32, name="log_text"),  # log_* keys are never modelled
}
ACT_SPEC = {
    "move": specs.DiscreteArray(3, dtype=np.int32, name="move"),
    "talk": specs.BoundedArray((), np.int32, minimum=2, maximum=5, name="talk"),  # offset head: 2..5
}
UPDATES = 60


def _config():
    # No warm-up so that 60 updates visibly learn; everything else is the tiny debug model.
    return config.load(["debug"], {"agent.opt.warmup": 0, "agent.opt.lr": 1e-3})


def _batch(cfg, seed: int) -> dict:
    """A random but learnable batch: each frame is one of 4 fixed images; tokens are mostly <pad>."""
    rng = np.random.default_rng(seed)
    B, T, r = cfg.batch_size, cfg.batch_length, cfg.agent.rssm
    pics = np.zeros((4, 16, 16, 3), np.uint8)
    for i in range(4):
        y, x = np.random.default_rng(100 + i).integers(0, 12, 2)
        pics[i, y: y + 4, x: x + 4] = np.random.default_rng(200 + i).integers(128, 256, 3)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    return {
        "obs": {"image": pics[rng.integers(0, 4, (B, T))],
                "tokens": np.where(rng.random((B, T, 1)) < 0.7, 0,
                                   rng.integers(1, VOCAB, (B, T, 1))).astype(np.int32),
                "vector": rng.normal(size=(B, T, 4)).astype(np.float32)},
        "action": {"move": rng.integers(0, 3, (B, T)).astype(np.int32),
                   "talk": rng.integers(2, 6, (B, T)).astype(np.int32)},
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((B, T), bool),
        "start": {"deter": np.zeros((B, r.deter), np.float32),
                  "stoch": np.zeros((B, r.stoch, r.classes), np.float32)},
        "start_action": {"move": np.zeros((B,), np.int32), "talk": np.full((B,), 2, np.int32)},
    }


@pytest.fixture(scope="module")
def setup():
    """The shared agent, trained UPDATES times on one fixed batch."""
    cfg = _config()
    agent = Agent(OBS_SPEC, ACT_SPEC, cfg)
    batch = _batch(cfg, 0)
    ts = agent.init(0)
    history = []
    for _ in range(UPDATES):
        ts, metrics, post = agent.train(ts, batch)
        history.append(jax.device_get(metrics))
    return {"cfg": cfg, "agent": agent, "batch": batch, "ts": ts, "history": history, "post": post,
            "traces": dict(agent.traces)}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


# -------------------------------------------------------------------------------------------------- train

def test_agent_uses_only_model_keys(setup):
    agent = setup["agent"]
    assert [k.name for k in agent.keys] == ["image", "tokens", "vector"]
    assert {k.name: k.kind for k in agent.keys} == {"image": "image", "tokens": "tokens", "vector": "vector"}
    assert [(h.name, h.num, h.low) for h in agent.heads] == [("move", 3, 0), ("talk", 4, 2)]
    assert agent.param_count() > 0


def test_world_model_loss_falls(setup):
    hist = setup["history"]
    rec = np.array([h["loss/rec_image"] + h["loss/rec_tokens"] for h in hist])
    first, last = rec[:5].mean(), rec[-5:].mean()
    assert last < 0.7 * first, f"reconstruction loss {first:.3f} -> {last:.3f}"
    tokens = [h["loss/rec_tokens"] for h in hist]
    assert np.mean(tokens[-5:]) < np.mean(tokens[:5])


def test_metrics_finite_and_complete(setup):
    hist = setup["history"]
    chex.assert_tree_all_finite(hist)
    for key in ["loss/rec_image", "loss/rec_tokens", "loss/rec_vector", "loss/reward", "loss/cont",
                "loss/dyn", "loss/rep", "loss/policy", "loss/value", "loss/slowreg", "loss/repval",
                "loss/total",
                "imag/return", "imag/retnorm_scale", "opt/grad_norm", "opt/update_norm"]:
        assert key in hist[-1], key
        assert np.shape(hist[-1][key]) == ()
    assert hist[-1]["loss/dyn"] >= 1.0 and hist[-1]["loss/rep"] >= 1.0  # one free nat
    assert hist[-1]["imag/retnorm_scale"] >= 1.0
    ts = setup["ts"]
    assert int(ts["step"]) == UPDATES
    chex.assert_tree_all_finite((ts["params"], ts["slow"], ts["retnorm"]))


def test_train_returns_posteriors(setup):
    cfg, post = setup["cfg"], setup["post"]
    B, T, r = cfg.batch_size, cfg.batch_length, cfg.agent.rssm
    chex.assert_shape(post["deter"], (B, T, r.deter))
    chex.assert_shape(post["stoch"], (B, T, r.stoch, r.classes))
    np.testing.assert_allclose(np.asarray(post["stoch"]).sum(-1), 1.0, atol=1e-5)


def test_train_traced_exactly_once(setup):
    agent, batch = setup["agent"], setup["batch"]
    assert setup["traces"]["train"] == 1  # over all UPDATES updates of the fixture
    before = agent.traces["train"]
    ts = agent.init(3)
    for seed in range(3):  # fresh state and new batch values: same shapes, no retrace
        ts, _, _ = agent.train(ts, _batch(setup["cfg"], seed + 10))
    jax.block_until_ready(ts)
    assert agent.traces["train"] == before
    del batch


def test_train_passes_chex_max_traces(setup):
    agent, batch = setup["agent"], setup["batch"]
    chex.clear_trace_counter()
    # Same donation as agent.train: the lowered program is identical, so the compilation cache is reused.
    train = jax.jit(chex.assert_max_traces(agent._train, n=1), donate_argnums=(0,))
    ts = agent.init(0)
    for _ in range(3):
        ts, metrics, _ = train(ts, batch)
    chex.assert_tree_all_finite(metrics)
    assert int(ts["step"]) == 3
    # The check is live: a batch of another length would retrace and is reported.
    short = jax.tree.map(lambda x: x[:, :8] if x.ndim >= 2 else x, batch)
    short["start"], short["start_action"] = batch["start"], batch["start_action"]
    with pytest.raises(AssertionError, match="traced > 1 times"):
        train(ts, short)
    chex.clear_trace_counter()


def test_same_seed_same_params_different_seed_differs(setup):
    cfg, agent = setup["cfg"], setup["agent"]
    other = Agent(OBS_SPEC, ACT_SPEC, cfg)
    batches = [_batch(cfg, 20 + i) for i in range(5)]
    ts_a, ts_b, ts_c = agent.init(0), other.init(0), agent.init(1)
    chex.assert_trees_all_equal(ts_a["params"], ts_b["params"])
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(ts_a["params"], ts_c["params"])
    for b in batches:
        ts_a, m_a, _ = agent.train(ts_a, b)
        ts_b, m_b, _ = other.train(ts_b, b)
        ts_c, _, _ = agent.train(ts_c, b)
    chex.assert_trees_all_equal(ts_a["params"], ts_b["params"])
    chex.assert_trees_all_equal(ts_a["slow"], ts_b["slow"])
    chex.assert_trees_all_equal(m_a, m_b)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(ts_a["params"], ts_c["params"])


# ------------------------------------------------------------------------------------------ policy/report

def _obs(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
            "tokens": rng.integers(0, VOCAB, (n, 1)).astype(np.int32),
            "vector": rng.normal(size=(n, 4)).astype(np.float32),
            "log_text": np.zeros((n,), np.float32)}


def test_policy_actions_within_spec_and_greedy_deterministic(setup):
    agent, cfg = setup["agent"], setup["cfg"]
    params = agent.init(0)["params"]
    N, r = 6, cfg.agent.rssm
    carry = agent.init_policy(N)
    chex.assert_shape(carry["action"], (N, 3 + 4))
    before = agent.traces["policy"]
    seen = {"move": set(), "talk": set()}
    for t in range(8):
        is_first = np.full((N,), t == 0)
        carry, actions, latent = agent.policy(params, carry, _obs(N, t), is_first, jax.random.key(t))
        assert set(actions) == {"move", "talk"}
        for name, spec in ACT_SPEC.items():
            a = np.asarray(actions[name])
            assert a.shape == (N,) and np.issubdtype(a.dtype, np.integer)
            for value in a:
                spec.validate(np.asarray(value, spec.dtype))
            seen[name] |= set(a.tolist())
        chex.assert_shape(latent["deter"], (N, r.deter))
        chex.assert_shape(latent["stoch"], (N, r.stoch, r.classes))
        chex.assert_shape(carry["action"], (N, 7))
    assert seen["move"] <= {0, 1, 2} and seen["talk"] <= {2, 3, 4, 5}
    assert len(seen["talk"]) > 1  # sampled, not constant

    obs, first = _obs(N, 99), np.zeros((N,), bool)
    out1 = agent.policy(params, carry, obs, first, jax.random.key(5), greedy=True)
    out2 = agent.policy(params, carry, obs, first, jax.random.key(5), greedy=True)
    chex.assert_trees_all_equal(out1, out2)
    # Greedy = argmax of the actor at the new latent state (plus the head's offset).
    nets = nnx.merge(agent.graph, params)
    logits = nets.actor(nets.wm.rssm.feat(out1[2]))
    for name, low in [("move", 0), ("talk", 2)]:
        lg = np.sort(np.asarray(logits[name]), -1)
        clear = lg[:, -1] - lg[:, -2] > 1e-5  # ignore near-ties (eager vs jitted rounding)
        assert clear.any()
        want = np.argmax(np.asarray(logits[name]), -1) + low
        np.testing.assert_array_equal(np.asarray(out1[1][name])[clear], want[clear])
    assert agent.traces["policy"] - before <= 2  # one trace per `greedy` value


def test_report_open_loop_metrics(setup):
    agent, cfg, batch = setup["agent"], setup["cfg"], setup["batch"]
    B, T = cfg.batch_size, cfg.batch_length
    out = agent.report(setup["ts"]["params"], batch, jax.random.key(0))
    keys = {k for k in out if k.startswith("openloop/")}
    assert keys == {"openloop/image_mse", "openloop/tokens_acc", "openloop/vector_mse"}
    for k in keys:
        chex.assert_shape(out[k], (T,))
        chex.assert_tree_all_finite(out[k])
    acc = np.asarray(out["openloop/tokens_acc"])
    assert (acc >= 0).all() and (acc <= 1).all()
    assert (np.asarray(out["openloop/image_mse"]) >= 0).all()
    chex.assert_shape(out["pred"]["image"], (B, T, 16, 16, 3))
    chex.assert_shape(out["pred"]["tokens"], (B, T, 1, VOCAB))
    chex.assert_shape(out["pred"]["vector"], (B, T, 4))
    chex.assert_shape(out["reward"], (B, T))


# -------------------------------------------------------------------------------------------------- replay

N_STREAMS, LENGTH, DETER, STOCH, CLASSES = 2, 5, 6, 3, 4


def _step(t: int) -> dict:
    """Step t of every stream; values encode (stream, t) so samples can be traced back."""
    s = np.arange(N_STREAMS)
    code = 1000 * s + t
    stoch = np.zeros((N_STREAMS, STOCH, CLASSES), np.float32)
    stoch[:, :, t % CLASSES] = 1
    return {"obs": {"t": code.astype(np.int64), "image": np.full((N_STREAMS, 4, 4, 3), t % 256, np.uint8)},
            "action": {"a": (code % 7).astype(np.int32)},
            "reward": code.astype(np.float32), "is_first": (np.full(N_STREAMS, t == 0)),
            "is_terminal": np.zeros(N_STREAMS, bool),
            "latent": {"deter": np.repeat(code[:, None], DETER, 1).astype(np.float32), "stoch": stoch}}


def _check_batch(batch, B, per_stream_steps=None):
    T = LENGTH
    code = batch["obs"]["t"]
    assert code.shape == (B, T)
    assert batch["obs"]["image"].shape == (B, T, 4, 4, 3)
    for key in ["reward", "is_first", "is_terminal"]:
        assert batch[key].shape == (B, T)
    assert batch["action"]["a"].shape == (B, T)
    assert batch["start"]["deter"].shape == (B, DETER)
    assert batch["start"]["stoch"].shape == (B, STOCH, CLASSES)
    assert batch["start_action"]["a"].shape == (B,)
    # Consecutive steps of one stream.
    np.testing.assert_array_equal(np.diff(code, axis=1), 1)
    np.testing.assert_array_equal(batch["reward"], code)
    # Context: the latent and action stored with the step before the chunk.
    prev = code[:, 0] - 1
    np.testing.assert_array_equal(batch["start"]["deter"], np.repeat(prev[:, None], DETER, 1))
    want_ids = np.repeat((prev % 1000 % CLASSES)[:, None], STOCH, 1)
    np.testing.assert_array_equal(batch["start"]["stoch"].argmax(-1), want_ids)
    np.testing.assert_array_equal(batch["start"]["stoch"].sum(-1), 1)
    np.testing.assert_array_equal(batch["start_action"]["a"], prev % 7)
    if per_stream_steps is not None:
        lo, hi = per_stream_steps
        t = code % 1000
        assert (t >= lo).all() and (t < hi).all()
        assert (prev % 1000 >= lo).all()


def test_replay_add_sample_and_context():
    replay = Replay(capacity=40, num_streams=N_STREAMS, length=LENGTH, seed=0)
    assert replay.per == 20
    for t in range(LENGTH):
        replay.add(_step(t))
    assert not replay.ready()
    with pytest.raises(RuntimeError, match="sampling needs"):
        replay.sample(3, CLASSES)
    replay.add(_step(LENGTH))
    assert replay.ready() and len(replay) == (LENGTH + 1) * N_STREAMS
    for _ in range(10):
        batch, (streams, times) = replay.sample(8, CLASSES)
        _check_batch(batch, 8, (0, LENGTH + 1))
        assert streams.shape == (8,) and times.shape == (8, LENGTH)
        np.testing.assert_array_equal(batch["obs"]["t"] // 1000, np.repeat(streams[:, None], LENGTH, 1))


def test_replay_wraps_around_after_capacity():
    replay = Replay(capacity=20, num_streams=N_STREAMS, length=LENGTH, seed=1)
    total = 37
    for t in range(total):
        replay.add(_step(t))
    assert len(replay) == 20 and replay.count == replay.per == 10
    starts = set()
    for _ in range(50):
        batch, _ = replay.sample(4, CLASSES)
        _check_batch(batch, 4, (total - 10, total))  # only the newest `per` steps, in order
        starts |= set((batch["obs"]["t"][:, 0] % 1000).tolist())
    # Every chunk that has a stored step before it can be sampled.
    assert starts == set(range(total - 10 + 1, total - LENGTH + 1))


def test_replay_priority_fraction_finds_the_rare_high_loss_step():
    replay = Replay(capacity=80, num_streams=N_STREAMS, length=LENGTH, seed=3, priority_frac=0.5)
    total = 57  # wraps around: 40 steps per stream are kept
    for t in range(total):
        replay.add(_step(t))
    # Every step trained once with a small loss, except one rare step (stream 1, t = 40) with a large one.
    for s in range(N_STREAMS):
        times = (np.arange(40)[None] + 0) % replay.per
        loss = np.full((1, 40), 0.01)
        replay.update_priorities((np.array([s]), times), loss)
    rare = (1, 40 % replay.per)
    replay.update_priorities((np.array([1]), np.array([[rare[1]]])), np.array([[50.0]]))
    hits = {"prio": 0, "uniform": 0}
    for _ in range(200):
        batch, (streams, times) = replay.sample(8, CLASSES)
        _check_batch(batch, 8, (total - 40, total))
        found = (batch["obs"]["t"] == 1000 + 40).any(1)
        hits["prio"] += int(found[:4].sum())
        hits["uniform"] += int(found[4:].sum())
    assert hits["prio"] > 0.9 * 800  # the prioritised half almost always holds the rare step
    assert hits["uniform"] < 0.2 * 800  # the uniform half does not care
    # New steps get the largest weight seen so far, so they are replayed soon.
    replay.add(_step(total))
    assert replay.weight[0, (total) % replay.per] == replay.max_weight == 50.0 ** 0.8
    with pytest.raises(ValueError, match="priority_frac"):
        Replay(capacity=80, num_streams=N_STREAMS, length=LENGTH, priority_frac=1.5)


def test_replay_event_fraction_replays_rare_rewards_and_terminations():
    replay = Replay(capacity=80, num_streams=N_STREAMS, length=LENGTH, seed=4, priority_frac=0.25, event_frac=0.5)
    total = 57  # wraps around: 40 steps per stream are kept
    for t in range(total):
        step = _step(t)
        step["reward"] = np.zeros(N_STREAMS, np.float32)
        if t == 30:
            step["reward"][0] = 1.0  # one rewarding step in stream 0 ...
        if t == 45:
            step["is_terminal"] = np.array([False, True])  # ... and one termination in stream 1
        replay.add(step)
    assert len(replay._pending) < 40  # adds without draws update the trees once a buffer's worth is pending
    hits = np.zeros(8)
    for _ in range(200):
        batch, _ = replay.sample(8, CLASSES)
        t = batch["obs"]["t"] % 1000
        assert (np.diff(t, axis=1) == 1).all() and (t >= total - 40).all() and (t < total).all()
        hits += (batch["reward"] != 0).any(1) | batch["is_terminal"].any(1)
    assert (hits[4:] == 200).all()  # the event rows (the last half) always hold one of the two events
    assert hits[:4].sum() < 0.4 * 800  # the other rows sample by priority / uniformly
    with pytest.raises(ValueError, match="event_frac=1.5"):
        Replay(capacity=80, num_streams=N_STREAMS, length=LENGTH, event_frac=1.5)
    with pytest.raises(ValueError, match="exceeds 1"):
        Replay(capacity=80, num_streams=N_STREAMS, length=LENGTH, priority_frac=0.6, event_frac=0.5)


def test_sum_tree_draws_in_proportion_to_weight():
    from lwm.replay import SumTree

    tree = SumTree(5)  # 8 leaves, 3 unused
    tree.set(np.array([0, 1, 2, 3, 4, 2]), np.array([1.0, 0.0, 9.0, 2.0, 4.0, 3.0]))  # repeat: the last write wins
    assert tree.total() == 10.0
    draws = tree.sample(np.random.default_rng(0), 200_000)
    freq = np.bincount(draws, minlength=8) / draws.size
    np.testing.assert_allclose(freq[:5], [0.1, 0.0, 0.3, 0.2, 0.4], atol=0.005)
    assert freq[1] == 0 and freq[5:].sum() == 0  # zero-weight and unused items are never drawn
    again = SumTree(5)
    again.rebuild(np.array([1.0, 0.0, 3.0, 2.0, 4.0]))
    np.testing.assert_array_equal(again.tree, tree.tree)
    big = SumTree(3_000_001)  # one draw costs O(log n): a few vector ops over 22 levels
    big.set(np.array([3_000_000]), 1.0)
    assert (big.sample(np.random.default_rng(1), 16) == 3_000_000).all()


def test_replay_never_draws_the_oldest_step_and_reloads_its_trees(tmp_path):
    replay = Replay(capacity=20, num_streams=N_STREAMS, length=LENGTH, seed=6, priority_frac=0.5, event_frac=0.5)
    for t in range(23):  # 10 per stream kept: t = 13..22; the oldest (13) is context only
        step = _step(t)
        step["reward"] = np.zeros(N_STREAMS, np.float32)
        step["is_terminal"] = np.array([t in (13, 18), False])  # events: the oldest step and t = 18
        replay.add(step)
    for _ in range(50):
        batch, _ = replay.sample(4, CLASSES)
        assert batch["is_terminal"][2:].any(1).all()  # the event rows hold t = 18 (never the unreachable 13)
        assert (batch["obs"]["t"][2:] // 1000 == 0).all()
    path = tmp_path / "replay.npz"
    replay.save(path)
    again = Replay.load(path, priority_frac=0.5, event_frac=0.5)
    np.testing.assert_array_equal(again._prio_tree.tree, replay._prio_tree.tree)
    np.testing.assert_array_equal(again._event_tree.tree, replay._event_tree.tree)


def test_replay_update_latents_writes_back():
    replay = Replay(capacity=40, num_streams=N_STREAMS, length=LENGTH, seed=2)
    for t in range(15):
        replay.add(_step(t))
    batch, index = replay.sample(3, CLASSES)
    streams, times = index
    rng = np.random.default_rng(0)
    deter = rng.normal(size=(3, LENGTH, DETER)).astype(np.float32)
    ids = rng.integers(0, CLASSES, (3, LENGTH, STOCH))
    replay.update_latents(index, {"deter": deter, "stoch": np.eye(CLASSES, dtype=np.float32)[ids]})
    got_deter = replay.data["latent/deter"][streams[:, None], times]
    got_stoch = replay.data["latent/stoch"][streams[:, None], times]
    # Where chunks overlap the later write wins; compare against a replay of the same writes.
    want_deter = np.zeros_like(replay.data["latent/deter"])
    want_stoch = np.zeros_like(replay.data["latent/stoch"])
    want_deter[streams[:, None], times] = deter
    want_stoch[streams[:, None], times] = ids
    np.testing.assert_array_equal(got_deter, want_deter[streams[:, None], times])
    np.testing.assert_array_equal(got_stoch, want_stoch[streams[:, None], times])
    # Other positions are untouched.
    mask = np.ones(replay.data["latent/deter"].shape[:2], bool)
    mask[streams[:, None], times] = False
    t_all = replay.data["obs/t"][mask]
    np.testing.assert_array_equal(replay.data["latent/deter"][mask][:, 0], t_all)
    del batch


@pytest.mark.parametrize("steps", [7, 23])  # partly filled, and wrapped around
def test_replay_save_load_round_trip(tmp_path, steps):
    replay = Replay(capacity=20, num_streams=N_STREAMS, length=LENGTH, seed=5)
    for t in range(steps):
        replay.add(_step(t))
    path = tmp_path / "replay.npz"
    replay.save(path)
    assert path.exists() and not list(tmp_path.glob("*.tmp*"))
    again = Replay.load(path, seed=5)
    assert (again.capacity, again.streams, again.length, again.per) == (20, N_STREAMS, LENGTH, 10)
    assert (again.pos, again.count, len(again)) == (replay.pos, replay.count, len(replay))
    assert set(again.data) == set(replay.data)
    for key, value in replay.data.items():
        assert again.data[key].dtype == value.dtype
        np.testing.assert_array_equal(again.data[key][:, : replay.count], value[:, : replay.count])
    replay.rng = np.random.default_rng(9)
    again.rng = np.random.default_rng(9)
    a, ia = replay.sample(4, CLASSES)
    b, ib = again.sample(4, CLASSES)
    chex.assert_trees_all_equal((a, ia), (b, ib))
    again.add(_step(steps))  # keeps working after loading
    assert again.count == min(steps + 1, 10)


def test_replay_errors():
    with pytest.raises(ValueError, match="batch_length"):
        Replay(capacity=10, num_streams=2, length=5)  # 5 per stream < length + 1
    with pytest.raises(ValueError, match="num_streams"):
        Replay(capacity=10, num_streams=0, length=2)
    replay = Replay(capacity=40, num_streams=N_STREAMS, length=LENGTH)
    replay.add(_step(0))
    bad = _step(1)
    bad["reward"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="leading shape"):
        replay.add(bad)
    extra = _step(1)
    extra["other"] = np.zeros(N_STREAMS)
    with pytest.raises(ValueError, match="not in the first step"):
        replay.add(extra)


def test_replay_too_large_for_memory_is_a_clear_error(monkeypatch):
    import psutil

    from lwm.replay import ReplayTooLarge

    class Memory:
        available = 2**30  # 1 GiB
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    replay = Replay(capacity=100_000, num_streams=2, length=8)
    step = {"obs": {"image": np.zeros((2, 64, 64, 3), np.uint8)}, "reward": np.zeros(2, np.float32)}
    with pytest.raises(ReplayTooLarge, match=r"replay.capacity=100000 steps need 1.1 GiB \(obs/image \(64, 64, 3\) "
                                             r"uint8 1.1 GiB.*lower --replay.capacity \(to at most about 69882 steps"):
        replay.add(step)
    assert not replay.data and len(replay) == 0  # nothing allocated, nothing added
    Replay(capacity=50_000, num_streams=2, length=8).add(step)  # 0.6 GiB fits


def test_driver_fills_replay_from_tokenchoice():
    worlds = [envs.make("tokenchoice", num_choices=4, delay=2, image=False, seed=i) for i in range(2)]
    driver = Driver(worlds, ["tokens", "vector"], name="tokenchoice")
    replay = Replay(capacity=200, num_streams=2, length=4, seed=0)
    rng = np.random.default_rng(0)

    def policy(obs, is_first):
        assert obs["tokens"].shape == (2, 1) and obs["vector"].shape == (2, 4)
        latent = {"deter": rng.normal(size=(2, DETER)).astype(np.float32),
                  "stoch": np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, (2, STOCH))]}
        return {"action": rng.integers(0, 4, 2).astype(np.int32)}, {"latent": latent}

    for _ in range(20):
        driver.step(policy, replay.add)
    assert driver.steps == 40 and len(replay) == 40
    episodes = driver.pop_episodes()
    assert len(episodes) >= 8 and all(e["length"] == 3 for e in episodes)
    assert all(e["return"] in (0.0, 1.0) for e in episodes)
    batch, _ = replay.sample(5, CLASSES)
    assert batch["obs"]["tokens"].shape == (5, 4, 1) and batch["action"]["action"].shape == (5, 4)
    # Episodes of delay 2 last 4 observations (first, 2 mid, terminal); a first follows each terminal.
    term, first = batch["is_terminal"], batch["is_first"]
    assert (first[:, 1:][term[:, :-1]]).all()
    assert (term[:, :-1][first[:, 1:]]).all()
    assert (batch["reward"][batch["is_first"]] == 0).all()


# ------------------------------------------------------------------------------------------------ bad input

class _Corrupt(dm_env.Environment):
    """Wraps an environment and rewrites its observations with `fn`."""

    def __init__(self, env, fn):
        self.env, self.fn = env, fn

    def reset(self):
        ts = self.env.reset()
        return ts._replace(observation=self.fn(dict(ts.observation)))

    def step(self, action):
        ts = self.env.step(action)
        return ts._replace(observation=self.fn(dict(ts.observation)))

    def observation_spec(self):
        return self.env.observation_spec()

    def action_spec(self):
        return self.env.action_spec()


def _set(key, value_fn):
    def fn(obs):
        obs[key] = value_fn(obs[key])
        return obs
    return fn


@pytest.mark.parametrize("key,fn,words", [
    ("vector", lambda v: v.astype(np.float64), ["float64", "float32"]),
    ("tokens", lambda v: v.astype(np.int64), ["int64", "int32"]),
    ("vector", lambda v: v[:3], ["(3,)", "(4,)"]),
    ("tokens", lambda v: np.stack([v, v]), ["(2, 1)", "(1,)"]),
])
def test_driver_rejects_observation_with_wrong_dtype_or_shape(key, fn, words):
    env = _Corrupt(envs.make("tokenchoice", num_choices=4, delay=2, image=False), _set(key, fn))
    driver = Driver([env], ["tokens", "vector"], name="broken")
    with pytest.raises(ObservationError) as info:
        driver.observe()
    msg = str(info.value)
    assert f"{key!r}" in msg and "broken[0]" in msg and "spec" in msg
    for word in words:
        assert word in msg
    assert isinstance(info.value, ValueError)


def test_check_observation_errors():
    spec = envs.make("tokenchoice", image=True).observation_spec()
    good = {k: np.zeros(s.shape, s.dtype) for k, s in spec.items()}
    check_observation(good, spec, "here")
    with pytest.raises(ObservationError, match=r"'image'.*float32.*uint8"):
        check_observation({**good, "image": good["image"].astype(np.float32)}, spec, "here")
    with pytest.raises(ObservationError, match=r"'image'.*\(8, 8, 3\).*\(16, 16, 3\)"):
        check_observation({**good, "image": np.zeros((8, 8, 3), np.uint8)}, spec, "here")
    with pytest.raises(ObservationError, match="lacks key 'vector'"):
        check_observation({k: v for k, v in good.items() if k != "vector"}, spec, "here")
    with pytest.raises(ObservationError, match="outside its bounds"):
        check_observation({**good, "tokens": np.full(spec["tokens"].shape, 10**6, np.int32)}, spec, "here")
    with pytest.raises(ObservationError, match="must be a dict"):
        check_observation(np.zeros(3), spec, "here")


@pytest.mark.parametrize("act_spec", [
    specs.BoundedArray((), np.float32, -1.0, 1.0, name="steer"),     # continuous
    specs.BoundedArray((2,), np.int32, 0, 3, name="pair"),           # non-scalar discrete
    {"move": specs.DiscreteArray(3), "steer": specs.Array((), np.float32, name="steer")},
])
def test_unsupported_action_spec(act_spec):
    with pytest.raises(ValueError, match="not supported"):
        Agent(OBS_SPEC, act_spec, _config())


def test_unknown_compute_dtype():
    cfg = _config().update({"jax.compute_dtype": "float8"})
    with pytest.raises(ValueError, match="compute_dtype"):
        Agent(OBS_SPEC, ACT_SPEC, cfg)


def test_unusable_observation_specs():
    with pytest.raises(ValueError, match="No observation key"):
        Agent({"log_x": specs.Array((), np.float32)}, ACT_SPEC, _config())
    with pytest.raises(ValueError, match="rank"):
        Agent({"cube": specs.Array((2, 2, 2), np.float32)}, ACT_SPEC, _config())
    with pytest.raises(TypeError):
        Agent(specs.Array((4,), np.float32), ACT_SPEC, _config())


def test_non_dict_observation_spec_message():
    with pytest.raises(TypeError, match="must be a dict"):
        Agent(specs.Array((4,), np.float32), ACT_SPEC, _config())


def test_bfloat16_compute_keeps_float32_parameters():
    """The accelerator path (bf16 compute, float32 parameters) runs on CPU too and stays finite."""
    cfg = config.load(["debug"], {"jax.compute_dtype": "bfloat16", "batch_length": 8})
    spec = {"tokens": OBS_SPEC["tokens"], "vector": OBS_SPEC["vector"]}
    agent = Agent(spec, specs.DiscreteArray(3, name="action"), cfg)
    assert agent.dtype == jnp.bfloat16
    batch = _batch(cfg, 1)
    batch["obs"] = {k: batch["obs"][k] for k in spec}
    batch["action"] = {"action": batch["action"]["move"]}
    batch["start_action"] = {"action": batch["start_action"]["move"]}
    ts = agent.init(0)
    for _ in range(3):
        ts, metrics, post = agent.train(ts, batch)
    chex.assert_tree_all_finite(metrics)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ts["params"]))
    assert agent.traces["train"] == 1


def test_auto_compute_dtype_is_float32_on_cpu():
    cfg = config.load(["debug"])
    assert cfg.jax.compute_dtype == "auto"
    agent = Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"), cfg)
    assert agent.dtype == jnp.float32


def test_unknown_priority_signal_is_rejected():
    cfg = config.load(["debug"], {"replay.priority_signal": "rewards"})
    with pytest.raises(ValueError, match="priority_signal='rewards'.*'model' or 'heads'"):
        Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"), cfg)


def _vector_batch(cfg) -> dict:
    """A random batch for a world with only a 4-vector observation and one 2-way action."""
    B, T, r = cfg.batch_size, cfg.batch_length, cfg.agent.rssm
    rng = np.random.default_rng(0)
    return {"obs": {"vector": rng.normal(size=(B, T, 4)).astype(np.float32)},
            "action": {"action": rng.integers(0, 2, (B, T)).astype(np.int32)},
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": np.zeros((B, T), bool),
            "is_terminal": np.zeros((B, T), bool),
            "start": {"deter": np.zeros((B, r.deter), np.float32),
                      "stoch": np.zeros((B, r.stoch, r.classes), np.float32)},
            "start_action": {"action": np.zeros((B,), np.int32)}}


def test_imagination_start_subset():
    from lwm.agent import start_indices

    B, T = 4, 6
    assert start_indices(B, T, 0, jax.random.key(0)) is None and start_indices(B, T, B * T, jax.random.key(0)) is None
    idx = np.asarray(start_indices(B, T, 10, jax.random.key(1)))
    assert idx.shape == (10,) and len(set(idx.tolist())) == 10 and (idx >= 0).all() and (idx < B * T).all()
    np.testing.assert_array_equal(idx[:B], np.arange(B) * T + T - 1)  # every row's last state first
    assert not np.isin(idx[B:], np.arange(B) * T + T - 1).any()
    with pytest.raises(ValueError, match="agent.imag.starts=3 must be 0 .* at least batch_size=4"):
        Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"),
              config.load(["debug"], {"agent.imag.starts": 3, "batch_size": 4}))
    # A train step that imagines from a subset runs, is finite and traces once.
    cfg = config.load(["debug"], {"agent.imag.starts": 9, "batch_size": 4, "batch_length": 6})
    agent = Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"), cfg)
    batch = _vector_batch(cfg)
    ts = agent.init(0)
    for _ in range(2):
        ts, metrics, _ = agent.train(ts, batch)
    chex.assert_tree_all_finite(jax.device_get(metrics))
    assert agent.traces["train"] == 1


def _moved(before, after, part: str) -> float:
    """Largest absolute change of any parameter of `part` (wm, actor, critic) between two params trees."""
    return max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before[part]),
                                                           jax.tree.leaves(after[part]), strict=True))


def test_actor_scale_sets_the_actors_learning_rate():
    cfg = config.load(["debug"], {"agent.opt.actor_scale": 0.0, "agent.opt.warmup": 0, "batch_size": 4,
                                  "batch_length": 6})
    agent = Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"), cfg)
    ts = agent.init(0)
    before = jax.device_get(ts["params"])
    ts, _, _ = agent.train(ts, _vector_batch(cfg))
    after = jax.device_get(ts["params"])
    assert _moved(before, after, "actor") == 0.0  # actor_scale 0 freezes the actor ...
    assert _moved(before, after, "critic") > 0.0 and _moved(before, after, "wm") > 0.0  # ... and nothing else


def test_actor_start_holds_the_actor_until_that_update():
    cfg = config.load(["debug"], {"agent.opt.actor_start": 2, "agent.opt.warmup": 0, "batch_size": 4,
                                  "batch_length": 6})
    agent = Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"), cfg)
    ts = agent.init(0)
    batch = _vector_batch(cfg)
    seen = [jax.device_get(ts["params"])]
    for _ in range(3):
        ts, _, _ = agent.train(ts, batch)
        seen.append(jax.device_get(ts["params"]))

    def moved(part, i):
        return _moved(seen[i], seen[i + 1], part)

    assert moved("actor", 0) == 0.0 and moved("actor", 1) == 0.0  # updates 0 and 1: the actor is held ...
    assert moved("wm", 0) > 0.0 and moved("critic", 0) > 0.0  # ... while the rest learns
    assert moved("actor", 2) > 0.0  # from update 2 on it learns
    assert agent.traces["train"] == 1
    with pytest.raises(ValueError, match=r"agent.opt.actor_start=-1 must be an integer >= 0"):
        Agent({"vector": OBS_SPEC["vector"]}, specs.DiscreteArray(2, name="action"),
              config.load(["debug"], {"agent.opt.actor_start": -1}))
    with pytest.raises(ValueError, match=r"agent.opt.actor_start' expects an int, got 1.5"):
        config.load(["debug"], {"agent.opt.actor_start": 1.5})


def test_rec_scales_are_checked_against_the_encoded_keys():
    from lwm.agent import check_rec_scales
    from lwm.world_model import ObsKey

    keys = (ObsKey("grid", "onehot", (7, 7, 3), "int32", 11, 0, True), ObsKey("tokens", "tokens", (1,), "int32", 40))
    assert check_rec_scales({"grid": 0.1, "tokens": "10"}, keys) == {"grid": 0.1, "tokens": 10.0}
    assert check_rec_scales({"image": 1.0}, keys) == {}  # neutral on a key the model lacks (a preset for pixels)
    with pytest.raises(ValueError, match=r"agent.rec_scales names 'image'.*encoded keys: grid, tokens"):
        check_rec_scales({"image": 0.5}, keys)
    with pytest.raises(ValueError, match=r"agent.rec_scales.grid=-1.0 must be a number >= 0"):
        check_rec_scales({"grid": -1.0}, keys)
    cfg, _ = config.parse_args(["--configs", "grid_task", "--agent.rec_scales.tokens", "3"])
    assert dict(cfg.agent.rec_scales) == {"grid": 0.1, "tokens": 3.0, "carrying": 10.0}
