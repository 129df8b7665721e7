"""Team training (issue 5 item 7): W worlds x A agents as streams, messages, batched worlds, a learning check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs
from envs.defusal import core, scripted
from envs.defusal import env as defusal_env
from lwm import config as lwm_config
from lwm.actor_critic import action_heads, mask_logits, parse_mask
from lwm.agent import Agent
from lwm.loop import _policy_fn
from lwm.replay import Replay
from lwm.team import AGENT_ID, TeamDriver, from_streams, mates_of, stream_index, team_specs, to_streams

SMALL = {"message_len": 1, "token_len": 48}


class RecordingTeam:
    """A numpy team env: observation = world and agent index; records the actions it receives."""

    def __init__(self, num_worlds: int = 3, num_agents: int = 2):
        self.num_worlds, self.num_agents = num_worlds, num_agents
        self.received: list[dict] = []
        self.t = 0

    def observation_spec(self):
        from dm_env import specs

        return {"vector": specs.Array((2,), np.float32, name="vector")}

    def action_spec(self):
        from dm_env import specs

        return {"move": specs.BoundedArray((), np.int32, 0, 99, name="move")}

    def _out(self, first: bool) -> dict:
        w, a = np.meshgrid(np.arange(self.num_worlds), np.arange(self.num_agents), indexing="ij")
        vec = np.stack([w, a], -1).astype(np.float32)
        reward = np.arange(self.num_worlds, dtype=np.float32) * (0.0 if first else 1.0)
        last = np.zeros(self.num_worlds, bool)
        if not first and self.t % 3 == 0:
            last[0] = True
        return {"obs": {"vector": vec}, "reward": reward, "is_first": np.full(self.num_worlds, first),
                "is_last": last, "is_terminal": last.copy(), "metrics": {"score": reward * 10}}

    def reset(self):
        return self._out(True)

    def step(self, actions):
        self.received.append(actions)
        self.t += 1
        return self._out(False)


def test_stream_mapping_world_agent_rows():
    env = RecordingTeam(num_worlds=3, num_agents=2)
    driver = TeamDriver(env, ["vector", AGENT_ID])
    seen = []

    def policy(obs, is_first):
        assert obs["vector"].shape == (6, 2) and obs[AGENT_ID].shape == (6,)
        return {"move": np.arange(6) * 10}, {}

    for _ in range(4):
        driver.step(policy, on_step=seen.append)
    for w in range(3):
        for a in range(2):
            n = stream_index(w, a, 2)
            np.testing.assert_array_equal(seen[0]["obs"]["vector"][n], [w, a])
            assert seen[0]["obs"][AGENT_ID][n] == a
            assert env.received[0]["move"][w, a] == n * 10  # row n's action reaches world w, agent a
            assert seen[1]["reward"][n] == w  # every agent of world w gets its team reward
    assert seen[0]["is_first"].all() and not seen[1]["is_first"].any()
    assert driver.steps == 4 * 6 and driver.rounds == 4 * 3
    episodes = driver.pop_episodes()
    assert episodes and all(e["score"] == 0.0 for e in episodes) and episodes[0]["length"] == 3
    x = np.arange(24).reshape(3, 2, 4)
    np.testing.assert_array_equal(from_streams(to_streams(x), 3, 2), x)
    with pytest.raises(ValueError, match=r"expected \(6,\) = 3 worlds x 2 agents"):
        from_streams(np.zeros((5,)), 3, 2)


def test_driver_records_each_streams_teammates_actions():
    """`mates=True`: stream (w, a) gets the actions of agents a+1, a+2, ... (mod A) of world w, in that order."""
    env = RecordingTeam(num_worlds=2, num_agents=3)
    driver = TeamDriver(env, ["vector", AGENT_ID], mates=True)
    seen = []
    for t in range(3):
        driver.step(lambda obs, first, t=t: ({"move": np.arange(6) * 10 + t}, {"x": np.zeros(6)}), seen.append)
    for t, step in enumerate(seen):
        assert step["mates"]["move"].shape == (6, 2) and "x" in step  # the policy's own extras are kept
        for w in range(2):
            for a in range(3):
                want = [stream_index(w, (a + 1 + j) % 3, 3) * 10 + t for j in range(2)]
                assert step["mates"]["move"][stream_index(w, a, 3)].tolist() == want
    assert "mates" not in TeamDriver(env, ["vector"]).observe()  # off by default: replay keys stay as they were
    assert mates_of({"move": np.arange(4)}, 4, 1)["move"].shape == (4, 0)


def test_team_model_trains_acts_and_reports():
    """`agent.team_model`: the RSSM takes own + teammates' one-hot actions (replay's `mates` in training, drawn from
    the teammate-action head when acting and dreaming); the head's loss falls on a fixed batch; one trace each."""
    from lwm.imagination import Imagination, collect_team_episodes

    config = lwm_config.load(["debug"], {"agent.team_model": True, "agent.actor.mask": "action_mask:move",
                                         "agent.opt.lr": 1e-3, "agent.opt.warmup": 0})
    env = envs.make_batched("defusal_small", 2, seed=4, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    assert agent.mates == 2
    d = sum(h.num for h in agent.heads)
    ts = agent.init(0)
    driver = TeamDriver(env, [k.name for k in agent.keys], mates=True)
    act = _policy_fn(agent, driver.num_streams, 0, False, lambda: ts["params"])
    replay = Replay(capacity=6 * 32, num_streams=driver.num_streams, length=config.batch_length, seed=0)
    for _ in range(config.batch_length + 4):
        driver.step(act, on_step=replay.add)
    assert act.state["carry"]["action"].shape == (6, 3 * d)
    assert np.all(np.asarray(act.state["carry"]["action"]).sum(-1) == 3 * len(agent.heads))  # own + 2 mates
    batch, _ = replay.sample(config.batch_size, config.agent.rssm.classes)
    assert batch["mates"]["move"].shape == (config.batch_size, config.batch_length, 2)
    assert batch["start_mates"]["move"].shape == (config.batch_size, 2)
    assert agent.prev_actions(batch).shape == (config.batch_size, config.batch_length, 3 * d)
    first = None
    for _ in range(25):
        ts, metrics, _ = agent.train(ts, batch)
        first = float(metrics["loss/mates"]) if first is None else first
    assert bool(metrics["train/finite"]) and float(metrics["loss/mates"]) < first - 0.5, (first, metrics)
    assert agent.traces["train"] == 1 and agent.traces["policy"] == 1
    episodes = collect_team_episodes(agent, ts["params"], envs.make_batched("defusal_small", 1, seed=5, **SMALL),
                                     max_steps=6)
    assert episodes[0]["mates"]["move"].shape == (episodes[0]["length"], 2)
    result = Imagination(agent).run(ts["params"], episodes, context=2)
    assert result["episodes"][0]["dream"]["action"]["move"].shape[0] >= 1
    with pytest.raises(ValueError, match="team_model=true needs a team world"):
        Agent({k: v for k, v in obs_spec.items() if k != AGENT_ID}, act_spec, config)
    with pytest.raises(ValueError, match="no teammates' actions"):
        agent.prev_actions({k: v for k, v in batch.items() if k not in ("mates", "start_mates")})


def test_replay_draws_whole_teams():
    """Replay(group=A): every drawn row brings its world's A streams at the same steps (uniform and priority rows)."""
    replay = Replay(capacity=6 * 40, num_streams=6, length=8, seed=1, priority_frac=0.5, group=3)
    for t in range(40):
        replay.add({"reward": np.full(6, float(t), np.float32), "who": np.arange(6),
                    "is_terminal": np.zeros(6, bool), "latent": {"stoch": np.zeros((6, 2, 4), np.float32)}})
    replay.update_priorities((np.array([4]), np.array([[30] * 8])), np.full((1, 8), 50.0))  # stream 4 stands out
    for _ in range(20):
        batch, (streams, times) = replay.sample(6, 4)
        groups = streams.reshape(2, 3)
        assert np.all(groups == groups[:, :1] + np.arange(3)) and np.all(groups[:, 0] % 3 == 0), streams
        assert np.all(times.reshape(2, 3, 8) == times.reshape(2, 3, 8)[:, :1]) and batch["who"].shape == (6, 8)
    with pytest.raises(ValueError, match="multiple of the replay's group of 3"):
        replay.sample(4, 4)
    with pytest.raises(ValueError, match="group=4 must be a positive integer dividing num_streams=6"):
        Replay(capacity=6 * 40, num_streams=6, length=8, group=4)


@pytest.mark.parametrize("starts", [0, 12])
def test_joint_imagination_pairs_each_start_with_its_teammates(starts):
    """`agent.imag.joint`: among the imagination starts, teammate j of a start is the same world's agent a+1+j
    (mod A) at the same step, for all B·T states and for a drawn subset (`start_indices` in whole teams)."""
    from lwm.agent import check_joint, joint_mates, start_indices

    B, T, A = 6, 5, 3
    idx = start_indices(B, T, starts, jax.random.key(3), A)
    flat = np.arange(B * T) if idx is None else np.asarray(idx)
    assert len(flat) == (B * T if starts == 0 else starts) and len(set(flat.tolist())) == len(flat)
    assert (flat[:B] == np.arange(B) * T + T - 1).all() or idx is None  # the rows' last states first
    row, step = flat // T, flat % T
    for j, pos in enumerate(joint_mates(B, T, A, starts)):
        assert np.all(row[pos] == row - row % A + (row % A + 1 + j) % A) and np.all(step[pos] == step)
    with pytest.raises(ValueError, match="multiple of the 3 agents of a team"):
        start_indices(B, T, 7, jax.random.key(0), A)
    with pytest.raises(ValueError, match="needs agent.team_model=true"):
        check_joint(True, 0, B, T, 0)
    with pytest.raises(ValueError, match="batch_size=16 must be a multiple of 3"):
        check_joint(True, 2, 16, T, 0)
    with pytest.raises(ValueError, match="must be true or false"):
        check_joint("yes", 2, B, T, 0)


def test_joint_imagination_trains():
    """A team model with joint imagination trains on whole-team batches (finite losses, one trace)."""
    config = lwm_config.load(["debug"], {"agent.team_model": True, "agent.imag.joint": True, "batch_size": 6,
                                         "agent.imag.starts": 12, "agent.actor.mask": "action_mask:move"})
    env = envs.make_batched("defusal_small", 2, seed=4, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    assert agent.joint
    ts = agent.init(0)
    driver = TeamDriver(env, [k.name for k in agent.keys], mates=True)
    act = _policy_fn(agent, driver.num_streams, 0, False, lambda: ts["params"])
    replay = Replay(capacity=6 * 32, num_streams=driver.num_streams, length=config.batch_length, seed=0, group=3)
    for _ in range(config.batch_length + 4):
        driver.step(act, on_step=replay.add)
    for _ in range(3):
        batch, _ = replay.sample(config.batch_size, config.agent.rssm.classes)
        ts, metrics, _ = agent.train(ts, batch)
        assert bool(metrics["train/finite"])
    assert agent.traces["train"] == 1


def _jittered_params(agent: Agent, seed: int):
    """The agent's initial parameters plus N(0, 0.3²) noise: untrained output heads are 0, this gives every action
    its own one-step value."""
    leaves, tree = jax.tree.flatten(agent.init(0)["params"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys, strict=True)])


def _observe(driver: TeamDriver, act_spec, rounds: int = 1) -> tuple[dict, np.ndarray]:
    """(obs, is_first) the driver's streams see after `rounds` rounds of action 0 on every head."""
    seen = {}

    def grab(obs, is_first):
        seen.update(obs=obs, is_first=is_first)
        return {h: np.zeros(driver.num_streams, np.int32) for h in act_spec}, {}

    for _ in range(rounds):
        driver.step(grab)
    return seen["obs"], seen["is_first"]


def test_lookahead_moves_the_actor_towards_the_better_actions():
    """`agent.actor.lookahead`: a gradient step on the all-action term raises the policy's expected one-step value
    Σ_k π_k Q_k (Q from the model, the teammates' actions fixed); bad settings are named."""
    from flax import nnx

    config = lwm_config.load(["debug"], {"agent.team_model": True, "agent.actor.lookahead": 1.0,
                                         "agent.actor.lookahead_head": "move"})
    env = envs.make_batched("defusal_small", 2, seed=4, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    params = _jittered_params(agent, 7)
    frozen = nnx.merge(agent.graph, params)
    r, n = config.agent.rssm, 16
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    start = {"deter": jax.random.normal(k1, (n, r.deter)),
             "stoch": jax.nn.one_hot(jax.random.randint(k2, (n, r.stoch), 0, r.classes), r.classes)}
    feat = frozen.wm.rssm.feat(start)
    own = jnp.zeros((n, sum(h.num for h in agent.heads))).at[:, 0].set(1.0)
    action0 = agent.joint_action(frozen, feat, own, k3)
    q = agent.lookahead_q(frozen, start, action0, k3)
    assert q.shape == (n, 9) and float(jnp.std(q, -1).mean()) > 0

    def expected(p):
        return jnp.sum(jax.nn.softmax(nnx.merge(agent.graph, p).actor(feat)["move"], -1) * q, -1).mean()

    grads = jax.grad(lambda p: agent.lookahead_loss(nnx.merge(agent.graph, p), frozen, start, feat, action0, 1.0,
                                                    k3)[0].mean())(params)
    assert float(optax.tree.norm(grads["actor"])) > 0 and float(optax.tree.norm(grads["wm"])) == 0
    stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    assert float(expected(stepped)) > float(expected(params)) + 1e-4
    for bad, match in [({"agent.actor.lookahead": -1.0}, "lookahead=-1.0 must be a number >= 0"),
                       ({"agent.actor.lookahead_head": "jump"}, "lookahead_head='jump' is not an action head")]:
        with pytest.raises(ValueError, match=match):
            Agent(obs_spec, act_spec, lwm_config.load(["debug"], {"agent.team_model": True, **bad}))


def test_plan_acting_takes_the_models_best_legal_move():
    """`plan` acting (`Agent._plan`, ``bench/defusal_pack.py --plan N``): the move is the legal one of highest
    one-step value, the mean over N prior draws from the posterior, given the actor's other heads and the
    teammate-action head's draws; the carry records that move; it traces once per setting."""
    from flax import nnx

    config = lwm_config.load(["debug"], {"agent.team_model": True, "agent.actor.mask": "action_mask:move",
                                         "agent.actor.lookahead_head": "move"})
    env = envs.make_batched("defusal_small", 3, seed=6, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    params = _jittered_params(agent, 8)
    driver = TeamDriver(env, [k.name for k in agent.keys])
    obs, is_first = _observe(driver, act_spec, rounds=2)  # the second round: not is_first, some moves illegal
    carry = agent.init_policy(driver.num_streams)
    key = jax.random.key(3)
    base, actor_a, _ = agent.policy(params, carry, obs, is_first, key, greedy=True)
    planned, plan_a, _ = agent.policy(params, carry, obs, is_first, key, greedy=True, plan=4)
    nets = nnx.merge(agent.graph, params)
    k2 = jax.random.split(key)[1]
    q = np.mean([np.asarray(agent.lookahead_q(nets, base["state"], base["action"], k))
                 for k in jax.random.split(jax.random.fold_in(k2, 3), 4)], 0)
    legal = np.asarray(obs["action_mask"]).astype(bool)
    assert (~legal).any(), "the check needs illegal moves"
    low = act_spec["move"].minimum
    expect = np.argmax(np.where(legal, q, -np.inf), -1)
    np.testing.assert_array_equal(np.asarray(plan_a["move"]) - low, expect)
    assert (np.asarray(plan_a["move"]) != np.asarray(actor_a["move"])).any(), "plan never differs from the actor"
    for h in act_spec:
        if h != "move":
            np.testing.assert_array_equal(plan_a[h], actor_a[h])
    width = sum(h.num for h in agent.heads)
    move_at = sum(h.num for h in agent.heads[: [h.name for h in agent.heads].index("move")])
    np.testing.assert_array_equal(np.argmax(np.asarray(planned["action"])[:, move_at: move_at + 9], -1), expect)
    np.testing.assert_array_equal(planned["action"][:, width:], base["action"][:, width:])  # the mates' draws
    for _ in range(2):
        agent.policy(params, carry, obs, is_first, key, greedy=True, plan=4)
    assert agent.traces["policy"] == 2  # one trace for the actor, one for plan=4
    from lwm.evaluate import make_policy

    for plan in (0, 4):  # the evaluation's policy reuses both traces (plan=0 is the actor's, not a third)
        make_policy(agent, params, driver.num_streams, 0, True, plan=plan)(obs, is_first)
    assert agent.traces["policy"] == 2


def test_batched_defusal_specs_and_stream_shapes():
    env = envs.make_batched("defusal_small", 4, seed=1, **SMALL)
    assert env.num_worlds == 4 and env.num_agents == 3
    obs_spec, act_spec = team_specs(env)
    assert obs_spec["vector"].shape == (core.vector_size(env.params),) and obs_spec["tokens"].shape == (48,)
    assert obs_spec[AGENT_ID].maximum == 2 and act_spec["move"].shape == () and act_spec["talk"].shape == ()
    heads = action_heads(act_spec)
    assert [(h.name, h.num) for h in heads] == [("move", 9), ("talk", core.NUM_MESSAGE_IDS)]
    driver = TeamDriver(env, ["vector", "tokens", "action_mask", AGENT_ID])
    out = driver.observe()
    assert out["obs"]["tokens"].shape == (12, 48) and out["obs"]["action_mask"].shape == (12, 9)
    np.testing.assert_array_equal(out["obs"][AGENT_ID], np.tile([0, 1, 2], 4))
    assert out["is_first"].all() and out["reward"].shape == (12,)


def _says(vocab, tokens) -> str:
    return vocab.decode(np.asarray(tokens))


@pytest.mark.parametrize("silence", [False, True])
def test_talk_becomes_teammates_next_tokens(silence):
    env = envs.make_batched("defusal_small", 2, seed=2, silence=silence, **SMALL)
    driver = TeamDriver(env, ["tokens", "action_mask", AGENT_ID])
    red = core.message_ids("red")[0]

    def policy(obs, is_first):
        talk = np.zeros(6, np.int32)
        talk[stream_index(0, 0, 3)] = red  # world 0, alpha says "red"; everyone else is silent
        move = np.argmax(obs["action_mask"], -1)  # a legal move
        return {"move": move, "talk": talk}, {}

    driver.step(policy)
    tokens = driver.observe()["obs"]["tokens"]
    text = [_says(env.vocab, tokens[n]) for n in range(6)]
    for n, line in enumerate(text):
        heard = n in (stream_index(0, 1, 3), stream_index(0, 2, 3)) and not silence
        assert ("alpha says red" in line) == heard, (n, line)
    assert env.state.messages_sent[0] == (0 if silence else 1)


def test_messages_of_several_words_are_one_head_per_word():
    env = envs.make_batched("defusal_small", 2, seed=3, **{**SMALL, "message_len": 2})
    driver = TeamDriver(env, ["tokens", "action_mask", AGENT_ID])
    assert env.action_spec()["talk"].shape == (2,)
    assert set(driver.act_spec) == {"move", "talk_0", "talk_1"}
    assert all(driver.act_spec[k].shape == () for k in driver.act_spec)
    agent = Agent(driver.spec, driver.act_spec, lwm_config.load(["debug", "defusal_small"]))
    assert [h.name for h in agent.heads] == ["move", "talk_0", "talk_1"]
    red, blue = core.message_ids("red")[0], core.message_ids("blue")[0]

    def policy(obs, is_first):
        talk0, talk1 = np.zeros(6, np.int32), np.zeros(6, np.int32)
        talk0[stream_index(1, 2, 3)], talk1[stream_index(1, 2, 3)] = red, blue  # world 1, charlie: "red blue"
        return {"move": np.argmax(obs["action_mask"], -1), "talk_0": talk0, "talk_1": talk1}, {}

    driver.step(policy)
    tokens = driver.observe()["obs"]["tokens"]
    for n in range(6):
        heard = n in (stream_index(1, 0, 3), stream_index(1, 1, 3))
        assert ("charlie says red blue" in _says(env.vocab, tokens[n])) == heard, (n, _says(env.vocab, tokens[n]))


def test_batched_step_matches_single_world():
    params = core.Params(num_rooms=2, num_bombs=1, max_rounds=3, message_len=1)
    w = 5
    obs, state, _ = defusal_env._batched_reset(jax.random.key(0), w, params)
    step = jax.jit(defusal_env._batched_step, static_argnames="params")
    rng = np.random.default_rng(0)
    for t in range(5):  # max_rounds 3: worlds end and restart inside the batch
        move = jnp.asarray(rng.integers(0, 9, (w, 3)), jnp.int32)
        talk = jnp.asarray(rng.integers(0, core.NUM_MESSAGE_IDS, (w, 3, 1)), jnp.int32)
        key = jax.random.key(100 + t)
        b_obs, b_state, out = step(key, state, move, talk, params=params)
        for i, k in enumerate(jax.random.split(key, w)):
            k_step, k_reset = jax.random.split(k)
            s_i = jax.tree.map(lambda x, i=i: x[i], state)
            if bool(s_i.done):
                o, s = core.reset(k_reset, params)
                r = 0.0
            else:
                o, s, r, _, _ = core.step(k_step, s_i, move[i], talk[i], params)
            batched_i = jax.tree.map(lambda x, i=i: x[i], (b_obs, b_state))
            for a, b in zip(jax.tree.leaves((o, s)), jax.tree.leaves(batched_i), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert float(out["reward"][i]) == float(r)
            assert bool(out["is_first"][i]) == bool(s_i.done)
        state = b_state


def test_policy_traces_once_over_episodes():
    config = lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move"})
    env = envs.make_batched("defusal_small", 2, seed=3, max_rounds=2, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    params = agent.init(0)["params"]
    driver = TeamDriver(env, [k.name for k in agent.keys])
    act = _policy_fn(agent, driver.num_streams, 0, False, lambda: params)
    moves = []

    def policy(obs, is_first):
        actions, extra = act(obs, is_first)
        legal = np.take_along_axis(obs["action_mask"], actions["move"][:, None], 1)[:, 0]
        assert legal.all(), "the masked actor chose an illegal move"
        moves.append(actions["move"])
        return actions, extra

    for _ in range(7):  # several episodes (max_rounds 2), every world restarting
        driver.step(policy)
    assert agent.traces["policy"] == 1
    assert driver.pop_episodes()


def test_explore_draws_uniform_legal_actions_when_collecting():
    """`agent.actor.explore`: the collecting policy (explore=True) replaces a stream's actions by uniform legal ones
    with that probability; evaluation (explore=False) and argmax play are the actor's own; bad values are refused."""
    config = lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move", "agent.actor.explore": 0.8})
    env = envs.make_batched("defusal_small", 4, seed=5, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    params = agent.init(0)["params"]
    driver = TeamDriver(env, [k.name for k in agent.keys])
    obs, is_first = _observe(driver, act_spec)
    carry = agent.init_policy(driver.num_streams)
    legal = np.asarray(obs["action_mask"]).astype(bool)
    draws = {False: [], True: []}
    for i in range(300):
        for explore in (False, True):
            _, actions, _ = agent.policy(params, carry, obs, is_first, jax.random.key(i), explore=explore)
            draws[explore].append(np.asarray(actions["move"]) - act_spec["move"].minimum)
    for explore in (False, True):
        moves = np.stack(draws[explore])  # [keys, streams]
        assert np.take_along_axis(legal, moves.T, 1).all(), "an explored move is illegal"
    own, wild = np.stack(draws[False]), np.stack(draws[True])
    changed = (own != wild).mean()
    n_legal = legal.sum(1)
    expect = 0.8 * (1 - 1 / n_legal).mean()  # at least: the drawn move differs unless it hits the actor's
    assert changed > expect - 0.1, (changed, expect)
    for s in range(legal.shape[0]):  # every legal move is drawn about 0.8 / n_legal of the time, or more
        freq = np.bincount(wild[:, s], minlength=legal.shape[1]) / len(wild)
        assert np.all(freq[legal[s]] > 0.8 / n_legal[s] - 0.08), (s, freq, legal[s])
    _, greedy_a, _ = agent.policy(params, carry, obs, is_first, jax.random.key(0), greedy=True, explore=True)
    _, greedy_b, _ = agent.policy(params, carry, obs, is_first, jax.random.key(0), greedy=True)
    np.testing.assert_array_equal(greedy_a["move"], greedy_b["move"])
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"agent.actor.explore={bad!r} must be a number in"):
            Agent(obs_spec, act_spec, lwm_config.load(["debug"], {"agent.actor.explore": bad}))
    with pytest.raises(ValueError, match="'agent.actor.explore' expects a float, got True"):
        lwm_config.load(["debug"], {"agent.actor.explore": True})


def test_imagination_masks_with_the_decoded_action_mask():
    """In imagination the masked head samples only what the world model decodes as legal (acting uses the observed
    mask); the decoded flags are the decoder's own prediction of `action_mask`, thresholded at probability 1/2."""
    from flax import nnx

    from lwm import dists

    config = lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move"})
    env = envs.make_batched("defusal_small", 2, **SMALL)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    nets = nnx.merge(agent.graph, agent.init(0)["params"])
    wm = nets.wm
    feat = 3.0 * jax.random.normal(jax.random.key(1), (256, wm.rssm.feat_dim))
    flags = np.asarray(wm.decoder.predict_flags(feat, "action_mask"))
    prob = np.asarray(wm.decoder.predict(feat)["action_mask"]) / float(dists.symlog(jnp.ones(())))
    np.testing.assert_array_equal(flags, prob > 0.5)
    assert 0 < flags.mean() < 1, "random features should decode some legal and some illegal moves"
    legal = flags | ~flags.any(-1, keepdims=True)  # a row with nothing legal stays unmasked
    logits = agent.dream_logits(nets.actor, wm, feat)
    moves = np.asarray(jax.random.categorical(jax.random.key(2), logits["move"], -1, shape=(20, 256)))
    assert np.take_along_axis(legal, moves.T, 1).all()
    unmasked = np.asarray(jax.random.categorical(jax.random.key(2), nets.actor(feat)["move"], -1, shape=(20, 256)))
    assert not np.take_along_axis(legal, unmasked.T, 1).all()  # the mask is what keeps them legal
    # An action taken in the dream stays allowed when the loss recomputes the logits.
    taken = {"move": jnp.asarray(np.argmin(legal, 1)), "talk": jnp.zeros(256, jnp.int32)}
    relogits = agent.dream_logits(nets.actor, wm, feat, taken)["move"]
    assert np.all(np.take_along_axis(np.asarray(relogits), np.asarray(taken["move"])[:, None], 1) > -1e8)
    low = np.asarray(wm.decoder.predict_flags(feat, "action_mask", 0.1))
    np.testing.assert_array_equal(low, prob >= 0.1)
    assert low.sum() > flags.sum()  # a lower threshold masks only the moves the model is surer are illegal
    off = Agent(obs_spec, act_spec, lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move",
                                                                  "agent.actor.dream_mask": 0.0}))
    np.testing.assert_array_equal(off.dream_logits(nets.actor, wm, feat)["move"], nets.actor(feat)["move"])
    with pytest.raises(ValueError, match="dream_mask=1.5 must be in"):
        Agent(obs_spec, act_spec, lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move",
                                                                "agent.actor.dream_mask": 1.5}))
    with pytest.raises(ValueError, match="leaves it out of the model's keys"):
        Agent(obs_spec, act_spec, lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move",
                                                                "agent.obs_keys": "^(vector|tokens|agent_id)$"}))


