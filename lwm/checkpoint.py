"""Checkpoints of a whole run with orbax-checkpoint: save, find the latest good one, restore, keep the last K.

A checkpoint is one step directory `<logdir>/ckpt/<env steps>/` written by an orbax `CheckpointManager`:
  state/   the array pytree: the agent's train state (params, optimizer, slow critic, return norm, update
           step, PRNG key as raw key data), global arrays only (orbax, asynchronous where enabled)
  meta/    JSON: loop counters (env steps, updates, train credit, episodes, skipped updates), the resolved
           config, the byte sizes of the log files at save time, the replay size
  replay/  what belongs to one process, written before `save` returns: `replay_p<process>.npz` (its replay
           buffer) and `local_p<process>.npz` (its host-local arrays: the policy's PRNG key)
Orbax writes everything into `<step>.orbax-checkpoint-tmp*` and renames it only when every part is on disk,
so a process killed mid-write leaves a temporary directory that the next run deletes and never reads.

Arrays are stored as a nested dict of plain names (`params/wm/rssm/...`) rather than flax/optax objects, so
a checkpoint can be read without the classes that wrote it and restored onto any device layout: restore
takes a live state `like` and places every array with that array's sharding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import yaml
from etils import epath

from lwm import config as lwm_config
from lwm.replay import Replay, flatten, unflatten

# Keys that may differ between a checkpoint's config and the config of the run that resumes it: how long to
# run, how often to log or save, where and on what to run. Everything else must match.
RESUME_MAY_CHANGE = ("run.steps", "run.minutes", "run.log_every", "run.summary_every", "run.report_every",
                     "run.eval_episodes", "run.nonfinite", "env.workers", "ckpt.", "jax.")
FROM_ONLY = ("agent", "params", "wm")
# Test hook: seconds to sleep while the replay part of a checkpoint is being written (inside the orbax
# temporary directory), so a test can kill the process in the middle of a checkpoint write.
_TEST_DELAY_ENV = "LWM_TEST_CKPT_WRITE_DELAY"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, or written by a run with a different config or model."""


# ------------------------------------------------------------------------------------------- pytree <-> names
def _name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_nested(tree: Any) -> dict:
    """The leaves of any pytree as a nested dict of plain names; typed PRNG keys become their uint32 data."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = out
        names = [_name(k) for k in path] or ["value"]
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    return out


def _lookup(nested: Mapping, names: Sequence[str]) -> Any:
    node: Any = nested
    for n in names:
        node = node[n]
    return node


def from_nested(nested: Mapping, like: Any) -> Any:
    """Inverse of `to_nested`: rebuilds the structure of `like` (re-wrapping PRNG keys like its keys)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, ref in paths:
        value = _lookup(nested, [_name(k) for k in path] or ["value"])
        if _is_key(ref):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(ref))
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _abstract(nested: Mapping) -> Any:
    """ShapeDtypeStructs (with each live array's sharding) describing `nested`, the restore target."""
    def spec(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype,
                                    sharding=sharding)
    return jax.tree.map(spec, nested)


def _place(value: Any, ref: Any) -> Any:
    """`value` placed like `ref`: with `ref`'s sharding when `ref` is committed to devices (a mesh), else as an
    uncommitted array on the default device, as a fresh state is. (A committed single-device array would make
    jit lower a different program, missing the compilation cache that a fresh run filled.)"""
    if isinstance(ref, jax.Array) and ref.committed:
        return value if getattr(value, "sharding", None) == ref.sharding else jax.device_put(value, ref.sharding)
    return jnp.asarray(np.asarray(value), dtype=ref.dtype)


