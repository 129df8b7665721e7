"""Pack strategies of the defusal world, and how close a trained team plays to them.

Usage: ``python bench/defusal_pack.py [--seeds 300] [--logdir RUN [--mode greedy|sample] [--plan N]
[--episodes 100] [--mates head|real] [--world KEY=VALUE ...]]``.

A *pack* team (``envs.defusal.scripted.pack``) never inspects and never talks: the three agents stay in one room,
walk (shortest path, lowest room index on ties) to the nearest room whose bomb is still active, and there cut until
it is defused. Wrong cuts are refused (``wrong_cut: noop``), so trying colours replaces knowing the sequence:

* ``pack, 3 colours``: alpha cuts red, bravo green, charlie blue every round (with two tools each, the only other
  cover is green / blue / red), so each round applies all three colours (in the world's random order);
* ``pack, 2 colours``: the agents alternate (green, green, red) and (red, blue, blue), two colours a round, the
  convention the full-world runs of the README learned;
* ``pack, shortest tour``: three colours a round, walking a shortest tour of the active bombs' rooms instead of to
  the nearest one: the best a team that never splits can do (knowing the sequences would not help it, since the
  world applies a round's cuts in a random order);
* ``scouts`` (not a pack): silent and decentralised like the pack, but an agent leaves a bomb once its own colour
  has cut a phase of it (no colour repeats within a bomb) and walks ahead to the next one.

With ``--logdir`` the script also plays a training run's latest checkpoint (the launcher's world and model) and
measures how much of a pack it is (the scripted rows then play the run's own world): the share of rounds its three
agents spend in one room, in rounds where they cut an active bomb together, how many distinct colours they
apply, the rounds of an episode in which all agents walk, none does and some do (a split), and what an agent does
the round after its own cut advanced a bomb that stays active (scouts walk on), with
how its model's one-step value (what ``agent.actor.lookahead`` trains on) rates walking on against what it does.
Then the colour test: in each first cut round at a one-phase bomb, for each agent whose two colours differ in
what they add to its teammates' cuts that round, does its world model predict more reward (the mean over 32 prior
draws of the next step after each colour, from the agent's own posterior) for the colour that covers more, and does
the agent take it? 50% is chance for both. With ``agent.team_model`` it also reports the colour test given the
teammates' real moves (instead of the teammate-action head's draws), and how often those draws match the moves.
Needs the default start (``same``), three agents and ``wrong_cut: noop``.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from envs.defusal import core, scripted  # noqa: E402
from launch.cli import world_changes  # noqa: E402
from lwm.config import ConfigError  # noqa: E402

CUT = scripted.CUT  # action id of the red cutter; green and blue follow


def check_world(params: core.Params) -> None:
    try:
        scripted.check_pack_world(params)
    except ValueError as e:
        raise SystemExit(f"defusal_pack: {e}") from None


def trained_team(logdir: Path, mode: str, episodes: int, seed: int, samples: int = 32, mates: str = "head",
                 world: dict | None = None, plan: int = 0) -> dict:
    """Plays the run's latest checkpoint; returns its score, rounds, pack measures and the model's colour test.

    `world` changes switches of the checkpoint's world (``launch.cli.world_changes``), e.g.
    ``{"env.options.tools_per_agent": 2}`` plays a team trained with one tool each in the default world.

    `mates` (team-model runs): what each agent's RSSM takes as its teammates' last actions when acting: the
    teammate-action head's draws (`head`, decentralised, as trained agents act) or the actions they really took
    (`real`: an oracle that measures what the head's guesses cost).

    `plan` > 0: each agent's move is its model's one-step best (reward + γ·cont·value, the mean over `plan` prior
    draws) instead of the actor's (``Agent._plan``), decision-time planning with the trained model."""
    from flax import nnx

    from launch.eval import checkpoint_config, make_worlds
    from lwm import config as lwm_config
    from lwm.agent import Agent
    from lwm.checkpoint import load_into
    from lwm.evaluate import make_policy, run_episodes
    from lwm.runtime import default_cache_dir, setup_jax
    from lwm.team import TeamDriver, mates_of, team_specs

    run_config = lwm_config.load([str(logdir / "config.yaml")])
    config, directory, step = checkpoint_config(logdir, run_config)
    if world:
        config = config.update(world, where="--world")
    setup_jax("cpu", default_cache_dir(str(logdir)))
    env = make_worlds(config, min(episodes, 64), seed)[0]
    check_world(env.params)
    obs_spec, act_spec = team_specs(env)
    agent = Agent(obs_spec, act_spec, config)
    ts, used = load_into(directory / str(step), agent.init(config.seed), "agent")
    nets = nnx.merge(agent.graph, ts["params"])
    driver = TeamDriver(env, [k.name for k in agent.keys])
    act = make_policy(agent, ts["params"], driver.num_streams, seed, mode == "greedy", plan=plan)
    if mates == "real" and not agent.mates:
        raise SystemExit(f"defusal_pack: --mates real needs a run trained with agent.team_model (not {logdir}).")
    w_n, a_n = driver.W, driver.A
    # With agent.team_model the RSSM's action input is [own | teammate a+1 | teammate a+2], each block `width` wide.
    width = sum(h.num for h in agent.heads)
    move_at = sum(h.num for h in agent.heads[: [h.name for h in agent.heads].index("move")])
    together, colours, tests, mates_hits, mates_cut_hits, triples = [], [], [], [], [], []
    after_advance, walk_gain, again, prev_spent = [], [], [], [None, None]
    # Each world's rounds so far, by what the team did: all walked, nobody walked, some walked (a split).
    kinds, per_episode = np.zeros((w_n, 3), np.int64), []
    key = [jax.random.key(seed + 1)]

    @jax.jit
    def predicted_reward(deter, stoch, action, k):
        """The model's next reward after `action` from each state, averaged over `samples` prior draws."""
        def one(kk):
            nxt = nets.wm.rssm.img_step({"deter": deter, "stoch": stoch}, action, kk)
            return nets.wm.reward_mean(nets.wm.rssm.feat(nxt))
        return jax.vmap(one)(jax.random.split(k, samples)).mean(0)

    move_head = [h.name for h in agent.heads].index("move")

    @jax.jit
    def move_parts(deter, stoch, action, k):
        """([N, 9] reward, cont, value) one step after each move, the rest of the joint action as the agent's carry
        holds it; reward + γ·cont·value is what `agent.actor.lookahead` trains on."""
        return agent.one_step(nets, {"deter": deter, "stoch": stoch}, action, k, move_head)

    def policy(obs, is_first):
        state = driver.env.state  # before this round's actions
        actions, extra = act(obs, is_first)
        if mates == "real":  # the oracle: the teammates' real actions replace the head's draws
            width_own = sum(h.num for h in agent.heads)
            real_in = agent._mates_onehot(mates_of(actions, w_n, a_n))
            own_in = act.state["carry"]["action"][:, :width_own]
            act.state["carry"] = {**act.state["carry"], "action": jnp.concatenate([own_in, real_in], -1)}
        carry = act.state["carry"]  # each agent's posterior after this observation and its one-hot action
        move = np.asarray(actions["move"]).reshape(w_n, a_n)
        rooms = np.asarray(state.agent_room)
        active = np.asarray(state.bomb_status) == core.ACTIVE
        bomb_room, left = np.asarray(state.bomb_room), np.asarray(state.bomb_phases - state.bomb_progress)
        live = ~np.asarray(state.done)
        same = np.all(rooms == rooms[:, :1], axis=1)
        here = (bomb_room == rooms[:, :1]) & active  # [W, B]
        together.append(same[live])
        walking = (move >= 1) & (move < CUT)  # [W, A]: a walk to another room
        kind = np.where(walking.all(1), 0, np.where(~walking.any(1), 1, 2))
        ended = ~live & (kinds.sum(1) > 0)  # a finished world (its episode's rounds are all counted)
        per_episode.extend(kinds[ended].tolist())
        kinds[ended] = 0
        np.add.at(kinds, (np.flatnonzero(live), kind[live]), 1)
        cutting = live & same & here.any(1) & np.all(move >= CUT, axis=1)
        colours.extend(len(set(row)) for row in move[cutting].tolist())
        triples.extend(tuple(row) for row in (move[cutting] - CUT).tolist())
        # After an agent's cut advanced the bomb in its room, which stays active: does it walk on (as the scouts do
        # once their colour is spent) or stay and cut?
        mine = (bomb_room[:, None, :] == rooms[:, :, None]) & active[:, None, :]  # [W, A, B]
        result = np.asarray(state.last_result)
        round_now = np.asarray(state.round)
        if prev_spent[0] is not None:  # its next cut advanced it again? (not across a reset: that shows R_START)
            went_on = (round_now == prev_spent[1] + 1)[:, None] & prev_spent[0]
            again.extend(np.isin(result[went_on], (core.R_CUT_ADVANCE, core.R_CUT_DEFUSED)).tolist())
        spent = live[:, None] & (result == core.R_CUT_ADVANCE) & mine.any(-1)
        prev_spent[:] = [spent & (move >= CUT), round_now]
        after_advance.extend(np.where(move[spent] >= CUT, "cut", np.where(move[spent] == 0, "inspect", "move")))
        rows = np.flatnonzero(spent.reshape(-1))
        if rows.size:  # does the model's one-step value favour walking on over the cut the agent takes?
            key[0], sub = jax.random.split(key[0])
            r, c, v = (np.asarray(x) for x in move_parts(carry["state"]["deter"][rows],
                                                          carry["state"]["stoch"][rows], carry["action"][rows], sub))
            q = r + agent.gamma * c * v
            legal = np.asarray(obs["action_mask"]).reshape(w_n * a_n, -1)[rows, : core.NUM_ACTIONS].astype(bool)
            took = move.reshape(-1)[rows]
            best = 1 + np.argmax(np.where(legal[:, 1:CUT], q[:, 1:CUT], -np.inf), 1)  # the best legal move
            i = np.arange(rows.size)
            walk_gain.extend(np.stack([q[i, best] - q[i, took], r[i, best] - r[i, took], v[i, best] - v[i, took]],
                                      1).tolist())
        action_in = np.asarray(carry["action"]).reshape(w_n, a_n, -1)
        # the teammate-action head's draws (what imagination sees) against the moves (not in the oracle)
        for j in range(agent.mates if mates == "head" else 0):
            lo = width * (1 + j) + move_at
            drawn = np.argmax(action_in[:, :, lo: lo + core.NUM_ACTIONS], -1)  # [W, A]
            hit = drawn == np.roll(move, -(j + 1), axis=1)
            mates_hits.append(hit[live].reshape(-1))
            mates_cut_hits.append(hit[cutting].reshape(-1))
        # The colour test: first cut round at a one-phase bomb (nobody has tried a colour on it yet).
        first = cutting & np.all(np.asarray(state.last_action) < CUT, axis=1)
        for w in np.flatnonzero(first):
            if left[w][here[w]].tolist() != [1]:
                continue
            for a in range(a_n):
                own = np.flatnonzero(np.asarray(state.tools)[w, a])
                if len(own) < 2:  # one tool (tools_per_agent 1): no colour to choose
                    continue
                i = w * a_n + a
                onehots = np.repeat(np.asarray(carry["action"][i : i + 1]), len(own), 0)
                onehots[:, move_at: move_at + core.NUM_ACTIONS] = 0
                onehots[np.arange(len(own)), move_at + CUT + own] = 1
                real = onehots.copy()  # the teammates' moves as they were, not as the head drew them
                for j in range(agent.mates):
                    lo = width * (1 + j) + move_at
                    real[:, lo: lo + core.NUM_ACTIONS] = 0
                    real[:, lo + move[w, (a + 1 + j) % a_n]] = 1
                key[0], sub = jax.random.split(key[0])
                pred = [np.asarray(predicted_reward(jnp.repeat(carry["state"]["deter"][i : i + 1], len(own), 0),
                                                    jnp.repeat(carry["state"]["stoch"][i : i + 1], len(own), 0),
                                                    jnp.asarray(x), sub)) for x in (onehots, real)]
                others = {int(move[w, b]) - CUT for b in range(a_n) if b != a}
                covered = np.array([len(others | {int(c)}) for c in own])  # colours applied this round
                tests.append((pred[0], covered, int(move[w, a]) - CUT, own, pred[1]))
        return actions, extra

    t0 = time.perf_counter()
    eps = run_episodes(driver, policy, episodes)
    rounds = np.array([e["rounds"] for e in eps])
    out = {"params": env.params, "checkpoint": str(used), "mode": mode, "plan": plan, "mates_input": mates,
           "episodes": len(eps),
           "score_mean": float(np.mean([e["score"] for e in eps])), "rounds_mean": float(rounds.mean()),
           "rounds_std": float(rounds.std()), "rounds_median": float(np.median(rounds)),
           "unfinished": int(sum(e["score"] < 90 for e in eps)),
           "together_pct": float(100 * np.concatenate(together).mean()),
           "colours_per_cut_round": float(np.mean(colours)) if colours else float("nan"),
           "cut_rounds": len(colours),
           # rounds per episode in which every agent walked, none did, some did (episodes run to the end)
           **{f"{name}_rounds_per_episode": (float(np.mean(np.array(per_episode)[:, j])) if per_episode
                                             else float("nan"))
              for j, name in enumerate(("walk", "stay", "split"))},
           # the commonest (alpha, bravo, charlie) cuts in those rounds, colours as r/g/b, with their share in %
           "cut_triples": {"".join("rgb"[c] for c in t): round(100 * n / max(1, len(triples)), 1)
                           for t, n in collections.Counter(triples).most_common(6)},
           # what agents do the round after their own cut advanced a bomb that is still active, in %
           "after_advance_rounds": len(after_advance),
           "after_advance": {k: round(100 * v / max(1, len(after_advance)), 1)
                             for k, v in collections.Counter(after_advance).items()},
           # there, the model's one-step value of the best legal move minus that of the action taken
           # (and its two parts: the predicted reward of this round, and the critic's value of the next state)
           **{f"walk_on_{name}": (float(np.mean(np.array(walk_gain)[:, j])) if walk_gain else float("nan"))
              for j, name in enumerate(("gain_mean", "reward_gain_mean", "value_gain_mean"))},
           "walk_on_better_pct": float(100 * np.mean(np.array(walk_gain)[:, 0] > 0)) if walk_gain else float("nan"),
           # and when it cut there, how often that cut (its other colour) advanced the bomb again
           "cut_again_advanced_pct": float(100 * np.mean(again)) if again else float("nan")}
    # Where the agent's two colours differ in what they add to its teammates' cuts this round: does the model
    # predict more reward for the one that covers more, and which one did the agent take?
    differ = [t for t in tests if t[1][0] != t[1][1]]
    out["colour_tests"] = len(tests)
    out["colour_tests_that_matter"] = len(differ)
    if differ:
        out["model_prefers_covering_pct"] = float(100 * np.mean([(p[0] > p[1]) == (c[0] > c[1])
                                                                 for p, c, *_ in differ]))
        out["agent_takes_covering_pct"] = float(100 * np.mean([took == own[int(np.argmax(c))]
                                                               for _, c, took, own, _ in differ]))
        if agent.mates:
            out["model_prefers_covering_given_mates_pct"] = float(100 * np.mean(
                [(r[0] > r[1]) == (c[0] > c[1]) for _, c, _, _, r in differ]))
    if mates_hits:
        out["mates_head_move_pct"] = float(100 * np.concatenate(mates_hits).mean())
        out["mates_head_cut_round_pct"] = float(100 * np.concatenate(mates_cut_hits).mean())
    out["time_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Prints the pack table (and the trained team's pack measures); returns them as a dict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=300, help="episodes of each scripted team")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", type=Path, default=None, help="a defusal training run to measure")
    parser.add_argument("--mode", choices=("greedy", "sample"), default="greedy")
    parser.add_argument("--plan", type=int, default=0, metavar="N",
                        help="the trained team moves by its model's one-step value (mean over N prior draws) "
                             "instead of its actor's choice (0: the actor)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes of the trained team")
    parser.add_argument("--mates", choices=("head", "real"), default="head",
                        help="team-model runs: teammates' last actions from the teammate-action head (as trained "
                             "agents act) or the real ones (an oracle)")
    parser.add_argument("--world", nargs="+", default=[], metavar="KEY=VALUE",
                        help="with --logdir: play the trained team in its world with these switches changed "
                             "(YAML values), e.g. --world tools_per_agent=2")
    args = parser.parse_args(argv)
    world = world_changes(args.world)
    if world and args.logdir is None:
        raise SystemExit("defusal_pack: --world changes the trained team's world; it needs --logdir.")
    if args.seeds < 1 or args.episodes < 1:
        raise SystemExit(f"defusal_pack: --seeds {args.seeds} and --episodes {args.episodes} must be >= 1.")
    if args.plan < 0:
        raise SystemExit(f"defusal_pack: --plan {args.plan} must be >= 0 (prior draws; 0 = the actor moves).")
    trained = None
    if args.logdir is not None:
        if not (args.logdir / "config.yaml").exists():
            raise SystemExit(f"defusal_pack: --logdir {args.logdir} holds no config.yaml (not a training run).")
        try:
            trained = trained_team(args.logdir, args.mode, args.episodes, args.seed, mates=args.mates, world=world,
                                   plan=args.plan)
        except (ConfigError, TypeError, ValueError) as e:
            if not world and not isinstance(e, ConfigError):
                raise
            raise SystemExit(f"defusal_pack: {e}") from None  # a --world key or value the run's world rejects
    # The run's own world; the heuristic team's template messages need message_len 4 (as in launch.eval).
    params = (core.Params() if trained is None else trained.pop("params"))._replace(message_len=4)
    check_world(params)
    print(f"defusal pack strategies over {args.seeds} seeds, {params}")
    print(f"{'team':<24}{'score':>16}{'rounds':>16}")
    table: dict[str, dict] = {}
    teams = {"pack, 3 colours": scripted.pack, "pack, 2 colours": scripted.pack_two_colours,
             "pack, shortest tour": scripted.pack_tour, "scouts": scripted.pack_scouts,
             "heuristic": scripted.heuristic, "planner": scripted.planner}
    for name, policy in teams.items():
        r = scripted.evaluate(policy, params, jax.random.key(args.seed), args.seeds)
        table[name] = {"score_mean": float(r["score"].mean()), "score_std": float(r["score"].std()),
                       "rounds_mean": float(r["rounds"].mean()), "rounds_std": float(r["rounds"].std())}
        row = table[name]
        print(f"{name:<24}{row['score_mean']:>9.2f} ± {row['score_std']:<4.1f}"
              f"{row['rounds_mean']:>9.2f} ± {row['rounds_std']:<4.2f}")
    if trained is not None:
        table["trained"] = t = trained
        name = (f"trained ({args.mode}{', real mates' if args.mates == 'real' else ''}"
                f"{f', plan {args.plan}' if args.plan else ''})")
        print(f"{name:<24}{t['score_mean']:>9.2f}{'':7}{t['rounds_mean']:>9.2f} ± "
              f"{t['rounds_std']:<4.2f}  (median {t['rounds_median']:.0f}, {t['unfinished']} of {t['episodes']} "
              f"short of 90 points); together {t['together_pct']:.1f}% of rounds; "
              f"{t['colours_per_cut_round']:.2f} distinct colours per round cut together ({t['cut_rounds']} rounds)")
        print(f"rounds per episode: {t['walk_rounds_per_episode']:.2f} all walk, {t['stay_rounds_per_episode']:.2f} "
              f"nobody walks, {t['split_rounds_per_episode']:.2f} some walk (a pack on a shortest tour: 4 + 7.08 + 0)")
        print("commonest cuts (alpha, bravo, charlie) in those rounds: "
              + ", ".join(f"{k} {v:.0f}%" for k, v in t["cut_triples"].items()))
        print(f"the round after an agent's own cut advanced a bomb still active ({t['after_advance_rounds']} "
              "agent-rounds): " + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(t["after_advance"].items()))
              + f"; the model's one-step value (reward + γ·cont·value) rates the best move above the action taken in "
              f"{t['walk_on_better_pct']:.0f}% (by {t['walk_on_gain_mean']:+.3f} on average: predicted reward "
              f"{t['walk_on_reward_gain_mean']:+.3f}, value {t['walk_on_value_gain_mean']:+.3f}); when it cut, the cut "
              f"advanced the bomb again in {t['cut_again_advanced_pct']:.0f}%")
        if t["colour_tests_that_matter"]:
            print(f"colour test: {t['colour_tests_that_matter']} of {t['colour_tests']} agent-rounds where the "
                  f"agent's two colours differ in what they add to its teammates' cuts; the world model predicts "
                  f"more reward for the covering one in {t['model_prefers_covering_pct']:.0f}%, the agent takes it "
                  f"in {t['agent_takes_covering_pct']:.0f}%")
            if "model_prefers_covering_given_mates_pct" in t:
                print(f"  (team model) given the teammates' real moves instead of its head's draws, the world model "
                      f"prefers the covering one in {t['model_prefers_covering_given_mates_pct']:.0f}%")
        if "mates_head_move_pct" in t:
            print(f"teammate-action head: its draws match the teammates' moves in {t['mates_head_move_pct']:.1f}% of "
                  f"agent-rounds, {t['mates_head_cut_round_pct']:.1f}% in rounds cut together")
    print(json.dumps(table))
    return table


if __name__ == "__main__":
    main()
