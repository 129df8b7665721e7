"""Evaluate a trained agent: `python -m launch.eval --logdir DIR [--suite all] [--episodes 100] --out results/`.

  --logdir DIR          a training run (config.yaml, ckpt/ and metrics.jsonl are read)
  --checkpoint PATH     a checkpoint to use instead of the latest of DIR (a logdir, a ckpt/ directory or one
                        step directory such as DIR/ckpt/1200); its own saved config decides world and model
  --suite NAME          defusal | gridworld | homegrid | all (default all: the suite of the checkpoint's world)
  --episodes N          episodes per seed for every row (default 100)
  --seeds S [S ...]     evaluation seeds (default 0): each seed seeds the worlds, the policy and the baselines
  --mode MODE           greedy | sample (default: both for the defusal team, greedy otherwise)
  --probes BOOL         belief probes in the defusal suite (default true)
  --platform P          cpu | gpu | tpu (default: the run's jax.platform)
  --world K=V [K=V ...] play in the checkpoint's world with these switches changed (env.options, YAML values),
                        e.g. --world tools_mix=0 for a team trained on a curriculum of tool sets
  --out DIR             where results.json, results.md and the PNG plots go (default DIR/eval)

Suites (each needs a checkpoint of one of its worlds):
  defusal    worlds defusal, defusal_small: team score, rounds to completion, valid-action %, explosions and
             messages for the agent (sampled and argmax actions), the same checkpoint with the channel silenced,
             the scripted teams (random legal, heuristic, planner, the packs, scouts) and Li et al. (2023) Table 1
             (published); belief probes (theory of mind)
             on the frozen world model's latent states beside Table 2, a random-initialised model and the base rate
  gridworld  worlds grid_*, minigrid, tokenchoice: return and length of the agent, the same checkpoint with every
             token masked (<pad>), random and oracle play, and the world's optimal and chance returns
  homegrid   world homegrid (pip install -e '.[homegrid]'): the agent, tokens masked, random play
Deterministic given the seeds. Cells are mean ± std [95% bootstrap CI of the mean] over episodes.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launch.cli import arguments, fail, parse_flags, to_int, world_changes
from lwm import config as lwm_config
from lwm.runtime import default_cache_dir, setup_jax

FLAGS = ("logdir", "checkpoint", "suite", "episodes", "seeds", "mode", "probes", "platform", "world", "out")
SUITES = ("defusal", "gridworld", "homegrid", "all")
SUITE_WORLDS = {
    "defusal": "defusal, defusal_small",
    "gridworld": "grid_* (e.g. grid_task_s), minigrid, tokenchoice",
    "homegrid": "homegrid",
}
MODES = ("greedy", "sample")
PLATFORMS = ("cpu", "gpu", "tpu")
EVAL_ENV_OFFSET = 30_000  # env indices of evaluation worlds (training uses 0.., the loop's own eval 10_000..)

# Li et al., "Theory of Mind for Multi-Agent Collaboration via Large Language Models" (EMNLP 2023), as quoted in
# docs/REFERENCES.md. Table 1: full world (5 rooms, 5 bombs, 30 rounds, score /90), 3 trials per team.
PUBLISHED_TABLE1: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ChatGPT", {"score": (43.0, 4.7), "rounds": (30.0, None, "never completes"), "valid_pct": (62.5, None)}),
    ("GPT-4", {"score": (90.0, 0.0), "rounds": (28.3, 2.6), "valid_pct": (71.8, None)}),
    ("GPT-4 + belief state", {"score": (90.0, 0.0), "rounds": (12.3, 2.0), "valid_pct": (86.1, None)}),
    ("MAPPO (45M env steps, sees teammates)", {"score": (90.0, 0.0), "rounds": (11.0, 0.0)}),
    ("CBS planner (centralised)", {"score": (90.0, 0.0), "rounds": (6.0, 0.0)}),
    ("Random", {"score": (38.0, 14.7), "rounds": (30.0, None)}),
)
# Measured on the released environment (docs/REFERENCES.md): uniform random legal actions, 300 seeds.
RELEASED_RANDOM = ("random legal (released env, 300 seeds)", {"score": (48.9, 18.0)})
# Table 2: theory-of-mind accuracy judged by people against the full history.
PUBLISHED_TABLE2: tuple[tuple[str, dict[str, float]], ...] = (
    ("ChatGPT", {"introspection": 0.790, "first_order": 0.419, "second_order": 0.116}),
    ("GPT-4", {"introspection": 0.800, "first_order": 0.600, "second_order": 0.643}),
    ("GPT-4 + belief", {"introspection": 0.972, "first_order": 0.801, "second_order": 0.694}),
)
TEAM_METRICS = ("score", "rounds", "valid_pct", "explosions", "messages_sent", "together_pct")
TEAM_LABELS = {"score": "score", "rounds": "rounds to completion", "valid_pct": "valid %", "explosions": "explosions",
               "messages_sent": "messages / episode", "together_pct": "together %"}
ORDERS = ("introspection", "first_order", "second_order")
ORDER_LABELS = {"introspection": "introspection", "first_order": "1st order", "second_order": "2nd order"}


# ----------------------------------------------------------------------------------------------- arguments


def parse(argv: Sequence[str]) -> dict[str, Any]:
    """`--flag value` (`--seeds` takes several values); unknown flags and missing values list the flags."""
    return parse_flags(argv, FLAGS, multi=("seeds", "world"))


# The switches that change the game the published teams played (a different map, team, tool set or rule):
# `teammates` is left out (MAPPO saw its teammates), and so are reward shaping, silence and the message sizes.
RELEASED_RULES = ("num_agents", "num_rooms", "num_bombs", "random_graph", "start", "tools_per_agent", "tools_mix",
                  "wrong_cut", "max_rounds")


def released_rules_changed(params: Any) -> list[str]:
    """`switch=value` for each rule of `params` that differs from the released world's (empty: comparable)."""
    from envs.defusal import core

    default = core.Params()
    return [f"{f}={getattr(params, f)!r}" for f in RELEASED_RULES if getattr(params, f) != getattr(default, f)]


