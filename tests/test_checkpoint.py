"""Checkpoints: exact resume of the update sequence, corrupt/partial checkpoints, config checks, starting from
another run, the non-finite loss guard, and the TensorBoard event writer."""

from __future__ import annotations

import json
import shutil
import warnings

import chex
import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from lwm import checkpoint as ck
from lwm import config
from lwm.agent import Agent
from lwm.driver import Driver
from lwm.logger import Logger, crc32c, decode_event, log_positions, read_records, rewind
from lwm.loop import NonFiniteLoss, _policy_fn, train_loop
from lwm.replay import Replay

N_ENVS = 4


def _cfg(**overrides):
    base = {"env.num_envs": N_ENVS, "batch_length": 8, "run.log_every": 0.0, "run.summary_every": 0.0,
            "run.eval_episodes": 0, "agent.imag.horizon": 5}
    return config.load(["debug", "tokenchoice"], {**base, **overrides})


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    env = envs.make("tokenchoice", num_choices=4, delay=2)
    agent = Agent(env.observation_spec(), env.action_spec(), cfg)
    worlds = [envs.make("tokenchoice", num_choices=4, delay=2) for _ in range(N_ENVS)]
    ts = agent.init(0)
    act = _policy_fn(agent, N_ENVS, 0, False, lambda: ts["params"])
    replay = Replay(400, N_ENVS, cfg.batch_length, seed=3, priority_frac=0.5)
    driver = Driver(worlds, [k.name for k in agent.keys])
    for _ in range(40):
        driver.step(act, on_step=replay.add)
    return cfg, agent, replay


def _updates(agent, ts, replay, n):
    for _ in range(n):
        batch, index = replay.sample(agent.config.batch_size, agent.config.agent.rssm.classes)
        ts, _, post = agent.train(ts, batch)
        post = jax.device_get(post)
        replay.update_latents(index, post)
        replay.update_priorities(index, post["loss"])
    return ts


def test_restore_continues_the_exact_update_sequence(setup, tmp_path):
    cfg, agent, replay = setup
    ts = _updates(agent, agent.init(0), replay, 2)
    policy_key = jax.random.key(11)
    saver = ck.Checkpointer(tmp_path / "ckpt", keep=2, async_save=True)
    saver.save(160, {"agent": ts}, {"env_steps": 160, "config": cfg.to_dict()}, replay,
               local={"policy_key": policy_key})
    # Training goes on at once and donates `ts` while the arrays may still be written in the background.
    ts_a = _updates(agent, ts, replay, 3)
    want = jax.device_get(ts_a)
    saver.close()

    loader = ck.Checkpointer(tmp_path / "ckpt")
    assert loader.steps() == [160]
    got = loader.restore_latest_good({"agent": agent.init(1)}, local_like={"policy_key": jax.random.key(0)},
                                     config=cfg, replay_kwargs={"priority_frac": 0.5})
    loader.close()
    assert got.step == 160 and got.meta["env_steps"] == 160
    assert {"local_p0.npz", "replay_p0.npz"} <= {p.name for p in (tmp_path / "ckpt" / "160" / "replay").iterdir()}
    chex.assert_trees_all_equal(jax.random.key_data(got.local["policy_key"]), jax.random.key_data(policy_key))
    assert len(got.replay) == len(replay) and got.replay.pos == replay.pos
    assert got.replay.weight is not None
    ts_b = _updates(agent, got.state["agent"], got.replay, 3)
    got_tree = jax.device_get(ts_b)
    chex.assert_trees_all_equal(jax.random.key_data(got_tree.pop("key")), jax.random.key_data(want.pop("key")))
    chex.assert_trees_all_equal(got_tree, want)
    assert agent.traces["train"] == 1, agent.traces


def _tiny_state(seed):
    return {"agent": {"w": jnp.full((3,), float(seed)), "key": jax.random.key(seed)},
            "policy_key": jax.random.key(seed + 1)}


