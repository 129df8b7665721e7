"""Tests for the environments package: dm_env conformance, world rules, vocabulary and error messages."""

from __future__ import annotations

import re
import sys
import unittest
from pathlib import Path

import dm_env
import numpy as np
import pytest
from dm_env import test_utils

try:
    import envs
except ModuleNotFoundError:  # package not installed: import from the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import envs

from envs.text import Vocabulary
from envs.token_world import COLOURS, TokenChoiceEnv
from envs.wrappers import MaskTokens

# ---------------------------------------------------------------------------------------------
# dm_env conformance: one TestCase per registered world, plus the masked and image variants.
# ---------------------------------------------------------------------------------------------

_VARIANTS: dict[str, tuple[str, dict]] = {}
for _name in envs.names():
    _VARIANTS[_name] = (_name, {})
    _VARIANTS[f"{_name}_masked"] = (_name, {"mask_tokens": True})
_VARIANTS["tokenchoice_image"] = ("tokenchoice", {"image": True})
_VARIANTS["tokenchoice_delay1_len3"] = ("tokenchoice", {"delay": 1, "token_len": 3, "num_choices": 2})


def _make_conformance_case(name: str, options: dict) -> type:
    class _Case(test_utils.EnvironmentTestMixin, unittest.TestCase):
        def make_object_under_test(self):
            return envs.make(name, **options)

        def make_action_sequence(self):
            for _ in range(25):  # long enough to cross several episode boundaries
                yield self.make_action()

    return _Case


for _key, (_name, _options) in _VARIANTS.items():
    _cls_name = "TestDmEnv_" + re.sub(r"\W", "_", _key)
    globals()[_cls_name] = type(_cls_name, (_make_conformance_case(_name, _options),), {})
del _key, _name, _options, _cls_name


def test_every_registered_world_builds_with_defaults():
    assert "tokenchoice" in envs.names()
    assert envs.names() == sorted(envs.names())
    for name in envs.names():
        env = envs.make(name)
        assert isinstance(env, dm_env.Environment)
        info = envs.describe(name)
        assert info["description"]
        assert info["defaults"]["mask_tokens"] is False


# ---------------------------------------------------------------------------------------------
# tokenchoice rules
# ---------------------------------------------------------------------------------------------


def _episode(env, policy):
    """Runs one episode; returns the list of timesteps (FIRST..LAST) and the return."""
    steps = [env.reset()]
    while not steps[-1].last():
        steps.append(env.step(policy(env, steps[-1])))
    return steps, sum(ts.reward for ts in steps[1:])


@pytest.mark.parametrize("delay", [1, 2, 5])
@pytest.mark.parametrize("token_len", [1, 4])
def test_token_heard_only_at_first_step_and_episode_length(delay, token_len):
    env = envs.make("tokenchoice", delay=delay, token_len=token_len, num_choices=5, seed=3)
    for _ in range(10):
        steps, _ = _episode(env, lambda e, ts: 0)
        # delay + 1 decisions -> delay + 2 timesteps including the LAST one.
        assert len(steps) == delay + 2
        assert steps[0].first() and steps[-1].last()
        assert all(ts.mid() for ts in steps[1:-1])
        first_tokens = steps[0].observation["tokens"]
        assert first_tokens.shape == (token_len,)
        assert first_tokens[0] == env.vocab.id(COLOURS[env.target])
        assert np.all(first_tokens[1:] == 0)
        for ts in steps[1:]:
            assert np.all(ts.observation["tokens"] == 0)
        # Non-final rewards 0 and discounts 1; final discount 0.
        assert all(ts.reward == 0.0 and ts.discount == 1.0 for ts in steps[1:-1])
        assert steps[-1].discount == 0.0
        # Phase one-hots: listen, wait..., choose, terminal (all zero).
        phases = [tuple(ts.observation["vector"][:3]) for ts in steps]
        assert phases[0] == (1, 0, 0)
        assert all(p == (0, 1, 0) for p in phases[1:delay])
        assert phases[delay] == (0, 0, 1)
        assert phases[-1] == (0, 0, 0)
        times = [float(ts.observation["vector"][3]) for ts in steps[:-1]]
        np.testing.assert_allclose(times, np.arange(delay + 1) / delay)


def test_only_the_last_decision_matters():
    env = TokenChoiceEnv(num_choices=4, delay=3, seed=1)
    for _ in range(20):
        env.reset()
        wrong = (env.target + 1) % 4
        for _ in range(3):
            assert env.step(wrong).reward == 0.0  # ignored actions
        assert env.phase == "choose"
        assert env.step(env.target).reward == 1.0