def agent_rows(mode: str, ours: list, ablated: list, ablation: str, metrics: Sequence[str], seed: int) -> list[dict]:
    """The two rows every suite starts with: the agent and the same checkpoint under its ablation."""
    from lwm.evaluate import summarize_episodes

    return [
        {"name": f"agent ({mode})", "source": "ours", "episodes": len(ours),
         "metrics": summarize_episodes(ours, metrics, seed=seed)},
        {"name": f"agent, {ablation} ({mode})", "source": "ours (ablation)", "episodes": len(ablated),
         "metrics": summarize_episodes(ablated, metrics, seed=seed + 1)},
    ]


def check_args(flags: dict[str, Any]) -> dict[str, Any]:
    """Validated options (before anything is loaded or compiled)."""
    if "logdir" not in flags:
        raise fail("--logdir DIR is required (a training run's logdir).")
    suite = flags.get("suite", "all")
    if suite not in SUITES:
        raise fail(f"--suite {suite!r} is not known; use one of {', '.join(SUITES)}.")
    mode = flags.get("mode")
    if mode is not None and mode not in MODES:
        raise fail(f"--mode {mode!r} is not known; use one of {', '.join(MODES)}.")
    if "platform" in flags and flags["platform"] not in PLATFORMS:
        raise fail(f"--platform {flags['platform']!r} is not known; use one of {', '.join(PLATFORMS)}.")
    probes = str(flags.get("probes", "true")).lower()
    if probes not in ("true", "false", "1", "0", "yes", "no"):
        raise fail(f"--probes {flags['probes']!r} must be true or false.")
    seeds = [to_int(s, "seeds", 0) for s in flags.get("seeds", ["0"])]
    if len(set(seeds)) != len(seeds):
        raise fail(f"--seeds {seeds} repeats a seed.")
    logdir = Path(flags["logdir"]).expanduser()
    return {"logdir": logdir, "checkpoint": flags.get("checkpoint"), "suite": suite, "mode": mode,
            "episodes": to_int(flags.get("episodes", "100"), "episodes", 1), "seeds": seeds,
            "probes": probes in ("true", "1", "yes"), "platform": flags.get("platform"),
            "world": world_changes(flags.get("world", [])),
            "out": Path(flags.get("out", logdir / "eval")).expanduser()}


