"""Tests for the optional HomeGrid adapter (envs/homegrid.py).

Most tests drive the adapter with ``FakeHomeGrid``, a small stand-in with the gym-0.26 API of
``gym.make("homegrid-...")`` (so they run where HomeGrid is not installed, e.g. CI). The tests at the
end use the real package and are skipped unless ``pip install -e '.[homegrid]'`` was done.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys
import unittest

import dm_env
import gymnasium
import numpy as np
import pytest
from dm_env import test_utils

import envs
from envs import homegrid as hg
from envs.homegrid import HomeGridAdapter, HomeGridVocabulary

_MODULES_AFTER_IMPORTING_ENVS = frozenset(sys.modules)
HAVE_HOMEGRID = importlib.util.find_spec("homegrid") is not None and importlib.util.find_spec("gym") is not None

# A few of HomeGrid's sentences with the T5 ids HomeGrid 0.1.1 ships for them (incl. the two that are
# not one id per word: "i" is ids 3 + 23, "no," is 150 + 6).
SENTENCES: dict[str, list[int]] = {
    "<pad>": [0],
    "find the bottle": [253, 8, 4782],
    "get the fruit": [129, 8, 2728],
    "i moved the fruit to the kitchen": [3, 23, 2301, 8, 2728, 12, 8, 1228],
    "no, turn around": [150, 6, 919, 300],
    "pedal to open the compost bin": [16171, 12, 539, 8, 17883, 2701],
    "fruit is in the kitchen": [2728, 19, 16, 8, 1228],
}
TARGET_ACTION = 4  # the fake rewards this action (on real steps only)
SPILL_ACTION = 9  # the fake terminates on this action when built with spill=True


class FakeHomeGrid:
    """Mimics what ``gym.make("homegrid-X", disable_env_checker=True)`` returns (gym 0.26 API).

    Like HomeGrid's LanguageWrapper it streams one T5 id a step (hint tokens first while the world is
    frozen, cut at ``preread_max``; then the task, which interrupts), flags its own ``is_read_step`` the
    HomeGrid way (reset frame and every frozen frame), halves the image on those frames, and draws from
    the module-level ``random`` and ``np.random``.
    """

    TASKS = ("find the bottle", "get the fruit")

    def __init__(self, hints=(), max_steps=6, spill=False, preread_max=28):
        self.action_space = gymnasium.spaces.Discrete(10)
        self.observation_space = gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (96, 96, 3), np.uint8)})
        self.hints = list(hints)
        self.max_steps = max_steps
        self.spill = spill
        self.preread_max = preread_max
        self.preread = -1
        self.closed = False

    def _obs(self, frozen):
        token, text = self._stream.pop(0) if self._stream else (0, "<pad>")
        if not self._stream and random.random() < 0.3:  # an event, as HomeGrid's teleports
            event = "i moved the fruit to the kitchen"
            self._stream = [(t, event) for t in SENTENCES[event]]
        value = (31 * self.t + self.shade) % 256
        image = np.full((96, 96, 3), value, dtype=np.uint8)
        if frozen or self._step_cnt == 0:
            image //= 2
        return {
            "image": image,
            "token": np.int64(token),
            "token_embed": np.full(512, token, dtype=np.float32),
            "is_read_step": frozen or self._step_cnt == 0,
            "log_language_info": text,
        }

    def reset(self):
        self.task = random.choice(self.TASKS)
        self.shade = int(np.random.randint(0, 200))
        hint_ids = [(t, " ".join(self.hints)) for h in self.hints for t in SENTENCES[h]]
        self.preread = min(len(hint_ids), self.preread_max)
        self._stream = hint_ids[: self.preread] + [(t, self.task) for t in SENTENCES[self.task]]
        self._step_cnt = 0
        self.t = 0
        return self._obs(False), {}

    def step(self, action):
        self._step_cnt += 1
        if self._step_cnt <= self.preread:
            return self._obs(True), 0, False, False, {}
        self.t += 1
        reward = 1.0 if action == TARGET_ACTION else 0.0
        terminated = self.spill and action == SPILL_ACTION
        truncated = self.t >= self.max_steps
        return self._obs(False), reward, terminated, truncated, {}

    def close(self):
        self.closed = True


def fake_adapter(*, seed=0, compact=False, token_embed=False, **fake_options) -> HomeGridAdapter:
    return HomeGridAdapter(
        FakeHomeGrid(**fake_options),
        HomeGridVocabulary(SENTENCES, compact=compact),
        seed=seed,
        token_embed=token_embed,
        rng_modules=[sys.modules[__name__]],
    )


@pytest.fixture
def fake_open(monkeypatch):
    """Makes ``make_homegrid`` build the fake instead of importing HomeGrid; returns the calls' options."""
    calls = []

    def _open(task, max_steps, compact):
        calls.append((task, max_steps, compact))
        hints = {"future": ["fruit is in the kitchen"], "dynamics": ["pedal to open the compost bin"]}.get(task, [])
        env = FakeHomeGrid(hints=hints, max_steps=max_steps, spill=True)
        return env, HomeGridVocabulary(SENTENCES, compact=compact), [sys.modules[__name__]]

    monkeypatch.setattr(hg, "_open", _open)
    return calls