def test_local_part_and_checkpoints_that_kept_the_policy_key_in_state(tmp_path):
    """The policy key is per process (`local`); a checkpoint from before that kept it among the global arrays
    still resumes, the key read from there."""
    saver = ck.Checkpointer(tmp_path / "ckpt", async_save=False)
    saver.save(10, _tiny_state(3), {"env_steps": 10}, _tiny_replay(10))  # the earlier layout
    saver.save(20, {"agent": _tiny_state(5)["agent"]}, {"env_steps": 20}, local={"policy_key": jax.random.key(6)},
               local_meta={"logs": {"metrics.jsonl": 123}})
    like, local_like = {"agent": _tiny_state(0)["agent"]}, {"policy_key": jax.random.key(0)}
    old = saver.restore(like, 10, local_like=local_like)
    new = saver.restore(like, 20, with_replay=False, local_like=local_like)
    saver.close()
    assert len(old.replay) == len(_tiny_replay(10)) and new.replay is None
    assert old.local_meta == {} and new.local_meta == {"logs": {"metrics.jsonl": 123}}  # this process's log sizes
    for got, seed in ((old, 3), (new, 5)):
        np.testing.assert_array_equal(got.state["agent"]["w"], np.full(3, float(seed)))
        chex.assert_trees_all_equal(jax.random.key_data(got.local["policy_key"]),
                                    jax.random.key_data(jax.random.key(seed + 1)))


def _tiny_replay(steps):
    replay = Replay(40, 2, 4, seed=0)
    for t in range(steps):
        replay.add({"obs": {"x": np.full((2, 3), t, np.float32)}, "reward": np.zeros(2, np.float32)})
    return replay


def _corrupt_replay(path):
    file = next((path / "replay").glob("*.npz"))
    file.write_bytes(file.read_bytes()[:50])


def _corrupt_state(path):
    shutil.rmtree(path / "state")
    (path / "state").mkdir()


def _corrupt_meta(path):
    for file in (path / "meta").iterdir():
        file.write_text("{not json")