def suite_of(world: str) -> str | None:
    """The suite that evaluates `world` (None if none does)."""
    if world in ("defusal", "defusal_small"):
        return "defusal"
    if world == "homegrid":
        return "homegrid"
    if world.startswith("grid_") or world in ("minigrid", "tokenchoice"):
        return "gridworld"
    return None


def check_out(out: Path) -> None:
    """Creates `out` and checks it is writable (before any compilation)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(f"--out {out} cannot be created ({e.strerror or type(e).__name__}).") from None
    if not out.is_dir() or not os.access(out, os.W_OK):
        raise fail(f"--out {out} is not a writable directory.")


# --------------------------------------------------------------------------------------------- the run


def checkpoint_config(source: Path, fallback: Any) -> tuple[Any, Path, int]:
    """(config saved with the checkpoint, its directory, its step); the logdir's config when none is saved."""
    import orbax.checkpoint as ocp
    from etils import epath

    from launch.visualize import complete_steps
    from lwm.checkpoint import resolve

    directory, step = resolve(source)
    step = complete_steps(directory)[-1] if step is None else step
    manager = ocp.CheckpointManager(epath.Path(directory), options=ocp.CheckpointManagerOptions(create=False),
                                    item_handlers={"meta": ocp.JsonCheckpointHandler()})
    try:
        meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint is reported below
        raise fail(f"checkpoint {directory / str(step)} cannot be read ({type(e).__name__}: {e}).") from None
    finally:
        manager.close()
    saved = meta.get("config")
    if not saved:
        return fallback, directory, step
    try:
        return lwm_config.load().update(saved, where=f"checkpoint {directory / str(step)}"), directory, step
    except lwm_config.ConfigError as e:
        raise fail(f"checkpoint {directory / str(step)}: its config does not load ({e}).") from None


def seeded(config: Any, seed: int, **changes: Any) -> Any:
    """The run's config with evaluation seed `seed` (worlds and policy) and further dotted changes."""
    update = {"seed": seed, **changes}
    if "seed" in config.env.options:
        update["env.options.seed"] = seed
    return config.update(update, where="launch.eval")


def make_worlds(config: Any, count: int, seed: int, **changes: Any) -> list:
    """`count` evaluation environments (or one batch of `count` worlds for a team world) seeded by `seed`."""
    import envs
    from launch.train import env_factory

    team = envs.has_batched(config.env.name)
    cfg = seeded(config, seed, **({"env.num_envs": count} if team else {}), **changes)
    make_env = env_factory(cfg)
    return [make_env(EVAL_ENV_OFFSET)] if team else [make_env(EVAL_ENV_OFFSET + i) for i in range(count)]


def published_row(name: str, values: dict[str, tuple], source: str, trials: int | None) -> dict:
    """A reference row as printed in its source: {metric: {mean, std, n, note}}."""
    metrics = {}
    for key, value in values.items():
        stat = {"mean": float(value[0]), "std": None if value[1] is None else float(value[1]), "n": trials,
                "ci_low": None, "ci_high": None}
        if len(value) > 2:
            stat["note"] = value[2]
        metrics[key] = stat
    return {"name": name, "source": source, "episodes": trials, "metrics": metrics}


def _agent_episodes(agent, params, make, episodes: int, seeds: Sequence[int], greedy: bool, on_step=None,
                    shadow=None) -> list[dict]:
    """The agent's episodes over every seed (each tagged with its seed); `make(seed)` builds a driver."""
    from lwm.evaluate import make_policy, run_episodes

    done = []
    for seed in seeds:
        driver = make(seed)
        act = make_policy(agent, params, driver.num_streams if hasattr(driver, "num_streams") else len(driver.envs),
                          seed, greedy, shadow_params=shadow)
        hook = None if on_step is None else (lambda step, index, s=seed, d=driver: on_step(step, index, s, d))
        done += [{**e, "seed": seed} for e in run_episodes(driver, act, episodes, on_step=hook)]
        for env in getattr(driver, "envs", [getattr(driver, "env", None)]):
            if env is not None:
                env.close()
    return done


