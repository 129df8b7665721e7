"""Host environments in worker processes: `EnvPool(make_env, indices, workers)` steps them in batches.

Knows nothing about particular worlds: `make_env(index) -> dm_env.Environment` must be picklable (a
module-level function or a `functools.partial` of one), because workers are started with the 'spawn' (or
'forkserver') context: JAX in the parent and `fork` do not mix. The environments are split into contiguous
blocks, one per worker; worker w builds `make_env(index)` for the indices of its block, so the same indices
give the same episodes as in-process environments.

Protocol, one pipe per worker: the parent sends `("advance", {slot: action or None})` (None = reset) to every
worker that has work, then collects each worker's `("ok", {slot: TimeStep})`; a failing env answers
`("error", index, traceback text)` and the parent raises `EnvWorkerError` naming the env index, with the
worker's traceback. Workers ignore SIGINT/SIGTERM (the parent decides when to stop: it saves a checkpoint
first), leave when the parent closes the pool, when their pipe reaches EOF (the parent died) or when their
parent process id changes; they are daemons, so a parent that exits without `close()` still takes them along.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dm_env

CONTEXTS = ("spawn", "forkserver")
_POLL_S = 1.0  # how often an idle worker checks that its parent is alive


class EnvWorkerError(RuntimeError):
    """An environment inside a worker raised, or a worker process died."""


def _worker(conn, make_env: Callable[[int], dm_env.Environment], indices: list[int], parent: int) -> None:
    """A worker's main loop: builds its environments, then answers commands until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    envs: list[dm_env.Environment] = []
    current = indices[0] if indices else -1
    try:
        try:
            for index in indices:
                current = index
                envs.append(make_env(index))
        except Exception:  # noqa: BLE001 - the parent raises it with this traceback
            conn.send(("error", current, traceback.format_exc()))
            return
        conn.send(("ok", None))
        while True:
            if not conn.poll(_POLL_S):
                if os.getppid() != parent:  # the parent died (its pipe end may live on in a grandchild)
                    return
                continue
            command, payload = conn.recv()
            if command == "close":
                return
            try:
                out = {}
                for slot, action in payload.items():
                    current = indices[slot]
                    out[slot] = envs[slot].reset() if action is None else envs[slot].step(action)
                message = ("ok", out)
            except Exception:  # noqa: BLE001 - the parent raises it with this traceback
                message = ("error", current, traceback.format_exc())
            conn.send(message)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent is gone: nobody to answer
    finally:
        for env in envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        conn.close()


def split(indices: Sequence[int], workers: int) -> list[list[int]]:
    """Contiguous blocks of `indices`, one per worker, sizes differing by at most one (earlier ones larger)."""
    n = len(indices)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= max(n, 1):
        raise ValueError(f"workers={workers!r} must be an int in [1, {n}] (the number of environments).")
    base, extra = divmod(n, workers)
    blocks, start = [], 0
    for w in range(workers):
        size = base + (w < extra)
        blocks.append(list(indices[start:start + size]))
        start += size
    return blocks


def _shutdown(procs: list, conns: list, timeout: float) -> None:
    for conn in conns:
        try:
            conn.send(("close", None))
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(timeout)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


class EnvPool:
    """`len(indices)` environments `make_env(index)` stepped by `workers` processes.

    `advance({i: action or None})` resets (None) or steps the environments at positions i (0 .. len - 1,
    in the order of `indices`) and returns their TimeSteps; the workers step their shares concurrently.
    """

    def __init__(self, make_env: Callable[[int], dm_env.Environment], indices: Sequence[int], workers: int,
                 context: str = "spawn", start_timeout: float = 300.0):
        if context not in CONTEXTS:
            raise ValueError(f"context={context!r} is not supported; use one of {', '.join(CONTEXTS)} "
                             "(fork does not mix with JAX).")
        self.indices = list(indices)
        self.blocks = split(self.indices, workers)
        self._where = []  # position -> (worker, slot in that worker)
        for w, block in enumerate(self.blocks):
            self._where += [(w, slot) for slot in range(len(block))]
        ctx = mp.get_context(context)
        self._procs, self._conns = [], []
        self._closed = False
        try:
            for w, block in enumerate(self.blocks):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child_end, make_env, block, os.getpid()),
                                   name=f"lwm-env-worker-{w}", daemon=True)
                proc.start()
                child_end.close()
                self._procs.append(proc)
                self._conns.append(parent_end)
            for w in range(len(self.blocks)):
                self._receive(w, "start", timeout=start_timeout)
        except BaseException:
            self.close()
            raise
        # a pool that is dropped or still open at interpreter exit is closed (before multiprocessing's own
        # exit hook would terminate the daemons)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, 5.0)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self._procs]

    def _receive(self, w: int, what: str, timeout: float | None = None) -> Any:
        conn, proc = self._conns[w], self._procs[w]
        try:
            if timeout is not None and not conn.poll(timeout):
                raise EnvWorkerError(f"env worker {w} (pid {proc.pid}) did not answer {what!r} within {timeout} s.")
            status, *rest = conn.recv()
        except (EOFError, OSError):
            proc.join(1.0)
            raise EnvWorkerError(f"env worker {w} (pid {proc.pid}, envs {self.blocks[w]}) exited with code "
                                 f"{proc.exitcode} during {what!r}.") from None
        if status == "error":
            index, text = rest
            raise EnvWorkerError(f"environment {index} (env worker {w}, pid {proc.pid}) raised during {what!r}:\n"
                                 f"{text.rstrip()}")
        return rest[0]

    def advance(self, actions: Mapping[int, Any]) -> dict[int, dm_env.TimeStep]:
        """Steps (or, for a None action, resets) the environments at the given positions; returns their steps."""
        if self._closed:
            raise EnvWorkerError("the env pool is closed.")
        per_worker: dict[int, dict[int, Any]] = {}
        for i, action in actions.items():
            w, slot = self._where[i]
            per_worker.setdefault(w, {})[slot] = action
        for w, payload in per_worker.items():
            try:
                self._conns[w].send(("advance", payload))
            except OSError:
                raise EnvWorkerError(f"env worker {w} (pid {self._procs[w].pid}) is gone "
                                     f"(exit code {self._procs[w].exitcode}).") from None
        out: dict[int, dm_env.TimeStep] = {}
        error = None
        for w in per_worker:  # collect every answer before raising, so the pipes stay in step
            try:
                steps = self._receive(w, "step/reset")
            except EnvWorkerError as e:
                error = error or e
                continue
            start = sum(len(b) for b in self.blocks[:w])
            out.update({start + slot: ts for slot, ts in steps.items()})
        if error is not None:
            raise error
        return {i: out[i] for i in actions}

    def close(self, timeout: float = 5.0) -> None:
        """Stops the workers (asks, then terminates those that do not leave within `timeout`); idempotent."""
        if self._closed:
            return
        self._closed = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        _shutdown(self._procs, self._conns, timeout)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