@pytest.mark.parametrize("corrupt", [_corrupt_replay, _corrupt_state, _corrupt_meta])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, corrupt):
    saver = ck.Checkpointer(tmp_path / "ckpt", keep=3, async_save=False)
    for step in (10, 20):
        saver.save(step, _tiny_state(step), {"env_steps": step}, _tiny_replay(step // 2))
    saver.close()
    corrupt(tmp_path / "ckpt" / "20")
    # A write that was interrupted leaves a temporary directory: never listed, removed on start.
    partial = tmp_path / "ckpt" / "30.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)

    loader = ck.Checkpointer(tmp_path / "ckpt")
    assert loader.steps() == [10, 20]
    with pytest.warns(UserWarning, match=r"ckpt/20 is corrupt or incomplete.*previous one"):
        got = loader.restore_latest_good(_tiny_state(0), quarantine=tmp_path / "ckpt_corrupt")
    assert got.step == 10 and got.meta == {"env_steps": 10}
    np.testing.assert_array_equal(got.state["agent"]["w"], np.full(3, 10.0))
    assert len(got.replay) == 10
    # The bad one is moved aside, so a resumed run can write step 20 again.
    assert loader.steps() == [10] and len(list((tmp_path / "ckpt_corrupt").iterdir())) == 1
    assert loader.save(20, _tiny_state(20), {"env_steps": 20}, _tiny_replay(3))
    loader.close()
    assert not partial.exists()  # removed in the background by the manager


def test_no_checkpoint_and_all_corrupt(tmp_path):
    saver = ck.Checkpointer(tmp_path / "ckpt", keep=2, async_save=False)
    assert saver.restore_latest_good(_tiny_state(0)) is None
    saver.save(5, _tiny_state(5), {"env_steps": 5}, _tiny_replay(4))
    _corrupt_state(tmp_path / "ckpt" / "5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert saver.restore_latest_good(_tiny_state(0), quarantine=tmp_path / "bad") is None
    assert any("ckpt/5" in str(w.message) for w in caught)
    saver.close()


def test_config_check_names_every_differing_key():
    saved = _cfg().to_dict()
    ok = _cfg(**{"run.steps": 99, "run.log_every": 3.0, "run.eval_episodes": 7, "ckpt.every_s": 1.0,
                 "jax.compute_dtype": "float32"})
    ck.check_config(saved, ok)  # keys that may change on resume
    bad = _cfg(**{"agent.rssm.deter": 48, "batch_size": 8, "env.options.delay": 3, "run.steps": 5})
    with pytest.raises(ck.CheckpointError) as e:
        ck.check_config(saved, bad, where="runs/a/ckpt/100")
    text = str(e.value)
    assert "3 key(s)" in text and "runs/a/ckpt/100" in text
    assert "agent.rssm.deter: checkpoint 64, now 48" in text
    assert "batch_size: checkpoint 4, now 8" in text
    assert "env.options: checkpoint" in text and "'delay': 3" in text
    assert "run.steps" not in text.split("\n", 1)[1].split("Resume")[0]


def test_from_checkpoint_world_model_only_and_shape_errors(setup, tmp_path):
    cfg, agent, _ = setup
    source = agent.init(0)
    saver = ck.Checkpointer(tmp_path / "run" / "ckpt", async_save=False)
    saver.save(100, {"agent": source, "policy_key": jax.random.key(0)}, {"env_steps": 100})
    saver.close()
    want = jax.device_get(source)

    fresh = agent.init(1)
    fresh_np = jax.device_get(fresh)
    ts, used = ck.load_into(tmp_path / "run", fresh, "wm")
    assert used == (tmp_path / "run" / "ckpt" / "100").resolve()
    got = jax.device_get(ts)
    chex.assert_trees_all_equal(got["params"]["wm"], want["params"]["wm"])
    chex.assert_trees_all_equal(got["params"]["actor"], fresh_np["params"]["actor"])
    chex.assert_trees_all_equal(got["opt"], fresh_np["opt"])

    ts, _ = ck.load_into(tmp_path / "run" / "ckpt" / "100", agent.init(1), "agent")
    got = jax.device_get(ts)
    chex.assert_trees_all_equal(got["params"], want["params"])
    chex.assert_trees_all_equal(jax.random.key_data(got["key"]), jax.random.key_data(want["key"]))

    env = envs.make("tokenchoice", num_choices=4, delay=2)
    other = Agent(env.observation_spec(), env.action_spec(), _cfg(**{"agent.rssm.deter": 32}))
    with pytest.raises(ck.CheckpointError, match=r"differ in shape(.|\n)*agent/params/wm/rssm.*\(64"):
        ck.load_into(tmp_path / "run", other.init(0), "wm")
    with pytest.raises(ck.CheckpointError, match="no such directory"):
        ck.load_into(tmp_path / "nowhere", fresh, "wm")
    with pytest.raises(ck.CheckpointError, match="from_only='actor'.*agent, params, wm"):
        ck.load_into(tmp_path / "run", fresh, "actor")


class NanReward(dm_env.Environment):
    """tokenchoice whose rewards turn NaN after `after` steps."""

    def __init__(self, after):
        self.env, self.after, self.t = envs.make("tokenchoice", num_choices=4, delay=2), after, 0

    def reset(self):
        return self.env.reset()

    def step(self, action):
        self.t += 1
        ts = self.env.step(action)
        return ts._replace(reward=float("nan")) if self.t > self.after else ts

    def observation_spec(self):
        return self.env.observation_spec()

    def action_spec(self):
        return self.env.action_spec()


def _nan_run(tmp_path, mode):
    cfg = _cfg(**{"run.steps": 160, "run.train_fill": 64, "run.train_ratio": 32.0, "run.nonfinite": mode,
                  "ckpt.every_updates": 8, "ckpt.async_save": False})
    return train_loop(cfg, tmp_path, lambda i: NanReward(after=20))


def test_nonfinite_loss_stops_naming_the_loss_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at update \d+ .*loss/reward=nan.*last good checkpoint"):
        _nan_run(tmp_path, "stop")
    loader = ck.Checkpointer(tmp_path / "ckpt")
    steps = loader.steps()
    assert steps, "no checkpoint was kept"
    meta = loader.read_meta(steps[-1])
    loader.close()
    assert meta["updates"] > 0 and meta["skipped"] == 0


def test_nonfinite_loss_skip_mode_counts_and_keeps_params_finite(setup, tmp_path):
    _, agent, _ = setup
    summary = _nan_run(tmp_path, "skip")
    assert summary["env_steps"] == 160 and summary["skipped_updates"] > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/skipped_total"] == summary["skipped_updates"]
    assert sum(r["train/skipped"] for r in rows) == summary["skipped_updates"]
    loader = ck.Checkpointer(tmp_path / "ckpt")
    meta = loader.read_meta(loader.steps()[-1])
    loader.close()
    assert meta["skipped"] == summary["skipped_updates"]
    ts, _ = ck.load_into(tmp_path, agent.init(0), "agent")
    leaves = jax.tree.leaves(jax.device_get(ts["params"]))
    assert all(np.all(np.isfinite(x)) for x in leaves)


def test_tensorboard_events_round_trip_and_rewind(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    logger = Logger(tmp_path)
    logger.write({"step": 10, "loss/total": 1.5, "flag": True, "text": "x", "nan": float("nan")})
    at = logger.positions()
    logger.write({"step": 20, "loss/total": 0.5})
    logger.close()
    (events,) = tmp_path.glob("events.out.tfevents.*")
    records = [decode_event(r) for r in read_records(events)]
    assert records[0]["file_version"] == "brain.Event:2"
    assert records[1]["step"] == 10 and records[1]["scalars"] == {"loss/total": 1.5}  # no bools, text or NaN
    assert records[2]["step"] == 20 and records[2]["scalars"] == {"loss/total": 0.5}
    assert set(at) == {"metrics.jsonl", events.name}
    # A checksum error is detected.
    bad = bytearray(events.read_bytes())
    bad[-6] ^= 0xFF
    (tmp_path / "bad").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="bad or truncated"):
        read_records(tmp_path / "bad")
    # Rewinding drops what came after the checkpoint, in both files; later event files go away.
    later = Logger(tmp_path)
    later.write({"step": 30, "loss/total": 0.1})
    later.close()
    assert rewind(tmp_path, at) == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10]
    assert [decode_event(r)["step"] for r in read_records(events)] == [0, 10]
    assert set(log_positions(tmp_path)) == set(at)


def test_rewind_keeps_the_evaluation_of_the_checkpoint(tmp_path):
    """A run's end: final checkpoint at step 20, then its evaluation row. Resuming from that checkpoint keeps the
    evaluation (it describes the checkpoint) and drops any other row written after it."""
    logger = Logger(tmp_path)
    logger.write({"step": 20, "loss/total": 0.5})
    at = logger.positions()
    logger.write({"step": 20, "updates": 7, "eval/return_mean": 0.9, "eval/episodes": 4})
    logger.write({"step": 24, "loss/total": 0.4})  # a later attempt's row: goes
    logger.write({"step": 20, "updates": 7, "eval/return_mean": 0.8, "loss/total": 1.0})  # not only eval/: goes
    logger.close()
    assert rewind(tmp_path, at, step=20) == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("eval/return_mean")) for r in rows] == [(20, None), (20, 0.9)]
    # TensorBoard keeps it too: the training scalars up to the checkpoint, then the evaluation's.
    events = [decode_event(r) for r in read_records(logger.events.path)[1:]]
    assert [(e["step"], sorted(e["scalars"])) for e in events] == [
        (20, ["loss/total"]), (20, ["eval/episodes", "eval/return_mean"])]
    assert events[1]["scalars"]["eval/return_mean"] == pytest.approx(0.9)
    before = log_positions(tmp_path)
    assert rewind(tmp_path, before, step=20) == 0  # nothing after: unchanged
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert log_positions(tmp_path) == before


