"""Does a defusal team's actor lean on illegal moves? `python bench/defusal_masks.py CHECKPOINT [--worlds 32]`.

The team acts with the observed `action_mask` (illegal moves masked), so replay never holds an illegal move and the
world model cannot know what one does. This plays `--rounds` rounds of the checkpoint's own world with its masked,
sampled policy and reports, over every agent-step:

* how much of the *unmasked* actor's move probability lies on illegal moves (an actor that learned in imagination
  from what the model makes up for illegal moves puts a lot there; masking only hides it when acting);
* how often the world model's decoded `action_mask` (`Decoder.predict_flags`, from the posterior state) equals the
  observed one (what imagination masks with);
* the share of each move the team takes (0 inspect, 1-5 go to room k, 6-8 red / green / blue cutter).

CHECKPOINT: a logdir, its ckpt/ directory or one step directory; the checkpoint's saved config decides world and
model. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--worlds", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=150, help="rounds played (every world restarts when done)")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    if args.worlds < 1 or args.rounds < 1:
        parser.error(f"--worlds {args.worlds} and --rounds {args.rounds} must be at least 1")

    from lwm.runtime import setup_jax

    setup_jax("cpu", str(Path(__file__).resolve().parents[1] / ".jax_cache"))
    import jax
    import numpy as np
    from flax import nnx

    import envs
    from launch.eval import checkpoint_config
    from lwm import config as lwm_config
    from lwm.agent import Agent
    from lwm.checkpoint import load_into
    from lwm.team import TeamDriver, team_specs

    config, _, step = checkpoint_config(Path(args.checkpoint), lwm_config.load(["defusal"]))
    if not config.agent.actor.mask:
        parser.error(f"{args.checkpoint}: its config has no agent.actor.mask; nothing is masked")
    mask_key, head = config.agent.actor.mask.split(":")
    env = envs.make_batched(config.env.name, args.worlds, seed=args.seed, **dict(config.env.options))
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    ts, used = load_into(args.checkpoint, agent.init(0))
    params = ts["params"]
    driver = TeamDriver(env, list(obs_spec))

    @jax.jit
    def inspect(params, state, observed):
        nets = nnx.merge(agent.graph, params)
        feat = nets.wm.rssm.feat(state)
        prob = jax.nn.softmax(nets.actor(feat)[head], -1)
        decoded = nets.wm.decoder.predict_flags(feat, mask_key)
        return (prob * ~observed).sum(-1), (decoded == observed).all(-1)

    run = {"carry": agent.init_policy(driver.num_streams), "key": jax.random.key(args.seed)}
    illegal, agree, moves = [], [], []

    def policy(obs, is_first):
        run["key"], sub = jax.random.split(run["key"])
        inputs = {k: obs[k] for k in obs_spec}
        run["carry"], actions, state = agent.policy(params, run["carry"], inputs, is_first, sub)
        mass, same = inspect(params, state, inputs[mask_key])
        illegal.append(np.asarray(mass))
        agree.append(np.asarray(same))
        moves.append(np.asarray(actions[head]))
        return jax.device_get(actions), {}

    for _ in range(args.rounds):
        driver.step(policy)
    mass, same, taken = np.concatenate(illegal), np.concatenate(agree), np.concatenate(moves)
    result = {
        "checkpoint": str(used), "step": step, "agent_steps": int(mass.size),
        "illegal_mass_mean": float(mass.mean()), "illegal_mass_median": float(np.median(mass)),
        "illegal_mass_over_half": float((mass > 0.5).mean()), "decoded_mask_equal": float(same.mean()),
        "move_share": [round(float(x), 4) for x in np.bincount(taken, minlength=9) / taken.size],
    }
    print(f"{used} ({mass.size} agent-steps of the masked, sampled team)")
    print(f"  unmasked actor's {head!r} probability on illegal moves: mean {mass.mean():.3f}, median "
          f"{np.median(mass):.3f}, above 1/2 in {(mass > 0.5).mean():.1%} of agent-steps")
    print(f"  decoded {mask_key!r} equals the observed one in {same.mean():.1%} of agent-steps")
    print(f"  moves taken (0 inspect, 1-5 go, 6-8 cut): {result['move_share']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