def defusal_suite(agent, params, config, opts: dict, random_params) -> dict:
    """Team rows, silenced ablation, scripted teams, published Table 1 and the belief probes."""
    import jax
    import numpy as np

    from envs.defusal import core, scripted
    from lwm.evaluate import probe_accuracy, split_episodes, summarize_episodes
    from lwm.team import TeamDriver

    episodes, seeds = opts["episodes"], opts["seeds"]
    modes = [opts["mode"]] if opts["mode"] else ["sample", "greedy"]
    worlds = min(episodes, 64)
    keys = [k.name for k in agent.keys]
    world = config.env.name
    tom = jax.jit(jax.vmap(core.theory_of_mind))
    probe: dict[str, list] = {"feat": [], "shadow": [], "ids": [], **{o: [] for o in ORDERS}}

    def labels(state) -> dict[str, np.ndarray]:
        """Per stream (row w·A + i): introspection [B], 1st order [(A-1)·B], 2nd order [(A-1)·B]."""
        t = jax.device_get(tom(state))
        intro = np.asarray(t["tom_introspection"])  # [W, A, B]
        w, a, b = intro.shape
        others = np.array([[j for j in range(a) if j != i] for i in range(a)])  # [A, A-1]
        rows = np.arange(a)[:, None]
        first = np.asarray(t["tom_first_order"])[:, rows, others]  # [W, A, A-1, B]
        second = np.asarray(t["tom_second_order"])[:, rows, others]
        return {"introspection": intro.reshape(w * a, b), "first_order": first.reshape(w * a, -1),
                "second_order": second.reshape(w * a, -1)}

    def collect(step, index, seed, driver):
        a = driver.A
        for name, value in labels(driver.env.state).items():
            probe[name].append(value)
        probe["feat"].append(step["feat"])
        probe["shadow"].append(step["shadow_feat"])
        unit = np.repeat(np.arange(driver.W), a)
        probe["ids"].append(np.stack([np.full(unit.shape, seed), unit, np.repeat(index, a)], axis=1))

    def team_driver(seed, **changes):
        env = make_worlds(config, worlds, seed, **changes)[0]
        return TeamDriver(env, keys, name=world)

    want_probes = opts["probes"]
    rows, first = [], None
    for mode in modes:  # the probes read the first mode's episodes
        greedy, probing = mode == "greedy", want_probes and first is None
        t0 = time.time()
        ours = _agent_episodes(agent, params, team_driver, episodes, seeds, greedy,
                               on_step=collect if probing else None, shadow=random_params if probing else None)
        print(f"lwm: agent ({mode}): {len(ours)} episodes in {time.time() - t0:.1f} s", flush=True)
        t0 = time.time()
        silent = _agent_episodes(agent, params, lambda s: team_driver(s, **{"env.options.silence": True}), episodes,
                                 seeds, greedy)
        print(f"lwm: silenced ({mode}): {len(silent)} episodes in {time.time() - t0:.1f} s", flush=True)
        rows += agent_rows(mode, ours, silent, "channel silenced", TEAM_METRICS, seeds[0])
        first = ours if first is None else first
    t0 = time.time()
    base_params = make_worlds(config, 1, seeds[0])[0].params._replace(message_len=4)
    teams = dict(scripted.TEAMS)
    try:  # the pack teams (together, all three colours a round) and the scouts, where the world allows them
        scripted.check_pack_world(base_params)
        teams.update({"pack": scripted.pack, "pack (shortest tour)": scripted.pack_tour,
                      "scouts": scripted.pack_scouts})
    except ValueError:
        pass
    for i, name in enumerate(teams):
        per_seed = [scripted.evaluate(teams[name], base_params, jax.random.key(seed), episodes)
                    for seed in seeds]
        eps = [{k: float(v[e]) for k, v in r.items()} for r in per_seed for e in range(episodes)]
        rows.append({"name": name.replace("_", " "), "source": "scripted", "episodes": len(eps),
                     "metrics": summarize_episodes(eps, TEAM_METRICS, seed=seeds[0] + 2 + i)})
    print(f"lwm: scripted teams in {time.time() - t0:.1f} s", flush=True)
    changed = released_rules_changed(base_params)
    full = world == "defusal" and not changed
    why = f"full world; not comparable: {', '.join(changed)}" if changed else "full world; not comparable"
    source = "published" if full else f"published ({why})"
    rows += [published_row(name, values, source, 3) for name, values in PUBLISHED_TABLE1]
    rows.append(published_row(*RELEASED_RANDOM, "reference (released env)" if full else f"reference ({why})", 300))
    p = base_params
    notes = [f"World {world}: {p.num_rooms} rooms, {p.num_bombs} bomb(s), at most {p.max_rounds} rounds, team score "
             f"0..{core.max_score(p)}; rounds to completion = {p.max_rounds} when not completed.",
             "Agent rows: one checkpoint, actions sampled (sample) or argmax (greedy); the silenced ablation runs "
             "the same checkpoint with the world's `silence` switch on (no message reaches a teammate).",
             "Scripted teams use their own template messages (message_len 4); the planner sees everything; the "
             "pack walks together and applies all three colours each round, never inspecting or talking; with the "
             "shortest tour it is the best a team that never splits can do; scouts are the pack, except that an "
             "agent walks on to the next bomb once its own colour has cut a phase of the bomb here.",
             "Published rows: Li et al. (EMNLP 2023) Table 1, 3 trials each, on the full world (5 rooms, 5 bombs, "
             "30 rounds, score /90)."]
    if p.silence:
        notes.append("This checkpoint was trained (and its agent row runs) with the channel silenced already.")
    suite = {"title": f"Defusal team ({world})", "team": True, "metrics": list(TEAM_METRICS), "labels": TEAM_LABELS,
             "rows": rows, "notes": notes}
    if want_probes:
        suite["probes"] = probe_suite(probe, seeds[0], {(e["seed"], e["unit"], e["index"]) for e in first},
                                      probe_accuracy, split_episodes)
    return suite


