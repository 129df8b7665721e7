"""A tiny agent learns the built-in token world from the command line; the token-masked ablation cannot.

The target is named by one word heard two steps before the choice and is in no other observation, so
reaching the optimal return requires the world model to carry the token in its latent state.
"""

from __future__ import annotations

import json

import pytest

from launch import train


@pytest.fixture(scope="module")
def language_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tokenchoice")
    summary = train.main(["--configs", "debug", "tokenchoice", "--run.steps", "2500", "--run.log_every", "30",
                          "--logdir", str(logdir)])
    return logdir, summary


def test_language_agent_reaches_optimal_return(language_run):
    logdir, summary = language_run
    assert summary["optimal_return"] == 1.0
    assert summary["eval"]["episodes"] == 200
    assert summary["eval"]["return_mean"] >= 0.9 * summary["optimal_return"], summary


def test_run_writes_config_metrics_and_summary(language_run):
    logdir, summary = language_run
    assert (logdir / "config.yaml").exists()
    assert json.loads((logdir / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/total" in r]
    assert train_rows, "no training rows were logged"
    for key in ("loss/rec_tokens", "loss/reward", "loss/dyn", "fps/updates_per_s", "fps/env_steps_per_s"):
        assert key in train_rows[-1]
    episode_rows = [r for r in rows if "episode/return" in r]
    assert episode_rows, "no episode statistics were logged"
    for r in episode_rows:  # tokenchoice (delay 2): every episode is 3 decisions and ends by a choice (terminal)
        assert r["episode/length"] == 3 and r["episode/terminated"] == 1.0, r
    # The world model learns to reconstruct the token stream.
    assert train_rows[-1]["loss/rec_tokens"] < 0.5 * train_rows[0]["loss/rec_tokens"]
    assert summary["updates"] > 1000


def test_masked_agent_stays_at_chance(tmp_path):
    summary = train.main(["--configs", "debug", "tokenchoice", "--env.mask_tokens", "true", "--run.steps", "1200",
                          "--run.log_every", "30", "--logdir", str(tmp_path / "masked")])
    assert abs(summary["eval"]["return_mean"] - summary["chance_return"]) <= 0.1, summary


def test_launcher_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit, match="agent.rssm.deter"):
        train.main(["--configs", "debug", "--agent.rssm.detr", "3", "--logdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--logdir"):
        train.main(["--configs", "debug"])
    with pytest.raises(ValueError, match="tokenchoice"):
        train.main(["--configs", "debug", "--env", "tokenchoise", "--logdir", str(tmp_path)])
    with pytest.raises(ValueError, match="num_choices"):
        train.main(["--configs", "debug", "--env.options.num_choices", "40", "--logdir", str(tmp_path)])