def test_oracle_gets_optimal_return():
    env = envs.make("tokenchoice", num_choices=8, delay=3, seed=7)
    returns = [_episode(env, lambda e, ts: e.oracle_action())[1] for _ in range(50)]
    assert returns == [env.optimal_return] * 50 == [1.0] * 50


@pytest.mark.parametrize("num_choices", [2, 4, 8])
def test_random_policy_gets_chance(num_choices):
    env = envs.make("tokenchoice", num_choices=num_choices, seed=11)
    rng = np.random.default_rng(0)
    returns = [_episode(env, lambda e, ts: int(rng.integers(num_choices)))[1] for _ in range(2000)]
    assert env.chance_return == pytest.approx(1.0 / num_choices)
    assert abs(np.mean(returns) - 1.0 / num_choices) < 0.05


def test_targets_are_uniform_and_deterministic_by_seed():
    def targets(seed, n=400):
        env = envs.make("tokenchoice", seed=seed)
        out = []
        for _ in range(n):
            env.reset()
            out.append(env.target)
        return out

    assert targets(5) == targets(5)
    assert targets(5) != targets(6)
    counts = np.bincount(targets(0), minlength=4)
    assert counts.min() > 60  # 100 expected each

    # Full observation streams are identical for the same seed and action sequence.
    a, b = envs.make("tokenchoice", seed=9, image=True), envs.make("tokenchoice", seed=9, image=True)
    for action in [0, 1, 2, 3, 0, 1, 2, 3, 1]:
        ta, tb = a.step(action), b.step(action)
        assert ta.step_type == tb.step_type and ta.reward == tb.reward
        for key in ta.observation:
            np.testing.assert_array_equal(ta.observation[key], tb.observation[key])


def test_step_after_last_auto_resets():
    env = envs.make("tokenchoice", delay=1)
    assert env.step(0).first()  # fresh env
    env.step(0)
    assert env.step(0).last()
    assert env.phase == "done"
    assert env.step(0).first()


def test_masked_tokens_are_zero_with_same_spec():
    plain = envs.make("tokenchoice", seed=2, token_len=3)
    masked = envs.make("tokenchoice", seed=2, token_len=3, mask_tokens=True)
    assert isinstance(masked, MaskTokens)
    assert masked.observation_spec() == plain.observation_spec()
    assert masked.action_spec() == plain.action_spec()
    assert masked.vocab == plain.vocab
    for _ in range(20):
        tp, tm = plain.reset(), masked.reset()
        assert masked.oracle_action() == plain.oracle_action()  # attributes are forwarded
        while True:
            assert tm.observation["tokens"].dtype == np.int32
            assert tm.observation["tokens"].shape == (3,)
            assert np.all(tm.observation["tokens"] == 0)
            np.testing.assert_array_equal(tm.observation["vector"], tp.observation["vector"])
            if tp.last():
                break
            tp, tm = plain.step(0), masked.step(0)
        assert tp.reward == tm.reward
    assert plain.reset().observation["tokens"][0] != 0  # the unmasked env does speak


def test_image_does_not_depend_on_target():
    def images_by_target(num_choices):
        found: dict[int, list[np.ndarray]] = {}
        for seed in range(50):
            env = envs.make("tokenchoice", image=True, num_choices=num_choices, delay=3, seed=seed)
            steps, _ = _episode(env, lambda e, ts: 0)
            found.setdefault(env.target, [ts.observation["image"] for ts in steps])
        return found

    for num_choices in (2, 8):
        found = images_by_target(num_choices)
        assert len(found) >= 2
        reference = next(iter(found.values()))
        for imgs in found.values():
            for a, b in zip(imgs, reference, strict=True):
                np.testing.assert_array_equal(a, b)
        # Phases are visible: listen, wait, choose and terminal images all differ.
        assert len({img.tobytes() for img in reference}) == len(reference)


def test_image_absent_by_default_and_spec():
    assert "image" not in envs.make("tokenchoice").observation_spec()
    spec = envs.make("tokenchoice", image=True).observation_spec()["image"]
    assert spec.shape == (16, 16, 3) and spec.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


def test_vocabulary_ids_and_round_trip(tmp_path):
    vocab = Vocabulary(["pick", "the", "Red", "door", "the"])
    assert len(vocab) == 6
    assert vocab.id("<pad>") == 0 == vocab.pad_id
    assert vocab.id("<unk>") == 1 == vocab.unk_id
    assert vocab.words == ["pick", "the", "red", "door"]
    assert vocab.encode("Pick the RED door!") == [2, 3, 4, 5]
    assert vocab.encode("pick the green door") == [2, 3, 1, 5]
    assert vocab.decode(vocab.encode("Pick, the red door.")) == "pick the red door"
    assert vocab.decode([2, 0, 3, 0, 0]) == "pick the"
    assert vocab.decode(np.array([4, 5, 0], dtype=np.int32)) == "red door"
    assert vocab.word(4) == "red"

    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.words == vocab.words
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab


