"""Optional adapter to the original HomeGrid package (Dynalang's benchmark) as a dm_env world.

Install the extra first: ``pip install -e '.[homegrid]'`` (``homegrid==0.1.1``, which pins the
unmaintained ``gym==0.26.0``). Importing :mod:`envs` never imports HomeGrid; the world ``homegrid``
is registered only when the package is installed, and :func:`make_homegrid` imports it lazily and
raises an ``ImportError`` naming the extra when it is missing.

``envs.make("homegrid", task="future")`` wraps ``gym.make("homegrid-future", disable_env_checker=True)``.
``task`` is one of HomeGrid's registered variants: ``task`` (instructions only), ``future`` (where
objects are / will be), ``dynamics`` (which action opens which bin), ``corrections`` ("no, turn around").
HomeGrid's episode is ``max_steps`` (default 100) env steps plus, for ``future`` / ``dynamics``, up to
28 pre-read steps at the start during which the world is frozen and the hints are streamed.

Episode ends: ``terminated`` → LAST with discount 0.0 (termination wins when both are set);
``truncated`` (the ``max_steps`` time limit) → LAST with discount 1.0. ``step()`` on a fresh env or
after LAST resets. An action outside the action spec (10 actions) raises ``ValueError``.

Observation dict (every key has a spec):

* ``image``  uint8 [96, 96, 3]: HomeGrid's own picture (its 3×3 view, 32-pixel tiles), unchanged;
  HomeGrid halves its brightness on frozen pre-read frames (and, a HomeGrid quirk, on the first frame
  of every episode, also for ``task`` / ``corrections`` where nothing is pre-read).
* ``tokens``  int32 [1]: the token of this step. ``token_ids="t5"`` (default, exactly what Dynalang's
  agent sees): HomeGrid's T5 id, bounded to T5's vocabulary 0..32099; 0 is T5's ``<pad>`` = silence.
  ``token_ids="compact"``: the same token renumbered into a closed table of 41 ids (``<pad>`` 0,
  ``<unk>`` 1, then the 39 T5 ids HomeGrid can emit) — the same information with a small token head.
* ``token_embed``  float32 [512] (only with ``token_embed=True``): HomeGrid's shipped T5 embedding of
  the token in context (Dynalang's embedding input).
* ``is_read_step``  bool scalar: True iff the world is frozen for the next action (the action taken on
  this observation is ignored). This follows the project's contract, which is HomeGrid's own
  ``is_read_step`` one step earlier: HomeGrid also flags the last pre-read frame (whose next action is
  real) and the first frame of ``task`` / ``corrections`` episodes.
* ``log_text``  object scalar: the sentence being streamed ("" when silent; during pre-reading all
  hint sentences joined). ``log_token``  object scalar: the word (piece) of this step's token.

Vocabulary (``env.vocab``, a :class:`HomeGridVocabulary`, decoding works offline, nothing is
downloaded). HomeGrid ships the T5 ids of its sentences (``homegrid_embeds.pkl``: 100 sentences and
``<pad>``); every one of them is split into words and punctuation and aligned with its ids, which
gives the text piece of each of the 39 T5 ids HomeGrid uses. The only facts about T5 used beyond the
shipped data are its special ids (0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``), that id 3 is the bare
word-boundary piece "▁" (HomeGrid's "i" is ids 3, 23), and that punctuation is a piece of its own
("no," is "▁no" + ","). So every token HomeGrid can emit decodes exactly, and every shipped sentence
encodes to its shipped ids; any other T5 id (e.g. one sampled from a model) decodes to ``<t5:ID>``.

Randomness: HomeGrid draws from the module-level ``random`` and ``numpy.random`` as well as gym's
``np_random``. Each adapter owns its three streams (from ``seed``) and points HomeGrid's modules at
them for the duration of each ``reset``/``step`` call, so an adapter is deterministic given its seed,
several adapters in one process do not disturb each other, and the caller's global ``random`` /
``numpy.random`` state is left alone. (Not thread-safe: run one adapter per thread at a time.)
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import random as _random_module
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import dm_env
import numpy as np
from dm_env import specs

from envs.gym_adapter import check_choice, check_int, validate_action

NAME = "homegrid"
VARIANTS: tuple[str, ...] = ("task", "future", "dynamics", "corrections")
TOKEN_IDS: tuple[str, ...] = ("t5", "compact")
DEFAULTS: dict[str, Any] = {
    "task": "task",
    "seed": 0,
    "max_steps": 100,
    "token_ids": "t5",
    "token_embed": False,
}
DESCRIPTION = (
    "The original HomeGrid (Dynalang's benchmark; optional extra: pip install -e '.[homegrid]'): option `task` "
    "picks the variant (task / future / dynamics / corrections); 96x96 pixels, one T5 token per step."
)
INSTALL_HINT = "pip install -e '.[homegrid]'"

T5_VOCAB_SIZE = 32100
T5_PAD, T5_EOS, T5_UNK, T5_SPACE = 0, 1, 2, 3
BOUNDARY = "\u2581"  # sentencepiece's word-boundary mark "▁"
_SPECIALS = {T5_PAD: "<pad>", T5_EOS: "</s>", T5_UNK: "<unk>"}
_UNITS = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_VOCAB_FORMAT = "lwm.homegrid_t5/v1"
EMBED_SIZE = 512
_PLAIN_INTS = (int, np.int32, np.int64)


# ---------------------------------------------------------------------------------------------
# Vocabulary: a closed decode table for the T5 ids HomeGrid ships
# ---------------------------------------------------------------------------------------------


def _units(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks of ``text``, in order."""
    return _UNITS.findall(text.lower())


