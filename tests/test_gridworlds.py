"""Tests for the minigrid adapter, the token stream and the language-hinted gridworlds."""

from __future__ import annotations

import re
import sys
import unittest
from pathlib import Path
from typing import Any

import dm_env
import gymnasium as gym
import numpy as np
import pytest
from dm_env import test_utils
from minigrid.core.mission import MissionSpace

try:
    import envs
except ModuleNotFoundError:  # package not installed: import from the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import envs

from envs.gym_adapter import GymAdapter
from envs.hinted_grid import DONE, DROP, LEFT, PICKUP, TOGGLE, WORLDS, run_baseline
from envs.stream import TokenStream
from envs.text import Vocabulary, normalise

SMALL = [n for n in WORLDS if n.endswith("_s")]

# ---------------------------------------------------------------------------------------------
# dm_env conformance
# ---------------------------------------------------------------------------------------------

_CASES: dict[str, tuple[str, dict]] = {
    "minigrid_rgb": ("minigrid", {"id": "BabyAI-GoToLocal-v0"}),
    "minigrid_symbolic": ("minigrid", {"id": "MiniGrid-Empty-5x5-v0", "obs": "symbolic", "max_steps": 10}),
    **{n: (n, {"max_steps": 12, "image_size": 32}) for n in SMALL},
    "grid_home_m_len3": ("grid_home_m", {"max_steps": 12, "obs": "symbolic", "token_len": 3}),
}


def _conformance(name: str, options: dict) -> type:
    class _Case(test_utils.EnvironmentTestMixin, unittest.TestCase):
        def make_object_under_test(self):
            return envs.make(name, **options)

        def make_action_sequence(self):
            for _ in range(60):  # several episodes of 12 steps plus pre-read steps
                yield self.make_action()

    return _Case


for _key, (_name, _options) in _CASES.items():
    _cls_name = "TestGridDmEnv_" + re.sub(r"\W", "_", _key)
    globals()[_cls_name] = type(_cls_name, (_conformance(_name, _options),), {})
del _key, _name, _options, _cls_name


def test_all_worlds_registered():
    for name in [*WORLDS, "minigrid"]:
        assert name in envs.names()
        assert envs.describe(name)["description"]


# ---------------------------------------------------------------------------------------------
# Adapter: episode-end mapping and observations
# ---------------------------------------------------------------------------------------------


class _Scripted(gym.Env):
    """Minimal minigrid-like gymnasium env whose (terminated, truncated) flags follow a script."""

    def __init__(self, script: list[tuple[bool, bool]]) -> None:
        self.script = script
        self.mission = "go to the red ball"
        self.action_space = gym.spaces.Discrete(7)
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                "direction": gym.spaces.Discrete(4),
                "mission": MissionSpace(mission_func=lambda: "go to the red ball"),
            }
        )
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        img = np.zeros((7, 7, 3), np.uint8)
        img[..., 0] = 1
        return {"image": img, "direction": self.t % 4, "mission": self.mission}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        term, trunc = self.script[self.t]
        self.t += 1
        return self._obs(), 0.5, term, trunc, {}


@pytest.mark.parametrize("flags, discount", [((True, False), 0.0), ((False, True), 1.0), ((True, True), 0.0)])
def test_terminated_truncated_mapping(flags, discount):
    env = GymAdapter(_Scripted([(False, False), flags]), name="scripted", obs="symbolic")
    assert env.reset().first()
    mid = env.step(0)
    assert mid.mid() and mid.discount == 1.0 and mid.reward == 0.5
    last = env.step(0)
    assert last.last() and last.discount == discount and last.reward == 0.5
    assert env.step(0).first()  # auto-reset after LAST


def test_adapter_observations_and_mission_stream():
    env = envs.make("minigrid", id="BabyAI-GoToLocal-v0", seed=3)
    ts = env.reset()
    obs = ts.observation
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["direction"].dtype == np.int32 and 0 <= obs["direction"] <= 3
    assert obs["is_read_step"].dtype == np.bool_ and not obs["is_read_step"]
    mission = env.gym_env.mission
    words = [env.vocab.word(int(obs["tokens"][0]))]
    while len(words) < len(normalise(mission)):
        ts = env.step(0)  # turning left never ends a GoToLocal episode
        words.append(env.vocab.word(int(ts.observation["tokens"][0])))
    assert " ".join(words) == " ".join(normalise(mission))
    assert str(ts.observation["log_text"]) == mission
    assert env.step(0).observation["tokens"][0] == 0  # silence afterwards