def test_vocabulary_errors():
    vocab = Vocabulary(["a", "b"])
    with pytest.raises(IndexError, match=r"token id 4 .*0\.\.3"):
        vocab.word(4)
    with pytest.raises(IndexError, match=r"-1"):
        vocab.word(-1)
    with pytest.raises(KeyError, match="zebra"):
        vocab.id("zebra")
    with pytest.raises(ValueError, match="whitespace"):
        Vocabulary(["two words"])
    with pytest.raises(ValueError, match="non-empty"):
        Vocabulary([""])
    with pytest.raises(ValueError, match="reserved"):
        Vocabulary(["<pad>"])


def test_tokenchoice_vocab_covers_targets():
    env = envs.make("tokenchoice", num_choices=8)
    assert env.observation_spec()["tokens"].maximum == len(env.vocab) - 1
    for colour in COLOURS:
        assert env.vocab.decode(env.vocab.encode(colour)) == colour


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_world_lists_valid_names():
    with pytest.raises(ValueError) as info:
        envs.make("tokenchoise")
    msg = str(info.value)
    assert "'tokenchoise'" in msg
    assert "did you mean 'tokenchoice'" in msg
    for name in envs.names():
        assert name in msg


def test_unknown_option():
    with pytest.raises(ValueError) as info:
        envs.make("tokenchoice", num_choice=3)
    msg = str(info.value)
    assert "'num_choice'" in msg and "'tokenchoice'" in msg and "did you mean 'num_choices'" in msg
    assert "mask_tokens" in msg and "delay" in msg


@pytest.mark.parametrize(
    "option, value",
    [("num_choices", "4"), ("num_choices", True), ("num_choices", 4.0), ("image", 1), ("mask_tokens", "yes")],
)
def test_wrong_option_type(option, value):
    with pytest.raises((TypeError, ValueError)) as info:
        envs.make("tokenchoice", **{option: value})
    msg = str(info.value)
    assert repr(option) in msg and repr(value) in msg
    assert ("int" in msg) if option == "num_choices" else ("bool" in msg)


def test_numpy_ints_accepted_for_int_options():
    env = envs.make("tokenchoice", num_choices=np.int64(3), mask_tokens=np.bool_(True))
    assert env.action_spec().num_values == 3


@pytest.mark.parametrize(
    "option, value", [("num_choices", 1), ("num_choices", 9), ("delay", 0), ("token_len", 0)]
)
def test_option_out_of_range(option, value):
    with pytest.raises(ValueError, match=rf"{option}={value} is out of range; allowed: "):
        envs.make("tokenchoice", **{option: value})


@pytest.mark.parametrize(
    "action",
    [7, -1, 4, 1.0, 2.5, None, "1", True, np.array([1]), np.array([[0]]), np.float32(1), np.array(1.0), [1]],
)
def test_bad_actions_raise_and_name_spec(action):
    env = envs.make("tokenchoice")
    env.reset()
    with pytest.raises(ValueError) as info:
        env.step(action)
    msg = str(info.value)
    assert "DiscreteArray" in msg and "num_values=4" in msg and "'tokenchoice'" in msg
    assert msg.startswith("action ")


def test_bad_action_message_for_out_of_range():
    env = envs.make("tokenchoice")
    env.reset()
    pattern = r"action 7 is outside DiscreteArray\(.*num_values=4\) for 'tokenchoice'"
    with pytest.raises(ValueError, match=pattern):
        env.step(7)


@pytest.mark.parametrize("action", [2, np.int32(2), np.int64(2), np.array(2, dtype=np.int32), np.uint8(2)])
def test_good_action_forms(action):
    env = envs.make("tokenchoice")
    env.reset()
    assert env.step(action).mid()


def test_register_rules():
    with pytest.raises(ValueError, match="already registered"):
        envs.register("tokenchoice", TokenChoiceEnv, defaults={})
    with pytest.raises(ValueError, match="reserved"):
        envs.register("tmp_world_reserved", TokenChoiceEnv, defaults={"mask_tokens": False})
    envs.register("tmp_world_float", lambda scale=1.0: TokenChoiceEnv(), defaults={"scale": 1.0})
    try:
        assert "tmp_world_float" in envs.names()
        envs.make("tmp_world_float", scale=2)  # int accepted for a float option
        with pytest.raises(TypeError, match="scale"):
            envs.make("tmp_world_float", scale=True)
        envs.register("tmp_world_float", TokenChoiceEnv, defaults={}, overwrite=True)
    finally:
        from envs import registry

        registry._WORLDS.pop("tmp_world_float", None)
    assert "tmp_world_float" not in envs.names()