def test_multiprocess_stop_and_save_follow_the_agreement(monkeypatch, tmp_path):
    """The loop's multi-host protocol, with the collective replaced: a peer's periodic-save vote makes this process
    save too, and a SIGTERM on another process stops this one after the same iteration, with a checkpoint."""
    from lwm import parallel

    calls, barriers = [], []

    def agree_max(values):
        calls.append(list(values))
        assert values == [0, 0, 0, 0]  # nothing local: no signal, no save due (every_s 0), no time budget
        return {20: [0, 1, 0, 0], 30: [2, 0, 2, 0]}.get(len(calls), [0] * 4)  # call 20: a peer's save; 30: SIGTERM

    monkeypatch.setattr(parallel, "is_multiprocess", lambda: True)
    monkeypatch.setattr(parallel, "agree_max", agree_max)
    monkeypatch.setattr(parallel, "barrier", lambda name, timeout_s=0: barriers.append(name))
    cfg = _cfg(**{"run.steps": 100_000, "run.train_fill": 64, "run.train_ratio": 32.0, "ckpt.every_s": 0,
                  "ckpt.every_updates": 0, "ckpt.async_save": False})
    summary = train_loop(cfg, tmp_path, lambda i: envs.make("tokenchoice", num_choices=4, delay=2))
    assert len(calls) == 30 and barriers == ["lwm_loop_started", "lwm_train_compiled"]
    assert summary["interrupted"] == "SIGTERM on process 1" and summary["env_steps"] == 30 * N_ENVS
    assert summary["updates"] > 0
    loader = ck.Checkpointer(tmp_path / "ckpt")
    assert loader.steps() == [20 * N_ENVS, 30 * N_ENVS]
    reasons = [loader.read_meta(s)["reason"] for s in loader.steps()]
    loader.close()
    assert reasons == ["periodic", "stopped by SIGTERM on process 1"]


