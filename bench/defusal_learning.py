"""Team learning in the defusal world: a talking team against a silenced one, beside scripted baselines.

`python bench/defusal_learning.py [--preset defusal_small] [--steps N] [--modes talk silent] [--out DIR]`

For each mode, trains one shared-parameter team through the launcher with the preset (`configs/defusal_small.yaml`
or `configs/defusal.yaml`); `silent` adds `--env.options.silence true` (no message reaches a teammate). Each team is
evaluated at the end over `run.eval_episodes` episodes, with sampled and with argmax (greedy) actions on the same
worlds. The table gives the world rounds of experience (summed over worlds; agent-steps = 3x), updates, wall time,
mean team score and mean rounds to completion (max_rounds when not completed) of both, beside scripted teams on the
same world (random legal play; the centralised full-information planner, a lower bound on rounds). Learning curves
(training episodes' score and rounds against world rounds of experience) are printed and stored, with the summaries,
in `<out>/results.json`.
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import envs  # noqa: E402
from launch import train  # noqa: E402
from lwm import config as lwm_config  # noqa: E402


def curve(logdir: Path) -> list[tuple[int, float, float]]:
    """(world rounds, mean training-episode score, mean rounds to completion) per metrics line with episodes."""
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["env_rounds"]), round(float(r["episode/score"]), 2), round(float(r["episode/rounds"]), 2))
            for r in rows if "episode/score" in r and "env_rounds" in r]


def baselines(config, teams: list[str], seeds: int) -> dict[str, dict[str, float]]:
    """Scripted teams on the preset's world (their own template messages: message_len 4)."""
    import jax

    from envs.defusal import scripted

    options = {k: v for k, v in dict(config.env.options).items() if k != "seed"}
    params = envs.make_batched(config.env.name, 1, **options).params._replace(message_len=4)
    out = {}
    for name in teams:
        r = scripted.evaluate(scripted.TEAMS[name], params, jax.random.key(123), seeds)
        out[name] = {"score": float(r["score"].mean()), "score_std": float(r["score"].std()),
                     "rounds": float(r["rounds"].mean()), "rounds_std": float(r["rounds"].std())}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; prints the table and returns the JSON-able result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="defusal_small", choices=["defusal_small", "defusal"])
    parser.add_argument("--steps", type=int, default=0, help="agent-steps per run (0: the preset's run.steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["talk", "silent"], choices=["talk", "silent"])
    parser.add_argument("--baselines", nargs="*", default=["random_legal", "planner"],
                        choices=["random_legal", "heuristic", "planner"])
    parser.add_argument("--baseline_seeds", type=int, default=300)
    parser.add_argument("--out", default="runs/defusal_learning")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further launcher overrides, e.g. --extra --run.train_ratio 32")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = []
    t0 = time.time()
    for mode in args.modes:
        logdir = out / f"{args.preset}_{mode}_seed{args.seed}"
        cli = ["--configs", args.preset, "--seed", str(args.seed), "--logdir", str(logdir), "--ckpt.enabled", "false",
               "--env.options.silence", str(mode == "silent").lower()]
        if args.steps:
            cli += ["--run.steps", str(args.steps)]
        cli += args.extra
        start = time.time()
        summary = train.main(cli)
        ev = summary["eval"]
        results.append({
            "mode": mode, "preset": args.preset, "env_rounds": summary["env_rounds"],
            "agent_steps": summary["env_steps"], "updates": summary["updates"], "wall_s": round(time.time() - start, 1),
            "score": ev["score_mean"], "score_std": ev["score_std"], "rounds": ev["rounds_mean"],
            "rounds_std": ev["rounds_std"], "valid_pct": ev["valid_pct_mean"], "messages": ev["messages_sent_mean"],
            "greedy_score": ev["greedy_score_mean"], "greedy_rounds": ev["greedy_rounds_mean"],
            "greedy_rounds_std": ev["greedy_rounds_std"],
            "episodes": ev["episodes"], "curve": curve(logdir), "command": "python -m launch.train " + " ".join(cli),
        })
    config = lwm_config.parse_args(["--configs", args.preset, *args.extra], known=("logdir",))[0]
    base = baselines(config, args.baselines, args.baseline_seeds) if args.baselines else {}

    cpu = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\nDefusal team learning | preset {args.preset} ({config.env.name}) | {cpu} | "
          f"{time.time() - t0:.0f} s in all")
    print(f"{'team':<14}{'world rounds':>13}{'updates':>9}{'wall':>8}{'score':>16}{'rounds':>15}{'valid %':>9}"
          f"{'msgs':>7}{'greedy score':>14}{'greedy rounds':>16}")
    for r in results:
        print(f"{r['mode']:<14}{r['env_rounds']:>13}{r['updates']:>9}{r['wall_s']:>7.0f}s"
              f"{r['score']:>9.2f} ± {r['score_std']:<4.1f}{r['rounds']:>8.2f} ± {r['rounds_std']:<4.1f}"
              f"{r['valid_pct']:>9.1f}{r['messages']:>7.1f}{r['greedy_score']:>14.2f}"
              f"{r['greedy_rounds']:>9.2f} ± {r['greedy_rounds_std']:<4.1f}")
    for name, b in base.items():
        print(f"{name:<14}{'-':>13}{'-':>9}{'-':>8}{b['score']:>9.2f} ± {b['score_std']:<4.1f}"
              f"{b['rounds']:>8.2f} ± {b['rounds_std']:<4.1f}")
    for r in results:
        points = r["curve"]
        marks = np.linspace(0, len(points) - 1, min(8, len(points))).astype(int) if points else []
        print(f"curve {r['mode']} (world rounds: score/rounds): "
              + ", ".join(f"{points[i][0]}: {points[i][1]:.1f}/{points[i][2]:.1f}" for i in marks))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, "baselines": base}, indent=2))
    last = {"preset": args.preset, "machine": cpu, "results": [{k: v for k, v in r.items() if k != "curve"}
                                                               for r in results], "baselines": base}
    print(json.dumps(last))
    return last


if __name__ == "__main__":
    main()
