"""Host environments in worker processes (`lwm.envpool`, `env.workers`): the same episodes as in-process, errors
with the worker's traceback, no processes left behind (close, parent killed, SIGTERM), bad values, a launcher run."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dm_env
import numpy as np
import pytest
from dm_env import specs

from launch import train
from lwm import config as lwm_config
from lwm.driver import Driver
from lwm.envpool import EnvPool, EnvWorkerError, split

ROOT = Path(__file__).resolve().parents[1]


class CountEnv(dm_env.Environment):
    """x = [index, t]; reward = action / 2; ends (terminated) at t = 5; raises at t = `fail_at` if asked."""

    def __init__(self, index: int, fail_at: int = -1):
        self.index, self.fail_at, self.t = index, fail_at, 0

    def reset(self) -> dm_env.TimeStep:
        self.t = 0
        return dm_env.restart(self._obs())

    def step(self, action) -> dm_env.TimeStep:
        self.t += 1
        if self.t == self.fail_at:
            raise ValueError(f"boom in env {self.index} at t={self.t}")
        if self.t == 5:
            return dm_env.termination(action / 2, self._obs())
        return dm_env.transition(action / 2, self._obs())

    def _obs(self) -> dict:
        return {"x": np.array([self.index, self.t], np.int32), "log_text": np.array(f"env {self.index} t {self.t}",
                                                                                      object)}

    def observation_spec(self):
        return {"x": specs.Array((2,), np.int32, name="x"), "log_text": specs.Array((), object, name="log_text")}

    def action_spec(self):
        return specs.DiscreteArray(3, name="action")


def make_count_env(index: int, fail_index: int = -1, fail_at: int = -1) -> CountEnv:
    if index == fail_index and fail_at == 0:
        raise RuntimeError(f"cannot build env {index}")
    return CountEnv(index, fail_at if index == fail_index else -1)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    end = time.time() + timeout
    while time.time() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def random_run(driver: Driver, num: int, steps: int, num_actions: int, seed: int = 0) -> tuple[list, list, list]:
    """Steps `driver` with a seeded uniform policy; returns the steps it saw, the log_text and the episodes."""
    rng = np.random.default_rng(seed)
    seen, texts = [], []

    def policy(obs, is_first):
        return {"action": rng.integers(0, num_actions, size=num)}, {}

    for _ in range(steps):
        driver.step(policy, on_step=seen.append)
        texts.append([str(ts.observation["log_text"]) for ts in driver.timesteps])
    return seen, texts, driver.pop_episodes()


def test_split_and_bad_worker_counts():
    assert split(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert split([4, 5], 2) == [[4], [5]]
    for bad in (0, 3, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"workers=.* must be an int in \[1, 2\]"):
            split([0, 1], bad)
    with pytest.raises(ValueError, match="fork does not mix with JAX"):
        EnvPool(make_count_env, range(2), 1, context="fork")


def test_same_episodes_as_in_process_grid_task():
    """grid_task_s (symbolic), 4 envs, 60 iterations of a seeded random policy: identical with 0 and 2 workers."""
    config, _ = lwm_config.parse_args(["--configs", "grid_task", "--env.num_envs", "4"])
    make_env = train.env_factory(config)
    keys = ["grid", "direction", "carrying", "tokens"]
    first = make_env(0)
    num_actions = first.action_spec().num_values
    local = random_run(Driver([first] + [make_env(i) for i in range(1, 4)], keys), 4, 60, num_actions)
    with EnvPool(make_env, range(4), 2) as pool:
        pooled = random_run(Driver([make_env(0)], keys, pool=pool), 4, 60, num_actions)
        pids = pool.pids
    assert not wait_gone(pids)
    for a, b in zip(local[0], pooled[0], strict=True):
        for key in ("reward", "is_first", "is_last", "is_terminal"):
            np.testing.assert_array_equal(a[key], b[key])
        for key in keys:
            np.testing.assert_array_equal(a["obs"][key], b["obs"][key])
        np.testing.assert_array_equal(a["action"]["action"], b["action"]["action"])
    assert local[1] == pooled[1]  # the log_text object arrays came through the pipes
    assert local[2] == pooled[2]  # episode statistics: return, length, terminated
    assert sum(len(t) for t in local[1]) == 240


def test_episode_statistics_and_uneven_split():
    """3 envs over 2 workers: every episode lasts 5 steps and terminates; returns match in-process stepping."""
    local = random_run(Driver([make_count_env(i) for i in range(3)], ["x"]), 3, 20, 3, seed=1)
    with EnvPool(make_count_env, range(3), 2) as pool:
        pooled = random_run(Driver([make_count_env(0)], ["x"], pool=pool), 3, 20, 3, seed=1)
    assert local[1] == pooled[1] and local[2] == pooled[2]
    assert {e["length"] for e in pooled[2]} == {5} and {e["terminated"] for e in pooled[2]} == {1.0}
    assert pooled[1][0] == ["env 0 t 1", "env 1 t 1", "env 2 t 1"]


def test_errors_surface_with_the_workers_traceback():
    factory = functools.partial(make_count_env, fail_index=2, fail_at=3)
    pool = EnvPool(factory, range(4), 2)
    pids = pool.pids
    driver = Driver([make_count_env(0)], ["x"], pool=pool)
    policy = lambda obs, first: ({"action": np.zeros(4, np.int64)}, {})  # noqa: E731
    driver.step(policy)
    driver.step(policy)
    with pytest.raises(EnvWorkerError) as info:
        driver.step(policy)
    text = str(info.value)
    assert "environment 2 (env worker 1" in text and "during 'step/reset'" in text
    assert "Traceback" in text and "ValueError: boom in env 2 at t=3" in text and "in step" in text
    pool.close()
    assert not wait_gone(pids)
    with pytest.raises(EnvWorkerError, match="RuntimeError: cannot build env 1"):
        EnvPool(functools.partial(make_count_env, fail_index=1, fail_at=0), range(2), 2)


def test_workers_leave_when_closed_or_when_the_parent_dies():
    pool = EnvPool(make_count_env, range(2), 2)
    pids = pool.pids
    assert all(alive(p) for p in pids)
    pool.close()
    pool.close()  # idempotent
    assert not wait_gone(pids, 5.0)
    with pytest.raises(EnvWorkerError, match="closed"):
        pool.advance({0: None})
    # a parent killed with SIGKILL (no atexit, no close): its workers notice and leave
    script = (f"import sys, time; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]\n"
              "from test_envpool import make_count_env\nfrom lwm.envpool import EnvPool\n"
              "if __name__ == '__main__':\n"
              "    pool = EnvPool(make_count_env, range(2), 2)\n"
              "    pool.advance({0: None, 1: None})\n"
              "    print(' '.join(map(str, pool.pids)), flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids), line
        everything = descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert not wait_gone(everything, 10.0), "workers outlived their killed parent"


@pytest.mark.parametrize("value, message", [
    ("-1", r"env.workers=-1 must be an int from 0 .* to env.num_envs=4"),
    ("5", r"env.workers=5 must be an int from 0 .* to env.num_envs=4"),
    ("two", r"env.workers"),
])
def test_bad_env_workers_values(value, message, tmp_path, capsys):
    with pytest.raises(SystemExit, match=message):
        train.main(["--configs", "debug", "--env.num_envs", "4", "--env.workers", value, "--logdir", str(tmp_path)])


def test_team_worlds_reject_workers(tmp_path):
    with pytest.raises(SystemExit, match="env.workers=2: defusal_small is a batched JAX world .* env.workers 0"):
        train.main(["--configs", "debug", "--env", "defusal_small", "--env.workers", "2", "--logdir", str(tmp_path)])


def test_launcher_with_workers_sigterm_and_resume(tmp_path):
    """`launch.train --env.workers 2` on grid_task: SIGTERM after the first update saves and exits 0 with no
    process left over; the same logdir then resumes with one worker and finishes."""
    logdir = tmp_path / "run"
    args = [sys.executable, "-m", "launch.train", "--configs", "grid_task", "debug", "--run.train_fill", "200",
            "--run.eval_episodes", "0", "--run.log_every", "1", "--run.summary_every", "0", "--logdir", str(logdir),
            "--jax.cache_dir", os.environ.get("LWM_JAX_CACHE", str(ROOT / ".jax_cache"))]
    environ = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "a.out"
    with out.open("w") as f:
        proc = subprocess.Popen([*args, "--run.steps", "100000", "--env.workers", "2"], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT, env=environ)
        try:
            workers: set[int] = set()
            end = time.time() + 240
            while "first update" not in out.read_text():
                assert proc.poll() is None, out.read_text()[-3000:]
                assert time.time() < end, "no update within 240 s:\n" + out.read_text()[-3000:]
                workers |= set(descendants(proc.pid))
                time.sleep(0.2)
            workers |= set(descendants(proc.pid))
            assert "8 envs in 2 worker processes" in out.read_text()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert rc == 0, text[-3000:]
    assert "stopped by SIGTERM" in text and "Traceback" not in text, text[-3000:]
    assert len(workers) >= 2 and not wait_gone(sorted(workers), 10.0), "worker processes outlived the run"
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", text).group(1))
    assert (logdir / "ckpt" / str(step)).is_dir()

    done = subprocess.run([*args, "--run.steps", str(step + 32), "--env.workers", "1"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"resumed from {logdir / 'ckpt' / str(step)} (step {step}" in done.stdout
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] >= step + 32 and summary["resumed_from"].endswith(f"ckpt/{step}")
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("fps/env_steps_per_s" in r for r in rows if "eval/return_mean" not in r)
