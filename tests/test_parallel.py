"""Data parallelism: meshes, shardings, multi-host settings, and a sharded train step equal to one device.

JAX fixes its device count when it starts, and conftest has started it with one CPU device. The checks that
need four devices therefore run this file as a script in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (one subprocess for the module: two compilations of the
debug agent, one per device setting), which prints one JSON line that the tests below read.

`test_two_processes_match_one_device` (opt-in: `LWM_TEST_MULTIPROCESS=1`) runs a real multi-process job on one
machine: two processes with two CPU devices each, joined by `jax.distributed.initialize`, one mesh over all four.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 4
UPDATES = 3


# ------------------------------------------------------------------------------ the 4-device subprocess

def _spec():
    from dm_env import specs

    obs = {"tokens": specs.BoundedArray((1,), np.int32, 0, 7, name="tokens"),
           "vector": specs.Array((4,), np.float32, name="vector")}
    return obs, specs.DiscreteArray(3, name="action")


def _batch(cfg, seed: int, size: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    B, T, r = size or cfg.batch_size, cfg.batch_length, cfg.agent.rssm
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    return {
        "obs": {"tokens": rng.integers(0, 8, (B, T, 1)).astype(np.int32),
                "vector": rng.normal(size=(B, T, 4)).astype(np.float32)},
        "action": {"action": rng.integers(0, 3, (B, T)).astype(np.int32)},
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": first,
        "is_terminal": rng.random((B, T)) < 0.05,
        "start": {"deter": np.zeros((B, r.deter), np.float32),
                  "stoch": np.zeros((B, r.stoch, r.classes), np.float32)},
        "start_action": {"action": np.zeros((B,), np.int32)},
    }


def _worker() -> dict:
    """Runs under 4 fake CPU devices; returns everything the tests check, as plain JSON values."""
    from lwm.runtime import setup_jax

    setup_jax("cpu", os.environ.get("LWM_JAX_CACHE", ""))
    import jax

    from lwm import config, parallel
    from lwm.agent import Agent

    out: dict = {"device_count": jax.device_count()}
    cfg = config.load(["debug"], {"agent.opt.warmup": 0, "agent.opt.lr": 1e-3})  # batch 4 x 16
    obs_spec, act_spec = _spec()

    def error(fn) -> str:
        try:
            fn()
        except parallel.ParallelError as e:
            return str(e)
        return ""

    out["err_agent"] = error(lambda: Agent(obs_spec, act_spec, cfg.update({"batch_size": 6}),
                                           mesh=parallel.make_mesh()))
    out["err_config"] = error(lambda: parallel.mesh_from_config(cfg.update({"batch_size": 6})))
    out["err_devices"] = error(lambda: parallel.make_mesh(5))
    out["mesh2"] = [d.id for d in parallel.make_mesh(2).devices.flat]
    out["mesh2x2"] = dict(parallel.make_mesh(0, ("data", "model"), (2, 2)).shape)

    mesh = parallel.mesh_from_config(cfg)
    out["mesh"] = dict(mesh.shape)
    out["err_shard"] = error(lambda: parallel.shard_batch(_batch(cfg, 0, size=6), mesh))
    batches = [_batch(cfg, seed) for seed in range(UPDATES)]
    try:
        from lwm import checkpoint as ckpt_lib
    except ImportError:  # the checkpoint module is optional here
        ckpt_lib = None
    ckpt_dir = Path(os.environ["LWM_TEST_CKPT_DIR"])
    runs = {}
    for name, m in (("single", None), ("mesh", mesh)):
        agent = Agent(obs_spec, act_spec, cfg, mesh=m)
        ts = agent.init(0)
        losses = []
        for batch in batches:  # new batch values each update: no retrace
            ts, metrics, post = agent.train(ts, agent.shard_batch(batch))
            losses.append({k: float(v) for k, v in parallel.to_host(metrics).items()})
        if ckpt_lib is not None and m is None:  # saved from one device ...
            saver = ckpt_lib.Checkpointer(ckpt_dir, keep=1, async_save=False)
            saver.save(UPDATES, {"agent": ts}, {"devices": 1})
            saver.close()
        elif ckpt_lib is not None:  # ... restored onto the 4-device mesh, then trained on without a retrace
            loader = ckpt_lib.Checkpointer(ckpt_dir, keep=1, async_save=False)
            restored = loader.restore({"agent": ts}, with_replay=False).state["agent"]
            loader.close()
            out["restored_params"] = [np.asarray(x).ravel().tolist()
                                      for x in jax.tree.leaves(parallel.to_host(restored["params"]))]
            out["restored_devices"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(restored)
                                              if x.sharding.is_fully_replicated})
            out["restored_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(restored))
            out["restored_step"] = int(parallel.to_host(restored["step"]))
            restored, metrics, _ = agent.train(restored, agent.shard_batch(batches[0]))
            out["restored_loss"] = float(parallel.to_host(metrics)["loss/total"])
            out["restored_next_step"] = int(parallel.to_host(restored["step"]))
        carry = agent.init_policy(3)  # 3 environments: the policy does not need a divisible batch
        obs = {k: v[:3, 0] for k, v in batches[0]["obs"].items()}
        carry, actions, _ = agent.policy(ts["params"], carry, obs, batches[0]["is_first"][:3, 0], jax.random.key(1))
        report = agent.report(ts["params"], batches[0], jax.random.key(2))
        runs[name] = {
            "losses": losses, "traces": dict(agent.traces),
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(parallel.to_host(ts["params"]))],
            "post": np.asarray(parallel.to_host(post)["deter"]).ravel().tolist(),
            "post_shape": list(np.shape(parallel.to_host(post)["deter"])),
            "actions": np.asarray(actions["action"]).tolist(),
            "openloop": np.asarray(report["openloop/vector_mse"]).tolist(),
            "param_sharding": str(jax.tree.leaves(ts["params"])[0].sharding),
            "post_sharding": str(post["deter"].sharding),
            "step": int(parallel.to_host(ts["step"])),
        }
    out["runs"] = runs
    return out


def _process_worker(process_id: int, port: int) -> dict:
    """One of two processes with 2 fake CPU devices each: a 4-device mesh spanning both processes.

    Process p feeds rows 2p and 2p + 1 of the same global batches as the one-device run of `_worker`.
    """
    from lwm.runtime import setup_jax

    setup_jax("cpu", os.environ.get("LWM_JAX_CACHE", ""))
    import jax

    from lwm import config, parallel
    from lwm.agent import Agent

    base = config.load(["debug"], {"agent.opt.warmup": 0, "agent.opt.lr": 1e-3})
    cfg = base.update({"batch_size": 2, "jax.distributed.coordinator": f"localhost:{port}",
                       "jax.distributed.num_processes": 2, "jax.distributed.process_id": process_id})
    assert parallel.initialize(cfg)
    mesh = parallel.mesh_from_config(cfg)
    agent = Agent(*_spec(), cfg, mesh=mesh)
    ts = agent.init(0)
    batches = [jax.tree.map(lambda x: x[2 * process_id: 2 * process_id + 2], _batch(base, s)) for s in range(UPDATES)]
    # Compile first, then wait for the other process: XLA:CPU's gloo collectives give a peer only 30 s to arrive
    # at the first collective, less than the difference between two compilations on a busy 2-core machine.
    train = agent.train.lower(ts, agent.shard_batch(batches[0])).compile()
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier("lwm_test_compiled", 900_000)
    losses = []
    for rows in batches:
        ts, metrics, post = train(ts, agent.shard_batch(rows))
        losses.append(float(parallel.to_host(metrics)["loss/total"]))
    post = parallel.to_host(post)["deter"]
    carry, actions, _ = agent.policy(ts["params"], agent.init_policy(2), {k: v[:, 0] for k, v in rows["obs"].items()},
                                     rows["is_first"][:, 0], jax.random.key(1))
    return {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
            "mesh": dict(mesh.shape), "losses": losses, "post_shape": list(post.shape),
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(parallel.to_host(ts["params"]))],
            "traces": agent.traces["train"], "seed": parallel.process_seed(0), "env_offset": parallel.env_offset(4)}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    env = {**os.environ, "LWM_TEST_CKPT_DIR": str(tmp_path_factory.mktemp("ckpt") / "ckpt"),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}", "JAX_PLATFORMS": "cpu",
           "LWM_JAX_CACHE": os.environ.get("LWM_JAX_CACHE", str(ROOT / ".jax_cache"))}
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_fake_devices_and_meshes(four):
    assert four["device_count"] == DEVICES
    assert four["mesh"] == {"data": DEVICES}
    assert four["mesh2"] == [0, 1]
    assert four["mesh2x2"] == {"data": 2, "model": 2}


def test_sharded_train_step_matches_one_device(four):
    single, mesh = four["runs"]["single"], four["runs"]["mesh"]
    assert single["step"] == mesh["step"] == UPDATES
    for a, b in zip(single["losses"], mesh["losses"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert len(single["params"]) == len(mesh["params"])
    for a, b in zip(single["params"], mesh["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(mesh["post"], single["post"], rtol=1e-3, atol=1e-4)
    assert mesh["post_shape"] == single["post_shape"] == [4, 16, 64]
    np.testing.assert_allclose(mesh["openloop"], single["openloop"], rtol=1e-3, atol=1e-5)
    assert len(mesh["actions"]) == 3


def test_sharded_layout_and_single_trace(four):
    mesh = four["runs"]["mesh"]
    assert "PartitionSpec()" in mesh["param_sharding"] or "spec=P()" in mesh["param_sharding"]
    assert "'data'" in mesh["post_sharding"]
    assert "SingleDeviceSharding" in four["runs"]["single"]["param_sharding"]
    for run in four["runs"].values():
        assert run["traces"]["train"] == 1  # UPDATES updates on new batch values: traced once
        assert run["traces"]["policy"] == 1 and run["traces"]["report"] == 1


def test_batch_not_divisible_by_devices_is_a_clear_error(four):
    for key in ("err_agent", "err_config", "err_shard"):
        msg = four[key]
        assert "batch_size=6" in msg and f"{DEVICES} devices" in msg, (key, msg)
        assert "batch_size 4 or 8" in msg and "jax.devices=3" in msg, (key, msg)
    assert "jax.devices=5" in four["err_devices"] and "4 cpu device(s)" in four["err_devices"]


def test_checkpoint_from_one_device_restores_on_four_device_mesh(four):
    if "restored_params" not in four:
        pytest.skip("lwm.checkpoint is not available")
    single = four["runs"]["single"]
    assert four["restored_step"] == UPDATES
    assert four["restored_replicated"] and four["restored_devices"] == [DEVICES]  # replicated on the mesh
    for a, b in zip(single["params"], four["restored_params"], strict=True):
        np.testing.assert_array_equal(b, a)
    assert np.isfinite(four["restored_loss"]) and four["restored_next_step"] == UPDATES + 1
    assert four["runs"]["mesh"]["traces"]["train"] == 1  # the restored state reuses the compiled step


# ---------------------------------------------------------------------------------- in-process (1 device)

def _cfg(**overrides):
    from lwm import config

    return config.load(["debug"], overrides)


def test_one_device_means_no_mesh():
    from lwm import parallel

    assert parallel.mesh_from_config(_cfg()) is None
    assert parallel.mesh_from_config(_cfg(**{"jax.devices": 1})) is None
    with pytest.raises(parallel.ParallelError, match=r"jax.devices=2 is not possible.*1 cpu device"):
        parallel.mesh_from_config(_cfg(**{"jax.devices": 2}))
    with pytest.raises(parallel.ParallelError, match=r"jax.devices=-1 must be >= 0"):
        parallel.mesh_from_config(_cfg(**{"jax.devices": -1}))
    assert parallel.describe(None).startswith("1 device (cpu")


def test_one_device_mesh_helpers_round_trip():
    import jax
    import jax.numpy as jnp

    from lwm import parallel

    mesh = parallel.make_mesh(1)
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(0)}
    placed = parallel.replicate(tree, mesh)
    assert placed["w"].sharding == parallel.replicated(mesh)
    batch = {"x": np.arange(8.0).reshape(4, 2), "y": np.zeros((4,), np.int32)}
    sharded = parallel.shard_batch(batch, mesh)
    assert sharded["x"].sharding == parallel.batch_sharding(mesh)
    back = parallel.to_host(sharded)
    np.testing.assert_array_equal(back["x"], batch["x"])
    assert parallel.local_view(placed)["w"] is placed["w"]  # one device: already local
    with pytest.raises(parallel.ParallelError, match="same leading"):
        parallel.shard_batch({"x": np.zeros((4, 2)), "y": np.zeros((3,))}, mesh)


@pytest.mark.parametrize("env,want", [
    ({}, ""),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, ""),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, ""),  # sbatch script outside srun: no step yet
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, ""),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "jax"),
])
def test_cluster_env_detection(env, want):
    from lwm import parallel

    assert parallel.cluster_env(env) == want


def test_initialize_settings(monkeypatch):
    import jax

    from lwm import parallel

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert parallel.initialize(_cfg(), environ={}) is False  # one CPU process: nothing to join
    assert parallel.initialize(_cfg(**{"jax.distributed.mode": "off"}), environ={"JAX_COORDINATOR_ADDRESS": "a:1"}) \
        is False
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    assert parallel.initialize(_cfg(), environ=slurm) is True
    assert calls[-1] == {"coordinator_address": None, "num_processes": None, "process_id": None}  # JAX detects
    explicit = _cfg(**{"jax.distributed.coordinator": "10.0.0.1:1234", "jax.distributed.num_processes": 2,
                       "jax.distributed.process_id": 1})
    assert parallel.initialize(explicit, environ={}) is True
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    with pytest.raises(parallel.ParallelError, match=r"mode='maybe'.*auto, on, off"):
        parallel.initialize(_cfg(**{"jax.distributed.mode": "maybe"}))
    with pytest.raises(parallel.ParallelError, match=r"process_id=2 must be -1 \(detected\) or 0..1"):
        parallel.initialize(_cfg(**{"jax.distributed.num_processes": 2, "jax.distributed.process_id": 2}))

    def fail(**kw):
        raise RuntimeError("backend already initialised")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    with pytest.raises(parallel.ParallelError, match="before any JAX computation"):
        parallel.initialize(explicit, environ={})


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _agree_worker(process_id: int, port: int) -> dict:
    """One of two real processes: the barrier and `agree_max`, the loop's multi-host stop/save agreement."""
    from lwm.runtime import setup_jax

    setup_jax("cpu", "")
    import jax

    from lwm import parallel

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    parallel.barrier("lwm_test_agree")
    # Process 1 got SIGTERM (code 2) and names itself; process 0's clock says a checkpoint is due.
    first = parallel.agree_max([2 if process_id == 1 else 0, int(process_id == 0), 2 if process_id == 1 else 0])
    quiet = parallel.agree_max([0, 0, 0])
    return {"multi": parallel.is_multiprocess(), "first": first, "quiet": quiet}


