"""Closed word-level vocabulary shared by the environments and the agent.

Ids are fixed: ``<pad>`` is 0, ``<unk>`` is 1, then the vocabulary words in the order given.
Text is normalised by lower-casing, splitting on whitespace and stripping the punctuation
characters ``.,!?;:`` from both ends of every word.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
PUNCTUATION = ".,!?;:"
_FORMAT = "lwm.vocabulary/v1"


def normalise(text: str) -> list[str]:
    """Splits ``text`` into normalised words (lower-case, edge punctuation stripped, empties dropped)."""
    words = (w.strip(PUNCTUATION) for w in text.lower().split())
    return [w for w in words if w]


class Vocabulary:
    """A closed word-level vocabulary with ``<pad>`` = 0 and ``<unk>`` = 1.

    Words are lower-cased on construction; duplicates are dropped (first occurrence wins).
    Words must be non-empty, contain no whitespace, not start or end with ``.,!?;:`` and not be
    one of the reserved tokens.
    """

    def __init__(self, words: Iterable[str]) -> None:
        if isinstance(words, str):
            raise TypeError(f"Vocabulary expects an iterable of words, got the string {words!r}")
        self._words: list[str] = [PAD, UNK]
        self._ids: dict[str, int] = {PAD: PAD_ID, UNK: UNK_ID}
        for raw in words:
            if not isinstance(raw, str):
                raise TypeError(f"vocabulary word {raw!r} is a {type(raw).__name__}, expected str")
            if not raw:
                raise ValueError("vocabulary words must be non-empty")
            if any(c.isspace() for c in raw):
                raise ValueError(f"vocabulary word {raw!r} contains whitespace")
            word = raw.lower()
            if word in (PAD, UNK):
                raise ValueError(f"vocabulary word {raw!r} is reserved ({PAD!r} and {UNK!r} are built in)")
            if word.strip(PUNCTUATION) != word:
                raise ValueError(
                    f"vocabulary word {raw!r} starts or ends with punctuation {PUNCTUATION!r}, "
                    "so encode() could never produce it"
                )
            if word not in self._ids:
                self._ids[word] = len(self._words)
                self._words.append(word)

    # -- basic queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and word.lower() in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._words == other._words

    def __hash__(self) -> int:
        return hash(tuple(self._words))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, words={self.words!r})"

    @property
    def pad_id(self) -> int:
        """Id of the padding token (always 0)."""
        return PAD_ID

    @property
    def unk_id(self) -> int:
        """Id of the unknown-word token (always 1)."""
        return UNK_ID

    @property
    def words(self) -> list[str]:
        """The non-reserved words, in id order (ids 2, 3, ...)."""
        return list(self._words[2:])

    def id(self, word: str) -> int:
        """Returns the id of ``word`` (case-insensitive); raises ``KeyError`` if it is unknown."""
        try:
            return self._ids[word.lower()]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary of {len(self)} words") from None

    def word(self, id: int) -> str:
        """Returns the word with id ``id``; raises ``IndexError`` naming the valid range otherwise."""
        if isinstance(id, bool | np.bool_) or not isinstance(id, int | np.integer):
            raise TypeError(f"token id {id!r} is not an integer")
        if not 0 <= int(id) < len(self._words):
            raise IndexError(f"token id {int(id)} is out of range: valid ids are 0..{len(self._words) - 1}")
        return self._words[int(id)]

    # -- text <-> ids --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Normalises ``text`` and maps every word to its id (unknown words map to ``<unk>`` = 1)."""
        return [self._ids.get(w, UNK_ID) for w in normalise(text)]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Maps ids back to words joined by single spaces, skipping ``<pad>`` ids."""
        flat = np.asarray(ids).reshape(-1).tolist() if isinstance(ids, np.ndarray) else list(ids)
        return " ".join(self.word(i) for i in flat if not (isinstance(i, int | np.integer) and i == PAD_ID))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description of the vocabulary."""
        return {"format": _FORMAT, "pad": PAD, "unk": UNK, "words": self.words}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or "words" not in data:
            raise ValueError(f"not a vocabulary dict (missing 'words'): {data!r}")
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"unsupported vocabulary format {fmt!r}, expected {_FORMAT!r}")
        if data.get("pad", PAD) != PAD or data.get("unk", UNK) != UNK:
            raise ValueError(f"vocabulary dict uses special tokens other than {PAD!r}/{UNK!r}")
        return cls(data["words"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the vocabulary to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Reads a vocabulary written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