def _episode(env, actions):
    steps = [env.reset()]
    for a in actions:
        steps.append(env.step(a))
        if steps[-1].last():
            break
    return steps


# ---------------------------------------------------------------------------------------------
# dm_env conformance (fake)
# ---------------------------------------------------------------------------------------------


class _FakeConformance(test_utils.EnvironmentTestMixin):
    options: dict = {}

    def make_object_under_test(self):
        return fake_adapter(**self.options)

    def make_action_sequence(self):
        for _ in range(30):  # crosses several episode ends
            yield self.make_action()


class TestDmEnvFakePlain(_FakeConformance, unittest.TestCase):
    options = {"spill": True}


class TestDmEnvFakeHintsCompactEmbed(_FakeConformance, unittest.TestCase):
    options = {"hints": ["fruit is in the kitchen", "no, turn around"], "compact": True, "token_embed": True}


# ---------------------------------------------------------------------------------------------
# Episode ends, read steps, tokens
# ---------------------------------------------------------------------------------------------


def test_truncation_is_last_with_discount_one_and_step_after_last_resets():
    env = fake_adapter(max_steps=3)
    steps = _episode(env, [0, 0, 0])
    assert [s.step_type for s in steps] == [dm_env.StepType.FIRST] + [dm_env.StepType.MID] * 2 + [dm_env.StepType.LAST]
    assert steps[-1].discount == 1.0
    assert all(s.discount == 1.0 for s in steps[1:])
    assert env.step(0).first()


def test_termination_is_last_with_discount_zero_and_wins_over_truncation():
    env = fake_adapter(max_steps=5, spill=True)
    env.reset()
    ts = env.step(SPILL_ACTION)
    assert ts.last() and ts.discount == 0.0
    assert env.step(0).first()
    for _ in range(4):
        assert env.step(0).mid()
    both = env.step(SPILL_ACTION)  # 5th step: terminated and truncated together
    assert both.last() and both.discount == 0.0


def test_reward_passes_through():
    env = fake_adapter(max_steps=4)
    env.reset()
    assert env.step(TARGET_ACTION).reward == 1.0
    assert env.step(0).reward == 0.0


def test_read_steps_freeze_the_world_and_flag_exactly_the_ignored_actions():
    hints = ["fruit is in the kitchen", "no, turn around"]
    env = fake_adapter(hints=hints, max_steps=30)
    n_hint = sum(len(SENTENCES[h]) for h in hints)
    steps = _episode(env, [TARGET_ACTION] * (n_hint + 2))
    flags = [bool(s.observation["is_read_step"]) for s in steps]
    # The next action is ignored on the first n_hint observations only (HomeGrid's own flag is also
    # True on observation n_hint, whose next action is real).
    assert flags == [True] * n_hint + [False] * 3
    assert [s.reward for s in steps[1 : n_hint + 1]] == [0.0] * n_hint  # target action ignored while frozen
    assert steps[n_hint + 1].reward == 1.0 and steps[n_hint + 2].reward == 1.0
    tokens = [int(s.observation["tokens"][0]) for s in steps]
    assert tokens[:n_hint] == [t for h in hints for t in SENTENCES[h]]
    assert steps[0].observation["log_text"].item() == " ".join(hints)
    task = env.gym_env.task
    assert tokens[n_hint : n_hint + 3] == SENTENCES[task]
    assert steps[n_hint].observation["log_text"].item() == task
    assert env.vocab.decode(tokens[n_hint : n_hint + 3]) == task
    # HomeGrid's picture is passed through unchanged (halved while frozen).
    assert steps[0].observation["image"].dtype == np.uint8
    assert steps[0].observation["image"].shape == (96, 96, 3)


