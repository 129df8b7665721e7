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

PENDING_MAX = 65_536  # slots written between draws before the sampling trees are brought up to date anyway


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with `/`-joined keys ({"a": {"b": x}} -> {"a/b": x})."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`: `/`-joined keys back into a nested dict."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class SumTree:
    """Non-negative weights over `n` items in a binary tree of partial sums: setting weights and drawing items
    with probability proportional to weight both cost O(log n) per item (vectorised over many items), where
    renormalising a flat weight array costs O(n) per draw (seconds per batch for replays of millions of steps).
    """

    def __init__(self, n: int):
        self.n = n
        self.leaves = 1 << max(1, (n - 1).bit_length())
        self.depth = self.leaves.bit_length() - 1
        self.tree = np.zeros(2 * self.leaves, np.float64)

    def total(self) -> float:
        return float(self.tree[1])

    def set(self, index: np.ndarray, weight: np.ndarray | float) -> None:
        """Sets the weights of items `index` (any shape; with repeats, the last write wins like numpy's)."""
        leaf = np.asarray(index, np.int64).reshape(-1) + self.leaves
        self.tree[leaf] = np.broadcast_to(np.asarray(weight, np.float64), np.shape(index)).reshape(-1)
        node = np.unique(leaf >> 1)  # sorted, so each level's repeated parents are adjacent
        for level in range(self.depth):
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if level + 1 < self.depth:
                node = node >> 1
                node = node[np.concatenate(([True], node[1:] != node[:-1]))]

    def rebuild(self, weights: np.ndarray) -> None:
        """Sets every weight at once (`weights` [n], flat item order)."""
        self.tree[:] = 0.0
        self.tree[self.leaves:self.leaves + self.n] = np.asarray(weights, np.float64).reshape(-1)
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 2 << level
            self.tree[lo:hi] = self.tree[2 * lo:2 * hi:2] + self.tree[2 * lo + 1:2 * hi:2]

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """`k` items drawn with replacement, with probability weight / total (the total must be > 0)."""
        u = rng.random(k) * self.tree[1]
        node = np.ones(k, np.int64)
        for _ in range(self.depth):
            left = self.tree[2 * node]
            right = (u >= left) & (self.tree[2 * node + 1] > 0)  # rounding never walks into an empty subtree
            u = np.where(right, u - left, u)
            node = 2 * node + right
        return node - self.leaves


class ReplayTooLarge(MemoryError):
    """The buffer for replay.capacity steps does not fit in the memory available (raised before allocating)."""


