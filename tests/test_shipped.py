"""The trained teams shipped under checkpoints/ (written by `python -m launch.export`) load into this code and
play the released rules as the README reports: a change to the model that breaks them fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import eval as lwm_eval

ROOT = Path(__file__).resolve().parents[1]
TEAMS = sorted(p.parent.name for p in (ROOT / "checkpoints").glob("*/config.yaml"))


def test_a_trained_team_is_shipped():
    assert TEAMS, f"no exported team under {ROOT / 'checkpoints'} (the README's results start from one)"


@pytest.mark.parametrize("name", TEAMS)
def test_shipped_team_defuses_the_released_rules(name, tmp_path):
    results = lwm_eval.main(["--logdir", str(ROOT / "checkpoints" / name), "--episodes", "16", "--mode", "greedy",
                             "--probes", "false", "--world", "tools_mix=0", "--out", str(tmp_path)])
    rows = {r["name"]: r["metrics"] for r in results["suites"]["defusal"]["rows"]}
    agent, heuristic = rows["agent (greedy)"], rows["heuristic"]
    assert agent["score"]["mean"] >= 88.0, agent["score"]
    assert agent["rounds"]["mean"] <= 15.5, (agent["rounds"], heuristic["rounds"])