def test_no_preread_means_no_read_steps():
    env = fake_adapter(max_steps=3)
    steps = _episode(env, [0, 0, 0])
    assert not any(bool(s.observation["is_read_step"]) for s in steps)


def test_tokens_log_text_and_log_token():
    env = fake_adapter(max_steps=12)
    steps = _episode(env, [0] * 12)
    task = env.gym_env.task
    first = steps[0].observation
    assert first["tokens"].dtype == np.int32 and first["tokens"].shape == (1,)
    assert int(first["tokens"][0]) == SENTENCES[task][0]
    assert first["log_text"].item() == task
    assert first["log_token"].item() == task.split()[0]
    for s in steps:
        obs = s.observation
        if int(obs["tokens"][0]) == 0:
            assert obs["log_text"].item() == "" and obs["log_token"].item() == ""
        else:
            assert obs["log_token"].item() == env.vocab.word(int(obs["tokens"][0]))
    spec = env.observation_spec()["tokens"]
    assert (spec.minimum, spec.maximum) == (0, hg.T5_VOCAB_SIZE - 1)


def test_compact_token_ids_carry_the_same_tokens():
    t5, compact = fake_adapter(seed=4, max_steps=10), fake_adapter(seed=4, max_steps=10, compact=True)
    a, b = _episode(t5, [0] * 10), _episode(compact, [0] * 10)
    assert compact.observation_spec()["tokens"].maximum == len(compact.vocab) - 1 < 64
    for x, y in zip(a, b, strict=True):
        tx, ty = int(x.observation["tokens"][0]), int(y.observation["tokens"][0])
        assert compact.vocab.to_t5(ty) == tx
        assert compact.vocab.word(ty) == t5.vocab.word(tx)
        assert x.observation["log_token"].item() == y.observation["log_token"].item()


def test_token_embed_is_optional():
    assert "token_embed" not in fake_adapter().observation_spec()
    env = fake_adapter(token_embed=True)
    obs = env.reset().observation
    assert obs["token_embed"].shape == (512,) and obs["token_embed"].dtype == np.float32


def test_every_observation_key_has_a_spec():
    for env in (fake_adapter(), fake_adapter(token_embed=True, compact=True)):
        assert set(env.reset().observation) == set(env.observation_spec())


# ---------------------------------------------------------------------------------------------
# Randomness: deterministic per seed, isolated from the caller's global RNGs
# ---------------------------------------------------------------------------------------------


def _trace(env, n=40):
    out = []
    for ts in _episode(env, [1] * n) + [env.step(1) for _ in range(n)]:
        out.append((int(ts.observation["tokens"][0]), int(ts.observation["image"][0, 0, 0])))
    return out


def test_same_seed_same_stream_even_interleaved_and_global_rngs_untouched():
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    a, b = fake_adapter(seed=7, max_steps=5), fake_adapter(seed=7, max_steps=5)
    a.reset()
    b.reset()
    ta, tb = [], []
    for _ in range(60):  # interleaved: each adapter keeps its own streams
        ta.append(int(a.step(1).observation["tokens"][0]))
        tb.append(int(b.step(1).observation["tokens"][0]))
        random.random()  # the caller's own draws do not leak into the adapters
    assert ta == tb
    assert random.getstate() != py_state  # (the caller's draws above)
    random.setstate(py_state)
    c = fake_adapter(seed=7, max_steps=5)
    _trace(c)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert sys.modules[__name__].random is random and sys.modules[__name__].np is np  # restored


def test_different_seeds_differ():
    assert _trace(fake_adapter(seed=1, max_steps=5)) != _trace(fake_adapter(seed=2, max_steps=5))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [10, -1, 2.0, True, np.array([1]), "up"])
def test_bad_action_names_the_spec(action):
    env = fake_adapter()
    env.reset()
    with pytest.raises(ValueError, match="DiscreteArray"):
        env.step(action)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"task": "futur"}, ["'futur'", "did you mean 'future'", "task, future, dynamics, corrections"]),
        ({"token_ids": "bpe"}, ["'bpe'", "t5, compact"]),
        ({"seed": -1}, ["seed=-1", ">= 0"]),
        ({"max_steps": 0}, ["max_steps=0", ">= 1"]),
    ],
)
def test_bad_option_values_name_the_value_and_what_is_allowed(options, words):
    with pytest.raises(ValueError) as err:  # checked before HomeGrid is imported
        hg.make_homegrid(**options)
    for word in words:
        assert word in str(err.value)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "homegrid", None)  # makes `import homegrid` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[homegrid\]'"):
        hg.make_homegrid()