def test_minigrid_vocab_covers_babyai_and_minigrid_missions():
    for env_id in ["BabyAI-GoToLocal-v0", "BabyAI-PutNextLocal-v0", "BabyAI-Synth-v0", "MiniGrid-Fetch-5x5-N2-v0"]:
        env = envs.make("minigrid", id=env_id, obs="symbolic")
        for _ in range(5):
            mission = env.gym_env.mission if env.reset() else ""
            assert env.vocab.unk_id not in env.vocab.encode(mission), (env_id, mission)


def test_rgb_image_follows_the_view():
    env = envs.make("minigrid", id="MiniGrid-Empty-8x8-v0", image_size=48)
    first = env.reset().observation["image"]
    assert first.shape == (48, 48, 3)
    turned = env.step(0).observation["image"]
    assert not np.array_equal(first, turned)
    assert (first[40:, 18:30, 0] > 200).any()  # the red agent triangle at the bottom centre


# ---------------------------------------------------------------------------------------------
# Token stream timing
# ---------------------------------------------------------------------------------------------

_VOCAB = Vocabulary("pick up the red ball blue key is in kitchen no turn around there".split())


def _say(stream: TokenStream, steps: int, **idle: Any) -> list[str]:
    return [" ".join(_VOCAB.word(int(t)) for t in stream.next(**idle)[0]) for _ in range(steps)]


def test_task_repeated_every_20_steps_and_pad_when_silent():
    stream = TokenStream(_VOCAB, np.random.default_rng(0), talk_p=0.0)
    stream.set_task("pick up the red ball")
    said = _say(stream, 65)
    starts = [t for t, w in enumerate(said) if w == "pick"]
    assert starts == [0, 20, 40, 60]
    assert said[:5] == ["pick", "up", "the", "red", "ball"]
    assert all(w == "<pad>" for w in said[5:20])


def test_interruption_and_event_queue_and_tokens_per_step():
    stream = TokenStream(_VOCAB, np.random.default_rng(0), tokens_per_step=2, talk_p=0.0)
    stream.set_task("pick up the red ball")
    assert _say(stream, 1) == ["pick up"]
    stream.set_task("pick up the blue key")  # interrupts mid-sentence
    stream.add_event("the red ball is in the kitchen")
    said = _say(stream, 8)
    assert said[:3] == ["pick up", "the blue", "key <pad>"]
    assert said[3:7] == ["the red", "ball is", "in the", "kitchen <pad>"]  # queued event when idle
    assert said[7] == "<pad> <pad>"


def test_idle_corrections_and_descriptions():
    stream = TokenStream(_VOCAB, np.random.default_rng(0), talk_p=1.0)
    stream.set_task("pick up the red ball")
    _say(stream, 5)
    assert _say(stream, 3, corrections=["no turn around"], descriptions=["there"]) == ["no", "turn", "around"]
    assert _say(stream, 1, descriptions=["there"]) == ["there"]
    quiet = TokenStream(_VOCAB, np.random.default_rng(0), talk_p=0.2)
    said = _say(quiet, 2000, descriptions=["there"])
    assert 0.1 < said.count("there") / 2000 < 0.3


def test_preread_chunks_and_limit():
    stream = TokenStream(_VOCAB, np.random.default_rng(0), tokens_per_step=3)
    hints = ["the red ball is in the kitchen"] * 5  # 7 tokens each: only 4 fit in 28
    assert stream.start_preread(hints) == 10  # ceil(28 / 3)
    stream.set_task("pick up the red ball")
    out = [stream.next() for _ in range(11)]
    assert all(reading for _, _, reading in out[:10]) and not out[10][2]
    assert _VOCAB.decode(np.concatenate([t for t, _, _ in out[:10]])) == " ".join(hints[:4])
    assert _VOCAB.decode(out[10][0]) == "pick up the"


# ---------------------------------------------------------------------------------------------
# Hinted worlds: hints, freezing, vocabulary, baselines
# ---------------------------------------------------------------------------------------------


def _read_phase(env) -> tuple[dm_env.TimeStep, list[str]]:
    ts = env.reset()
    words = []
    while ts.observation["is_read_step"]:
        words += [env.vocab.word(int(t)) for t in ts.observation["tokens"] if t]
        ts = env.step(int(np.random.default_rng(len(words)).integers(7)))
    return ts, words