class Replay:
    """Stores `capacity` steps in total, split evenly over `num_streams` environment streams."""

    def __init__(self, capacity: int, num_streams: int, length: int, seed: int = 0, priority_frac: float = 0.0,
                 priority_exponent: float = 0.8, event_frac: float = 0.0, group: int = 1):
        """`group` > 1: batches are drawn in whole groups of consecutive streams (a team world's agents), the rows
        of a group the same steps of streams g·group .. g·group + group − 1 (`agent.imag.joint`)."""
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
        if not isinstance(group, int) or group < 1 or num_streams % group:
            raise ValueError(f"replay group={group!r} must be a positive integer dividing num_streams={num_streams}.")
        self.group = group
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
        # Both draws go through sum trees over the flat index stream * per + slot. The oldest slot of every
        # stream has weight 0 there (it is context only: no chunk can hold it), so every draw lands in a chunk.
        self._prio_tree = SumTree(num_streams * per) if priority_frac > 0 else None
        self._event_tree = SumTree(num_streams * per) if event_frac > 0 else None
        self._slots = np.arange(num_streams, dtype=np.int64) * per
        self._pending: list[int] = []  # slots written since the trees were last updated

    def __len__(self) -> int:
        return self.count * self.streams

    def _check_memory(self, flat: Mapping[str, np.ndarray]) -> None:
        """Before the buffer is allocated: a clear error, naming replay.capacity and the largest keys, when it
        cannot fit in this machine's available memory (rather than numpy's bare allocation failure later)."""
        import psutil

        sizes = {k: self.streams * self.per * v[0].nbytes for k, v in flat.items() if v.ndim >= 1 and len(v)}
        need, available = sum(sizes.values()), psutil.virtual_memory().available
        if need > available:
            top = ", ".join(f"{k} {tuple(flat[k].shape[1:])} {flat[k].dtype} {sizes[k] / 2**30:.1f} GiB"
                            for k in sorted(sizes, key=sizes.get, reverse=True)[:3])
            raise ReplayTooLarge(
                f"replay.capacity={self.streams * self.per} steps need {need / 2**30:.1f} GiB ({top}), more than the "
                f"{available / 2**30:.1f} GiB of memory available; lower --replay.capacity (to at most about "
                f"{int(available / need * self.streams * self.per * 0.8)} steps here).")

    def add(self, step: Mapping) -> None:
        """Adds one step for every stream: a (nested) dict of arrays with leading axis `num_streams`.

        Latent `stoch` one-hots are stored as class indices (uint8/int16) to save memory.
        """
        flat = flatten(step)
        for key, value in list(flat.items()):
            value = flat[key] = np.asarray(value)
            if key == "latent/stoch" and value.ndim == 3:
                value = flat[key] = value.argmax(-1).astype(np.uint8 if value.shape[-1] <= 256 else np.int16)
        if not self.data:
            self._check_memory(flat)
        for key, value in flat.items():
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
        if self._prio_tree is not None or self._event_tree is not None:
            self._pending.append(self.pos)  # the trees catch up at the next draw (one update for many adds)
        self.pos = (self.pos + 1) % self.per
        self.count = min(self.count + 1, self.per)
        if len(self._pending) >= min(self.per, PENDING_MAX):  # or now: adds with no draws stay bounded
            self._flush()

    def _is_event(self, slots: int | np.ndarray) -> np.ndarray:
        """float [streams, ...]: 1 where the step at `slots` has a non-zero reward or is terminal."""
        if "reward" not in self.data or "is_terminal" not in self.data:
            return np.zeros((self.streams,) + np.shape(slots))
        return ((self.data["reward"][:, slots] != 0) | self.data["is_terminal"][:, slots]).astype(np.float64)

    def _oldest(self) -> int:
        return self.pos if self.count == self.per else 0

    def _set_trees(self, written: np.ndarray) -> None:
        """Sets the tree weights of slots `written` [k] of every stream (priority weights and event flags from
        the buffer), and 0 for the oldest step of every stream, in one update per tree."""
        leaves = np.concatenate([(self._slots[:, None] + written[None, :]).reshape(-1), self._slots + self._oldest()])
        zeros = np.zeros(self.streams)
        if self._prio_tree is not None:
            self._prio_tree.set(leaves, np.concatenate([self.weight[:, written].reshape(-1), zeros]))
        if self._event_tree is not None:
            self._event_tree.set(leaves, np.concatenate([self._is_event(written).reshape(-1), zeros]))

    def _flush(self) -> None:
        """Brings the sampling trees up to date with the steps added since the last draw."""
        if self._pending:
            written = np.unique(np.asarray(self._pending, np.int64))
            self._pending.clear()
            self._set_trees(written)

    def _draw(self, tree: SumTree, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(streams, chronological step indices >= 1) of `k` steps drawn from `tree`."""
        stream, slot = np.divmod(tree.sample(self.rng, k), self.per)
        return stream, (slot - self._oldest()) % self.per

    def ready(self) -> bool:
        return self.count >= self.length + 1

    def sample(self, batch: int, classes: int) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
        """A batch [B, T] of chunks plus their context; also the (stream, time) indices for update_latents."""
        if not self.ready():
            raise RuntimeError(f"Replay holds {self.count} steps per stream; sampling needs {self.length + 1}.")
        if batch % self.group:
            raise ValueError(f"batch_size={batch} must be a multiple of the replay's group of {self.group} streams "
                             "(agent.imag.joint draws whole teams).")
        T = self.length
        self._flush()
        oldest = self._oldest()
        rows = batch // self.group
        streams = self.rng.integers(0, self.streams, rows)
        starts = self.rng.integers(1, self.count - T + 1, rows)  # chronological index of the first step
        # A drawn step (chronological index >= 1) sits at a uniformly random position of its chunk.
        n_prio = int(round(rows * self.priority_frac)) if self.weight is not None else 0
        if n_prio and self._prio_tree.total() > 0:  # the first n_prio rows
            streams[:n_prio], step = self._draw(self._prio_tree, n_prio)
            starts[:n_prio] = np.clip(step - self.rng.integers(0, T, n_prio), 1, self.count - T)
        n_event = int(round(rows * self.event_frac))
        if n_event and self._event_tree.total() > 0:  # the last n_event rows
            streams[rows - n_event:], step = self._draw(self._event_tree, n_event)
            starts[rows - n_event:] = np.clip(step - self.rng.integers(0, T, n_event), 1, self.count - T)
        if self.group > 1:  # each drawn row brings its whole group, at the same steps
            first = streams - streams % self.group
            streams = (first[:, None] + np.arange(self.group)[None]).reshape(-1)
            starts = np.repeat(starts, self.group)
        times = (oldest + starts[:, None] - 1 + np.arange(T + 1)[None]) % self.per  # [B, T+1], col 0 = context
        chunk = {k: v[streams[:, None], times] for k, v in self.data.items()}
        out = {}
        for key, value in chunk.items():
            if key.startswith("latent/"):
                out["start/" + key[len("latent/"):]] = value[:, 0]
            elif key.startswith(("action/", "mates/")):  # and the one before the chunk (the RSSM's first input)
                out[key] = value[:, 1:]
                kind, name = key.split("/", 1)
                out[f"start_{kind}/{name}"] = value[:, 0]
            else:
                out[key] = value[:, 1:]
        out["start/stoch"] = np.eye(classes, dtype=np.float32)[out["start/stoch"]]
        return unflatten(out), (streams, times[:, 1:])

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
        self._flush()
        leaves = np.concatenate([(self._slots[streams][:, None] + times).reshape(-1), self._slots + self._oldest()])
        self._prio_tree.set(leaves, np.concatenate([w.reshape(-1), np.zeros(self.streams)]))
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
        if replay._prio_tree is not None:
            replay._prio_tree.rebuild(replay.weight)
        if replay._event_tree is not None:
            replay._event_tree.rebuild(replay._is_event(np.arange(per)))
        replay._set_trees(np.zeros(0, np.int64))  # the oldest steps: 0
        return replay