def probe_suite(probe: dict, seed: int, kept: set, probe_accuracy, split_episodes) -> dict:
    """Held-out accuracy of linear probes on the trained and the random-initialised model's latent states."""
    import numpy as np

    ids = np.concatenate(probe["ids"])
    keep = np.array([tuple(r) in kept for r in ids.tolist()])
    ids = [tuple(r) for r in ids[keep].tolist()]
    train, test = split_episodes(ids, 0.25, seed)
    is_test = np.array([i in test for i in ids])
    feats = {"trained": np.concatenate(probe["feat"])[keep], "random": np.concatenate(probe["shadow"])[keep]}
    results: dict[str, dict] = {"trained": {}, "random": {}}
    for order in ORDERS:
        y = np.concatenate(probe[order])[keep]
        for name, x in feats.items():
            results[name][order] = probe_accuracy(x[~is_test], y[~is_test], x[is_test], y[is_test])
    rows = [
        {"name": "linear probe, trained world model", "source": "ours",
         "accuracy": {o: results["trained"][o]["accuracy"] for o in ORDERS},
         "balanced": {o: results["trained"][o]["balanced_accuracy"] for o in ORDERS}},
        {"name": "linear probe, random-init model", "source": "ours (control)",
         "accuracy": {o: results["random"][o]["accuracy"] for o in ORDERS},
         "balanced": {o: results["random"][o]["balanced_accuracy"] for o in ORDERS}},
        {"name": "majority class (base rate)", "source": "held-out labels",
         "accuracy": {o: results["trained"][o]["base_rate"] for o in ORDERS},
         "balanced": {o: results["trained"][o]["base_balanced_accuracy"] for o in ORDERS}},
    ]
    rows += [{"name": name, "source": "published", "accuracy": dict(acc)} for name, acc in PUBLISHED_TABLE2]
    detail = {o: {"n_train": results["trained"][o]["n_train"], "n_test": results["trained"][o]["n_test"],
                  "columns": results["trained"][o]["columns"], "positive_rate": results["trained"][o]["positive_rate"]}
              for o in ORDERS}
    notes = [f"Latent state (deter ⊕ stoch) of each agent at every round of the agent's episodes; "
             f"{len(train)} training and {len(test)} held-out episodes ({detail['introspection']['n_test']} held-out "
             "agent-rounds); one L2-regularised logistic regression per label column. Accuracy is pooled over "
             "columns; balanced accuracy is the mean recall of true and false labels (0.50 = no information), "
             "which the rare true labels make the sharper test.",
             "Labels from the world's state log (core.theory_of_mind), for agent i, teammate j, bomb k: "
             "introspection: i knows k's sequence; 1st order: j knows it; 2nd order: j knows that i knows it.",
             "The random-init model has the same architecture with fresh parameters and observes the same episodes.",
             "Published rows: Li et al. (EMNLP 2023) Table 2, LLM agents' answers judged by people; a different "
             "measurement (stated beliefs, not a probe of a latent state)."]
    return {"title": "Belief probes (theory of mind), held-out accuracy", "orders": list(ORDERS),
            "labels": ORDER_LABELS, "rows": rows, "detail": detail, "notes": notes}


