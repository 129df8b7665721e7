"""Export a trained agent without its run: `python -m launch.export --logdir runs/a --out checkpoints/a`.

  --logdir DIR        a training run (its latest complete checkpoint is exported)
  --checkpoint PATH   another checkpoint instead (a logdir, a ckpt/ directory or one step directory)
  --out DIR           where to write (must not exist, or be empty: nothing is overwritten)
  --optimizer WHAT    reset (default: the optimizer's moments are zeroed, a third of the size) | keep
  --average PATH ...  more checkpoints of the same networks (often earlier steps of the same run,
                      `runs/a/ckpt/*`) whose weights are averaged with the exported one's, each once

The export is a small logdir: config.yaml and one checkpoint with the agent's train state, without the replay
buffer and logs (a defusal team: 10.5 MB instead of 275 MB with its replay). Evaluation (`launch.eval`,
`bench/defusal_pack.py`), the visualizer and `launch.train --from_checkpoint OUT` read it like the run's own
logdir; resuming training in it is refused (it has no replay).

An averaged export (`--average`) holds the uniform mean of the checkpoints' weights (params, slow critic, return
scale) with the exported checkpoint's step, update count and config, and a reset optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from launch.cli import arguments, fail, parse_flags

FLAGS = ("logdir", "checkpoint", "out", "optimizer", "average")
OPTIMIZER = ("reset", "keep")


def main(argv: Sequence[str] | None = None) -> dict:
    flags = parse_flags(arguments(argv, __doc__), FLAGS, multi=("average",))
    for needed in ("logdir", "out"):
        if needed not in flags:
            raise fail(f"--{needed} is required; flags: {', '.join('--' + f for f in FLAGS)}.")
    optimizer = flags.get("optimizer", "reset")
    if optimizer not in OPTIMIZER:
        raise fail(f"--optimizer {optimizer!r} is not known; use one of {', '.join(OPTIMIZER)}.")
    logdir = Path(flags["logdir"]).expanduser()
    if not logdir.is_dir():
        raise fail(f"--logdir {logdir} is not a directory; give the --logdir of a training run (launch.train).")
    from lwm.checkpoint import CheckpointError, export_agent

    try:
        flag = "--checkpoint" if "checkpoint" in flags else "--logdir"
        info = export_agent(Path(flags.get("checkpoint", logdir)).expanduser(), flags["out"],
                            keep_optimizer=optimizer == "keep", flag=flag,
                            average=[Path(p).expanduser() for p in flags.get("average", [])])
    except CheckpointError as e:
        raise fail(str(e)) from None
    print(f"lwm: exported step {info['step']} ({info['updates']} updates, optimizer {info['optimizer']}) to "
          f"{info['path']}: {info['bytes'] / 1e6:.1f} MB"
          + (f", weights averaged over {info['averaged']} checkpoints" if info["averaged"] > 1 else ""), flush=True)
    return info


if __name__ == "__main__":
    main()