def test_time_budget_ends_the_run_like_its_last_step(monkeypatch, tmp_path):
    """`run.minutes`: once the budget is spent (here: a peer's clock, agreed like a stop signal) the run ends as at
    run.steps: final checkpoint, evaluation, no 'interrupted'; alone, a tiny budget stops after one iteration."""
    from lwm import parallel

    calls = []

    def agree_max(values):
        calls.append(list(values))
        return [0, 0, 0, 1] if len(calls) == 12 else [0, 0, 0, 0]  # call 12: another process's budget is spent

    monkeypatch.setattr(parallel, "is_multiprocess", lambda: True)
    monkeypatch.setattr(parallel, "agree_max", agree_max)
    monkeypatch.setattr(parallel, "barrier", lambda name, timeout_s=0: None)
    make = lambda i: envs.make("tokenchoice", num_choices=4, delay=2)  # noqa: E731
    cfg = _cfg(**{"run.steps": 100_000, "run.train_fill": 64, "run.minutes": 60.0, "run.eval_episodes": 4,
                  "ckpt.every_s": 0, "ckpt.async_save": False})
    summary = train_loop(cfg, tmp_path / "peer", make)
    assert len(calls) == 12 and summary["env_steps"] == 12 * N_ENVS
    assert summary["stopped"] == "run.minutes (60) reached" and "interrupted" not in summary
    assert summary["eval"]["episodes"] == 4
    loader = ck.Checkpointer(tmp_path / "peer" / "ckpt")
    assert loader.read_meta(loader.steps()[-1])["reason"] == "end of run"
    loader.close()

    monkeypatch.undo()
    summary = train_loop(_cfg(**{"run.steps": 100_000, "run.minutes": 1e-6, "ckpt.enabled": False}), tmp_path / "own",
                         make)
    assert summary["env_steps"] == N_ENVS and summary["stopped"] == "run.minutes (1e-06) reached"
    with pytest.raises(ValueError, match=r"run.minutes=-1.0 must be >= 0"):
        train_loop(_cfg(**{"run.minutes": -1.0}), tmp_path / "bad", make)


