"""Imagination report of a trained agent: `python -m launch.visualize --logdir DIR --out report.html`.

  --logdir DIR          a training run (its config.yaml and ckpt/ are read)
  --checkpoint PATH     a checkpoint to use instead of the latest of DIR (a logdir, a ckpt/ directory or one
                        step directory such as DIR/ckpt/1200)
  --env NAME            run the episodes in another world (its specs must match the trained one)
  --episodes N          episodes collected with the trained policy (default 4; for a team run: worlds, each
                        played by all its agents)
  --context K           steps the model observes before imagining (default: a quarter of the episode, 1..5)
  --seed S              seed of the episodes and the imagination (default 0)
  --max_steps N         cut episodes after N steps (default 200)
  --platform P          cpu | gpu | tpu (default: the run's jax.platform)
  --out FILE.html       the page to write (default DIR/report.html)
  --gif FILE.gif        also the first episode's open-loop strip (true | predicted | error) as an animated GIF
  --mp4 FILE.mp4        the same as an MP4 (needs ffmpeg; skipped with a note without it)
  --scripted TEAM       defusal worlds only, no model: draw one episode of a scripted team (random_legal,
                        heuristic, planner) with the room graph, bombs, known sequences and messages

The page is one self-contained HTML file (images inline, no network access): a step slider, play button and
arrow keys; per step the true, predicted and error frames, the true and predicted words (top 5 with
probabilities), reward, continue, value and actions, observed and imagined steps marked; and the open-loop
error by horizon, which is also printed. For a team run (the defusal world, `lwm.team`) every round shows each
agent's words, move and talk and predictions, the true room graph and each agent's graph decoded from its latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launch.cli import arguments, fail, parse_flags, to_int
from lwm import config as lwm_config
from lwm.runtime import default_cache_dir, setup_jax

FLAGS = ("logdir", "checkpoint", "env", "episodes", "context", "seed", "max_steps", "platform", "out", "gif", "mp4",
         "scripted")
PLATFORMS = ("cpu", "gpu", "tpu")


def parse(argv: Sequence[str]) -> dict[str, str]:
    """`--flag value` pairs; unknown flags and missing values are errors that list the flags."""
    return parse_flags(argv, FLAGS)


def _int(flags: dict, name: str, default: int | None, low: int) -> int | None:
    return default if name not in flags else to_int(flags[name], name, low)


def check_out(path: Path, flag: str = "--out") -> None:
    """Fails early (before any compilation) when `path` cannot be written."""
    if path.is_dir():
        raise fail(f"{flag} {path} is a directory; give a file name such as {path / 'report.html'}.")
    if not path.parent.is_dir():
        raise fail(f"{flag} {path}: the directory {path.parent} does not exist.")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as e:
        raise fail(f"{flag} {path} is not writable ({e.strerror or type(e).__name__}).") from None
    if not existed:
        path.unlink()


def load_run(logdir: Path, checkpoint: str | None) -> tuple[Any, Path]:
    """(config of the run, checkpoint directory argument) with clear errors for missing pieces."""
    from lwm.checkpoint import CheckpointError, resolve

    if not logdir.exists():
        raise fail(f"--logdir {logdir} does not exist; give the --logdir of a training run (launch.train).")
    if not logdir.is_dir():
        raise fail(f"--logdir {logdir} is not a directory.")
    cfg_path = logdir / "config.yaml"
    if not cfg_path.exists():
        raise fail(f"--logdir {logdir} holds no config.yaml: it is not a training run's logdir.")
    try:
        config = lwm_config.load([str(cfg_path)])
    except lwm_config.ConfigError as e:
        raise fail(f"{cfg_path}: {e}") from None
    source = Path(checkpoint).expanduser() if checkpoint else logdir
    try:
        directory, step = resolve(source)
    except CheckpointError as e:
        raise fail(str(e).replace("--from_checkpoint", "--checkpoint")) from None
    if step is None:
        if not complete_steps(directory):
            flag = "--checkpoint" if checkpoint else "--logdir"
            raise fail(f"{flag} {source}: no complete checkpoint in {directory}; train first (python -m "
                        "launch.train ... --logdir DIR, checkpoints are on by default) or pass --checkpoint PATH.")
    return config, source


def complete_steps(directory: Path) -> list[int]:
    """Complete checkpoint steps in `directory`, read without touching it (a run may be writing there)."""
    import orbax.checkpoint as ocp
    from etils import epath

    if not directory.is_dir():
        return []
    manager = ocp.CheckpointManager(epath.Path(directory), options=ocp.CheckpointManagerOptions(create=False))
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def scripted_defusal(env_name: str, team: str, seed: int, out: Path, max_steps: int) -> dict:
    """One scripted defusal episode drawn per round (no model): graph, agents, bombs, known sequences, messages."""
    import envs
    from envs.defusal import render as defusal_render
    from lwm.visualize import page_data, write_html

    env = envs.make(env_name, seed=seed)
    episode = defusal_render.scripted_episode(env, team, seed=seed, max_rounds=max_steps)
    data = page_data(episode, vocab=None, title=f"{env_name}: scripted team '{team}'",
                     meta={"world": env_name, "team": team, "seed": seed, "rounds": episode["episodes"][0]["length"]})
    write_html(data, out)
    return episode


def main(argv: Sequence[str] | None = None) -> dict:
    argv = arguments(argv, __doc__)
    flags = parse(argv)
    episodes = _int(flags, "episodes", 4, 1)
    context = _int(flags, "context", None, 1)
    seed = _int(flags, "seed", 0, 0)
    max_steps = _int(flags, "max_steps", 200, 2)
    if "platform" in flags and flags["platform"] not in PLATFORMS:
        raise fail(f"--platform {flags['platform']!r} is not known; use one of {', '.join(PLATFORMS)}.")

    if "scripted" in flags:
        import envs
        from envs.defusal import render as defusal_render

        name = flags.get("env", "defusal")
        if not name.startswith("defusal") or name not in envs.names():
            raise fail(f"--scripted draws defusal worlds only; --env {name!r} is not one of "
                        f"{', '.join(n for n in envs.names() if n.startswith('defusal'))}.")
        if flags["scripted"] not in defusal_render.TEAMS:
            raise fail(f"--scripted {flags['scripted']!r} is not known; use one of {', '.join(defusal_render.TEAMS)}.")
        if "out" not in flags:
            raise fail("--out FILE.html is required with --scripted.")
        out = Path(flags["out"]).expanduser()
        check_out(out)
        setup_jax(flags.get("platform", "cpu"), "")
        scripted_defusal(name, flags["scripted"], seed, out, max_steps)
        print(f"Report: {out}")
        return {"html": str(out)}

    if "logdir" not in flags:
        raise fail("--logdir DIR is required (a training run's logdir).")
    logdir = Path(flags["logdir"]).expanduser()
    config, source = load_run(logdir, flags.get("checkpoint"))
    out = Path(flags.get("out", logdir / "report.html")).expanduser()
    check_out(out)
    for name in ("gif", "mp4"):
        if name in flags:
            check_out(Path(flags[name]).expanduser(), f"--{name}")
    trained = config
    if "env" in flags:
        try:
            config = config.update({"env.name": flags["env"]}, where="--env")
        except lwm_config.ConfigError as e:
            raise fail(str(e)) from None
    platform = flags.get("platform", config.jax.platform)
    cache = config.jax.cache_dir
    setup_jax(platform, default_cache_dir(str(logdir)) if cache == "auto" else cache)

    import envs
    from launch.train import env_factory
    from lwm.agent import Agent
    from lwm.checkpoint import CheckpointError, load_into
    from lwm.visualize import visualize

    if config.env.name in envs.names() and envs.has_batched(config.env.name):
        config = config.update({"env.num_envs": episodes}, where="--episodes")  # one team env of N worlds
    try:
        make_env = env_factory(config)
    except (ValueError, TypeError, ImportError) as e:
        if "env" in flags:
            raise fail(f"--env {config.env.name}: cannot build it with the run's env.options "
                        f"{dict(config.env.options)} ({e}). {_trained_on(trained, env_factory)}") from None
        raise fail(f"cannot build world {config.env.name!r}: {e}") from None
    first = make_env(20_000)
    team = is_team_env(first)
    worlds = [first] if team else [first] + [make_env(20_000 + i) for i in range(1, episodes)]
    spec, act_spec = world_specs(first)
    if "env" in flags:
        check_world(trained, env_factory, config.env.name, spec, act_spec, team)
    agent = Agent(spec, act_spec, config)
    try:
        ts, used = load_into(source, agent.init(config.seed), "agent")
    except CheckpointError as e:
        raise fail(str(e).replace("--from_checkpoint", "--checkpoint")) from None
    what = f"{episodes} world(s) x {first.num_agents} agents" if team else f"{episodes} episode(s)"
    print(f"lwm: visualising {used} on {config.env.name} ({what})", flush=True)
    renderers = grid_renderers(spec)
    try:
        result = visualize(
            agent, ts["params"], worlds, out, context=context, seed=seed, vocab=getattr(worlds[0], "vocab", None),
            renderers=renderers, gif=flags.get("gif"), mp4=flags.get("mp4"), max_steps=max_steps,
            title=f"{config.env.name}: imagination of {used.parent.parent.name}/{used.name}",
            meta={"world": config.env.name, "checkpoint": str(used), "seed": seed}, **world_drawings(first))
    except ValueError as e:
        raise fail(str(e)) from None
    for world in worlds:
        world.close()
    print("Open-loop error by horizon (steps after the observed context):")
    print(result["text"])
    for name in ("gif", "mp4"):
        if name in flags and name not in result["paths"]:
            import shutil

            why = ("ffmpeg is not installed" if name == "mp4" and shutil.which("ffmpeg") is None
                   else "the world has no image or grid observation to put in a strip")
            print(f"note: --{name} {flags[name]} skipped: {why}.")
    print(f"Report: {out}" + "".join(f" | {k}: {v}" for k, v in result["paths"].items() if k != "html"))
    summary = {"html": str(out), "checkpoint": str(used), "context": result["context"],
               "horizon": result["horizon"], "observed": result["observed"], "paths": result["paths"]}
    summary["result"] = result
    return summary


def is_team_env(world: Any) -> bool:
    """Whether `world` is a team environment (several agents per world; `lwm.team`)."""
    from lwm.team import is_team_env as check

    return check(world)


def world_specs(world: Any) -> tuple[dict, Any]:
    """(observation spec, action spec) the agent sees in `world`: a team world's per-agent specs with `agent_id`."""
    from lwm.team import team_specs

    if is_team_env(world):
        return team_specs(world)
    return dict(world.observation_spec()), world.action_spec()


