"""Train an agent: `python -m launch.train --configs debug tokenchoice --logdir runs/demo [--key.sub value ...]`.

Writes config.yaml, metrics.jsonl, TensorBoard event files, checkpoints (ckpt/) and summary.json to the logdir
and prints where they are. Running the same command again resumes from the newest complete checkpoint.

  --from_checkpoint PATH        start a new run from another run's checkpoint (a logdir, its ckpt/ directory
                                or one step directory such as runs/a/ckpt/1200); same as --ckpt.from PATH
  --from_checkpoint.only WHAT   agent (whole train state, default) | params (fresh optimizer) | wm (world model
                                only); same as --ckpt.from_only WHAT
SIGTERM or Ctrl-C: the current update finishes, a checkpoint is written, exit code 0.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lwm import config as lwm_config
from lwm.runtime import default_cache_dir, setup_jax


def _make_env(name: str, options: dict, mask_tokens: bool, num_envs: int, base_seed: int | None, index: int):
    """Environment `index` of the configured world (module level, so that env worker processes can unpickle it)."""
    import envs

    extra = {"seed": base_seed * 100_003 + index} if base_seed is not None else {}
    if envs.has_batched(name):  # team worlds: one batch of env.num_envs worlds (see lwm.team)
        return envs.make_batched(name, num_envs, mask_tokens=mask_tokens, **options, **extra)
    return envs.make(name, mask_tokens=mask_tokens, **options, **extra)


def env_factory(config):
    """`make_env(index)` for the configured world; each environment gets its own seed where it takes one.

    It is a `functools.partial` of a module-level function, so it pickles (for `env.workers` > 0)."""
    import envs

    name = config.env.name
    if name not in envs.names():
        envs.make(name)  # raises a ValueError that lists the valid names
    options = dict(config.env.options)
    takes_seed = "seed" in envs.describe(name)["defaults"]
    base_seed = int(options.pop("seed", config.seed))
    make_env = functools.partial(_make_env, name, options, bool(config.env.mask_tokens), int(config.env.num_envs),
                                 base_seed if takes_seed else None)
    make_env(0).close()  # fail fast on bad options, before any compilation
    return make_env


def check_env_workers(config) -> None:
    """`env.workers` > 0 needs host worlds: batched JAX worlds (defusal teams) run in the trainer's process."""
    import envs

    if config.env.workers and config.env.name in envs.names() and envs.has_batched(config.env.name):
        raise ValueError(f"env.workers={config.env.workers}: {config.env.name} is a batched JAX world that runs "
                         "in the trainer's process; use env.workers 0.")


def check_logdir(logdir: Path) -> None:
    """Creates `logdir` and checks that files can be written there; exits with a clear error otherwise."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=logdir, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SystemExit(f"error: --logdir {logdir} is not a writable directory ({reason}: "
                         f"{e.filename or logdir}); choose another --logdir.") from None
    if not os.access(logdir, os.W_OK):
        raise SystemExit(f"error: --logdir {logdir} is not writable; choose another --logdir.")


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Presets:", ", ".join(lwm_config.preset_names()))
        raise SystemExit(0)
    try:
        config, extras = lwm_config.parse_args(argv, known=("logdir", "from_checkpoint", "from_checkpoint.only"))
        aliases = {"from_checkpoint": "ckpt.from", "from_checkpoint.only": "ckpt.from_only"}
        config = config.update({aliases[k]: v for k, v in extras.items() if k in aliases}, where="command line")
    except lwm_config.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if "logdir" not in extras:
        raise SystemExit("error: --logdir DIR is required (where config.yaml, metrics.jsonl and summary.json go).")
    logdir = Path(extras["logdir"]).expanduser()
    from lwm.checkpoint import CheckpointError, resolve
    from lwm.loop import check_run_config

    try:
        check_run_config(config)
        check_env_workers(config)
        if config.ckpt["from"]:
            resolve(config.ckpt["from"])  # fail fast on a path that does not exist
    except (ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    check_logdir(logdir)
    cache = config.jax.cache_dir
    setup_jax(config.jax.platform, default_cache_dir(str(logdir)) if cache == "auto" else cache)
    from lwm import parallel

    try:
        parallel.initialize(config)  # multi-host runs join here, before any JAX computation
    except parallel.ParallelError as e:
        raise SystemExit(f"error: {e}") from None
    from lwm.loop import NonFiniteLoss, train_loop
    from lwm.replay import ReplayTooLarge

    try:
        summary = train_loop(config, logdir, env_factory(config))
    except (CheckpointError, NonFiniteLoss, parallel.ParallelError, ReplayTooLarge) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary, indent=2))
    rank = parallel.jax.process_index()
    own = logdir if rank == 0 else logdir / f"process_{rank}"
    print(f"Results: {logdir / 'summary.json'} | metrics: {own / 'metrics.jsonl'} | "
          f"config: {logdir / 'config.yaml'}")
    return summary


if __name__ == "__main__":
    main()