def single_suite(kind: str, agent, params, config, opts: dict) -> dict:
    """Agent, tokens masked, random and oracle play, and the world's optimal / chance returns."""
    from envs.hinted_grid import run_baseline
    from lwm.driver import Driver
    from lwm.evaluate import summarize_episodes

    episodes, seeds = opts["episodes"], opts["seeds"]
    mode = opts["mode"] or "greedy"
    num = min(episodes, 16)
    keys = [k.name for k in agent.keys]
    world = config.env.name

    def driver(seed, **changes):
        return Driver(make_worlds(config, num, seed, **changes), keys, name=world)

    metrics = ("return", "length")
    t0 = time.time()
    ours = _agent_episodes(agent, params, driver, episodes, seeds, mode == "greedy")
    masked = _agent_episodes(agent, params, lambda s: driver(s, **{"env.mask_tokens": True}), episodes, seeds,
                             mode == "greedy")
    print(f"lwm: agent and masked agent: {len(ours) + len(masked)} episodes in {time.time() - t0:.1f} s", flush=True)
    first = seeds[0]
    rows = agent_rows(mode, ours, masked, "tokens masked", metrics, first)
    probe_env = make_worlds(config, 1, first)[0]
    policies = ["random"] + (["oracle"] if hasattr(probe_env, "oracle_action") else [])
    for i, policy in enumerate(policies):
        eps = []
        for seed in seeds:
            env = make_worlds(config, 1, seed)[0]
            eps += [{"return": run_baseline(env, policy, 1, seed=seed * 100_003 + e)} for e in range(episodes)]
            env.close()
        rows.append({"name": policy, "source": "scripted", "episodes": len(eps),
                     "metrics": summarize_episodes(eps, ("return",), seed=first + 2 + i)})
    for attr, label in (("optimal_return", "optimal return"), ("chance_return", "chance (best without language)")):
        value = getattr(probe_env, attr, None)
        if value is not None:
            rows.append({"name": label, "source": "world", "episodes": None,
                         "metrics": {"return": {"mean": float(value), "std": None, "n": None, "ci_low": None,
                                                "ci_high": None}}})
    probe_env.close()
    notes = [f"World {world}; agent rows: one checkpoint, actions {'argmax' if mode == 'greedy' else 'sampled'}; "
             "the masked ablation runs the same checkpoint with every token replaced by <pad> (env.mask_tokens).",
             "random: uniform actions; oracle: the world's privileged scripted action (oracle_action)."]
    if kind == "homegrid":
        notes.append("Dynalang's published HomeGrid results are learning curves after 50M env steps "
                     "(docs/REFERENCES.md), not a table to set beside a CPU run.")
    title = "Language worlds" if kind == "gridworld" else "HomeGrid"
    return {"title": f"{title} ({world})", "team": False, "metrics": list(metrics),
            "labels": {"return": "return", "length": "length"}, "rows": rows, "notes": notes}