# ------------------------------------------------------------------------------------ the per-process part
class _ReplayHandler(ocp.CheckpointHandler):
    """Writes what belongs to this process alone into the checkpoint's (temporary) `replay` item directory,
    synchronously: its replay buffer (`replay_p<i>.npz`) and its host-local arrays (`local_p<i>.npz`: the
    policy's PRNG key, which differs between the processes of a multi-host run and so is not a global array)."""

    def save(self, directory: epath.Path, args: ReplayArgs) -> None:
        if args.replay is not None:
            args.replay.save(Path(directory) / f"replay_p{jax.process_index()}.npz")
        if args.local is not None:
            arrays = {k: np.asarray(v) for k, v in flatten(to_nested(args.local)).items()}
            with open(Path(directory) / f"local_p{jax.process_index()}.npz", "wb") as f:
                np.savez(f, **arrays)
        if args.local_meta is not None:
            (Path(directory) / f"meta_p{jax.process_index()}.json").write_text(json.dumps(dict(args.local_meta)))
        delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)

    def restore(self, directory: epath.Path, args: ReplayArgs | None = None) -> tuple[Replay | None, dict | None,
                                                                                     dict]:
        kwargs = dict(args.kwargs) if args is not None and args.kwargs else {}
        i = jax.process_index()
        replay = None
        if args is None or args.with_replay:
            path = Path(directory) / f"replay_p{i}.npz"
            if not path.exists():
                raise CheckpointError(f"{path} is missing (the replay of process {i}).")
            replay = Replay.load(path, **kwargs)
        local = None
        path = Path(directory) / f"local_p{i}.npz"
        if path.exists():
            with np.load(path) as data:
                local = {k: data[k] for k in data.files}
        path = Path(directory) / f"meta_p{i}.json"
        local_meta = json.loads(path.read_text()) if path.exists() else {}
        return replay, local, local_meta

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(_ReplayHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class ReplayArgs(ocp.args.CheckpointArgs):
    """Save: the `replay`, the host-`local` pytree and the `local_meta` JSON dict (e.g. this process's log file
    sizes) to write. Restore: `kwargs` for `Replay.load` (seed, priority settings), and whether to read the
    replay."""

    replay: Any = None
    kwargs: Any = None
    local: Any = None
    local_meta: Any = None
    with_replay: bool = True


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
            "replay": _ReplayHandler()}


