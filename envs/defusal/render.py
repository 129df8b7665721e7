"""Drawings of the defusal world: the room graph with agents, bombs, known sequences and messages (SVG text).

`svg(state, params)` draws one state; `scripted_episode(env, team)` plays one episode with a scripted team
(:mod:`envs.defusal.scripted`) and returns it in the episode layout of `lwm.visualize.page_data` (truth only:
no model is involved), with one drawing, the agents' text observations and the round's actions and messages
per step. Host-side numpy; no imports from the agent.
"""

from __future__ import annotations

import html
import math
from typing import Any

import jax
import numpy as np

from envs.defusal import core, scripted

TEAMS = tuple(scripted.TEAMS)
AGENT_COLOURS = ("#d9480f", "#2f9e44", "#5f3dc4")
CUTTER_COLOURS = ("#e03131", "#2b8a3e", "#1971c2")  # red, green, blue
STATUS = {core.ACTIVE: ("active", "#212529"), core.DEFUSED: ("defused", "#2b8a3e"), core.EXPLODED: ("exploded",
                                                                                                    "#e03131")}
WIDTH, HEIGHT = 680, 400


def _positions(num_rooms: int) -> list[tuple[float, float]]:
    cx, cy, radius = 200.0, 200.0, 145.0
    return [(cx + radius * math.sin(2 * math.pi * i / num_rooms), cy - radius * math.cos(2 * math.pi * i / num_rooms))
            for i in range(num_rooms)]


def message_text(ids: np.ndarray) -> str:
    """A message (ids into MESSAGE_WORDS, 0 = silence) as words."""
    return " ".join(core.MESSAGE_WORDS[int(i) - 1] for i in np.asarray(ids).reshape(-1) if 0 < int(i) <= len(
        core.MESSAGE_WORDS))


def svg(state: core.State, params: core.Params, title: str = "") -> str:
    """One state as an SVG drawing: rooms (released labels) and doors, each agent as a lettered disc in its room,
    each bomb with its colour sequence (cut phases struck through, status colour), and per bomb which agents know
    its sequence; a side panel lists the score, the round and the last messages."""
    s = jax.tree.map(np.asarray, state)
    r = params.num_rooms
    pos = _positions(r)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>']
    if title:
        out.append(f'<text x="8" y="16" font-weight="bold">{html.escape(title)}</text>')
    for i in range(r):
        for j in range(i + 1, r):
            if s.adjacency[i, j]:
                (x1, y1), (x2, y2) = pos[i], pos[j]
                out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#adb5bd" '
                           'stroke-width="3"/>')
    for i in range(r):
        x, y = pos[i]
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="44" fill="#f1f3f5" stroke="#495057" stroke-width="1.5"/>')
        out.append(f'<text x="{x:.1f}" y="{y - 30:.1f}" text-anchor="middle" fill="#495057">room '
                   f'{core.ROOM_LABELS[i]}</text>')
    for k in range(params.num_bombs):
        x, y = pos[int(s.bomb_room[k])]
        name, colour = STATUS[int(s.bomb_status[k])]
        phases = int(s.bomb_phases[k])
        out.append(f'<g class="bomb" data-bomb="{k}" data-status="{name}">')
        out.append(f'<rect x="{x - 26:.1f}" y="{y - 18:.1f}" width="52" height="20" rx="4" fill="none" '
                   f'stroke="{colour}" stroke-width="2"/>')
        for p in range(phases):
            c = int(s.bomb_seq[k, p])
            done = p < int(s.bomb_progress[k])
            bx = x - 22 + 15 * p
            out.append(f'<rect x="{bx:.1f}" y="{y - 15:.1f}" width="12" height="14" fill="{CUTTER_COLOURS[c]}" '
                       f'opacity="{0.25 if done else 1.0}"><title>{core.COLOUR_NAMES[c]}</title></rect>')
            if done:
                out.append(f'<line x1="{bx:.1f}" y1="{y - 15:.1f}" x2="{bx + 12:.1f}" y2="{y - 1:.1f}" '
                           'stroke="#000"/>')
        knowers = "".join(core.AGENT_NAMES[a][0] for a in range(params.num_agents) if s.knows[a, k])
        out.append(f'<text x="{x:.1f}" y="{y + 14:.1f}" text-anchor="middle" font-size="10" fill="{colour}">'
                   f'{name}{" · known: " + knowers if knowers else ""}</text></g>')
    for a in range(params.num_agents):
        x, y = pos[int(s.agent_room[a])]
        ax = x - 20 + 20 * a
        out.append(f'<g class="agent"><circle cx="{ax:.1f}" cy="{y + 28:.1f}" r="8" fill="{AGENT_COLOURS[a]}"/>'
                   f'<text x="{ax:.1f}" y="{y + 32:.1f}" text-anchor="middle" fill="#fff" font-size="10">'
                   f'{core.AGENT_NAMES[a][0].upper()}</text></g>')
    px = 400
    lines = [f"round {int(s.round)} · score {int(s.score)}/{core.max_score(params)}",
             f"explosions {int(s.explosions)}"]
    for a in range(params.num_agents):
        known = [str(core.ROOM_LABELS[int(s.bomb_room[k])]) for k in range(params.num_bombs) if s.knows[a, k]]
        lines.append(f"{core.AGENT_NAMES[a]}: knows bombs in rooms {', '.join(known) if known else '-'}")
    lines.append("messages:")
    for a in range(params.num_agents):
        text = message_text(s.messages[a])
        lines.append(f"  {core.AGENT_NAMES[a]}: {text if text else '(silent)'}")
    for n, line in enumerate(lines):
        out.append(f'<text x="{px}" y="{40 + 16 * n}" font-size="11">{html.escape(line)}</text>')
    out.append("</svg>")
    return "".join(out)


