"""Devices, meshes and shardings: the one place that decides where arrays live.

Data parallelism over a `jax.sharding.Mesh` with one axis, `data` (a second axis can be added through
`make_mesh(axis_sizes=...)`; the shardings below stay valid because parameters are replicated on every axis):

  train state   (parameters, optimizer state, slow critic, ...)  replicated on every device of the mesh
  train batch   [B, ...]                                          split along B over the `data` axis
  posteriors    [B, T, ...] returned by the train step             split along B, like the batch

Multi-host (several processes, one per host or per GPU) runs the same program on every process:
`initialize(config)` joins them through `jax.distributed.initialize` before any JAX work, the mesh spans
the devices of all processes, and every process steps its own environments and samples its own replay.
`config.batch_size` is therefore the batch of one process: the global batch of one update is
`batch_size × jax.process_count()`, and each process's batch is split over its own devices of the mesh,
so `batch_size` must be a multiple of the mesh devices per process.

Nothing else in the project names devices: the agent takes an optional mesh, and the loop moves host
batches on (`shard_batch`) and results off (`to_host`) through the helpers here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"  # the mesh axis the batch is split along
MODES = ("auto", "on", "off")


class ParallelError(ValueError):
    """A device or multi-host setting that cannot work on this machine."""


# ------------------------------------------------------------------------------------------- multi-host

def cluster_env(environ: Mapping[str, str] | None = None) -> str:
    """The multi-process launcher this process runs under, from its environment variables ('' if none).

    Only launches of more than one process count: a single Slurm task or `mpirun -n 1` needs no
    distributed runtime. JAX reads the coordinator, process count and id from the same variables.
    """
    env = os.environ if environ is None else environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if "JAX_COORDINATOR_ADDRESS" in env:
        return "jax"
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")) and count("SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    return ""


def initialize(config, environ: Mapping[str, str] | None = None) -> bool:
    """Joins the processes of a multi-host run (`jax.distributed.initialize`); returns whether it did.

    Call once per process, after `runtime.setup_jax` and before any other JAX work. `jax.distributed`:
      mode          'auto': join when a coordinator is configured, when the environment shows a
                    multi-process Slurm / Open MPI / TPU launch, or on the TPU platform (JAX asks the
                    TPU metadata server); 'on': always join; 'off': never (one process).
      coordinator   'host:port' of process 0 ('' = detected by JAX from Slurm / Open MPI / TPU).
      num_processes total processes (0 = detected).   process_id  this process, 0-based (-1 = detected).
    """
    dist = config.jax.distributed
    if dist.mode not in MODES:
        raise ParallelError(f"jax.distributed.mode={dist.mode!r} is not known; use one of {', '.join(MODES)}.")
    if dist.num_processes < 0:
        raise ParallelError(f"jax.distributed.num_processes={dist.num_processes} must be >= 0 (0 = detected).")
    if dist.process_id < -1 or (dist.num_processes and dist.process_id >= dist.num_processes):
        top = f"{dist.num_processes - 1}" if dist.num_processes else "num_processes - 1"
        raise ParallelError(f"jax.distributed.process_id={dist.process_id} must be -1 (detected) or 0..{top}.")
    if dist.mode == "off":
        return False
    detected = bool(dist.coordinator or cluster_env(environ))
    if dist.mode == "auto" and not (detected or config.jax.platform == "tpu"):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {
        "coordinator_address": dist.coordinator or None,
        "num_processes": dist.num_processes or None,
        "process_id": dist.process_id if dist.process_id >= 0 else None,
    }
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        if dist.mode == "auto" and not detected:  # a TPU VM that is not part of a detectable pod slice
            print(f"lwm: jax.distributed not initialised on this TPU ({e}); running as one process.", flush=True)
            return False
        raise ParallelError(
            f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {e}. "
            "It must run before any JAX computation; set jax.distributed.coordinator / num_processes / "
            "process_id, or jax.distributed.mode=off for one process.") from e
    return True


# ----------------------------------------------------------------------------------------------- meshes

def _local_devices_by_process(devices: Sequence[Any]) -> dict[int, list]:
    out: dict[int, list] = {}
    for d in devices:
        out.setdefault(d.process_index, []).append(d)
    return {p: sorted(ds, key=lambda d: d.id) for p, ds in sorted(out.items())}


def make_mesh(num_devices: int = 0, axis_names: Sequence[str] = (DATA,),
              axis_sizes: Sequence[int] | None = None) -> Mesh:
    """A mesh over the first `num_devices` devices of every process (0 = all of them).

    1-D over `data` by default; `axis_names=('data', 'model'), axis_sizes=(n, m)` gives a 2-D mesh of
    the same devices. All axes are `AxisType.Auto` (XLA's sharding propagation inside jit).
    """
    by_process = _local_devices_by_process(jax.devices())
    local = len(jax.local_devices())
    if num_devices < 0 or num_devices > local:
        raise ParallelError(f"jax.devices={num_devices} is not possible: this process has {local} "
                            f"{jax.default_backend()} device(s); use 0 (all) or 1..{local}.")
    if num_devices in (0, local):
        devices = [d for ds in by_process.values() for d in ds]
    else:
        devices = [d for ds in by_process.values() for d in ds[:num_devices]]
    sizes = tuple(axis_sizes) if axis_sizes is not None else (len(devices),)
    if len(sizes) != len(axis_names) or int(np.prod(sizes)) != len(devices):
        raise ParallelError(f"mesh axes {tuple(axis_names)} with sizes {sizes} do not cover the "
                            f"{len(devices)} devices selected (jax.devices={num_devices}).")
    types = (AxisType.Auto,) * len(sizes)
    if len(devices) == jax.device_count():  # all devices: let JAX order them for the interconnect
        return jax.make_mesh(sizes, tuple(axis_names), axis_types=types)
    return Mesh(np.array(devices, dtype=object).reshape(sizes), tuple(axis_names), axis_types=types)


def mesh_from_config(config) -> Mesh | None:
    """The data-parallel mesh for `config.jax.devices`, or None for one device in one process.

    None keeps the agent's plain single-device jit. Checks that `batch_size` splits over the mesh.
    """
    if config.jax.devices < 0:
        raise ParallelError(f"jax.devices={config.jax.devices} must be >= 0 (0 = every local device).")
    if jax.process_count() == 1 and (config.jax.devices == 1 or len(jax.devices()) == 1):
        if config.jax.devices > 1:
            make_mesh(config.jax.devices)  # raises: more devices asked for than exist
        return None
    mesh = make_mesh(config.jax.devices)
    check_batch_size(config.batch_size, mesh)
    return mesh


def devices_per_process(mesh: Mesh) -> int:
    """Mesh devices that belong to this process (each process's batch is split over these)."""
    me = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.process_index == me)


def data_size(mesh: Mesh) -> int:
    """Devices along the `data` axis: the number of batch shards of one update (over all processes)."""
    return int(mesh.shape[DATA])


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a `ParallelError` naming both numbers unless `batch_size` (per process) splits evenly."""
    shards = max(1, data_size(mesh) // jax.process_count())  # batch slices of this process
    if batch_size >= 1 and batch_size % shards == 0:
        return
    lower = batch_size - batch_size % shards
    sizes = f"{lower} or {lower + shards}" if lower > 0 else f"{shards}"
    fits = max(d for d in range(1, shards + 1) if batch_size % d == 0) if batch_size >= 1 else 1
    raise ParallelError(
        f"batch_size={batch_size} is not divisible by the {shards} devices of the data-parallel mesh on this "
        f"process: each device takes an equal slice of the batch. Use batch_size {sizes} (a multiple of "
        f"{shards}), or jax.devices={fits}.")


# ------------------------------------------------------------------------------------------- shardings

def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree that is identical on every process (a fresh or restored train state) on the mesh."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if _is_key(x):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host batch of this process ([B, ...] leaves) → global arrays split along B over the mesh.

    In a multi-host run every process passes its own batch; the global array holds all of them
    (leading size B × processes), each device the slice of its own process.
    """
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        raise ParallelError(f"every leaf of a batch needs the same leading (batch) size; got sizes {sizes}.")
    check_batch_size(sizes.pop(), mesh)
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(tree: Any) -> Any:
    """Device results → numpy on this host: replicated arrays whole, batch-sharded ones as this process's rows.

    The inverse of `shard_batch` (with one process it is `jax.device_get`).
    """
    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return jax.device_get(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        shards = sorted((s for s in x.addressable_shards if s.replica_id == 0), key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    return jax.tree.map(get, tree)


def local_view(tree: Any) -> Any:
    """A replicated pytree as arrays on this process's first device (no copy: its own buffer there).

    The policy and report steps use it: they run on one device per process on that host's own
    environments, so they need neither a batch divisible by the devices nor any cross-host traffic.
    """
    def view(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            if not x.is_fully_replicated:
                raise ParallelError(f"local_view needs replicated arrays; got sharding {x.sharding}.")
            return x.addressable_data(0)
        return x

    return jax.tree.map(view, tree)


def is_multiprocess() -> bool:
    """Whether this run spans several processes (multi-host): then host-side decisions must be agreed."""
    return jax.process_count() > 1


def agree_max(values: Sequence[int]) -> list[int]:
    """The element-wise maximum of small non-negative integers over every process: how the processes of a
    multi-host run agree on host-side decisions (stop now, write a checkpoint now) that each one makes from its
    own clock and signals. One collective; the values unchanged in a one-process run. Every process must
    call it at the same point of the program, the same number of times.
    """
    mine = np.asarray(values, np.int32).reshape(-1)
    if jax.process_count() == 1:
        return mine.tolist()
    from jax.experimental import multihost_utils

    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), mine.size)
    return everyone.max(0).tolist()


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Waits until every process of a multi-host run reaches the barrier `name` (no-op with one process).

    Used before the first collective after a long local step (compiling the train step): the processes
    finish compiling at different times, and XLA:CPU's collectives give a late peer only about 30 s.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # joined without jax.distributed (e.g. a TPU runtime): a device-level barrier instead
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))


def process_seed(seed: int) -> int:
    """A seed for this process's own randomness (environments, replay sampling, acting).

    Process 0 keeps `seed` (a one-process run is unchanged); the others get distinct seeds, so hosts do not
    collect the same experience. The train state is seeded with `seed` itself: it is replicated and must be
    identical on every process.
    """
    return seed + 1_000_003 * jax.process_index()


def env_offset(num_envs: int) -> int:
    """Global index of this process's first environment (pass `env_offset(n) + i` to `make_env`)."""
    return jax.process_index() * num_envs


def describe(mesh: Mesh | None) -> str:
    """One line for the console: devices, processes, and how the batch is split."""
    if mesh is None:
        d = jax.devices()[0]
        return f"1 device ({d.platform}:{d.device_kind})"
    d = mesh.devices.flat[0]
    axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return (f"mesh {axes} over {mesh.devices.size} {d.platform} device(s) in {jax.process_count()} process(es); "
            f"batch split {data_size(mesh)} ways, parameters replicated")