@pytest.mark.parametrize("name", ["grid_future_s", "grid_future_m", "grid_dynamics_s"])
def test_preread_hints_and_frozen_world(name):
    env = envs.make(name, seed=1)
    for _ in range(3):
        ts = env.reset()
        world = env.gym_env
        pos, direction, count = tuple(world.agent_pos), world.agent_dir, world.step_count
        image = ts.observation["image"].copy()
        steps = 0
        words: list[str] = []
        while ts.observation["is_read_step"]:
            words += [env.vocab.word(int(t)) for t in ts.observation["tokens"] if t]
            ts = env.step(2)  # "forward": ignored while reading
            steps += 1
            assert ts.reward == 0.0 and ts.mid()
            assert tuple(world.agent_pos) == pos and world.agent_dir == direction
            assert world.step_count == count
            np.testing.assert_array_equal(ts.observation["image"], image)
        assert 0 < steps <= 28
        assert " ".join(words) == " ".join(normalise(" ".join(world.preread_sentences())))
        assert env.vocab.word(int(ts.observation["tokens"][0])) == normalise(world.mission)[0]
        if name.startswith("grid_dynamics"):
            assert words[1] == world.right_key.color and words[2:] == ["key", "opens", "the", "door"]
        else:
            target = f"the {world.target.color} ball is in the {world.room_name(world.target.cur_pos)}"
            assert target in world.preread_sentences()
        # episode limit counts env steps only
        n = 1
        while not ts.last():
            ts = env.step(0)
            n += 1
        assert n == 101 and ts.discount == 1.0


def test_correction_said_when_distance_grows():
    env = envs.make("grid_correction_s", talk_p=1.0, seed=2)
    found = 0
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.reset()
        world = env.gym_env
        for _ in range(60):
            before = world._dist()
            ts = env.step(int(rng.integers(3)))
            if ts.last():
                break
            text = str(ts.observation["log_text"])
            if world._dist() > before and ts.observation["tokens"][0] == env.vocab.id("no"):
                assert text == "no turn around"
                found += 1
    assert found > 0


def test_home_new_task_interrupts_and_rewards():
    env = envs.make("grid_home_s", seed=4)
    ts = env.reset()
    tasks = [env.gym_env.mission]
    rewards = []
    while not ts.last():
        ts = env.step(env.oracle_action())
        rewards.append(ts.reward)
        if env.gym_env.mission != tasks[-1]:
            tasks.append(env.gym_env.mission)
            assert env.vocab.word(int(ts.observation["tokens"][0])) == normalise(tasks[-1])[0]
    assert len(tasks) >= 4
    assert set(rewards) <= {0.0, 0.5, 1.0, 1.5}
    assert rewards.count(1.0) + rewards.count(1.5) == len(tasks) - 1


def test_home_progress_reward_is_paid_back_on_drop():
    """Put / move tasks: +0.5 on picking up the task's object, -0.5 on dropping it short of completion, so a
    drop and re-pickup earns nothing (no hidden "already paid" flag for the model to track)."""
    cycles = 0
    for seed in range(40):
        env = envs.make("grid_home_s", seed=seed, obs="symbolic")
        ts, world = env.reset(), env.gym_env
        if world.task_kind not in ("put", "move") or world.carrying is world.task_obj:
            continue
        for _ in range(60):  # the oracle walks to the object; the step that picks it up pays +0.5
            ts = env.step(env.oracle_action())
            if world.carrying is world.task_obj or ts.last():
                break
        if world.carrying is not world.task_obj:
            continue
        assert ts.reward == 0.5
        task = world.mission
        for _ in range(3):  # the cell in front is where the object lay: drop it back, pick it up again
            ts = env.step(DROP)
            assert world.carrying is None and world.mission == task and ts.reward == -0.5
            ts = env.step(PICKUP)
            assert world.carrying is world.task_obj and ts.reward == 0.5
        cycles += 1
    assert cycles >= 3


@pytest.mark.parametrize("name", list(WORLDS))
def test_every_sentence_round_trips(name):
    env = envs.make(name, seed=5)
    for _ in range(8):
        env.reset()
        for _ in range(30):
            env.step(env.oracle_action())
        for sentence in env.gym_env.sentences():
            ids = env.vocab.encode(sentence)
            assert env.vocab.unk_id not in ids, sentence
            assert env.vocab.decode(ids) == " ".join(normalise(sentence))


@pytest.mark.parametrize("name", list(WORLDS))
def test_oracle_beats_random(name):
    env = envs.make(name, obs="symbolic", seed=6)
    oracle = run_baseline(env, "oracle", 6, seed=0)
    random = run_baseline(env, "random", 6, seed=0)
    if name.startswith("grid_home"):
        assert oracle >= 4.0 and random < 1.0
    else:
        assert oracle >= 0.99 * env.optimal_return and random <= 0.5 * env.optimal_return