def test_two_processes_agree_on_stop_and_save(tmp_path):
    """Two real processes joined by jax.distributed: both see the other's signal and save vote."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    logs = [tmp_path / f"agree{p}.out" for p in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, "agree", str(p), str(port)], cwd=ROOT, env=env,
                              stdout=out.open("w"), stderr=subprocess.STDOUT) for p, out in enumerate(logs)]
    for proc, out in zip(procs, logs, strict=True):
        proc.wait(timeout=300)
        assert proc.returncode == 0, out.read_text()[-3000:]
    for out in logs:
        res = json.loads(out.read_text().strip().splitlines()[-1])
        assert res == {"multi": True, "first": [2, 1, 2], "quiet": [0, 0, 0]}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LWM_TEST_MULTIPROCESS") != "1",
                    reason="two processes compile the train step at once (minutes on 2 cores); "
                           "set LWM_TEST_MULTIPROCESS=1 to run")
def test_two_processes_match_one_device(four, tmp_path):
    """Multi-host on one machine: 2 processes x 2 CPU devices, joined by jax.distributed (gloo collectives)."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "LWM_JAX_CACHE": os.environ.get("LWM_JAX_CACHE", str(ROOT / ".jax_cache"))}
    # Output to files, not pipes: a process blocked on a full pipe would stall the other at JAX's shutdown barrier.
    logs = [(tmp_path / f"p{p}.out", tmp_path / f"p{p}.err") for p in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, "process", str(p), str(port)], cwd=ROOT, env=env,
                              stdout=out.open("w"), stderr=err.open("w")) for p, (out, err) in enumerate(logs)]
    for proc, (out, err) in zip(procs, logs, strict=True):
        proc.wait(timeout=1200)
        assert proc.returncode == 0, out.read_text()[-2000:] + err.read_text()[-3000:]
    results = [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]
    single = four["runs"]["single"]
    for p, res in enumerate(results):
        assert (res["process"], res["processes"], res["devices"], res["mesh"]) == (p, 2, 4, {"data": 4})
        np.testing.assert_allclose(res["losses"], [x["loss/total"] for x in single["losses"]], rtol=1e-4)
        for a, b in zip(single["params"], res["params"], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
        assert res["post_shape"] == [2, 16, 64]  # this process's own rows
        assert res["traces"] == 1
    assert [r["seed"] for r in results] == [0, 1_000_003] and [r["env_offset"] for r in results] == [0, 4]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["agree"]:
        print(json.dumps(_agree_worker(int(sys.argv[2]), int(sys.argv[3]))))
    elif sys.argv[1:2] == ["process"]:
        print(json.dumps(_process_worker(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps(_worker()))
