"""Drawings of the defusal world: the room graph with agents, bombs, known sequences and messages (SVG text).

`svg(state, params)` draws one state; `scripted_episode(env, team)` plays one episode with a scripted team
(:mod:`envs.defusal.scripted`) and returns it in the episode layout of `lwm.visualize.page_data` (truth only:
no model is involved), with one drawing, the agents' text observations and the round's actions and messages
per step. `read_vector` / `svg_vector` turn one agent's `vector` observation (true, or a world model's
reconstruction of it) back into what it says and into the same kind of drawing: the room the agent is (or
believes it is) in, its cutters, who is with it, the bomb there and its known sequence, score and round.
Host-side numpy; no imports from the agent.
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
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="world" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
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


# ------------------------------------------------------------------------------- one agent's vector observation
def vector_slices(params: core.Params) -> dict[str, slice]:
    """Where each field sits in an agent's `vector` observation (the layout of `core.observe`)."""
    a = params.num_agents
    sizes = (("room", core.MAX_ROOMS), ("tools", core.NUM_COLOURS), ("with", a), ("present", 1), ("left", 1),
             ("known", 1), ("sequence", core.MAX_PHASES * core.NUM_COLOURS), ("score", 1), ("round", 1),
             ("mates", a * core.MAX_ROOMS), ("me", a))
    out, start = {}, 0
    for name, size in sizes:
        out[name] = slice(start, start + size)
        start += size
    if start != core.vector_size(params):
        raise ValueError(f"vector layout has {start} entries but core.vector_size is {core.vector_size(params)}.")
    return out


def read_vector(vector: np.ndarray, params: core.Params) -> dict[str, Any]:
    """What one agent's `vector` says, read with thresholds (0.5) and argmaxes so that a reconstruction (soft
    values) reads like an observation: `room` (index) and `room_p`, `tools` [3] bool, `with` [A] bool (agents in
    this room), `bomb` (an active bomb here) and `bomb_p`, `left` (phases left), `known`, `sequence` (colour ids of
    the remaining phases, -1 where none is believed), `score`, `round`, `mates` [A] (room index, -1 unknown), `me`."""
    v = np.asarray(vector, np.float64).reshape(-1)
    if v.shape != (core.vector_size(params),):
        raise ValueError(f"a defusal vector has {core.vector_size(params)} entries for {params.num_agents} agents; "
                         f"got shape {np.shape(vector)}.")
    f = {name: v[sl] for name, sl in vector_slices(params).items()}
    rooms = f["room"][: params.num_rooms]
    room = int(np.argmax(rooms))
    seq = f["sequence"].reshape(core.MAX_PHASES, core.NUM_COLOURS)
    sequence = [int(np.argmax(row)) if row.max() > 0.5 else -1 for row in seq]
    mates = f["mates"].reshape(params.num_agents, core.MAX_ROOMS)[:, : params.num_rooms]
    return {
        "room": room, "room_p": float(np.clip(rooms[room], 0.0, 1.0)),
        "tools": f["tools"] > 0.5, "with": f["with"] > 0.5,
        "bomb": bool(f["present"][0] > 0.5), "bomb_p": float(np.clip(f["present"][0], 0.0, 1.0)),
        "left": int(np.clip(np.round(f["left"][0] * core.MAX_PHASES), 0, core.MAX_PHASES)),
        "known": bool(f["known"][0] > 0.5), "sequence": sequence,
        "score": int(np.round(max(f["score"][0], 0.0) * core.max_score(params))),
        "round": int(np.round(max(f["round"][0], 0.0) * params.max_rounds)),
        "mates": [int(np.argmax(m)) if m.max() > 0.5 else -1 for m in mates],
        "me": int(np.argmax(f["me"])),
    }