def test_importing_envs_does_not_import_homegrid_and_registration_follows_availability():
    assert "homegrid" not in _MODULES_AFTER_IMPORTING_ENVS
    assert "gym" not in _MODULES_AFTER_IMPORTING_ENVS
    assert hg.available() == HAVE_HOMEGRID
    assert ("homegrid" in envs.names()) == HAVE_HOMEGRID
    if not HAVE_HOMEGRID:  # the registry still knows the name and says how to get it
        with pytest.raises(ImportError, match=r"optional.*pip install -e '\.\[homegrid\]'"):
            envs.make("homegrid")


def test_registry_path_with_typed_options(fake_open):
    from envs import registry

    envs.register("tmp_homegrid_fake", hg.make_homegrid, defaults=hg.DEFAULTS, description=hg.DESCRIPTION)
    try:
        env = envs.make("tmp_homegrid_fake", task="future", max_steps=4, seed=np.int64(3), token_ids="compact")
        assert isinstance(env, HomeGridAdapter) and env.vocab.compact
        assert fake_open == [("future", 4, True)]
        assert bool(env.reset().observation["is_read_step"])
        masked = envs.make("tmp_homegrid_fake", mask_tokens=True)
        assert all(int(masked.step(0).observation["tokens"][0]) == 0 for _ in range(10))
        with pytest.raises(TypeError, match="'seed'.*must be int"):
            envs.make("tmp_homegrid_fake", seed="1")
        with pytest.raises(TypeError, match="'token_embed'.*must be bool"):
            envs.make("tmp_homegrid_fake", token_embed=1)
        with pytest.raises(ValueError, match="unknown option 'tsk'.*did you mean 'task'"):
            envs.make("tmp_homegrid_fake", tsk="task")
    finally:
        registry._WORLDS.pop("tmp_homegrid_fake", None)


def test_close_closes_the_gym_env():
    env = fake_adapter()
    env.close()
    assert env.gym_env.closed


# ---------------------------------------------------------------------------------------------
# Vocabulary (decode table)
# ---------------------------------------------------------------------------------------------


def test_vocabulary_decodes_and_encodes_the_sentences_it_was_built_from():
    for compact in (False, True):
        vocab = HomeGridVocabulary(SENTENCES, compact=compact)
        assert vocab.unaligned == []
        for sentence, ids in vocab.sentences.items():
            assert vocab.decode(ids) == sentence
            assert vocab.encode(sentence) == list(ids)
            assert vocab.encode(sentence.upper() + " ") == list(ids)  # word by word, lower-cased
        assert vocab.decode(np.array([[0], [0]])) == ""


def test_vocabulary_pieces_ids_and_unknowns():
    vocab = HomeGridVocabulary(SENTENCES)
    assert len(vocab) == 32100 and vocab.pad_id == 0 and vocab.unk_id == 2
    assert vocab.piece(8) == "\u2581the" and vocab.word(8) == "the" and vocab.id("the") == 8
    assert vocab.piece(3) == "\u2581" and vocab.word(23) == "i" and vocab.encode("i") == [3, 23]
    assert vocab.piece(6) == "," and vocab.id(",") == 6 and vocab.encode("no,") == [150, 6]
    assert vocab.decode([3, 23, 2301, 8, 2728]) == "i moved the fruit"
    assert vocab.decode([150, 6, 919, 300, 0, 0]) == "no, turn around"
    assert vocab.word(99) == "<t5:99>" and vocab.decode([253, 99]) == "find <t5:99>"
    assert vocab.decode([2, 1]) == "<unk> </s>"
    assert vocab.encode("find the spaceship") == [253, 8, 2]
    assert "bottle" in vocab and "spaceship" not in vocab and 8 not in vocab
    assert vocab.words[:2] == ["\u2581", ","]
    with pytest.raises(IndexError, match=r"0\.\.32099"):
        vocab.word(32100)
    with pytest.raises(TypeError):
        vocab.word(1.0)
    with pytest.raises(KeyError, match="spaceship"):
        vocab.id("spaceship")
    compact = HomeGridVocabulary(SENTENCES, compact=True)
    assert compact.pad_id == 0 and compact.unk_id == 1 and compact.word(1) == "<unk>"
    assert len(compact) == 2 + len(vocab.known_t5_ids)
    assert compact.from_t5(99) == compact.unk_id and compact.to_t5(compact.id("bottle")) == 4782
    assert compact.words == vocab.words
    assert compact.to_dict()["id_space"] == "compact" and vocab.to_dict()["id_space"] == "t5"
    assert compact == HomeGridVocabulary(SENTENCES, compact=True) != vocab