def plots(results: dict, logdir: Path, out: Path, team: bool) -> list[str]:
    """Learning curves from metrics.jsonl, bars of the main metrics, the probe accuracies (PNG files)."""
    from lwm.evaluate import plot_bars, plot_curves, plot_probes, read_metrics

    made = []
    rows = read_metrics(logdir / "metrics.jsonl")
    keys = ("episode/score", "episode/rounds", "episode/valid_pct") if team else ("episode/return", "episode/length")
    path = plot_curves(rows, keys + ("loss/total",), out / "learning_curves.png", title=str(logdir))
    if path:
        made.append(path.name)
    for name, suite in results["suites"].items():
        comparable = [r for r in suite["rows"] if "not comparable" not in r["source"]]
        for metric in (("score", "rounds") if suite.get("team") else ("return",)):
            path = plot_bars(comparable, metric, out / f"{name}_{metric}.png",
                             title=f"{suite['title']}: {suite.get('labels', {}).get(metric, metric)}")
            if path:
                made.append(path.name)
        if suite.get("probes"):
            made.append(plot_probes(suite["probes"], out / f"{name}_probes.png").name)
    return made


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the evaluation; returns the results dict (also written to --out)."""
    argv = arguments(argv, __doc__)
    opts = check_args(parse(argv))
    from launch.visualize import load_run

    logdir = opts["logdir"]
    run_config, source = load_run(logdir, opts["checkpoint"])
    config, directory, step = checkpoint_config(source, run_config)
    if opts["world"]:
        try:
            config = config.update(opts["world"], where="--world")
        except (ValueError, TypeError, KeyError) as e:
            raise fail(str(e)) from None
    world = config.env.name
    own = suite_of(world)
    suites = [own] if opts["suite"] == "all" else [opts["suite"]]
    if own is None:
        raise fail(f"checkpoint {directory / str(step)} was trained on world {world!r}, which no suite evaluates; "
                    + "; ".join(f"{s}: {w}" for s, w in SUITE_WORLDS.items()) + ".")
    if suites != [own]:
        raise fail(f"--suite {opts['suite']} evaluates {SUITE_WORLDS[opts['suite']]}, but checkpoint "
                    f"{directory / str(step)} was trained on world {world!r}; use --suite {own} (or all).")
    check_out(opts["out"])
    cache = config.jax.cache_dir
    setup_jax(opts["platform"] or config.jax.platform, default_cache_dir(str(logdir)) if cache == "auto" else cache)

    from lwm.agent import Agent
    from lwm.checkpoint import CheckpointError, load_into
    from lwm.evaluate import write_results
    from lwm.team import is_team_env, team_specs

    t_start = time.time()
    try:
        probe_env = make_worlds(config, 1, opts["seeds"][0])[0]
    except (ValueError, TypeError, ImportError) as e:
        raise fail(f"cannot build world {world!r}: {e}") from None
    team = is_team_env(probe_env)
    obs_spec, act_spec = team_specs(probe_env) if team else (probe_env.observation_spec(), probe_env.action_spec())
    probe_env.close()
    agent = Agent(obs_spec, act_spec, config)
    try:
        ts, used = load_into(directory / str(step), agent.init(config.seed), "agent")
    except CheckpointError as e:
        raise fail(str(e).replace("--from_checkpoint", "--checkpoint")) from None
    print(f"lwm: evaluating {used} ({world}, suite {suites[0]}, {opts['episodes']} episode(s) x seeds "
          f"{opts['seeds']})", flush=True)
    random_params = agent.init(config.seed + 1)["params"] if team and opts["probes"] else None

    results: dict[str, Any] = {
        "meta": {"checkpoint": str(used), "step": step, "world": world, "suite": suites[0],
                 "episodes": opts["episodes"], "seeds": opts["seeds"],
                 "world_changes": {k.removeprefix("env.options."): v for k, v in opts["world"].items()},
                 "mode": opts["mode"] or ("sample, greedy" if team else "greedy"),
                 "command": "python -m launch.eval " + " ".join(shlex.quote(a) for a in argv)},
        "suites": {},
    }
    if suites[0] == "defusal":
        results["suites"]["defusal"] = defusal_suite(agent, ts["params"], config, opts, random_params)
    else:
        results["suites"][suites[0]] = single_suite(suites[0], agent, ts["params"], config, opts)
    results["plots"] = plots(results, logdir, opts["out"], team)
    results["meta"]["wall_s"] = round(time.time() - t_start, 1)
    json_path, md_path = write_results(results, opts["out"])
    print(md_path.read_text())
    print(f"Results: {json_path} | {md_path} | plots: " + ", ".join(str(opts["out"] / p) for p in results["plots"]))
    return results


if __name__ == "__main__":
    main()