def scripted_episode(env: Any, team: str = "heuristic", seed: int = 0, max_rounds: int | None = None) -> dict:
    """Plays one episode of `env` (a defusal `DefusalEnv`) with scripted team `team`; returns
    {'context': 0, 'keys': [], 'heads': [], 'episodes': [one episode]} where the episode holds per step `svg`,
    `messages` (each agent's action and message of the round that led here) and `obs` {log_<agent>: text}."""
    if team not in scripted.TEAMS:
        raise ValueError(f"team {team!r} is not known; use one of {', '.join(TEAMS)}.")
    params = env.params
    policy = jax.jit(scripted.TEAMS[team], static_argnames="params")
    step = jax.jit(core.step, static_argnames="params")
    key = jax.random.key(seed)
    key, sub = jax.random.split(key)
    obs, state = jax.jit(core.reset, static_argnames="params")(sub, params=params)
    rounds = params.max_rounds if max_rounds is None else min(max_rounds, params.max_rounds)
    svgs, notes, logs, rewards, terminal = [], [], {a: [] for a in core.AGENT_NAMES}, [], []
    said = ["start"]

    def record(obs, state, reward, last_terminal):
        svgs.append(svg(state, params, title=f"{team} team, round {int(state.round)}"))
        notes.append(list(said))
        for a, name in enumerate(core.AGENT_NAMES[: params.num_agents]):
            logs[name].append(env.vocab.decode(np.asarray(obs["tokens"][a])))
        rewards.append(float(reward))
        terminal.append(bool(last_terminal))

    record(obs, state, 0.0, False)
    for _ in range(rounds):
        key, k_pol, k_env = jax.random.split(key, 3)
        acts, msgs = policy(k_pol, state, params=params)
        obs, state, reward, done, info = step(k_env, state, acts, msgs, params=params)
        said = [f"{core.AGENT_NAMES[a]}: {core.ACTION_NAMES[int(acts[a])]}"
                + (f' · says "{message_text(msgs[a])}"' if message_text(msgs[a]) else "")
                for a in range(params.num_agents)]
        record(obs, state, reward, bool(info["terminated"]))
        if bool(done):
            break
    n = len(svgs)
    episode = {
        "length": n, "return": float(sum(rewards)), "svg": svgs, "messages": notes,
        "obs": {f"log_{name}": np.array(texts, dtype=object) for name, texts in logs.items() if texts},
        "action": {}, "reward": np.array(rewards, np.float32), "is_terminal": np.array(terminal, bool),
    }
    return {"context": 0, "keys": [], "heads": [], "episodes": [episode]}
