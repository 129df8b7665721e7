"""Sequence replay on the host: one ring buffer per environment stream, uniform B x T chunks.

Every step stores the observation, the action taken after it, reward, is_first, is_terminal and the
agent's posterior latent at that step. A sampled chunk of T steps comes with the latent and action of the
step before it (`start`, `start_action`), so training continues from the stored state (replay context 1);
`update_latents` writes the fresher posteriors of an update back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with `/`-joined keys ({"a": {"b": x}} -> {"a/b": x})."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class Replay:
    """Stores `capacity` steps in total, split evenly over `num_streams` environment streams."""

    def __init__(self, capacity: int, num_streams: int, length: int, seed: int = 0, priority_frac: float = 0.0,
                 priority_exponent: float = 0.8, event_frac: float = 0.0):
        if not 0.0 <= event_frac <= 1.0:
            raise ValueError(f"replay.event_frac={event_frac} is out of range; allowed: 0..1.")
        if not 0.0 <= priority_frac <= 1.0:
            raise ValueError(f"replay.priority_frac={priority_frac} is out of range; allowed: 0..1.")
        if priority_frac + event_frac > 1.0:
            raise ValueError(f"replay.priority_frac={priority_frac} + replay.event_frac={event_frac} exceeds 1 "
                             "(both are fractions of one batch).")
        if priority_exponent < 0.0:
            raise ValueError(f"replay.priority_exponent={priority_exponent} must be >= 0.")
        if num_streams < 1:
            raise ValueError(f"num_streams={num_streams} must be >= 1.")
        per = capacity // num_streams
        if per < length + 1:
            raise ValueError(f"replay.capacity={capacity} holds {per} steps per environment; it needs at least "
                             f"batch_length + 1 = {length + 1} per each of {num_streams} environments.")
        self.capacity, self.streams, self.length, self.per = capacity, num_streams, length, per
        self.rng = np.random.default_rng(seed)
        self.data: dict[str, np.ndarray] = {}
        self.pos = 0  # next write index (all streams advance together)
        self.count = 0  # steps stored per stream
        # Prioritised part of each batch (DreamerV3's `priority` fraction): a step is drawn with probability
        # proportional to weight = loss ** exponent, and its chunk is placed so that it holds that step at a
        # uniformly random position. Steps not yet trained on carry the largest weight seen so far.
        self.priority_frac, self.priority_exponent = priority_frac, priority_exponent
        self.weight = np.zeros((num_streams, per), np.float64) if priority_frac > 0 else None
        self.max_weight = 1.0
        # Event part of each batch: chunks placed around a uniformly drawn step with a non-zero reward or a
        # termination (rare in sparse-reward worlds; the reward and continue heads learn from them).
        self.event_frac = event_frac

    def __len__(self) -> int:
        return self.count * self.streams

    def add(self, step: Mapping) -> None:
        """Adds one step for every stream: a (nested) dict of arrays with leading axis `num_streams`.

        Latent `stoch` one-hots are stored as class indices (uint8/int16) to save memory.
        """
        flat = flatten(step)
        for key, value in flat.items():
            value = np.asarray(value)
            if key == "latent/stoch" and value.ndim == 3:
                value = value.argmax(-1).astype(np.uint8 if value.shape[-1] <= 256 else np.int16)
            if value.shape[:1] != (self.streams,):
                raise ValueError(
                    f"Replay.add: {key!r} has leading shape {value.shape[:1]}, expected ({self.streams},).")
            if key not in self.data:
                if self.count:
                    raise ValueError(f"Replay.add: key {key!r} was not in the first step; keys: {sorted(self.data)}.")
                self.data[key] = np.zeros((self.streams, self.per) + value.shape[1:], value.dtype)
            self.data[key][:, self.pos] = value
        missing = set(self.data) - set(flat)
        if missing:
            raise ValueError(f"Replay.add: step lacks keys {sorted(missing)}.")
        if self.weight is not None:
            self.weight[:, self.pos] = self.max_weight
        self.pos = (self.pos + 1) % self.per
        self.count = min(self.count + 1, self.per)

    def ready(self) -> bool:
        return self.count >= self.length + 1

    def sample(self, batch: int, classes: int) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
        """A batch [B, T] of chunks plus their context; also the (stream, time) indices for update_latents."""
        if not self.ready():
            raise RuntimeError(f"Replay holds {self.count} steps per stream; sampling needs {self.length + 1}.")
        T = self.length
        oldest = self.pos if self.count == self.per else 0
        streams = self.rng.integers(0, self.streams, batch)
        starts = self.rng.integers(1, self.count - T + 1, batch)  # chronological index of the first step
        n_prio = int(round(batch * self.priority_frac)) if self.weight is not None else 0
        if n_prio:
            # Chronological steps 1..count-1 can be in a chunk (step 0 of the oldest data is context only).
            chron = (oldest + np.arange(1, self.count)) % self.per
            w = self.weight[:, chron].reshape(-1)
            pick = self.rng.choice(w.size, n_prio, p=w / w.sum()) if w.sum() > 0 else self.rng.integers(0, w.size,
                                                                                                         n_prio)
            streams[:n_prio], step = np.divmod(pick, self.count - 1)
            step = step + 1
            starts[:n_prio] = np.clip(step - self.rng.integers(0, T, n_prio), 1, self.count - T)
        n_event = int(round(batch * self.event_frac))
        if n_event and "reward" in self.data and "is_terminal" in self.data:
            chron = (oldest + np.arange(1, self.count)) % self.per
            events = np.flatnonzero((self.data["reward"][:, chron] != 0) | self.data["is_terminal"][:, chron])
            if events.size:  # the last n_event rows (the first n_prio are the prioritised ones)
                pick = events[self.rng.integers(0, events.size, n_event)]
                streams[batch - n_event:], step = np.divmod(pick, self.count - 1)
                starts[batch - n_event:] = np.clip(step + 1 - self.rng.integers(0, T, n_event), 1, self.count - T)
        times = (oldest + starts[:, None] - 1 + np.arange(T + 1)[None]) % self.per  # [B, T+1], col 0 = context
        chunk = {k: v[streams[:, None], times] for k, v in self.data.items()}
        out = {}
        for key, value in chunk.items():
            if key.startswith("latent/"):
                out["start/" + key[len("latent/"):]] = value[:, 0]
            elif key.startswith("action/"):
                out[key] = value[:, 1:]
                out["start_action/" + key[len("action/"):]] = value[:, 0]
            else:
                out[key] = value[:, 1:]
        out["start/stoch"] = np.eye(classes, dtype=np.float32)[out["start/stoch"]]
        return _unflatten(out), (streams, times[:, 1:])

    def update_latents(self, index: tuple[np.ndarray, np.ndarray], latent: Mapping[str, np.ndarray]) -> None:
        """Writes fresher posteriors [B, T, ...] back to the sampled positions."""
        streams, times = index
        self.data["latent/deter"][streams[:, None], times] = np.asarray(latent["deter"])
        stoch = np.asarray(latent["stoch"]).argmax(-1)
        self.data["latent/stoch"][streams[:, None], times] = stoch

    def update_priorities(self, index: tuple[np.ndarray, np.ndarray], loss: np.ndarray) -> None:
        """Sets the sampling weight of the trained steps [B, T] from their world-model loss."""
        if self.weight is None:
            return
        streams, times = index
        w = np.maximum(np.asarray(loss, np.float64), 0.0) ** self.priority_exponent
        self.weight[streams[:, None], times] = w
        self.max_weight = max(self.max_weight, float(w.max()))

    def save(self, path: str | Path) -> None:
        """Writes the buffer atomically (to a temporary file, then renamed), with its sampling weights and RNG."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = np.array([self.capacity, self.streams, self.length, self.per, self.pos, self.count])
        extra = {"__rng__": np.array(json.dumps(self.rng.bit_generator.state))}
        if self.weight is not None:
            extra["__weight__"] = self.weight
            extra["__max_weight__"] = np.array(self.max_weight)
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=meta, **extra, **{k.replace("/", "|"): v[:, : self.count] if self.count < self.per
                                                   else v for k, v in self.data.items()})
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, seed: int = 0, **kwargs) -> Replay:
        """Reads a buffer written by `save`; `kwargs` (priority settings) go to the constructor.

        The sampling RNG continues from where it was saved (`seed` only seeds files that lack it); saved
        sampling weights are kept when this replay samples by priority.
        """
        with np.load(path) as f:
            capacity, streams, length, per, pos, count = (int(x) for x in f["__meta__"])
            replay = cls(capacity, streams, length, seed, **kwargs)
            for key in f.files:
                if key.startswith("__") and key.endswith("__"):
                    continue
                value = f[key]
                full = np.zeros((streams, per) + value.shape[2:], value.dtype)
                full[:, : value.shape[1]] = value
                replay.data[key.replace("|", "/")] = full
            if "__rng__" in f.files:
                replay.rng.bit_generator.state = json.loads(str(f["__rng__"]))
            if replay.weight is not None and "__weight__" in f.files and f["__weight__"].shape == replay.weight.shape:
                replay.weight[:] = f["__weight__"]
                replay.max_weight = float(f["__max_weight__"])
            elif replay.weight is not None:  # saved without priorities: every stored step gets the top weight
                replay.weight[:, :count] = replay.max_weight
        replay.pos, replay.count = pos, count
        return replay