@pytest.mark.parametrize("right", [True, False])
def test_dynamics_rule_key_bonus_then_door(right):
    """+0.5 when a key is picked up; the hinted key opens the door (+1, ends), any other breaks it (0, ends)."""
    env = envs.make("grid_dynamics_m", obs="symbolic", seed=8)
    ts = env.reset()
    world = env.gym_env
    while ts.observation["is_read_step"]:
        ts = env.step(0)
    key = world.right_key if right else next(k for k in world.keys if k is not world.right_key)
    rewards = []
    for _ in range(200):  # walk to the chosen key and pick it up, then to the door and toggle it
        if world.carrying is not key:
            action = world.face(key)
            action = PICKUP if action == DONE else (LEFT if action is None else action)
        else:
            action = world.face(world.door)
            action = TOGGLE if action == DONE else (LEFT if action is None else action)
        ts = env.step(action)
        rewards.append(ts.reward)
        if ts.last():
            break
    assert ts.last() and ts.discount == 0.0
    assert rewards.count(0.5) == 1 and rewards[-1] == (1.0 if right else 0.0)
    assert sum(rewards) == (1.5 if right else 0.5)
    assert world.door.is_open == right and world.door.broken == (not right)


def test_dynamics_key_bonus_is_paid_back_on_drop():
    """Dropping a key gives -0.5 and picking it up again +0.5: the reward follows the observed transition."""
    env = envs.make("grid_dynamics_s", obs="symbolic", seed=3)
    ts = env.reset()
    world = env.gym_env
    while ts.observation["is_read_step"]:
        ts = env.step(0)
    key, rewards = world.keys[0], []
    for want in (True, False, True, False):  # pick up, drop, pick up, drop
        for _ in range(100):
            if (world.carrying is key) == want:
                break
            action = world.face(key) if want else None
            if want:
                action = PICKUP if action == DONE else (LEFT if action is None else action)
            else:
                action = world.drop_somewhere(0)
            ts = env.step(action)
            rewards.append(ts.reward)
            assert not ts.last()
        assert (world.carrying is key) == want
    assert [r for r in rewards if r] == [0.5, -0.5, 0.5, -0.5]
    assert sum(rewards) == 0.0


def test_mask_tokens_ablation_on_hinted_world():
    plain = envs.make("grid_future_s", seed=7)
    masked = envs.make("grid_future_s", seed=7, mask_tokens=True)
    assert masked.observation_spec() == plain.observation_spec()
    tp, tm = plain.reset(), masked.reset()
    for _ in range(40):
        assert not tm.observation["tokens"].any()
        assert tm.observation["is_read_step"] == tp.observation["is_read_step"]
        tp, tm = plain.step(2), masked.step(2)
    assert masked.oracle_action() == plain.oracle_action()


def test_same_seed_same_stream():
    def run(seed):
        env = envs.make("grid_home_s", seed=seed, obs="symbolic")
        ts, out = env.reset(), []
        for i in range(150):
            ts = env.step(i % 7)
            out.append((int(ts.observation["tokens"][0]), ts.reward, ts.observation["grid"].tobytes()))
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_world_lists_grid_names():
    with pytest.raises(ValueError) as info:
        envs.make("grid_taks_s")
    msg = str(info.value)
    assert "did you mean 'grid_task_s'" in msg
    for name in [*WORLDS, "minigrid"]:
        assert name in msg


@pytest.mark.parametrize("name", ["minigrid", "grid_task_s", "grid_home_s"])
@pytest.mark.parametrize("action", [7, -1, 1.5, None, "2", True, np.array([1])])
def test_bad_action_names_spec(name, action):
    env = envs.make(name)
    env.reset()
    with pytest.raises(ValueError, match=rf"action .*DiscreteArray.*num_values=7.*'{name}'"):
        env.step(action)


@pytest.mark.parametrize(
    "name, option, value, error, pattern",
    [
        ("minigrid", "id", "BabyAI-GoToLocl-v0", ValueError, r"did you mean 'BabyAI-GoToLocal-v0'.*valid: "),
        ("minigrid", "obs", "depth", ValueError, r"obs='depth' is not valid.*valid: rgb, symbolic"),
        ("grid_task_s", "obs", "pixels", ValueError, r"valid: rgb, symbolic"),
        ("grid_task_s", "token_len", 0, ValueError, r"token_len=0 is out of range; allowed: 1\.\.64"),
        ("grid_home_m", "talk_p", 1.5, ValueError, r"talk_p=1\.5 is out of range"),
        ("grid_future_s", "max_steps", 0, ValueError, r"max_steps=0 is out of range"),
        ("grid_future_s", "image_size", "64", TypeError, r"image_size.*must be int"),
        ("grid_dynamics_s", "keys", 3, ValueError, r"unknown option 'keys'.*valid options"),
    ],
)
def test_bad_options(name, option, value, error, pattern):
    with pytest.raises(error, match=pattern):
        envs.make(name, **{option: value})