def _describe(spec: Any) -> dict[str, str]:
    if not isinstance(spec, dict):
        spec = {"action": spec}
    import numpy as np

    return {k: f"{tuple(v.shape)} {v.dtype}" + (f" <= {np.max(v.maximum)}" if hasattr(v, "maximum") else "")
            for k, v in spec.items() if not k.startswith("log_")}


def _trained_on(trained: Any, env_factory: Any) -> str:
    """'The checkpoint was trained on X (...)': what a world passed with --env must match."""
    world = env_factory(trained)(0)
    try:
        kind = f"a team world of {world.num_agents} agents" if is_team_env(world) else "a single-agent world"
        obs, _ = world_specs(world)
    finally:
        world.close()
    keys = ", ".join(f"{k} {v}" for k, v in _describe(obs).items())
    return (f"The checkpoint was trained on {trained.env.name} ({kind}; observations {keys}); --env must name a "
            "world with the same observations and actions.")


def check_world(trained: Any, env_factory: Any, name: str, spec: dict, act_spec: Any, team: bool) -> None:
    """Fails (naming both worlds and what differs) when the --env world does not fit the trained model."""
    world = env_factory(trained)(0)
    try:
        was_team = is_team_env(world)
        want_obs, want_act = world_specs(world)
        agents = world.num_agents if was_team else 1
    finally:
        world.close()
    problems = []
    if was_team != team:
        problems.append(f"it is {'a team' if team else 'a single-agent'} world, the checkpoint's "
                        f"{'a team world of ' + str(agents) + ' agents' if was_team else 'a single-agent world'}")
    for label, want, got in (("observation", _describe(want_obs), _describe(spec)),
                             ("action", _describe(want_act), _describe(act_spec))):
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                problems.append(f"{label} {key!r}: checkpoint {want.get(key, 'absent')}, "
                                f"--env {got.get(key, 'absent')}")
    if problems:
        raise fail(f"--env {name} does not fit the checkpoint, trained on {trained.env.name}: "
                    + "; ".join(problems) + ".")