def test_vocabulary_rejects_inconsistent_tables():
    with pytest.raises(ValueError, match="T5 id 8"):
        HomeGridVocabulary({"find the bottle": [253, 8, 4782], "get a fruit": [129, 8, 2728]})
    with pytest.raises(ValueError, match="outside T5"):
        HomeGridVocabulary({"find the bottle": [253, 8, 40000]})
    vocab = HomeGridVocabulary({"find the bottle": [253, 4782]})  # cannot be aligned: kept, but listed
    assert vocab.unaligned == ["find the bottle"] and vocab.encode("find the bottle") == [253, 4782]


# ---------------------------------------------------------------------------------------------
# The real package (skipped unless `pip install -e '.[homegrid]'`)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_HOMEGRID, reason="homegrid not installed (pip install -e '.[homegrid]')")
class TestDmEnvRealHomeGrid(test_utils.EnvironmentTestMixin, unittest.TestCase):
    def make_object_under_test(self):
        return envs.make("homegrid", task="future", max_steps=5, token_embed=True)

    def make_action_sequence(self):
        for _ in range(80):  # pre-read + several 5-step episodes
            yield self.make_action()


def test_real_variants_and_vocabulary():
    gym = pytest.importorskip("gym")
    pytest.importorskip("homegrid")
    assert hg.homegrid_variants(gym) == sorted(hg.VARIANTS)
    vocab = envs.make("homegrid").vocab
    assert vocab.unaligned == []
    assert len(vocab.sentences) == 100 and len(vocab.known_t5_ids) == 39
    for sentence, ids in vocab.sentences.items():
        assert vocab.decode(ids) == sentence and vocab.encode(sentence) == list(ids)
    compact = envs.make("homegrid", token_ids="compact").vocab
    assert len(compact) == 41


@pytest.mark.parametrize("task", hg.VARIANTS)
def test_real_episode_streams_decodable_tokens_and_freezes_on_read_steps(task):
    pytest.importorskip("homegrid")
    env = envs.make("homegrid", task=task, max_steps=15, seed=3)
    base = env.gym_env.unwrapped
    steps = [env.reset()]
    assert steps[0].observation["image"].shape == (96, 96, 3)
    while not steps[-1].last():
        before = base.step_count
        reading = bool(steps[-1].observation["is_read_step"])
        steps.append(env.step(int(np.random.default_rng(len(steps)).integers(10))))
        assert base.step_count == before + (0 if reading else 1)  # frozen exactly on read steps
    n_read = sum(bool(s.observation["is_read_step"]) for s in steps)
    assert len(steps) == 1 + n_read + 15
    assert (n_read > 0) == (task in ("future", "dynamics")) and n_read <= 28
    assert steps[-1].discount == 1.0  # time limit: truncation
    known = set(env.vocab.known_t5_ids) | {0}
    tokens = [int(s.observation["tokens"][0]) for s in steps]
    texts = [s.observation["log_text"].item() for s in steps]
    assert set(tokens) <= known
    flags = [bool(s.observation["is_read_step"]) for s in steps]
    assert flags == [True] * n_read + [False] * (len(steps) - n_read)
    if n_read:  # the hints, token by token, while frozen
        assert texts[0].startswith(env.vocab.decode(tokens[:n_read]))
    for text, group in itertools.groupby(zip(texts[n_read:], tokens[n_read:], strict=True), key=lambda p: p[0]):
        ids = [t for _, t in group]
        if text == "":
            assert set(ids) == {0}  # silence
        else:  # a sentence (possibly said again right away) streamed one token a step
            assert " ".join([text] * 8).startswith(env.vocab.decode(ids))


def test_real_is_deterministic_per_seed_and_leaves_global_rngs_alone():
    pytest.importorskip("homegrid")
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    a = envs.make("homegrid", task="dynamics", seed=5, max_steps=10)
    b = envs.make("homegrid", task="dynamics", seed=5, max_steps=10)
    a.reset()
    b.reset()
    for i in range(60):
        x, y = a.step(i % 10), b.step(i % 10)
        assert np.array_equal(x.observation["image"], y.observation["image"])
        assert x.observation["log_text"].item() == y.observation["log_text"].item()
        assert x.step_type == y.step_type and x.reward == y.reward
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state)