def svg_vector(vector: np.ndarray, params: core.Params, title: str = "") -> str:
    """One agent's `vector` (observed, or decoded from a world model's latent) drawn like `svg`: the room graph
    (the released map; not drawn for random graphs, which the vector does not hold), the agent in the room it is
    in (opacity: how sure the vector is), the agents with it, the bomb there with its phases left and the known
    sequence (grey '?' cells for phases of unknown colour), its cutters, score and round."""
    b = read_vector(vector, params)
    r = params.num_rooms
    w, h = 540, 300
    pos = [(x * 0.75, y * 0.75) for x, y in _positions(r)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="decoded" viewBox="0 0 {w} {h}" width="{w}" '
           f'height="{h}" font-family="sans-serif" font-size="11">', f'<rect width="{w}" height="{h}" fill="#fff"/>']
    if title:
        out.append(f'<text x="6" y="14" font-weight="bold">{html.escape(title)}</text>')
    if not params.random_graph:
        adj = core.released_adjacency(r)
        for i in range(r):
            for j in range(i + 1, r):
                if adj[i, j]:
                    (x1, y1), (x2, y2) = pos[i], pos[j]
                    out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#ced4da" '
                               'stroke-width="3"/>')
    for i in range(r):
        x, y = pos[i]
        mine = i == b["room"]
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="36" fill="{"#fff3bf" if mine else "#f8f9fa"}" '
                   f'stroke="#495057" stroke-width="{2.5 if mine else 1}"/>')
        out.append(f'<text x="{x:.1f}" y="{y - 24:.1f}" text-anchor="middle" fill="#495057">room '
                   f'{core.ROOM_LABELS[i]}</text>')
    x, y = pos[b["room"]]
    if b["bomb"]:
        out.append(f'<g class="bomb" data-status="believed"><rect x="{x - 24:.1f}" y="{y - 16:.1f}" width="48" '
                   f'height="18" rx="4" fill="none" stroke="#212529" stroke-width="2" '
                   f'opacity="{max(b["bomb_p"], 0.3):.2f}"/>')
        for p in range(max(b["left"], 1)):
            c = b["sequence"][p] if b["known"] else -1
            fill = CUTTER_COLOURS[c] if c >= 0 else "#ced4da"
            name = core.COLOUR_NAMES[c] if c >= 0 else "unknown"
            out.append(f'<rect x="{x - 20 + 14 * p:.1f}" y="{y - 13:.1f}" width="11" height="12" fill="{fill}">'
                       f'<title>{name}</title></rect>')
            if c < 0:
                out.append(f'<text x="{x - 14.5 + 14 * p:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                           'font-size="9">?</text>')
        out.append("</g>")
    for a in range(params.num_agents):
        if a == b["me"] or b["with"][a]:
            room, alpha = b["room"], (b["room_p"] if a == b["me"] else 0.6)
        elif b["mates"][a] >= 0:
            room, alpha = b["mates"][a], 0.6
        else:
            continue
        ax, ay = pos[room][0] - 18 + 18 * a, pos[room][1] + 20
        ring = ' stroke="#000" stroke-width="2"' if a == b["me"] else ""
        out.append(f'<g class="agent" opacity="{max(alpha, 0.3):.2f}"><circle cx="{ax:.1f}" cy="{ay:.1f}" r="7" '
                   f'fill="{AGENT_COLOURS[a]}"{ring}/><text x="{ax:.1f}" y="{ay + 3.5:.1f}" text-anchor="middle" '
                   f'fill="#fff" font-size="9">{core.AGENT_NAMES[a][0].upper()}</text></g>')
    tools = ", ".join(core.COLOUR_NAMES[c] for c in range(core.NUM_COLOURS) if b["tools"][c]) or "none"
    seq = " ".join(core.COLOUR_NAMES[c] for c in b["sequence"] if c >= 0)
    lines = [f"{core.AGENT_NAMES[b['me']]} in room {core.ROOM_LABELS[b['room']]} (p {b['room_p']:.2f})",
             f"bomb here: {'yes' if b['bomb'] else 'no'} (p {b['bomb_p']:.2f})"
             + (f", {b['left']} phase(s) left" if b["bomb"] else ""),
             f"sequence: {seq if b['known'] and seq else 'unknown'}", f"cutters: {tools}",
             f"round {b['round']} · score {b['score']}/{core.max_score(params)}"]
    for n, line in enumerate(lines):
        out.append(f'<text x="320" y="{40 + 16 * n}" font-size="11">{html.escape(line)}</text>')
    out.append("</svg>")
    return "".join(out)


def world_svgs(state: core.State, params: core.Params, title: str = "world") -> list[str]:
    """`svg` of every world of a batched state (leading world axis), titled '<title> w, round r'."""
    s = jax.tree.map(np.asarray, state)
    n = int(np.shape(s.round)[0])
    return [svg(jax.tree.map(lambda x, i=i: x[i], s), params, title=f"{title} {i + 1}, round {int(s.round[i])}")
            for i in range(n)]