def _group_ids(ids: Sequence[int]) -> list[tuple[int, ...]]:
    """Ids grouped per word: T5's bare boundary piece (id 3) belongs to the piece after it."""
    groups: list[tuple[int, ...]] = []
    i = 0
    while i < len(ids):
        if ids[i] == T5_SPACE and i + 1 < len(ids):
            groups.append((ids[i], ids[i + 1]))
            i += 2
        else:
            groups.append((ids[i],))
            i += 1
    return groups


class HomeGridVocabulary:
    """Decode/encode table for HomeGrid's T5 token ids, with the interface of :class:`envs.text.Vocabulary`.

    Built from ``sentences`` (sentence → its T5 ids, as HomeGrid ships them). With ``compact=False``
    ids are T5 ids (``len`` is 32,100, ``unk_id`` is T5's 2); with ``compact=True`` ids are renumbered
    ``<pad>`` 0, ``<unk>`` 1, then the known T5 ids in increasing order. :meth:`from_t5` / :meth:`to_t5`
    convert. :meth:`word` / :meth:`decode` name T5 ids outside the table ``<t5:ID>``.
    """

    def __init__(self, sentences: Mapping[str, Iterable[int]], *, compact: bool = False) -> None:
        self.compact = bool(compact)
        self._sentences: dict[str, tuple[int, ...]] = {}
        self._pieces: dict[int, str] = dict(_SPECIALS)
        self._word_ids: dict[str, tuple[int, ...]] = {}
        self.unaligned: list[str] = []  # sentences whose words could not be matched to their ids
        for sentence, raw_ids in sentences.items():
            if sentence == _SPECIALS[T5_PAD]:
                continue
            ids = tuple(int(i) for i in np.asarray(raw_ids).reshape(-1))
            bad = [i for i in ids if not 0 <= i < T5_VOCAB_SIZE]
            if bad:
                raise ValueError(f"sentence {sentence!r} has ids {bad} outside T5's 0..{T5_VOCAB_SIZE - 1}")
            self._sentences[sentence] = ids
            self._learn(sentence, ids)
        known = sorted(set(self._pieces) - set(_SPECIALS))
        self._t5_of = np.array([T5_PAD, T5_UNK, *known] if self.compact else [], dtype=np.int32)
        self._from_t5 = np.full(T5_VOCAB_SIZE, 1, dtype=np.int32)
        self._from_t5[self._t5_of] = np.arange(len(self._t5_of), dtype=np.int32)

    def _learn(self, sentence: str, ids: tuple[int, ...]) -> None:
        units, groups = _units(sentence), _group_ids(ids)
        if len(units) != len(groups):
            self.unaligned.append(sentence)
            return
        for unit, group in zip(units, groups, strict=True):
            if len(group) == 2:
                new = {T5_SPACE: BOUNDARY, group[1]: unit}
            elif _WORD.fullmatch(unit):
                new = {group[0]: BOUNDARY + unit}
            else:  # punctuation: a piece of its own, no word boundary
                new = {group[0]: unit}
            for tid, piece in new.items():
                if self._pieces.setdefault(tid, piece) != piece:
                    raise ValueError(
                        f"T5 id {tid} is {self._pieces[tid]!r} in one HomeGrid sentence and {piece!r} in {sentence!r}"
                    )
            if self._word_ids.setdefault(unit, group) != group:
                raise ValueError(f"word {unit!r} has ids {self._word_ids[unit]} and {group} (in {sentence!r})")

    # -- id spaces ------------------------------------------------------------------------------
    def from_t5(self, t5_id: int) -> int:
        """This table's id for T5 id ``t5_id`` (the identity unless compact; unknown → ``<unk>``)."""
        if not 0 <= int(t5_id) < T5_VOCAB_SIZE:
            raise IndexError(f"T5 id {int(t5_id)} is out of range: valid ids are 0..{T5_VOCAB_SIZE - 1}")
        return int(self._from_t5[int(t5_id)]) if self.compact else int(t5_id)

    def to_t5(self, id: int) -> int:
        """The T5 id of this table's id ``id``."""
        self._check(id)
        return int(self._t5_of[int(id)]) if self.compact else int(id)

    # -- Vocabulary interface -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._t5_of) if self.compact else T5_VOCAB_SIZE

    def __contains__(self, word: object) -> bool:
        try:
            self.id(word)  # type: ignore[arg-type]
        except (KeyError, AttributeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HomeGridVocabulary) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.compact, tuple(sorted(self._pieces.items()))))

    def __repr__(self) -> str:
        kind = "compact" if self.compact else "t5"
        return f"HomeGridVocabulary({kind}, size={len(self)}, known_t5_ids={len(self._pieces) - len(_SPECIALS)})"

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (always 0, also T5's)."""
        return 0

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>``: T5's 2, or 1 in the compact table."""
        return 1 if self.compact else T5_UNK

    @property
    def known_t5_ids(self) -> list[int]:
        """The T5 ids this table can decode to text (not counting ``<pad>``, ``</s>``, ``<unk>``)."""
        return sorted(set(self._pieces) - set(_SPECIALS))

    @property
    def words(self) -> list[str]:
        """Words (pieces without the boundary mark) of the known non-special ids, in id order."""
        ids = range(2, len(self)) if self.compact else self.known_t5_ids
        return [self.word(i) for i in ids]

    @property
    def sentences(self) -> dict[str, tuple[int, ...]]:
        """Every shipped sentence with its ids in this table's id space."""
        return {s: tuple(self.from_t5(i) for i in ids) for s, ids in self._sentences.items()}

    def _check(self, id: Any) -> int:
        if isinstance(id, bool | np.bool_) or not isinstance(id, int | np.integer):
            raise TypeError(f"token id {id!r} is not an integer")
        if not 0 <= int(id) < len(self):
            raise IndexError(f"token id {int(id)} is out of range: valid ids are 0..{len(self) - 1}")
        return int(id)

    def piece(self, id: int) -> str:
        """The sentencepiece piece of ``id`` ("▁the", ",", "▁", "i"); ``<t5:ID>`` if not in the table."""
        t5 = self.to_t5(self._check(id))
        return self._pieces.get(t5, f"<t5:{t5}>")

    def word(self, id: int) -> str:
        """The text of ``id``: its piece without the leading "▁" (the bare boundary piece stays "▁")."""
        piece = self.piece(id)
        return piece[1:] if piece.startswith(BOUNDARY) and len(piece) > 1 else piece

    def id(self, word: str) -> int:
        """Id of the one-piece word ``word`` ("the", ",", "i"); ``KeyError`` if no single piece is it."""
        lowered = word.lower()
        for piece in (BOUNDARY + lowered, lowered):
            for t5, known in self._pieces.items():
                if known == piece and t5 not in _SPECIALS:
                    return self.from_t5(t5)
        raise KeyError(f"word {word!r} is not a single piece of HomeGrid's {len(self.known_t5_ids)} T5 ids")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``: a shipped sentence gives exactly its shipped ids; otherwise word by word
        (lower-cased; words and punctuation HomeGrid never says map to ``<unk>``)."""
        if text in self._sentences:
            return [self.from_t5(i) for i in self._sentences[text]]
        out: list[int] = []
        for unit in _units(text):
            out += [self.from_t5(i) for i in self._word_ids.get(unit, (T5_UNK,))]
        return out

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids`` (sentencepiece joining; ``<pad>`` skipped; unknown ids shown as ``<t5:ID>``)."""
        flat = np.asarray(ids).reshape(-1).tolist() if isinstance(ids, np.ndarray) else list(ids)
        parts = []
        for i in flat:
            if isinstance(i, int | np.integer) and not isinstance(i, bool | np.bool_) and int(i) == self.pad_id:
                continue
            piece = self.piece(i)
            known = self.to_t5(i) in self._pieces and self.to_t5(i) not in _SPECIALS
            parts.append(piece if known else BOUNDARY + piece)
        return "".join(parts).replace(BOUNDARY, " ").strip()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (id space and the piece of every known T5 id)."""
        return {
            "format": _VOCAB_FORMAT,
            "id_space": "compact" if self.compact else "t5",
            "size": len(self),
            "pieces": {str(t5): p for t5, p in sorted(self._pieces.items())},
            "compact_to_t5": self._t5_of.tolist(),
        }


# ---------------------------------------------------------------------------------------------
# Per-adapter random streams for HomeGrid's module-level RNG calls
# ---------------------------------------------------------------------------------------------


class _OwnRandomness:
    """Points the ``random`` / ``np`` globals of ``modules`` at private streams while active."""

    def __init__(self, seed: int, modules: Iterable[types.ModuleType]) -> None:
        seqs = np.random.SeedSequence([seed, 0x486F6D65]).spawn(3)
        self.py = _random_module.Random(int(seqs[0].generate_state(1)[0]))
        numpy_like = types.ModuleType(np.__name__)
        numpy_like.__dict__.update(vars(np))
        numpy_like.random = np.random.RandomState(np.random.MT19937(seqs[1]))  # type: ignore[attr-defined]
        self.gym = np.random.Generator(np.random.PCG64(seqs[2]))
        self._swaps: list[tuple[dict[str, Any], str, Any, Any]] = []
        for module in modules:
            space = vars(module)
            for name, value in space.items():
                if value is _random_module:
                    self._swaps.append((space, name, value, self.py))
                elif value is np:
                    self._swaps.append((space, name, value, numpy_like))

    def __enter__(self) -> None:
        for space, name, _, ours in self._swaps:
            space[name] = ours

    def __exit__(self, *exc: object) -> None:
        for space, name, original, _ in self._swaps:
            space[name] = original


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------


def _language_wrapper(env: Any) -> Any | None:
    """The object holding HomeGrid's pre-read counter (``preread``, ``_step_cnt``), searched down ``.env``."""
    obj = env
    for _ in range(16):
        if obj is None:
            return None
        attrs = getattr(obj, "__dict__", {})
        if isinstance(attrs.get("preread"), int) and hasattr(type(obj), "step"):
            return obj
        obj = attrs.get("env")
    return None


class HomeGridAdapter(dm_env.Environment):
    """Wraps a HomeGrid gym-0.26 env (``reset() -> (obs, info)``, 5-tuple ``step``) as a dm_env world."""

    def __init__(
        self,
        env: Any,
        vocab: HomeGridVocabulary,
        *,
        name: str = NAME,
        seed: int = 0,
        token_embed: bool = False,
        rng_modules: Iterable[types.ModuleType] = (),
    ) -> None:
        self._name = name
        self._env = env
        self.vocab = vocab
        self._seed = check_int(name, "seed", seed, 0)
        self._embed = bool(token_embed)
        self._rng = _OwnRandomness(self._seed, rng_modules)
        base = getattr(env, "unwrapped", env)
        if isinstance(getattr(base, "np_random", None), np.random.Generator):
            base.np_random = self._rng.gym
        self._reader = _language_wrapper(env)
        image_shape = tuple(int(d) for d in env.observation_space["image"].shape)
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(f"{name}: expected an [H, W, 3] image from HomeGrid, its space says {image_shape}")
        self._image_shape = image_shape
        self._action_spec = specs.DiscreteArray(int(env.action_space.n), dtype=np.int32, name="action")
        obs_spec: dict[str, specs.Array] = {
            "image": specs.BoundedArray(image_shape, np.uint8, minimum=0, maximum=255, name="image"),
            "tokens": specs.BoundedArray((1,), np.int32, minimum=0, maximum=len(vocab) - 1, name="tokens"),
        }
        if self._embed:
            obs_spec["token_embed"] = specs.Array((EMBED_SIZE,), np.float32, name="token_embed")
        obs_spec["is_read_step"] = specs.Array((), np.bool_, name="is_read_step")
        obs_spec["log_text"] = specs.Array((), np.object_, name="log_text")
        obs_spec["log_token"] = specs.Array((), np.object_, name="log_token")
        self._obs_spec = obs_spec
        self._needs_reset = True
        self._reading = False

    # -- accessors ----------------------------------------------------------------------------
    @property
    def gym_env(self) -> Any:
        """The wrapped HomeGrid gym env (as ``gym.make`` returned it)."""
        return self._env

    @property
    def reading(self) -> bool:
        """True if the last observation was a read step (the next action is ignored)."""
        return self._reading

    # -- dm_env API ---------------------------------------------------------------------------
    def observation_spec(self) -> dict[str, specs.Array]:
        return dict(self._obs_spec)

    def action_spec(self) -> specs.DiscreteArray:
        return self._action_spec

    def reset(self) -> dm_env.TimeStep:
        with self._rng:
            raw, _ = self._env.reset()
        self._needs_reset = False
        return dm_env.restart(self._observation(raw))

    def step(self, action: Any) -> dm_env.TimeStep:
        if type(action) in _PLAIN_INTS and 0 <= action < self._action_spec.num_values:
            a = int(action)  # fast path; anything else gets the full check and its error message
        else:
            a = validate_action(action, self._action_spec, self._name)
        if self._needs_reset:
            return self.reset()
        with self._rng:
            raw, reward, terminated, truncated, _ = self._env.step(a)
        obs = self._observation(raw)
        if terminated:
            self._needs_reset = True
            return dm_env.termination(float(reward), obs)
        if truncated:
            self._needs_reset = True
            return dm_env.truncation(float(reward), obs)
        return dm_env.transition(float(reward), obs)

    def close(self) -> None:
        self._env.close()

    # -- internals ----------------------------------------------------------------------------
    def _observation(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        image = np.array(raw["image"], dtype=np.uint8)
        if image.shape != self._image_shape:
            raise RuntimeError(f"{self._name}: HomeGrid gave an image of shape {image.shape}, not {self._image_shape}")
        token = self.vocab.from_t5(int(raw["token"]))
        if self._reader is not None:  # the next step is frozen iff it is still within the pre-read
            self._reading = self._reader._step_cnt + 1 <= self._reader.preread
        else:
            self._reading = bool(raw.get("is_read_step", False))
        text = str(raw.get("log_language_info", ""))
        obs: dict[str, Any] = {
            "image": image,
            "tokens": np.array([token], dtype=np.int32),
        }
        if self._embed:
            obs["token_embed"] = np.asarray(raw["token_embed"], dtype=np.float32).reshape(EMBED_SIZE)
        obs["is_read_step"] = np.asarray(self._reading, dtype=np.bool_)
        obs["log_text"] = np.asarray("" if text == "<pad>" else text, dtype=np.object_)
        obs["log_token"] = np.asarray("" if token == self.vocab.pad_id else self.vocab.word(token), dtype=np.object_)
        return obs

    def __repr__(self) -> str:
        return f"HomeGridAdapter({self._name!r}, vocab={self.vocab!r})"


# ---------------------------------------------------------------------------------------------
# The factory (imports HomeGrid lazily)
# ---------------------------------------------------------------------------------------------


def available() -> bool:
    """True if the optional HomeGrid package (and its gym) is installed; imports nothing."""
    return all(importlib.util.find_spec(m) is not None for m in ("homegrid", "gym"))


def _import_homegrid() -> tuple[types.ModuleType, types.ModuleType]:
    """Imports ``gym`` and ``homegrid`` or raises an ``ImportError`` naming the extra to install."""
    try:
        import gym
        import homegrid
    except ImportError as err:
        raise ImportError(
            f"world {NAME!r} needs the optional HomeGrid package (homegrid==0.1.1 with gym==0.26.0), "
            f"which could not be imported ({err}); install it with: {INSTALL_HINT}"
        ) from err
    return gym, homegrid


@lru_cache(maxsize=4)
def _shipped_sentences(package_dir: str) -> dict[str, tuple[int, ...]]:
    """The sentence → T5 ids table HomeGrid ships (``homegrid_embeds.pkl``, as HomeGrid itself loads it)."""
    path = f"{package_dir}/homegrid_embeds.pkl"
    with open(path, "rb") as f:
        table, _ = pickle.load(f)
    return {str(s): tuple(int(i) for i in np.asarray(ids).reshape(-1)) for s, ids in table.items()}


def homegrid_variants(gym: types.ModuleType) -> list[str]:
    """The ``X`` of every registered ``homegrid-X`` gym id."""
    return sorted(k[len("homegrid-") :] for k in gym.envs.registry if k.startswith("homegrid-"))


def _open(task: str, max_steps: int, compact: bool) -> tuple[Any, HomeGridVocabulary, list[types.ModuleType]]:
    """Builds the real HomeGrid gym env, its vocabulary and the modules whose RNG calls to redirect."""
    gym, homegrid = _import_homegrid()
    check_choice(NAME, "task", task, homegrid_variants(gym))
    env = gym.make(f"homegrid-{task}", disable_env_checker=True, max_steps=max_steps)
    package_dir = str(homegrid.__path__[0])
    vocab = HomeGridVocabulary(_shipped_sentences(package_dir), compact=compact)
    modules = [homegrid]
    for sub in ("base", "homegrid_base", "language_wrappers", "layout", "wrappers", "rendering"):
        try:
            modules.append(importlib.import_module(f"homegrid.{sub}"))
        except ImportError:
            pass
    return env, vocab, modules


def make_homegrid(
    task: str = "task",
    seed: int = 0,
    max_steps: int = 100,
    token_ids: str = "t5",
    token_embed: bool = False,
) -> HomeGridAdapter:
    """Registry factory for ``homegrid``: ``gym.make("homegrid-" + task)`` wrapped by :class:`HomeGridAdapter`."""
    check_choice(NAME, "task", task, VARIANTS)
    check_choice(NAME, "token_ids", token_ids, TOKEN_IDS)
    seed = check_int(NAME, "seed", seed, 0)
    max_steps = check_int(NAME, "max_steps", max_steps, 1)
    env, vocab, modules = _open(task, max_steps, token_ids == "compact")
    return HomeGridAdapter(env, vocab, name=NAME, seed=seed, token_embed=token_embed, rng_modules=modules)