# ------------------------------------------------------------------------------------------------- the manager
@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` returns."""

    step: int
    path: Path
    state: Any
    meta: dict
    replay: Replay | None
    local: Any = None
    local_meta: dict = dataclasses.field(default_factory=dict)


class Checkpointer:
    """Saves and restores complete run checkpoints in `directory` (usually `<logdir>/ckpt`), keeping `keep`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"ckpt.keep={keep} must be >= 1.")
        self.directory = Path(directory).expanduser().resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
        logging.getLogger("absl").setLevel(logging.WARNING)
        self.manager = ocp.CheckpointManager(epath.Path(self.directory), options=options, item_handlers=_handlers())
        self.last_saved: int | None = self.manager.latest_step()

    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first (temporary directories of interrupted writes are not listed)."""
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: Mapping[str, Any], replay: Replay | None = None,
             local: Any = None, local_meta: Mapping[str, Any] | None = None) -> bool:
        """Starts writing checkpoint `step` (the state arrays may finish in the background); False if it exists.

        `state` holds global arrays (the same on every process of a multi-host run); `replay`, `local` (a pytree
        of this process's own arrays) and `local_meta` (a JSON dict) are written per process, and are on disk
        when this returns; the checkpoint counts (is listed by `steps`) once every part is, after the arrays
        finish.
        """
        if step in self.manager.all_steps():
            return False
        nested = to_nested(state)
        items = {"state": ocp.args.StandardSave(nested), "meta": ocp.args.JsonSave(dict(meta))}
        if replay is not None or local is not None or local_meta is not None:
            items["replay"] = ReplayArgs(replay=replay, local=local, local_meta=local_meta)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.last_saved = step
        return True

    def wait(self) -> None:
        """Blocks until a pending asynchronous save is complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, like: Any, step: int | None = None, replay_kwargs: Mapping[str, Any] | None = None,
                with_replay: bool = True, local_like: Any = None) -> Restored:
        """Restores checkpoint `step` (default: latest) into the structure and device layout of `like`, and this
        process's `local` part into the structure of `local_like` (None: not read)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {self.directory}.")
        target = to_nested(like)
        legacy = []  # host-local arrays that checkpoints before the per-process part kept in `state`
        if local_like is not None:
            disk = self.manager.item_metadata(step)["state"]
            disk = getattr(disk, "tree", disk)
            legacy = [k for k in to_nested(local_like) if k in disk and k not in target]
            target.update({k: v for k, v in to_nested(local_like).items() if k in legacy})
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(_abstract(target)), "meta": ocp.args.JsonRestore()}
        if with_replay or local_like is not None:
            items["replay"] = ReplayArgs(kwargs=dict(replay_kwargs or {}), with_replay=with_replay)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        arrays = jax.tree.map(_place, out["state"], target)
        state = from_nested(arrays, like)
        replay, local, local_meta = out["replay"] if "replay" in items else (None, None, {})
        if local_like is not None:
            flat = dict(local or {})
            flat.update(flatten({k: arrays[k] for k in legacy}))
            try:
                local = from_nested(unflatten(flat), local_like)
            except KeyError as e:
                raise CheckpointError(f"{self.path(step)} has no process-local {e} for process "
                                      f"{jax.process_index()}.") from None
        return Restored(step, self.path(step), state, dict(out["meta"]), replay, local, local_meta)

    def restore_latest_good(self, like: Any, config: Any = None, replay_kwargs: Mapping[str, Any] | None = None,
                            quarantine: str | os.PathLike | None = None, local_like: Any = None) -> Restored | None:
        """The newest checkpoint that restores, or None when there is none.

        A checkpoint that fails to read is reported with a warning naming it and moved to `quarantine` (so a
        resumed run can write that step again), and the previous one is tried. With `config`, the saved
        config is compared first (`check_config`): a mismatch raises instead of falling back.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
                self._reject(step, e, quarantine)
                continue
            if meta.get("exported"):
                logdir = self.directory.parent
                raise CheckpointError(
                    f"{self.path(step)} is an exported agent (python -m launch.export: no replay, no logs), which "
                    f"cannot be resumed; start a new run from it: --from_checkpoint {logdir} --logdir NEW_DIR.")
            if config is not None:
                check_config(meta.get("config", {}), config, where=str(self.path(step)))
            try:
                return self.restore(like, step, replay_kwargs, local_like=local_like)
            except Exception as e:  # noqa: BLE001
                self._reject(step, e, quarantine)
        return None

    def _reject(self, step: int, error: BaseException, quarantine: str | os.PathLike | None) -> None:
        path = self.path(step)
        detail = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        moved = ""
        if quarantine is not None:
            dest = Path(quarantine) / f"{step}-{int(time.time())}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))
            moved = f"; moved to {dest}"
            self.manager.reload()
        warnings.warn(f"Checkpoint {path} is corrupt or incomplete ({detail}){moved}; using the previous one.",
                      stacklevel=3)


# --------------------------------------------------------------------------------------------- config checks
def _flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v and f"{prefix}{k}" != "env.options":
            out.update(_flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       allowed: Sequence[str] = RESUME_MAY_CHANGE) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every config key that differs and may not change on resume.

    Keys present on one side only (added or removed by a code change) are not reported.
    """
    a = _flatten_config(_plain(saved))
    b = _flatten_config(_plain(current))
    out = []
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key] and not any(key == p or (p.endswith(".") and key.startswith(p)) for p in allowed):
            out.append((key, a[key], b[key]))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def check_config(saved: Mapping[str, Any], current: Mapping[str, Any], where: str = "the checkpoint") -> None:
    """Raises CheckpointError listing every key (both values) in which `current` differs from `saved`."""
    diff = config_differences(saved, current)
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {a!r}, now {b!r}" for k, a, b in diff)
        raise CheckpointError(
            f"The config differs from the one that wrote {where} in {len(diff)} key(s):\n{lines}\n"
            f"Resume with the same config (only {', '.join(RESUME_MAY_CHANGE)} may change), use another "
            "--logdir, or start a new run from it with --from_checkpoint PATH.")


# -------------------------------------------------------------------------------------- starting from elsewhere
def resolve(path: str | os.PathLike, flag: str = "--from_checkpoint") -> tuple[Path, int | None]:
    """(checkpoint directory, step or None = latest) for a logdir, its `ckpt` directory or one step directory."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise CheckpointError(f"{flag} {path}: no such directory (give a logdir, its ckpt/ directory "
                              "or one checkpoint step directory such as ckpt/1200).")
    if (p / "ckpt").is_dir():
        return p / "ckpt", None
    if p.name.isdigit() and (p / "state").is_dir():
        return p.parent, int(p.name)
    return p, None


def read_checkpoint(path: str | os.PathLike, flag: str = "--from_checkpoint") -> tuple[Path, int, dict, dict]:
    """(checkpoint directory, step, state arrays as saved (nested names, on the first local device), meta) of the
    checkpoint at `path`: a logdir, its `ckpt` directory (latest complete step) or one step directory."""
    directory, step = resolve(path, flag)
    manager = ocp.CheckpointManager(epath.Path(directory), options=ocp.CheckpointManagerOptions(create=False),
                                    item_handlers=_handlers())
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise CheckpointError(f"{flag} {path}: {directory} holds no complete checkpoint.")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"{flag} {path}: step {step} is not a complete checkpoint; complete: {steps}.")
        metadata = manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                                             sharding=jax.sharding.SingleDeviceSharding(
                                                                 jax.local_devices()[0])), tree)
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                            meta=ocp.args.JsonRestore()))
    finally:
        manager.close()
    return directory, step, out["state"], dict(out["meta"])


def load_into(path: str | os.PathLike, ts: Any, only: str = "agent") -> tuple[Any, Path]:
    """Copies the agent state of the checkpoint at `path` into the fresh train state `ts`.

    `only`: `agent` (params, optimizer, slow critic, return norm, update step, key), `params` (the networks
    and slow critic; a fresh optimizer), `wm` (the world model only; fresh actor, critic and optimizer).
    Returns (new train state, step directory used). Shapes must match; mismatches are listed.
    """
    if only not in FROM_ONLY:
        raise CheckpointError(f"ckpt.from_only={only!r} is not known; use one of {', '.join(FROM_ONLY)}.")
    directory, step, saved, _ = read_checkpoint(path)
    fresh = to_nested({"agent": ts})
    if only == "agent":
        parts = [("agent",)]
    elif only == "params":
        parts = [("agent", "params"), ("agent", "slow")]
    else:
        parts = [("agent", "params", "wm")]
    mismatch = []
    merged = jax.tree.map(lambda x: x, fresh)
    for part in parts:
        src, dst = _lookup(saved, part), _lookup(fresh, part)
        a, b = flatten(src), flatten(dst)
        for name in sorted(set(a) | set(b)):
            sa = np.shape(a[name]) if name in a else "absent"
            sb = np.shape(b[name]) if name in b else "absent"
            if sa != sb:
                mismatch.append(f"  {'/'.join(part)}/{name}: checkpoint {sa}, this model {sb}")
        if not mismatch:
            node = _lookup(merged, part[:-1])
            node[part[-1]] = jax.tree.map(_place, src, dst)
    if mismatch:
        shown = "\n".join(mismatch[:20]) + (f"\n  ... {len(mismatch) - 20} more" if len(mismatch) > 20 else "")
        raise CheckpointError(f"--from_checkpoint {directory / str(step)}: {len(mismatch)} array(s) differ in shape "
                              f"from this model (ckpt.from_only={only}):\n{shown}\n"
                              "Use the model config of that run (see its config.yaml).")
    return from_nested(merged, {"agent": ts})["agent"], directory / str(step)


def config_changes(path: str | os.PathLike, current: Mapping[str, Any], shown: int = 12) -> str | None:
    """What the new run's config (`current`, a nested Config) changes from the config.yaml of the run whose
    checkpoint is at `path`, as one line for the log (`--from_checkpoint` takes that run's state, not its
    config, so a flag left out falls back to the presets), or None when nothing differs or it has no config.yaml.
    The `ckpt.*` keys are left out (where to start from is meant to differ); `config_differences` compares."""
    directory, _ = resolve(path)
    source = directory.parent / "config.yaml"
    if not source.is_file():
        return None
    diff = config_differences(yaml.safe_load(source.read_text()) or {}, current, allowed=("ckpt.",))
    keys = [k for k, _, _ in diff]
    if not keys:
        return None
    parts = [f"{k} {a!r} -> {b!r}" for k, a, b in diff[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"this run's config differs from {source} in {len(keys)} key(s): {'; '.join(parts)}{more}"


# ------------------------------------------------------------------------------------------------ exporting


def export_agent(source: str | os.PathLike, out: str | os.PathLike, keep_optimizer: bool = False,
                 flag: str = "--logdir", average: Sequence[str | os.PathLike] = ()) -> dict:
    """Writes the trained agent of the checkpoint at `source` as a small logdir `out` that ships without its run:
    `config.yaml` and one checkpoint (same step) holding the train state but no replay and no logs.

    The optimizer's moments and counts are zeroed unless `keep_optimizer` (they are twice the size of the
    params and compress to almost nothing when zero): a run started from it (`--from_checkpoint out`) has the
    agent's params, slow critic, return scale and update count and a fresh optimizer (its warm-up again).
    Evaluation, the visualizer and `--from_checkpoint` read it like any logdir; resuming it is refused.
    `out` must not exist or be empty (nothing is overwritten); it is written under a temporary name and renamed
    when complete. Returns {"path", "step", "updates", "bytes", "optimizer", "averaged"}.

    `average`: further checkpoints (same networks) whose weights are averaged with `source`'s, each distinct
    checkpoint counting once (`source` among them, or one named twice, is not counted again): params, slow critic
    and return scale are the uniform mean; step, update count, key, config and meta are `source`'s; the optimizer
    is reset (an average has no moments of its own).
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} exists and is not an empty directory; exporting never overwrites: "
                              "give a new directory.")
    if not out.parent.is_dir():
        raise CheckpointError(f"--out {out}: the directory {out.parent} does not exist.")
    if average and keep_optimizer:
        raise CheckpointError("--optimizer keep cannot go with --average: averaged weights have no optimizer "
                              "moments of their own; leave --optimizer at reset.")
    directory, step, saved, meta = read_checkpoint(source, flag)
    if "agent" not in saved:
        raise CheckpointError(f"{directory / str(step)} holds no agent state (keys: {sorted(saved)}).")
    agent = dict(saved["agent"])
    averaged = [str(directory / str(step))]
    if average:
        others = []
        for path in average:
            d, s, other, _ = read_checkpoint(path, "--average")
            where = str(d / str(s))
            if where in averaged:
                continue
            if "agent" not in other:
                raise CheckpointError(f"--average {path}: {where} holds no agent state (keys: {sorted(other)}).")
            for part in AVERAGED:
                _same_shapes(agent[part], other["agent"][part], f"--average {path} ({where}), {part}")
            others.append(other["agent"])
            averaged.append(where)
        for part in AVERAGED:
            agent[part] = jax.tree.map(_mean, agent[part], *(o[part] for o in others))
    if not keep_optimizer:
        agent["opt"] = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), agent["opt"])
    config = lwm_config.load().update(meta.get("config", {}), where=f"checkpoint {directory / str(step)}")
    # The run's meta as it was (counters, config), less what described its replay and logs.
    new_meta = {k: v for k, v in meta.items() if k not in ("logs", "replay_size")}
    new_meta.update({"credit": 0.0, "replay_size": 0,
                     "exported": {"from": str(directory / str(step)), "optimizer": "kept" if keep_optimizer else
                                  "reset", "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}})
    if average:
        new_meta["exported"]["averaged"] = averaged
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        config.save(tmp / "config.yaml")
        writer = Checkpointer(tmp / "ckpt", keep=1, async_save=False)
        try:
            writer.save(step, {"agent": agent}, new_meta)
        finally:
            writer.close()
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"path": out, "step": step, "updates": meta.get("updates"), "bytes": size,
            "optimizer": new_meta["exported"]["optimizer"], "averaged": len(averaged)}


# The agent's weights an averaged export takes the mean of (the rest is the first checkpoint's).
AVERAGED = ("params", "slow", "retnorm")


def _same_shapes(want: Any, got: Any, where: str) -> None:
    """Raises a CheckpointError listing where the tree `got` differs from `want` in structure, shape or dtype."""
    want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
    got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
    if want_leaves.keys() != got_leaves.keys():
        only = sorted(jax.tree_util.keystr(k) for k in want_leaves.keys() ^ got_leaves.keys())
        raise CheckpointError(f"{where}: the networks differ (weights in one checkpoint only: {only[:5]}); only "
                              "checkpoints of the same configuration can be averaged.")
    bad = [f"{jax.tree_util.keystr(k)} {np.shape(x)} {np.asarray(x).dtype} vs {np.shape(got_leaves[k])} "
           f"{np.asarray(got_leaves[k]).dtype}" for k, x in want_leaves.items()
           if np.shape(x) != np.shape(got_leaves[k]) or np.asarray(x).dtype != np.asarray(got_leaves[k]).dtype]
    if bad:
        raise CheckpointError(f"{where}: shapes differ ({'; '.join(bad[:5])}); only checkpoints of the same "
                              "configuration can be averaged.")


def _mean(*xs: Any) -> np.ndarray:
    """The elementwise mean of same-shaped float arrays, accumulated in float64, in the first one's dtype."""
    first = np.asarray(xs[0])
    if not jnp.issubdtype(first.dtype, jnp.floating):
        raise CheckpointError(f"cannot average weights of dtype {first.dtype} (only floating-point weights).")
    return (sum(np.asarray(x, np.float64) for x in xs) / len(xs)).astype(first.dtype)
