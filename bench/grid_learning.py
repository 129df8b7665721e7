"""Learning on the language-hinted gridworlds: does the agent use the language?

`python bench/grid_learning.py [--worlds grid_task_s grid_dynamics_s] [--steps N] [--out runs/grid_learning]`

For each world, trains two agents with the world's CPU preset (`configs/grid_task.yaml`,
`configs/grid_dynamics.yaml`, ...) through the launcher: one hears the language, one has every token
replaced by `<pad>` (`--env.mask_tokens true`). Each is evaluated greedily at the end; the table puts
their returns beside the world's scripted oracle (reads the hints: the ceiling), a uniformly random policy
and the chance return (the best a policy can do without the language: a uniform guess among the
candidates). Learning curves (training-episode return against env steps) are printed and stored, with
the full summaries, in `<out>/results.json`; every run's logdir (config, metrics.jsonl) stays under
`<out>`. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.hinted_grid import WORLDS, run_baseline  # noqa: E402
from launch import train  # noqa: E402

PRESETS = {"task": "grid_task", "future": "grid_future", "dynamics": "grid_dynamics",
           "correction": "grid_correction", "home": "grid_home"}


def preset_for(world: str) -> str:
    """The CPU preset of a hinted world (`grid_dynamics_s` -> `grid_dynamics`)."""
    kind = world.split("_")[1]
    return PRESETS[kind]


def curve(logdir: Path) -> list[tuple[int, float]]:
    """(env steps, mean training-episode return) per metrics line that saw finished episodes."""
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["step"]), round(float(r["episode/return"]), 3)) for r in rows if "episode/return" in r]


def baselines(world: str, options: dict, episodes: int) -> dict[str, float]:
    env = envs.make(world, **options)
    out = {"oracle": run_baseline(env, "oracle", episodes, seed=1), "random": run_baseline(env, "random", episodes,
                                                                                          seed=2)}
    out["chance"] = env.chance_return
    env.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["grid_task_s", "grid_dynamics_s"], choices=sorted(WORLDS))
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (0: the preset's run.steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["language", "masked"], choices=["language", "masked"])
    parser.add_argument("--baseline_episodes", type=int, default=200)
    parser.add_argument("--out", default="runs/grid_learning")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further launcher overrides, e.g. --extra --agent.opt.lr 1e-4")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = []
    for world in args.worlds:
        preset = preset_for(world)
        base = None
        for mode in args.modes:
            logdir = out / f"{world}_{mode}_seed{args.seed}"
            cli = ["--configs", preset, "--env", world, "--seed", str(args.seed), "--logdir", str(logdir),
                   "--env.mask_tokens", str(mode == "masked").lower()]
            if args.steps:
                cli += ["--run.steps", str(args.steps)]
            cli += args.extra
            start = time.time()
            summary = train.main(cli)
            wall = time.time() - start
            if base is None:
                from lwm import config as lwm_config

                options = dict(lwm_config.parse_args(cli, known=("logdir",))[0].env.options)
                options.pop("seed", None)
                base = baselines(world, options, args.baseline_episodes)
            results.append({
                "world": world, "mode": mode, "preset": preset, "env_steps": summary["env_steps"],
                "updates": summary["updates"], "wall_s": round(wall, 1), "return": summary["eval"]["return_mean"],
                "return_std": summary["eval"]["return_std"], "episodes": summary["eval"]["episodes"], **base,
                "of_oracle": summary["eval"]["return_mean"] / base["oracle"] if base["oracle"] else float("nan"),
                "curve": curve(logdir), "command": "python -m launch.train " + " ".join(cli),
            })

    print(f"\nLearning on hinted gridworlds | {platform.machine()} | {platform.python_version()}")
    print(f"{'world':<18}{'agent':<10}{'env steps':>10}{'updates':>9}{'wall':>8}{'return':>9}{'oracle':>8}"
          f"{'random':>8}{'chance':>8}{'/oracle':>9}")
    for r in results:
        print(f"{r['world']:<18}{r['mode']:<10}{r['env_steps']:>10}{r['updates']:>9}{r['wall_s']:>7.0f}s"
              f"{r['return']:>9.3f}{r['oracle']:>8.3f}{r['random']:>8.3f}{r['chance']:>8.3f}{r['of_oracle']:>9.2f}")
    for r in results:
        points = r["curve"]
        marks = np.linspace(0, len(points) - 1, min(8, len(points))).astype(int) if points else []
        print(f"curve {r['world']} {r['mode']}: " + ", ".join(f"{points[i][0]}:{points[i][1]:.2f}" for i in marks))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    last = {"results": [{k: v for k, v in r.items() if k != "curve"} for r in results]}
    print(json.dumps(last))
    return last


if __name__ == "__main__":
    main()
