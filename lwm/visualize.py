"""The imagination report: one self-contained HTML page, a GIF (or MP4) of the frame strip, PNG encoding.

`visualize(agent, params, envs, out)` collects episodes with the agent's policy, runs open-loop and free
imagination (`lwm.imagination`) and writes one HTML file: every image inline as a base64 PNG, no network access
(a Content-Security-Policy forbids it), a step slider, play button, arrow keys, per-step panels (true /
predicted / error frames, true and predicted words with top-5 probabilities, reward, continue, value,
actions, observed vs imagined) and the per-horizon error table. `render_html(page_data(...))` does the same
from results computed elsewhere; a page can also show truth only (a scripted episode) with per-step SVG
drawings and messages.

PNG and GIF are written here with zlib and numpy only (no imaging library).
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lwm.imagination import Imagination, collect_episodes, collect_team_episodes, format_horizon_table
from lwm.team import is_team_env

Renderer = Callable[[np.ndarray], np.ndarray]
Drawer = Callable[[np.ndarray], str]  # a decoded observation -> an SVG drawing


# ------------------------------------------------------------------------------------------------ images
def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA); filter 0, zlib level 6."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {img.dtype}.")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"encode_png needs [H, W], [H, W, 3] or [H, W, 4], got shape {img.shape}.")
    h, w, c = img.shape
    colour = {1: 0, 3: 2, 4: 6}[c]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(img).reshape(h, w * c)], 1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (or uint8) as uint8 pixels."""
    x = np.asarray(image)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round(x.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def error_image(true: np.ndarray, pred: np.ndarray, gain: float = 2.0) -> np.ndarray:
    """|pred - true| per pixel and channel, times `gain`, as uint8 (black = exact)."""
    t = to_uint8(true).astype(np.float32)
    p = to_uint8(pred).astype(np.float32)
    return np.clip(np.abs(p - t) * gain, 0, 255).astype(np.uint8)


def upscale(image: np.ndarray, min_size: int = 64) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor until the smaller side is at least `min_size`."""
    f = max(1, math.ceil(min_size / max(1, min(image.shape[:2]))))
    return np.repeat(np.repeat(image, f, 0), f, 1) if f > 1 else image


_PALETTE = np.array([
    [20, 20, 20], [90, 90, 90], [200, 200, 200], [230, 80, 60], [70, 180, 90], [70, 120, 230], [150, 90, 210],
    [230, 200, 60], [240, 140, 50], [60, 200, 200], [210, 90, 160], [140, 110, 70], [250, 250, 250],
    [120, 160, 60], [60, 90, 140], [180, 60, 90]], np.uint8)


def grid_image(codes: np.ndarray, cell: int = 8) -> np.ndarray:
    """A symbolic grid [h, w, c] of small ints drawn generically: per cell the background colour shows channel 0,
    an inner square channel 1, a dot channel 2 (palette colours by value modulo 16)."""
    g = np.asarray(codes).astype(np.int64)
    if g.ndim == 2:
        g = g[..., None]
    h, w, c = g.shape
    img = np.zeros((h * cell, w * cell, 3), np.uint8)
    pal = _PALETTE
    for i in range(h):
        for j in range(w):
            y, x = i * cell, j * cell
            img[y:y + cell, x:x + cell] = pal[g[i, j, 0] % 16]
            if c > 1 and g[i, j, 0] > 2:
                q = cell // 4
                img[y + q:y + cell - q, x + q:x + cell - q] = pal[(g[i, j, 1] + 3) % 16]
            if c > 2 and g[i, j, 2]:
                m = cell // 2
                img[y + m - 1:y + m + 1, x + m - 1:x + m + 1] = pal[(g[i, j, 2] * 5) % 16]
            img[y, x:x + cell] = 0
            img[y:y + cell, x] = 0
    return img


def grid_error(true: np.ndarray, pred: np.ndarray, cell: int = 8) -> np.ndarray:
    """Cells whose prediction differs from the truth in any channel, red on black."""
    t, p = np.asarray(true), np.asarray(pred)
    wrong = np.any((t != p).reshape(t.shape[0], t.shape[1], -1), -1)
    img = np.zeros((t.shape[0], t.shape[1], 3), np.uint8)
    img[wrong] = (230, 50, 50)
    return np.repeat(np.repeat(img, cell, 0), cell, 1)


# ------------------------------------------------------------------------------------------ GIF and MP4
def _gif_palette() -> np.ndarray:
    """256 colours: a 6 × 7 × 6 RGB cube (252) and 4 greys."""
    r, g, b = np.meshgrid(np.linspace(0, 255, 6), np.linspace(0, 255, 7), np.linspace(0, 255, 6), indexing="ij")
    cube = np.stack([r, g, b], -1).reshape(-1, 3)
    greys = np.array([[64, 64, 64], [128, 128, 128], [192, 192, 192], [224, 224, 224]])
    return np.round(np.concatenate([cube, greys])).astype(np.uint8)


def _gif_indices(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.int32)
    r = (x[..., 0] * 5 + 127) // 255
    g = (x[..., 1] * 6 + 127) // 255
    b = (x[..., 2] * 5 + 127) // 255
    return (r * 42 + g * 6 + b).astype(np.uint8)


def lzw_encode(indices: bytes, min_size: int = 8) -> bytes:
    """GIF's variable-length LZW (codes LSB first, clear at start, table reset before it fills)."""
    clear, end = 1 << min_size, (1 << min_size) + 1
    out = bytearray()
    acc = nbits = 0

    def put(code: int, size: int) -> None:
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += size
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    def fresh() -> dict[bytes, int]:
        return {bytes([i]): i for i in range(clear)}

    table, nxt, size = fresh(), end + 1, min_size + 1
    put(clear, size)
    w = b""
    for value in indices:
        wc = w + bytes([value])
        if wc in table:
            w = wc
            continue
        put(table[w], size)
        if nxt < 4095:
            table[wc] = nxt
            nxt += 1
            if nxt > (1 << size) and size < 12:
                size += 1
        else:
            put(clear, size)
            table, nxt, size = fresh(), end + 1, min_size + 1
        w = bytes([value])
    if w:
        put(table[w], size)
    put(end, size)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def encode_gif(frames: Sequence[np.ndarray], delay_ms: int = 400, loop: bool = True) -> bytes:
    """An animated GIF of uint8 RGB frames [H, W, 3] (all the same size), quantised to a fixed 256-colour palette."""
    if not frames:
        raise ValueError("encode_gif needs at least one frame.")
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames) or frames[0].ndim != 3 or frames[0].shape[2] != 3:
        raise ValueError(f"encode_gif needs RGB frames [H, W, 3] of one size; got {[f.shape for f in frames][:4]}.")
    if h > 65535 or w > 65535:
        raise ValueError(f"A GIF frame is at most 65535 pixels a side; got {w}x{h}.")
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF7, 0, 0) + _gif_palette().tobytes())
    if loop:
        out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00"
    delay = max(1, int(round(delay_ms / 10)))
    for frame in frames:
        out += b"\x21\xf9\x04\x04" + struct.pack("<H", delay) + b"\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x08"
        data = lzw_encode(_gif_indices(frame).tobytes())
        for i in range(0, len(data), 255):
            block = data[i:i + 255]
            out += bytes([len(block)]) + block
        out += b"\x00"
    out += b"\x3b"
    return bytes(out)


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: float = 2.5) -> bool:
    """Writes an H.264 MP4 with ffmpeg when it is installed; returns False (writing nothing) when it is not."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not frames:
        return False
    h, w = frames[0].shape[:2]
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r",
           str(fps), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", str(path)]
    data = b"".join(np.ascontiguousarray(f, np.uint8).tobytes() for f in frames)
    subprocess.run(cmd, input=data, check=True, capture_output=True)
    return True


# ------------------------------------------------------------------------------------- words and frames
def word_fn(vocab: Any) -> Callable[[int], str]:
    """id -> word from a vocabulary object with `word(id)`, a list of words, or None (ids shown as #id)."""
    if vocab is None:
        return lambda i: f"#{int(i)}"
    if hasattr(vocab, "word"):
        def word(i: int) -> str:
            try:
                return str(vocab.word(int(i)))
            except (IndexError, KeyError, ValueError):
                return f"#{int(i)}"
        return word
    if isinstance(vocab, Sequence) and not isinstance(vocab, str):
        words = list(vocab)
        return lambda i: words[int(i)] if 0 <= int(i) < len(words) else f"#{int(i)}"
    raise TypeError(f"vocab must have a word(id) method or be a list of words, got {type(vocab).__name__}.")


def decode(ids: np.ndarray, word: Callable[[int], str]) -> str:
    """Words of the non-padding ids (0 = padding), joined by spaces."""
    return " ".join(word(int(i)) for i in np.asarray(ids).reshape(-1) if int(i) != 0)


def _frame_keys(keys: Sequence[Mapping]) -> list[Mapping]:
    """Keys drawn as pictures: images, and one-hot keys of rank 2-3 (symbolic grids)."""
    return [k for k in keys if k["kind"] == "image" or (k["kind"] == "onehot" and len(k["shape"]) in (2, 3))]


def _picture(key: Mapping, x: np.ndarray, renderers: Mapping[str, Renderer]) -> np.ndarray:
    if key["kind"] == "image":
        return to_uint8(x)
    if key["name"] in renderers:
        return to_uint8(renderers[key["name"]](np.asarray(x)))
    return grid_image(x)


def strip_frames(result: Mapping, episode: int = 0, mode: str = "open",
                 renderers: Mapping[str, Renderer] | None = None, height: int = 96) -> list[np.ndarray]:
    """Frames of one episode's strip: [true | predicted | error] of the first picture key, over a coloured bar
    (green observed, orange imagined, blue dream). Mode `open` or `dream`."""
    if mode not in ("open", "dream"):
        raise ValueError(f"mode={mode!r} is not known; use 'open' or 'dream'.")
    renderers = renderers or {}
    pics = _frame_keys(result["keys"])
    if not pics:
        return []
    key = pics[0]
    ep = result["episodes"][episode]
    K = result["context"]
    true = np.asarray(ep["obs"][key["name"]])
    frames = []
    steps = range(ep["length"]) if mode == "open" else range(K, ep["length"])
    for t in steps:
        j = t if mode == "open" else t - K
        pred = np.asarray(ep[mode]["pred"][key["name"]][j])
        a, b = _picture(key, true[t], renderers), _picture(key, pred, renderers)
        e = error_image(a, b) if key["kind"] == "image" else grid_error(true[t], pred, cell=max(1, a.shape[0]
                                                                                               // true.shape[1]))
        if e.shape != a.shape:
            e = np.zeros_like(a)
        gap = np.full((a.shape[0], 2, 3), 255, np.uint8)
        row = np.concatenate([a, gap, b, gap, e], 1)
        f = max(1, height // row.shape[0])
        row = np.repeat(np.repeat(row, f, 0), f, 1)
        colour = (60, 170, 80) if mode == "open" and t < K else ((230, 140, 40) if mode == "open" else (70, 110, 220))
        bar = np.zeros((6, row.shape[1], 3), np.uint8)
        bar[:] = colour
        frames.append(np.concatenate([bar, row], 0))
    return frames


# ----------------------------------------------------------------------------------------------- the page
def _clean(x: Any) -> Any:
    """JSON-safe: numpy to Python, non-finite floats to None."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return _clean(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x: Any) -> str:
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return str(arr.tolist()).lower()
    if np.issubdtype(arr.dtype, np.floating):
        return np.array2string(arr, precision=3, suppress_small=True, max_line_width=1000)
    return np.array2string(arr, max_line_width=1000)


def _action_text(ep: Mapping, heads: Sequence[Mapping], t: int, source: Mapping,
                 names: Mapping[str, Sequence[str]]) -> str:
    parts = []
    for h in heads:
        a = int(np.asarray(source[h["name"]])[t])
        label = names.get(h["name"])
        text = f"{a}" + (f" ({label[a - h['low']]})" if label and 0 <= a - h["low"] < len(label) else "")
        parts.append(text if len(heads) == 1 else f"{h['name']} {text}")
    return ", ".join(parts)


def _step(result: Mapping, ep: Mapping, t: int, mode: str, word: Callable[[int], str],
          renderers: Mapping[str, Renderer], action_names: Mapping[str, Sequence[str]], top_show: int,
          decoders: Mapping[str, Drawer] | None = None) -> dict:
    K = result.get("context", 0)
    keys = result["keys"]
    has_pred = mode in ep
    j = t - K if mode == "dream" else t
    pred = ep[mode]["pred"] if has_pred else {}
    kind = "truth" if not has_pred else ("dream" if mode == "dream" else ("observed" if t < K else "imagined"))
    step: dict[str, Any] = {"t": t, "kind": kind, "frames": [], "tokens": [], "table": []}
    for k in _frame_keys(keys):
        name = k["name"]
        true = np.asarray(ep["obs"][name][t])
        a = upscale(_picture(k, true, renderers))
        frame = {"key": name, "true": data_uri(a), "pred": None, "err": None}
        if has_pred:
            p = np.asarray(pred[name][j])
            b = upscale(_picture(k, p, renderers))
            frame["pred"] = data_uri(b)
            if mode == "open":
                if k["kind"] == "image":
                    frame["err"] = data_uri(error_image(a, b))
                else:
                    cell = max(1, a.shape[0] // true.shape[0])
                    frame["err"] = data_uri(grid_error(true, p, cell=cell))
        step["frames"].append(frame)
    for k in keys:
        name = k["name"]
        if k["kind"] == "tokens":
            ids = np.asarray(ep["obs"][name][t]).reshape(-1)
            item = {"key": name, "true": decode(ids, word), "pred": None, "top": []}
            if has_pred:
                top = np.asarray(pred[name][j]).reshape(len(ids), -1)
                prob = np.asarray(pred[name + "/prob"][j]).reshape(len(ids), -1)
                item["pred"] = decode(top[:, 0], word)
                shown = [i for i in range(len(ids)) if ids[i] != 0 or top[i, 0] != 0][:top_show] or [0]
                item["top"] = [{"pos": i, "true": word(int(ids[i])),
                                "cands": [[word(int(w)), float(p)] for w, p in zip(top[i], prob[i], strict=True)]}
                               for i in shown]
            step["tokens"].append(item)
        elif k not in _frame_keys(keys):
            true = np.asarray(ep["obs"][name][t])
            p = None
            if has_pred:
                p = pred.get(name + "/value", pred[name])[j]
            step["table"].append([name, _fmt(true), _fmt(p) if p is not None else ""])
    step["reward"] = [float(ep["reward"][t]) if mode != "dream" else None,
                      float(ep[mode]["reward"][j]) if has_pred else None]
    step["cont"] = [0.0 if ep["is_terminal"][t] else 1.0, float(ep[mode]["cont"][j]) if has_pred else None]
    step["value"] = float(ep[mode]["value"][j]) if has_pred else None
    heads = result.get("heads", [])
    step["action"] = _action_text(ep, heads, t, ep["action"], action_names) if heads else ""
    if mode == "dream" and has_pred:
        step["dream_action"] = _action_text(ep, heads, j, ep["dream"]["action"], action_names)
    logs = {n: str(np.asarray(v[t]).item() if np.asarray(v[t]).ndim == 0 else v[t])
            for n, v in ep["obs"].items() if n.startswith("log_")}
    step["log"] = logs
    for extra in ("svg", "messages", "notes"):
        if extra in ep and ep[extra] is not None:
            step[extra] = ep[extra][t]
    if has_pred and decoders:
        step["decoded"] = [{"key": name, "svg": draw(np.asarray(pred.get(name + "/value", pred[name])[j]))}
                           for name, draw in decoders.items() if name in pred]
    return step


def _team_step(result: Mapping, members: Sequence[Mapping], names: Sequence[str], t: int, mode: str,
               word: Callable[[int], str], renderers: Mapping[str, Renderer],
               action_names: Mapping[str, Sequence[str]], top_show: int,
               decoders: Mapping[str, Drawer] | None) -> dict:
    """One round of one world: the world's truth (team reward, continue, drawing) and per agent its own step
    (true and predicted tokens, predicted reward / continue / value, action, decoded drawings)."""
    subs = [_step(result, ep, t, mode, word, renderers, action_names, top_show, decoders) for ep in members]
    first = members[0]
    step: dict[str, Any] = {"t": t, "kind": subs[0]["kind"], "frames": [], "tokens": [], "table": [],
                            "reward": [subs[0]["reward"][0], None], "cont": [subs[0]["cont"][0], None],
                            "value": None, "log": {}}
    step["action"] = " | ".join(f"{name}: {sub['action']}" for name, sub in zip(names, subs, strict=True))
    if "svg" in first and first["svg"] is not None:
        step["svg"] = first["svg"][t]
    keep = ("kind", "frames", "tokens", "table", "reward", "cont", "value", "action", "dream_action", "decoded")
    step["agents"] = [{"name": name, **{k: sub[k] for k in keep if k in sub}}
                      for name, sub in zip(names, subs, strict=True)]
    return step


def _team_episodes(result: Mapping, word: Callable[[int], str], renderers: Mapping[str, Renderer],
                   action_names: Mapping[str, Sequence[str]], top_show: int, decoders: Mapping[str, Drawer] | None,
                   agent_names: Sequence[str] | None) -> list[dict]:
    """Team episodes (every result episode has `world` and `agent`) grouped into one page episode per world."""
    worlds: dict[int, list[Mapping]] = {}
    for ep in result["episodes"]:
        worlds.setdefault(int(ep["world"]), []).append(ep)
    out = []
    K = result.get("context", 0)
    for w, members in sorted(worlds.items()):
        members = sorted(members, key=lambda ep: int(ep["agent"]))
        names = [agent_names[int(ep["agent"])] if agent_names and int(ep["agent"]) < len(agent_names)
                 else f"agent {int(ep['agent'])}" for ep in members]
        n = min(int(ep["length"]) for ep in members)
        modes = {}
        args = (word, renderers, action_names, top_show, decoders)
        if all("open" in ep for ep in members):
            modes["open"] = [_team_step(result, members, names, t, "open", *args) for t in range(n)]
        if all("dream" in ep for ep in members) and n > K:
            modes["dream"] = [_team_step(result, members, names, t, "dream", *args) for t in range(K, n)]
        if not modes:
            modes["truth"] = [_team_step(result, members, names, t, "truth", *args) for t in range(n)]
        out.append({"name": f"world {w + 1}: {len(members)} agents (team return {members[0].get('return', 0.0):.3g}, "
                            f"{n} rounds)", "length": n, "modes": modes, "agents": names})
    return out


def page_data(result: Mapping, vocab: Any = None, renderers: Mapping[str, Renderer] | None = None,
              action_names: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
              title: str = "lwm imagination report", meta: Mapping[str, Any] | None = None, top_show: int = 8,
              decoders: Mapping[str, Drawer] | None = None, agent_names: Sequence[str] | None = None) -> dict:
    """Everything the page shows, as JSON-ready data: per episode and mode (open / dream) a list of steps.

    `result` is `Imagination.run`'s dict; episodes without `open` / `dream` entries are shown as truth only
    (with their per-step `svg` drawings and `messages` when present). `action_names`: a list of names for a
    single action head, or {head: names}. `decoders`: {observation key: function from the model's prediction
    of that key (vectors in their own units) to an SVG drawing}, shown beside the truth. Team episodes (from
    `collect_team_episodes`: each has `world` and `agent`) become one page episode per world whose steps hold
    every agent's step in `agents` (named by `agent_names`).
    """
    word = word_fn(vocab)
    renderers = dict(renderers or {})
    if action_names is not None and not isinstance(action_names, Mapping):
        heads = result.get("heads") or [{"name": "action"}]
        action_names = {heads[0]["name"]: list(action_names)}
    action_names = dict(action_names or {})
    if result["episodes"] and all("world" in ep and "agent" in ep for ep in result["episodes"]):
        episodes = _team_episodes(result, word, renderers, action_names, top_show, decoders, agent_names)
        return _clean({"title": title, "meta": dict(meta or {}), "context": result.get("context", 0),
                       "horizon": result.get("horizon"), "observed": result.get("observed"), "episodes": episodes})
    episodes = []
    for e, ep in enumerate(result["episodes"]):
        n = int(ep["length"])
        modes = {}
        if "open" in ep:
            modes["open"] = [_step(result, ep, t, "open", word, renderers, action_names, top_show, decoders)
                             for t in range(n)]
        if "dream" in ep and n > result["context"]:
            modes["dream"] = [_step(result, ep, t, "dream", word, renderers, action_names, top_show, decoders)
                              for t in range(result["context"], n)]
        if not modes:
            modes["truth"] = [_step(result, ep, t, "truth", word, renderers, action_names, top_show)
                              for t in range(n)]
        episodes.append({"name": f"episode {e + 1} (return {ep.get('return', 0.0):.3g}, {n} steps)",
                         "length": n, "modes": modes})
    return _clean({"title": title, "meta": dict(meta or {}), "context": result.get("context", 0),
                   "horizon": result.get("horizon"), "observed": result.get("observed"), "episodes": episodes})


def _horizon_html(table: Mapping[str, list] | None, observed: Mapping[str, float] | None) -> str:
    if not table or not table.get("h"):
        return "<p>No open-loop predictions on this page.</p>"
    metrics = [k for k in table if k not in ("h", "count")]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    if observed:
        cells = "".join(f"<td>{'' if observed.get(m) is None else f'{observed[m]:.4f}'}</td>" for m in metrics)
        rows.append(f"<tr class='obs'><td>observed</td><td></td>{cells}</tr>")
    for j, h in enumerate(table["h"]):
        cells = "".join(f"<td>{'' if table[m][j] is None else f'{table[m][j]:.4f}'}</td>" for m in metrics)
        rows.append(f"<tr><td>{h}</td><td>{table['count'][j]}</td>{cells}</tr>")
    return (f"<table id='horizon'><thead><tr><th>horizon</th><th>episodes</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
.meta{color:#555;font-size:12px} .controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:10px 0}
#slider{width:340px} button{padding:3px 10px}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600}
.observed{background:#3c9a50} .imagined{background:#e08a28} .dream{background:#4670dc} .truth{background:#777}
.frames{display:flex;gap:18px;flex-wrap:wrap} .frames figure{margin:0;text-align:center}
.frames img{image-rendering:pixelated;width:160px;border:1px solid #ccc;background:#000}
.frames figcaption{font-size:12px;color:#555}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
#horizon tr.obs{background:#eef7ef} .words{font-family:ui-monospace,monospace}
.top td:first-child{text-align:left} #strip{display:flex;gap:3px;overflow-x:auto;padding:4px 0}
#strip img{width:40px;image-rendering:pixelated;border:3px solid #ccc;cursor:pointer}
#strip img.observed{border-color:#3c9a50} #strip img.imagined{border-color:#e08a28}
#strip img.dream{border-color:#4670dc} #strip img.current{outline:3px solid #111}
.svg svg{max-width:100%;height:auto} .empty{color:#999}
#agents{display:flex;gap:10px;flex-wrap:wrap} .agent-card{flex:1 1 300px;border:1px solid #ddd;border-radius:6px;
padding:6px 10px;background:#fff} .agent-card h3{font-size:14px;margin:2px 0 4px} .agent-card .svg{margin-top:6px}
#svg svg{max-width:680px} .agent-card svg{max-width:420px}
.caption{font-size:12px;color:#555}
"""

_JS = r"""
(function () {
  const data = JSON.parse(document.getElementById('lwm-data').textContent);
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;',
    "'": '&#39;'}[c]));
  const num = (x, d) => (x === null || x === undefined) ? '–' : Number(x).toFixed(d === undefined ? 3 : d);
  const LABELS = {observed: 'observed (posterior)', imagined: 'imagined (prior, real actions)',
    dream: "dream (actor's actions)", truth: 'episode (no model)'};
  const st = {ep: 0, mode: null, t: 0, timer: null};
  const epSel = $('episode'), modeSel = $('mode'), slider = $('slider');
  data.episodes.forEach((e, i) => { const o = document.createElement('option'); o.value = i; o.textContent = e.name;
    epSel.appendChild(o); });
  function steps() { return data.episodes[st.ep].modes[st.mode]; }
  function setModes() {
    modeSel.innerHTML = '';
    const names = {open: 'open loop', dream: 'free imagination', truth: 'episode'};
    Object.keys(data.episodes[st.ep].modes).forEach((m) => { const o = document.createElement('option');
      o.value = m; o.textContent = names[m] || m; modeSel.appendChild(o); });
    if (!(st.mode in data.episodes[st.ep].modes)) st.mode = modeSel.options[0].value;
    modeSel.value = st.mode;
  }
  function buildStrip() {
    const strip = $('strip'); strip.innerHTML = '';
    steps().forEach((s, i) => {
      const f = s.frames[0]; if (!f) return;
      const img = document.createElement('img'); img.src = f.pred || f.true; img.className = s.kind;
      img.title = 't=' + s.t + ' ' + s.kind; img.addEventListener('click', () => show(i)); strip.appendChild(img);
    });
  }
  function show(i) {
    const ss = steps(); st.t = Math.max(0, Math.min(ss.length - 1, i)); const s = ss[st.t];
    slider.max = ss.length - 1; slider.value = st.t;
    $('step-label').textContent = 'step ' + (st.t + 1) + ' / ' + ss.length + ' (t = ' + s.t + ')';
    const b = $('phase'); b.textContent = LABELS[s.kind] || s.kind; b.className = 'badge ' + s.kind;
    $('frames').innerHTML = s.frames.map((f) => {
      const fig = (src, cap) => src ? '<figure><img src="' + src + '" alt="' + esc(cap) + '"><figcaption>' +
        esc(cap) + '</figcaption></figure>' : '';
      const real = s.kind === 'dream' ? 'real episode (its own actions)' : 'true';
      return fig(f.true, f.key + ': ' + real) + fig(f.pred, f.key + ': predicted') + fig(f.err, f.key + ': error');
    }).join('');
    $('frames-panel').style.display = s.frames.length ? '' : 'none';
    $('tokens-panel').style.display = s.tokens.length ? '' : 'none';
    $('true-text').textContent = s.tokens.length ? s.tokens[0].true : '';
    $('pred-text').textContent = s.tokens.length && s.tokens[0].pred !== null ? s.tokens[0].pred : '';
    $('top').innerHTML = s.tokens.map((tk) => tk.top.map((p) => '<tr><td>' + esc(tk.key) + '[' + p.pos +
      '] true <b>' + esc(p.true) + '</b></td>' + p.cands.map((c) => '<td class="words">' + esc(c[0]) + ' ' +
      num(c[1], 2) + '</td>').join('') + '</tr>').join('')).join('');
    const ag = s.agents || [];
    $('agents-panel').style.display = ag.length ? '' : 'none';
    $('agents').innerHTML = ag.map((a) => {
      const words = (a.tokens || []).map((tk) => '<div>true tokens: <span class="words true-words">' + esc(tk.true) +
        '</span></div><div>predicted (argmax): <span class="words pred-words">' + esc(tk.pred === null ? '' : tk.pred) +
        '</span></div>').join('');
      const drawn = (a.decoded || []).map((d) => '<div class="svg"><div class="caption">decoded from ' + esc(a.name) +
        "'s latent (" + esc(d.key) + ')</div>' + d.svg + '</div>').join('');
      return '<div class="agent-card" data-agent="' + esc(a.name) + '"><h3>' + esc(a.name) + '</h3>' +
        '<div>action: <span class="act">' + esc(a.action) + '</span>' +
        (a.dream_action ? ' | dream: <span class="dream-act">' + esc(a.dream_action) + '</span>' : '') + '</div>' +
        words + '<div>reward ' + num(a.reward[0]) + ' (predicted ' + num(a.reward[1]) + ') · continue ' +
        num(a.cont[0], 0) + ' (' + num(a.cont[1]) + ') · value ' + num(a.value) + '</div>' + drawn + '</div>';
    }).join('');
    $('scalars').innerHTML = ag.length ? '<tr><th>agent</th><th>reward</th><th>predicted</th><th>continue</th>' +
      '<th>predicted</th><th>value (critic)</th></tr>' + ag.map((a) => '<tr><td>' + esc(a.name) + '</td><td>' +
      num(a.reward[0]) + '</td><td>' + num(a.reward[1]) + '</td><td>' + num(a.cont[0], 0) + '</td><td>' +
      num(a.cont[1]) + '</td><td>' + num(a.value) + '</td></tr>').join('') :
      '<tr><th></th><th>true</th><th>predicted</th></tr>' +
      '<tr><td>reward</td><td>' + num(s.reward[0]) + '</td><td>' + num(s.reward[1]) + '</td></tr>' +
      '<tr><td>continue</td><td>' + num(s.cont[0], 0) + '</td><td>' + num(s.cont[1]) + '</td></tr>' +
      '<tr><td>value (critic)</td><td></td><td>' + num(s.value) + '</td></tr>' +
      s.table.map((r) => '<tr><td>' + esc(r[0]) + '</td><td class="words">' + esc(r[1]) + '</td><td class="words">' +
        esc(r[2]) + '</td></tr>').join('');
    $('action').textContent = s.action + (s.dream_action ? '   | dream: ' + s.dream_action : '');
    const logs = Object.entries(s.log || {}).map((kv) => kv[0] + ': ' + kv[1]);
    if (s.messages) logs.push(...s.messages);
    $('log').textContent = logs.join('\n');
    const dec = ag.length ? [] : (s.decoded || []);
    const cap = dec.length || ag.length ? '<div class="caption">true state</div>' : '';
    $('svg').innerHTML = (s.svg ? cap + s.svg : '') +
      dec.map((d) => '<div class="caption">decoded from the latent (' + esc(d.key) + ')</div>' + d.svg).join('');
    $('svg-panel').style.display = s.svg || dec.length ? '' : 'none';
    Array.from($('strip').children).forEach((img, k) => img.classList.toggle('current', k === st.t));
  }
  function play(on) {
    if (st.timer) { clearInterval(st.timer); st.timer = null; }
    if (on) st.timer = setInterval(() => { const n = steps().length; show((st.t + 1) % n); }, 700);
    $('play').textContent = st.timer ? 'Pause' : 'Play';
  }
  epSel.addEventListener('change', () => { st.ep = +epSel.value; setModes(); buildStrip(); show(0); });
  modeSel.addEventListener('change', () => { st.mode = modeSel.value; buildStrip(); show(0); });
  slider.addEventListener('input', () => show(+slider.value));
  $('prev').addEventListener('click', () => show(st.t - 1));
  $('next').addEventListener('click', () => show(st.t + 1));
  $('play').addEventListener('click', () => play(!st.timer));
  document.addEventListener('keydown', (ev) => {
    if (ev.target && ev.target.tagName === 'SELECT') return;
    if (ev.key === 'ArrowRight') { show(st.t + 1); ev.preventDefault(); }
    else if (ev.key === 'ArrowLeft') { show(st.t - 1); ev.preventDefault(); }
    else if (ev.key === 'Home') show(0);
    else if (ev.key === 'End') show(steps().length - 1);
    else if (ev.key === ' ') { play(!st.timer); ev.preventDefault(); }
  });
  setModes(); buildStrip(); show(0);
  window.lwmReport = {show: show, state: st, data: data};
})();
"""


def _explain(data: Mapping[str, Any]) -> str:
    if not data.get("horizon"):
        return ""
    return (f"<div class='meta'>Open loop: the model observes the first {data.get('context', 0)} step(s) "
            "(posterior), then imagines the rest from the real actions with the prior only. Free imagination: "
            "from the same state the actor picks the actions inside the dream (the real frames are shown for "
            "reference only).</div>")


def render_html(data: Mapping[str, Any]) -> str:
    """The self-contained page for `page_data(...)`."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    meta = data.get("meta") or {}
    meta_html = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items())
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "font-src 'none'; connect-src 'none'")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<link rel="icon" href="data:,">
<title>{html.escape(data.get('title', 'lwm report'))}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(data.get('title', 'lwm report'))}</h1>
<div class="meta">{meta_html}</div>
{_explain(data)}
<div class="controls">
 <select id="episode" aria-label="episode"></select><select id="mode" aria-label="mode"></select>
 <button id="prev" title="previous step (left arrow)">&#9664;</button>
 <input id="slider" type="range" min="0" max="0" value="0" aria-label="step">
 <button id="next" title="next step (right arrow)">&#9654;</button>
 <button id="play" title="play / pause (space)">Play</button>
 <span id="step-label"></span> <span id="phase" class="badge"></span>
</div>
<div id="strip"></div>
<div class="panel" id="frames-panel"><div id="frames" class="frames"></div></div>
<div class="panel" id="tokens-panel"><div>true tokens: <span id="true-text" class="words"></span></div>
 <div>predicted (argmax): <span id="pred-text" class="words"></span></div>
 <table class="top" id="top"></table></div>
<div class="panel"><table id="scalars"></table><div>action: <span id="action"></span></div>
 <pre id="log"></pre></div>
<div class="panel svg" id="svg-panel"><div id="svg"></div></div>
<div class="panel" id="agents-panel"><div id="agents"></div></div>
<h2>Open-loop prediction error by horizon</h2>
{_horizon_html(data.get('horizon'), data.get('observed'))}
<script id="lwm-data" type="application/json">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html(data: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_html(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- one call
def visualize(agent, params, envs: Sequence, out: str | Path, *, context: int | None = None, seed: int = 0,
              vocab: Any = None, renderers: Mapping[str, Renderer] | None = None,
              action_names: Mapping[str, Sequence[str]] | Sequence[str] | None = None, gif: str | Path | None = None,
              mp4: str | Path | None = None, title: str = "lwm imagination report",
              meta: Mapping[str, Any] | None = None, max_steps: int = 500, imagination: Imagination | None = None,
              greedy: bool = False, decoders: Mapping[str, Drawer] | None = None,
              world_svg: Callable[[Any], Sequence[str]] | None = None, agent_names: Sequence[str] | None = None
              ) -> dict:
    """Collects one episode per environment in `envs`, imagines, writes the HTML page to `out` (and a GIF / MP4
    of the first episode's open-loop strip). Returns the `Imagination.run` result plus `text` (the error table
    as text) and the written `paths`.

    `envs` may instead hold one team environment (`lwm.team`): its W worlds are played by the shared-parameter
    agent (`collect_team_episodes`), every agent's stream is imagined, and the page shows one world per episode
    with every agent's step; `world_svg(env)` (one SVG per world) draws the true state of each round,
    `decoders` the model's reconstructions (see `page_data`)."""
    imagination = imagination or Imagination(agent)
    if envs and is_team_env(envs[0]):
        if len(envs) != 1:
            raise ValueError(f"visualize takes one team environment (it holds its worlds), got {len(envs)}.")
        episodes = collect_team_episodes(agent, params, envs[0], seed=seed, greedy=greedy, max_steps=max_steps,
                                         capture=world_svg)
        for ep in episodes:
            if world_svg is not None:
                ep["svg"] = ep.pop("extra")
        count = {"worlds": int(envs[0].num_worlds), "agents": int(envs[0].num_agents)}
    else:
        episodes = collect_episodes(agent, params, envs, seed=seed, greedy=greedy, max_steps=max_steps)
        count = {"episodes": len(episodes)}
    result = imagination.run(params, episodes, context=context, seed=seed)
    meta = {**dict(meta or {}), **count, "context": result["context"]}
    write_html(page_data(result, vocab, renderers, action_names, title, meta, decoders=decoders,
                         agent_names=agent_names), out)
    paths = {"html": str(out)}
    if gif is not None or mp4 is not None:
        frames = strip_frames(result, 0, "open", renderers)
        if gif is not None and frames:
            Path(gif).write_bytes(encode_gif(frames))
            paths["gif"] = str(gif)
        if mp4 is not None and frames and write_mp4(frames, mp4):
            paths["mp4"] = str(mp4)
    result["text"] = format_horizon_table(result["horizon"], result["observed"])
    result["paths"] = paths
    return result


class TrainingReport:
    """The periodic report of a training run: `<logdir>/report.html` rewritten in place (atomically) and the
    open-loop strip of its first episode as a TensorBoard image (`openloop/strip`, true | predicted | error).
    For a team environment the first `episodes` worlds of one fresh batch are played, every agent's stream."""

    def __init__(self, agent, make_env: Callable[[int], Any], logdir: str | Path, events: Any = None,
                 episodes: int = 2, seed: int = 0, max_steps: int = 200):
        self.agent = agent
        self.make_env = make_env
        self.path = Path(logdir) / "report.html"
        self.events = events
        self.episodes = episodes
        self.seed = seed
        self.max_steps = max_steps
        self.imagination = Imagination(agent)
        self.count = 0

    def write(self, params, step: int) -> dict:
        """Collects fresh episodes with `params`, writes the page and the TensorBoard images (the frame strip as a PNG,
        the frames as an animated GIF); returns the result."""
        first = self.make_env(30_000)
        team = is_team_env(first)  # a team environment holds many worlds: one is enough, its first worlds shown
        worlds = [first] if team else [first] + [self.make_env(30_000 + i) for i in range(1, self.episodes)]
        try:
            vocab = getattr(first, "vocab", None)
            if team:
                episodes = [ep for ep in collect_team_episodes(self.agent, params, first, seed=self.seed + self.count,
                                                               max_steps=self.max_steps)
                            if int(ep["world"]) < self.episodes]
            else:
                episodes = collect_episodes(self.agent, params, worlds, seed=self.seed + self.count,
                                            max_steps=self.max_steps)
        finally:
            for world in worlds:
                close = getattr(world, "close", None)
                if close is not None:
                    close()
        result = self.imagination.run(params, episodes, seed=self.seed + self.count)
        self.count += 1
        data = page_data(result, vocab, title=f"{self.path.parent.name}: imagination at step {step}",
                         meta={"env steps": step, "episodes": len(episodes), "context": result["context"]})
        tmp = self.path.with_name(".report.html.tmp")
        write_html(data, tmp)
        tmp.replace(self.path)
        if self.events is not None:
            frames = strip_frames(result, 0, "open")
            if frames:
                strip = np.concatenate(frames, 0)
                h, w = frames[0].shape[:2]
                # TensorBoard's image dashboard plays an animated GIF: the step-by-step video of the same frames.
                self.events.images(step, {"openloop/strip": (encode_png(strip), strip.shape[0], strip.shape[1]),
                                          "openloop/video": (encode_gif(frames), h, w)})
        return result
