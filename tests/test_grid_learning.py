"""The CI learning check of the hinted gridworlds: the world model learns that the reward follows the words.

On `grid_task_xs` (a 3x3 room, 2 objects; the task sentence alone names the target), the `grid_task` preset's
world model is trained offline on a scripted explorer's episodes (`launch.grid_probe`). On held-out pickups it
must then predict more reward for the object the sentence names than for the other one, and lose that gap when
the words are replaced by `<pad>` (same object in front, no language): the separation comes from the words.
This is the first half of the language agent's result on the task world (`bench/grid_learning.py`, README
"Learning results"), sized for a CI machine: the agent-level run takes an hour of CPU.
"""

from __future__ import annotations

import pytest

from launch.grid_probe import check_world, run
from lwm import config


@pytest.fixture(scope="module")
def probe_rows():
    cfg = config.load(["grid_task"], {"env.name": "grid_task_xs", "env.options.token_len": 6,
                                      "env.options.repeat_every": 1})
    return run(cfg, steps=8000, updates=600, every=600)


def test_world_model_predicts_reward_from_the_words(probe_rows):
    start, end = probe_rows[0], probe_rows[-1]
    assert start["update"] == 0 and end["update"] == 600
    assert end["pickups_right"] > 100 and end["pickups_wrong"] > 100  # the explorer picks up both kinds
    assert end["tokens_decoded"] > 0.9 and end["carrying_decoded"] > 0.8, end
    assert end["reward_right"] - end["reward_wrong"] > 0.12, end  # at the start both are 0
    assert abs(start["reward_right"] - start["reward_wrong"]) < 0.02, start
    # Control: the same pickups with every token masked. The model can no longer tell right from wrong.
    assert abs(end["reward_right_masked"] - end["reward_wrong_masked"]) < 0.05, end


def test_probe_rejects_other_worlds():
    with pytest.raises(ValueError, match="grid_dynamics_s.*grid_task"):
        check_world(config.load(["grid_dynamics"]))
    with pytest.raises(ValueError, match="obs='rgb'.*symbolic"):
        check_world(config.load(["grid_task", "grid_gpu"]))