def test_export_ships_the_agent_without_replay_and_is_never_resumed(setup, tmp_path):
    cfg, agent, replay = setup
    ts = _updates(agent, agent.init(0), replay, 2)  # non-zero optimizer moments and counts
    saver = ck.Checkpointer(tmp_path / "run" / "ckpt", async_save=False)
    saver.save(160, {"agent": ts}, {"env_steps": 160, "updates": 2, "episodes": 5, "config": cfg.to_dict()},
               replay, local={"policy_key": jax.random.key(3)})
    saver.close()
    want = jax.device_get(ts)

    info = ck.export_agent(tmp_path / "run", tmp_path / "team")
    team = tmp_path / "team"
    assert (info["step"], info["updates"], info["optimizer"]) == (160, 2, "reset")
    assert not list(team.rglob("replay*")) and not list(tmp_path.glob(".team.export-tmp*"))
    assert config.load([str(team / "config.yaml")]).to_dict() == cfg.to_dict()
    got, used = ck.load_into(team, agent.init(1), "agent")
    assert used == (team / "ckpt" / "160").resolve()
    got = jax.device_get(got)
    for part in ("params", "slow", "retnorm", "step"):
        chex.assert_trees_all_equal(got[part], want[part])
    assert jax.tree.leaves(want["opt"]) and all(not np.any(x) for x in jax.tree.leaves(got["opt"]))
    assert any(np.any(x) for x in jax.tree.leaves(want["opt"]))

    ck.export_agent(tmp_path / "run" / "ckpt" / "160", tmp_path / "full", keep_optimizer=True)
    full, _ = ck.load_into(tmp_path / "full", agent.init(1), "agent")
    chex.assert_trees_all_equal(jax.device_get(full)["opt"], want["opt"])

    # Nothing is overwritten, and resuming the export as a logdir is refused without moving it to quarantine.
    with pytest.raises(ck.CheckpointError, match="not an empty directory.*never overwrites"):
        ck.export_agent(tmp_path / "run", team)
    with pytest.raises(ck.CheckpointError, match="no such directory"):
        ck.export_agent(tmp_path / "nowhere", tmp_path / "x")
    loader = ck.Checkpointer(team / "ckpt")
    with pytest.raises(ck.CheckpointError, match=r"exported agent.*--from_checkpoint .*team --logdir NEW_DIR"):
        loader.restore_latest_good({"agent": agent.init(0)}, config=cfg, quarantine=team / "ckpt_corrupt")
    assert loader.steps() == [160] and not (team / "ckpt_corrupt").exists()
    loader.close()


def test_export_averages_the_weights_of_several_checkpoints(setup, tmp_path):
    cfg, agent, replay = setup
    saver = ck.Checkpointer(tmp_path / "run" / "ckpt", keep=3, async_save=False)
    ts, saved = agent.init(0), []
    for step in (160, 320):
        ts = _updates(agent, ts, replay, 2)  # the update donates its input: keep host copies
        saver.save(step, {"agent": ts}, {"env_steps": step, "updates": step // 80, "config": cfg.to_dict()})
        saved.append(jax.device_get(ts))
    saver.close()
    first, second = saved
    assert not np.allclose(jax.tree.leaves(first["params"])[0], jax.tree.leaves(second["params"])[0])

    # The exported step's own directory and a repeat among --average count once: the mean of two checkpoints.
    info = ck.export_agent(tmp_path / "run", tmp_path / "avg", average=[
        tmp_path / "run" / "ckpt" / "160", tmp_path / "run" / "ckpt" / "320", tmp_path / "run" / "ckpt" / "160"])
    assert (info["step"], info["updates"], info["optimizer"], info["averaged"]) == (320, 4, "reset", 2)
    got = jax.device_get(ck.load_into(tmp_path / "avg", agent.init(1), "agent")[0])
    for part in ck.AVERAGED:
        chex.assert_trees_all_close(got[part], jax.tree.map(lambda a, b: (a + b) / 2, first[part], second[part]),
                                    rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(got["step"], second["step"])
    assert all(not np.any(x) for x in jax.tree.leaves(got["opt"]))
    meta = ck.read_checkpoint(tmp_path / "avg")[3]
    assert [p.rsplit("/", 1)[-1] for p in meta["exported"]["averaged"]] == ["320", "160"]

    # Bad input: a kept optimizer, a checkpoint of other networks, a missing one; nothing is written.
    with pytest.raises(ck.CheckpointError, match="--optimizer keep cannot go with --average"):
        ck.export_agent(tmp_path / "run", tmp_path / "x", keep_optimizer=True, average=[tmp_path / "run"])
    small = Agent(agent.obs_spec, agent.act_spec, _cfg(**{"agent.units": 16}))
    saver = ck.Checkpointer(tmp_path / "other" / "ckpt", async_save=False)
    saver.save(8, {"agent": small.init(0)}, {"env_steps": 8, "config": cfg.to_dict()})
    saver.close()
    with pytest.raises(ck.CheckpointError, match=r"--average .*other.*params: shapes differ .*only checkpoints of "
                                                 r"the same configuration"):
        ck.export_agent(tmp_path / "run", tmp_path / "x", average=[tmp_path / "other"])
    with pytest.raises(ck.CheckpointError, match="--average .*nowhere: no such directory"):
        ck.export_agent(tmp_path / "run", tmp_path / "x", average=[tmp_path / "nowhere"])
    assert not (tmp_path / "x").exists()