def world_drawings(world: Any) -> dict:
    """Keyword arguments of `lwm.visualize.visualize` that draw a world it knows: for a defusal team, the true
    room graph of every round (`world_svg`), each agent's decoded `vector` drawn the same way (`decoders`), the
    move and talk names and the agents' names. Nothing for other worlds."""
    from envs.defusal.env import BatchedDefusal

    if not isinstance(world, BatchedDefusal):
        return {}
    from envs.defusal import core
    from envs.defusal import render as defusal_render

    params = world.params
    return {"world_svg": lambda env: defusal_render.world_svgs(env.state, params),
            "decoders": {"vector": lambda v: defusal_render.svg_vector(v, params)},
            "action_names": {"move": core.ACTION_NAMES, "talk": ("silence", *core.MESSAGE_WORDS)},
            "agent_names": core.AGENT_NAMES[: params.num_agents]}


def grid_renderers(spec) -> dict:
    """minigrid's own tiles for a symbolic 7×7×3 `grid` (the adapter stores it row-major; the renderer takes
    minigrid's [x, y] layout)."""
    if "grid" not in spec or tuple(spec["grid"].shape) != (7, 7, 3):
        return {}
    from envs.gym_adapter import EgoRenderer

    draw = EgoRenderer(56)
    draw.reuse = False
    return {"grid": lambda codes: draw(codes.transpose(1, 0, 2).astype("int64"))}


if __name__ == "__main__":
    main()
