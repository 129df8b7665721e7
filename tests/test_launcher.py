"""`python -m launch.train` under faults: kill -9 during a checkpoint write and mid-run, resume, SIGTERM; bad input.

One debug run in one logdir goes through four processes:
  A  killed with SIGKILL while a checkpoint is being written (a test hook slows the replay write down)
  B  resumes from A's last complete checkpoint, killed with SIGKILL mid-run
  C  resumes from B's last complete checkpoint, stopped with SIGTERM: saves and exits 0
and afterwards the logs must read as one continuous run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import train
from lwm.logger import decode_event, read_records

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--configs", "debug", "tokenchoice", "--env.num_envs", "4", "--batch_length", "8", "--agent.imag.horizon",
        "5", "--run.train_fill", "64", "--run.train_ratio", "32", "--run.log_every", "0.5", "--run.summary_every",
        "0", "--run.eval_episodes", "0", "--ckpt.every_updates", "16", "--ckpt.every_s", "0"]
TIMEOUT = 150.0


class Run:
    """A `python -m launch.train` subprocess whose output goes to a file that the test polls."""

    def __init__(self, logdir: Path, extra: list[str], name: str, env: dict | None = None):
        self.out = logdir.parent / f"{name}.out"
        self.file = self.out.open("w")
        environ = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "launch.train", *ARGS, *extra, "--logdir", str(logdir)],
                                     cwd=ROOT, stdout=self.file, stderr=subprocess.STDOUT, env=environ)

    def text(self) -> str:
        return self.out.read_text()

    def wait_for(self, condition, what: str, timeout: float = TIMEOUT):
        start = time.time()
        while time.time() - start < timeout:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def finish(self, sig=None, timeout: float = TIMEOUT) -> int:
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.file.close()
        return rc


def complete_steps(logdir: Path) -> list[int]:
    ckpt = logdir / "ckpt"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def tmp_dirs(logdir: Path) -> list[str]:
    ckpt = logdir / "ckpt"
    return [p.name for p in ckpt.iterdir() if "tmp" in p.name] if ckpt.exists() else []


def resumed(text: str) -> dict | None:
    m = re.search(r"resumed from .*/ckpt/(\d+) \(step (\d+), (\d+) updates, replay (\d+) steps", text)
    return None if m is None else dict(zip(("dir", "step", "updates", "replay"), map(int, m.groups()), strict=True))


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("faults") / "run"
    out: dict = {"logdir": logdir}

    # A: kill -9 while a checkpoint is being written (after at least one complete one).
    a = Run(logdir, ["--run.steps", "100000"], "a", env={"LWM_TEST_CKPT_WRITE_DELAY": "1.5"})
    a.wait_for(lambda: complete_steps(logdir), "a first complete checkpoint")
    first = complete_steps(logdir)
    a.wait_for(lambda: tmp_dirs(logdir) and complete_steps(logdir) == first, "a checkpoint write in progress")
    a.proc.kill()
    a.finish()
    out["a"] = {"complete": complete_steps(logdir), "tmp": tmp_dirs(logdir)}

    # B: resumes from A's last complete checkpoint; kill -9 mid-run after it wrote checkpoints of its own.
    b = Run(logdir, ["--run.steps", "100000"], "b")
    out["b_resumed"] = b.wait_for(lambda: resumed(b.text()), "the resume line")
    b.wait_for(lambda: len([s for s in complete_steps(logdir) if s > out["b_resumed"]["step"]]) >= 2,
               "two checkpoints of the resumed run")
    time.sleep(0.3)
    b.proc.kill()
    b.finish()
    out["b_complete"] = complete_steps(logdir)

    # C: resumes again; SIGTERM -> finish the update, save, exit 0.
    c = Run(logdir, ["--run.steps", "100000"], "c")
    out["c_resumed"] = c.wait_for(lambda: resumed(c.text()), "the resume line")
    c.wait_for(lambda: "first update after" in c.text(), "the first update")
    time.sleep(0.5)
    out["c_rc"] = c.finish(signal.SIGTERM)
    out["c_text"] = c.text()
    out["c_complete"] = complete_steps(logdir)
    return out


def test_kill_during_checkpoint_write_resumes_from_last_complete(faults):
    a, b = faults["a"], faults["b_resumed"]
    assert a["tmp"], "the kill did not land during a checkpoint write"
    assert b["dir"] == b["step"] == max(a["complete"]), (a, b)
    assert b["replay"] == b["step"]  # every env step is in replay: the restored replay holds all of them
    assert b["updates"] > 0


def test_kill_mid_run_resumes_and_counters_continue(faults):
    b, c = faults["b_resumed"], faults["c_resumed"]
    assert c["dir"] == c["step"] == max(faults["b_complete"]) > b["step"]
    assert c["updates"] > b["updates"] and c["replay"] == c["step"]


def test_sigterm_saves_and_exits_zero(faults):
    assert faults["c_rc"] == 0, faults["c_text"][-2000:]
    assert "received SIGTERM" in faults["c_text"] and "stopped by SIGTERM" in faults["c_text"]
    summary = json.loads((faults["logdir"] / "summary.json").read_text())
    assert summary["interrupted"] == "SIGTERM"
    assert summary["checkpoint"].endswith(f"/ckpt/{summary['env_steps']}")
    assert max(faults["c_complete"]) == summary["env_steps"] > faults["c_resumed"]["step"]
    assert re.search(r"first update after [\d.]+ s", faults["c_text"])
    assert re.search(r"step +\d+/100000 +\d+% \| updates +\d+ \| [\d.]+ updates/s .*\| ETA ", faults["c_text"])


def test_logs_are_continuous_across_kills(faults):
    logdir = faults["logdir"]
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    updates = [r["updates"] for r in rows]
    assert steps == sorted(steps) and updates == sorted(updates), steps
    final = json.loads((logdir / "summary.json").read_text())
    assert steps[-1] == final["env_steps"] and updates[-1] == final["updates"]
    # Rows from both sides of every resume point are present.
    for point in (faults["b_resumed"]["step"], faults["c_resumed"]["step"]):
        assert any(s <= point for s in steps) and any(s > point for s in steps)
    event_steps = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        event_steps += [decode_event(r)["step"] for r in read_records(path)[1:]]  # all records intact
    assert event_steps == sorted(event_steps) and event_steps[-1] == final["env_steps"]
    assert not list((logdir / "ckpt").glob("*tmp*"))


def test_resume_with_a_different_config_names_the_keys(faults):
    logdir = faults["logdir"]
    saved = (logdir / "config.yaml").read_text()
    with pytest.raises(SystemExit) as e:
        train.main([*ARGS, "--agent.rssm.deter", "32", "--batch_size", "8", "--run.steps", "5",
                    "--logdir", str(logdir)])
    text = str(e.value)
    assert "2 key(s)" in text and "agent.rssm.deter: checkpoint 64, now 32" in text
    assert "batch_size: checkpoint 4, now 8" in text and "run.steps" not in text.split("Resume")[0]
    assert (logdir / "config.yaml").read_text() == saved


def test_from_checkpoint_starts_a_new_run(faults, tmp_path, capsys):
    summary = train.main([*ARGS, "--run.steps", "72", "--from_checkpoint", str(faults["logdir"]),
                          "--from_checkpoint.only", "wm", "--agent.actor.entropy", "0.0125",
                          "--env.options.delay", "3",
                          "--logdir", str(tmp_path / "new")])
    out = capsys.readouterr().out
    assert re.search(r"started from .*/ckpt/\d+ \(ckpt.from_only=wm\)", out)
    # The source run's config is not taken over: what this run changes from it is named, ckpt.* left out.
    line = next(ln for ln in out.splitlines() if "config differs from" in ln)
    assert str(faults["logdir"].resolve() / "config.yaml") in line and "agent.actor.entropy" in line, line
    assert re.search(r"agent\.actor\.entropy [0-9.e-]+ -> 0\.0125", line) and "ckpt." not in line, line
    # A world option is named too (the flat view of the new config and the nested config.yaml compare key by key).
    assert "env.options {'num_choices': 4, 'delay': 2} -> {'num_choices': 4, 'delay': 3}" in line, line
    assert summary["env_steps"] == 72 and "resumed_from" not in summary


def test_launcher_bad_input(tmp_path):
    with pytest.raises(SystemExit, match=r"Unknown config key 'ckpt.evry_s'.*Did you mean 'ckpt.every_s'"):
        train.main(["--configs", "debug", "--ckpt.evry_s", "3", "--logdir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"'ckpt.every_updates' expects an int, got 'often'"):
        train.main(["--configs", "debug", "--ckpt.every_updates", "often", "--logdir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"run.nonfinite='ignore' is not known; use one of stop, skip"):
        train.main(["--configs", "debug", "--run.nonfinite", "ignore", "--logdir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"ckpt.from_only='actor' is not known; use one of agent, params, wm"):
        train.main(["--configs", "debug", "--from_checkpoint.only", "actor", "--logdir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"ckpt.keep=0 must be >= 1"):
        train.main(["--configs", "debug", "--ckpt.keep", "0", "--logdir", str(tmp_path / "x")])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"--logdir .*file/run is not a writable directory"):
        train.main(["--configs", "debug", "--logdir", str(blocker / "run")])
    with pytest.raises(SystemExit, match=r"--from_checkpoint .*nowhere: no such directory"):
        train.main(["--configs", "debug", "tokenchoice", "--from_checkpoint", str(tmp_path / "nowhere"),
                    "--logdir", str(tmp_path / "y")])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LWM_TEST_MULTIPROCESS") != "1",
                    reason="two launcher processes compile the train step at once (minutes on 2 cores); "
                           "set LWM_TEST_MULTIPROCESS=1 to run")
def test_two_process_run_stops_together_on_one_sigterm_and_resumes(tmp_path):
    """A real 2-process (multi-host) run on one machine: SIGTERM to process 1 alone stops both after the same
    update with one checkpoint holding both processes' parts; rerunning both resumes both from it."""
    import socket

    logdir = tmp_path / "run"

    def start(name: str) -> list[Run]:
        with socket.socket() as sock:
            sock.bind(("localhost", 0))
            port = sock.getsockname()[1]
        dist = ["--run.steps", "100000", "--jax.distributed.coordinator", f"localhost:{port}",
                "--jax.distributed.num_processes", "2"]
        return [Run(logdir, [*dist, "--jax.distributed.process_id", str(p)], f"{name}{p}") for p in range(2)]

    def stop_one(runs: list[Run]) -> list[str]:
        runs[1].wait_for(lambda: "first update after" in runs[1].text(), "the first update", timeout=600)
        time.sleep(1.0)
        rcs = [runs[1].finish(signal.SIGTERM, timeout=300), runs[0].finish(timeout=300)]
        texts = [r.text() for r in runs]
        assert rcs == [0, 0], texts[0][-2000:] + texts[1][-2000:]
        return texts

    first = stop_one(start("a"))
    step = int(re.search(r"stopped by SIGTERM on process 1 at step (\d+)", first[0]).group(1))
    assert f"stopped by SIGTERM at step {step}" in first[1] and "process 1 received SIGTERM" in first[0]
    assert complete_steps(logdir) == [step]
    part = logdir / "ckpt" / str(step) / "replay"
    assert {f"{kind}_p{p}.{ext}" for kind, ext in (("replay", "npz"), ("local", "npz"), ("meta", "json"))
            for p in range(2)} <= {f.name for f in part.iterdir()}
    rows_1 = (logdir / "process_1" / "metrics.jsonl").read_text().splitlines()

    second = stop_one(start("b"))
    for text in second:
        assert resumed(text)["step"] == step, text[-2000:]
    rows_1_after = (logdir / "process_1" / "metrics.jsonl").read_text().splitlines()
    assert rows_1_after[:len(rows_1)] == rows_1  # process 1's own log rows before the checkpoint are kept
    assert max(complete_steps(logdir)) > step
