"""HomeGrid-style language streaming: sentences become a few tokens per step.

Rules (one :meth:`TokenStream.next` call per environment step)::

    pre-read   tokens of the pre-read hints (at most ``preread_max``) go out first, ``tokens_per_step``
               a step, with ``reading=True``; the task clock does not advance while reading.
    task       ``set_task(s)`` interrupts whatever is being said and starts ``s`` at once.
    speaking   the current sentence continues, ``tokens_per_step`` words a step; when it runs out
               mid-step the rest of that step is ``<pad>``.
    idle       (nothing being said at the start of a step) in this order:
               1. the task again, if ``repeat_every`` steps passed since it last started;
               2. the oldest queued event (``add_event``);
               3. with probability ``talk_p``: a correction if the world offered one, else a description;
               4. silence (all ``<pad>``).

Everything random comes from the ``numpy.random.Generator`` given at construction, so a stream is
deterministic given that generator and the world's calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, overload

import numpy as np

from envs.text import Vocabulary

T = TypeVar("T")
_INT32 = np.dtype(np.int32)


class LazySentences(Sequence[str], Generic[T]):
    """Sentences ``say(item)`` for ``items``, each built only when read.

    For a world's idle sentences: the stream asks for them on most silent steps but speaks one of them on
    few (``talk_p``), and picking one needs only their number.
    """

    __slots__ = ("_items", "_say")

    def __init__(self, items: Sequence[T], say: Callable[[T], str]) -> None:
        self._items = items
        self._say = say

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._say(item) for item in self._items[index]]
        return self._say(self._items[index])

    def __repr__(self) -> str:
        return f"LazySentences({list(self)!r})"


class TokenStream:
    """Turns task / event / idle sentences into a stream of ``tokens_per_step`` token ids per step."""

    def __init__(
        self,
        vocab: Vocabulary,
        rng: np.random.Generator,
        tokens_per_step: int = 1,
        repeat_every: int = 20,
        talk_p: float = 0.2,
        preread_max: int = 28,
    ) -> None:
        if tokens_per_step < 1:
            raise ValueError(f"tokens_per_step={tokens_per_step} is out of range; allowed: >= 1")
        if repeat_every < 1:
            raise ValueError(f"repeat_every={repeat_every} is out of range; allowed: >= 1")
        if not 0.0 <= talk_p <= 1.0:
            raise ValueError(f"talk_p={talk_p} is out of range; allowed: 0..1")
        if preread_max < 0:
            raise ValueError(f"preread_max={preread_max} is out of range; allowed: >= 0")
        self.vocab = vocab
        self.rng = rng
        self.tokens_per_step = tokens_per_step
        self.repeat_every = repeat_every
        self.talk_p = talk_p
        self.preread_max = preread_max
        self.reset()

    def reset(self) -> None:
        """Forgets the task, the queue and anything half-said."""
        self.task: str | None = None
        self._since_task = 0
        self._events: deque[str] = deque()
        self._current: list[int] = []
        self._current_text = ""
        self._preread: list[int] = []
        self._preread_text = ""

    # -- inputs from the world ----------------------------------------------------------------
    def set_task(self, sentence: str) -> None:
        """Makes ``sentence`` the task and starts saying it now (interrupting any sentence)."""
        self.task = sentence
        self._start(sentence)
        self._since_task = 0

    def add_event(self, sentence: str) -> None:
        """Queues ``sentence``; it is said when the stream is next idle and the task is not due."""
        self._events.append(sentence)

    def start_preread(self, sentences: Sequence[str]) -> int:
        """Queues whole hint sentences (up to ``preread_max`` tokens) to read first; returns read steps."""
        ids: list[int] = []
        used: list[str] = []
        for sentence in sentences:
            enc = self.vocab.encode(sentence)
            if len(ids) + len(enc) > self.preread_max:
                if not ids:  # a single over-long hint is cut rather than dropped
                    ids, used = enc[: self.preread_max], [sentence]
                break
            ids += enc
            used.append(sentence)
        self._preread = ids
        self._preread_text = " ".join(used)
        return -(-len(ids) // self.tokens_per_step)

    @property
    def reading(self) -> bool:
        """True while pre-read tokens remain."""
        return bool(self._preread)

    # -- output -------------------------------------------------------------------------------
    def next(
        self,
        corrections: Sequence[str] = (),
        descriptions: Sequence[str] = (),
        idle: Callable[[], tuple[Sequence[str], Sequence[str]]] | None = None,
    ) -> tuple[np.ndarray, str, bool]:
        """Returns ``(tokens int32 [tokens_per_step], text being said, is_read_step)`` for this step.

        ``corrections`` / ``descriptions`` are the idle sentences of rule 3. Alternatively ``idle`` is a
        callable returning ``(corrections, descriptions)``; it is called only when rule 3 is reached (idle,
        task not due, no event queued), so a world need not build its sentences on the other steps. The
        tokens are the same either way.
        """
        n = self.tokens_per_step
        out = np.zeros(n, dtype=_INT32)
        if self._preread:
            chunk, self._preread = self._preread[:n], self._preread[n:]
            out[: len(chunk)] = chunk
            return out, self._preread_text, True
        if not self._current:
            self._idle(corrections, descriptions, idle)
            if not self._current:  # silence
                self._since_task += 1
                return out, "", False
        text = self._current_text
        current = self._current
        if len(current) <= n:
            out[: len(current)] = current
            self._current = []
        else:
            out[:] = current[:n]
            self._current = current[n:]
        self._since_task += 1
        return out, text, False

    def _start(self, sentence: str) -> None:
        self._current = self.vocab.encode(sentence)
        self._current_text = sentence

    def _idle(
        self,
        corrections: Sequence[str],
        descriptions: Sequence[str],
        idle: Callable[[], tuple[Sequence[str], Sequence[str]]] | None,
    ) -> None:
        if self.task is not None and self._since_task >= self.repeat_every:
            self._start(self.task)
            self._since_task = 0
        elif self._events:
            self._start(self._events.popleft())
        else:
            if idle is not None:
                corrections, descriptions = idle()
            if (corrections or descriptions) and self.rng.random() < self.talk_p:
                pool = corrections if corrections else descriptions
                self._start(pool[int(self.rng.integers(len(pool)))])