def test_bad_team_input():
    env = envs.make_batched("defusal_small", 2, **SMALL)
    env.reset()
    with pytest.raises(ValueError, match=r"'move' has shape \(3,\), expected \(2, 3\)"):
        env.step({"move": np.zeros(3, int)})
    with pytest.raises(ValueError, match=r"'move' value \[9\] outside 0..8"):
        env.step({"move": np.array([[0, 1, 9], [0, 0, 0]])})
    with pytest.raises(ValueError, match=r"'talk' value \[-1\] outside 0..18"):
        env.step({"move": np.zeros((2, 3), int), "talk": np.array([[0, 0, 0], [0, -1, 0]])})
    with pytest.raises(ValueError, match="dtype float"):
        env.step({"move": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="'move' \\[W, A\\]"):
        env.step(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="num_worlds 0 is not allowed"):
        envs.make_batched("defusal_small", 0)
    with pytest.raises(ValueError, match="unknown option 'rooms'"):
        envs.make_batched("defusal", 2, rooms=3)
    with pytest.raises(ValueError, match="no batched form"):
        envs.make_batched("tokenchoice", 2)
    obs_spec, act_spec = team_specs(env)
    heads = action_heads(act_spec)
    with pytest.raises(ValueError, match="head 'mov' is not an action head"):
        parse_mask("action_mask:mov", obs_spec, heads)
    with pytest.raises(ValueError, match="observation 'legal' does not exist"):
        parse_mask("legal:move", obs_spec, heads)
    with pytest.raises(ValueError, match=r"must be bool \[19\]"):
        parse_mask("action_mask:talk", obs_spec, heads)
    logits = jnp.zeros((2, 3))
    masked = np.asarray(mask_logits(logits, jnp.array([[True, False, True], [False, False, False]])))
    assert masked[0, 1] < -1e8 and np.all(masked[1] == 0)  # a row with nothing legal stays unmasked


def test_guide_worlds_play_the_scripted_team(tmp_path):
    """`env.guide`: in the first guide_worlds worlds the agent takes the scripted team's actions (its carry sees
    them, replay stores them); the other worlds are the agent's; guided episodes are flagged and the trainer logs
    them apart from the agent's own figures."""
    import json

    from launch import train

    config = lwm_config.load(["debug"], {"agent.actor.mask": "action_mask:move"})
    env = envs.make_batched("defusal_small", 4, seed=6, **SMALL)
    env.set_guide("scouts", 2)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    params = agent.init(0)["params"]
    driver = TeamDriver(env, [k.name for k in agent.keys])
    act = _policy_fn(agent, driver.num_streams, 0, False, lambda: params)
    scouts = jax.jit(jax.vmap(lambda s: scripted.pack_scouts(jax.random.key(0), s, env.params)))
    steps: list[dict] = []
    driver.observe()
    guided_rows, differs = np.repeat(np.arange(4) < 2, 3), []
    for _ in range(30):
        want = np.asarray(scouts(env.state)[0]).reshape(-1)  # [W·A] before the round
        driver.step(act, on_step=steps.append)
        took = np.asarray(steps[-1]["action"]["move"])
        np.testing.assert_array_equal(took[guided_rows], want[guided_rows])
        own = np.asarray(act.state["carry"]["action"])[:, :9].argmax(-1) + act_spec["move"].minimum
        np.testing.assert_array_equal(own, took)  # the carry holds the move taken, guided or not
        differs.append(np.any(took[~guided_rows] != want[~guided_rows]))
    assert any(differs), "the unguided worlds should be the agent's, not the scouts'"
    assert agent.traces["policy"] == 1
    episodes = driver.pop_episodes()
    guided = [e for e in episodes if e["guided"]]
    assert guided and {e["guided"] for e in episodes} == {0.0, 1.0}
    assert all(e["score"] == 10 for e in guided)  # the scouts always defuse the one-phase bomb
    # The trainer: guided worlds' episodes become episode/guide_*, the agent's own stay episode/*.
    train.main(["--configs", "defusal_small", "--env.guide", "scouts", "--env.guide_worlds", "4", "--run.steps",
                "720", "--run.train_fill", "100000", "--run.eval_episodes", "0", "--run.log_every", "0",
                "--ckpt.enabled", "false", "--logdir", str(tmp_path / "guided")])
    rows = [json.loads(line) for line in (tmp_path / "guided" / "metrics.jsonl").read_text().splitlines()]
    guide_scores = [r["episode/guide_score"] for r in rows if "episode/guide_score" in r]
    assert guide_scores and all(v == 10 for v in guide_scores)
    assert any("episode/score" in r for r in rows) and not any("episode/guided" in r for r in rows)


def test_bad_guide_input(tmp_path):
    env = envs.make_batched("defusal_small", 2, **SMALL)
    with pytest.raises(ValueError, match="guide 'scout' is not allowed; allowed: none or one of"):
        env.set_guide("scout", 1)
    with pytest.raises(ValueError, match="guide_worlds 3 is not allowed; allowed: an int from 0 to num_worlds=2"):
        env.set_guide("scouts", 3)
    with pytest.raises(ValueError, match="a guide needs guide_worlds >= 1"):
        env.set_guide("scouts", 0)
    with pytest.raises(ValueError, match="a guide needs guide_worlds >= 1"):
        env.set_guide("none", 1)
    with pytest.raises(ValueError, match="the pack teams need start='same'"):
        envs.make_batched("defusal_small", 2, start="separate", **SMALL).set_guide("tour", 1)
    env.set_guide("none", 0)
    assert env.guide_actions() is None
    from launch import train
    from lwm.loop import check_run_config

    for over, match in (({"env.guide_worlds": 9}, "env.guide_worlds=9 must be an int from 0"),
                        ({"env.guide": "scouts"}, "env.guide='scouts' with env.guide_worlds=0"),
                        ({"env.guide_worlds": 2}, "env.guide='none' with env.guide_worlds=2")):
        with pytest.raises(ValueError, match=match):
            check_run_config(lwm_config.load(["defusal_small"], over))
    with pytest.raises(ValueError, match="env.guide='scouts': world 'tokenchoice' has no scripted guide"):
        train.main(["--configs", "debug", "--env.guide", "scouts", "--env.guide_worlds", "1",
                    "--ckpt.enabled", "false", "--logdir", str(tmp_path / "no_guide")])


def test_presets_load():
    for names in (["defusal_small"], ["defusal"], ["defusal", "defusal_gpu"]):
        config = lwm_config.load(names)
        assert envs.has_batched(config.env.name) and config.agent.actor.mask == "action_mask:move"


# ------------------------------------------------------------------------------------------------- learning


def test_team_learns_small_world(tmp_path):
    """The trained team finishes the 2-room / 1-bomb world in clearly fewer rounds than random legal play."""
    from launch import train

    summary = train.main(["--configs", "defusal_small", "--run.log_every", "60", "--ckpt.enabled", "false",
                          "--logdir", str(tmp_path / "team")])
    params = core.Params(num_rooms=2, num_bombs=1, max_rounds=10, **SMALL)
    rand = scripted.evaluate(scripted.random_legal, params, jax.random.key(0), 300)
    ev = summary["eval"]
    assert summary["worlds"] == 8 and summary["agents"] == 3 and ev["episodes"] == 200
    assert ev["score_mean"] >= float(rand["score"].mean()) - 0.2, (ev, rand["score"].mean())
    assert ev["rounds_mean"] <= float(rand["rounds"].mean()) - 0.6, (ev, rand["rounds"].mean())
    # The same worlds again with argmax actions: reported beside the sampled team, its own full set of metrics.
    assert ev["greedy_episodes"] == 200 and all(f"greedy_{k}" in ev for k in ev if not k.startswith("greedy_"))
    assert ev["greedy_score_mean"] >= 0 and 1 <= ev["greedy_rounds_mean"] <= params.max_rounds, ev
