"""The imagination visualizer: a debug run's checkpoint rendered to HTML and opened in headless Chromium.

One tiny `tokenchoice` run (with its 16×16 image) is trained in-process; `launch.visualize` renders its report;
Chromium (driven through chromedriver's W3C WebDriver HTTP API, no extra Python package) loads the page: no
console errors, the slider, buttons and arrow keys change the shown step, a screenshot is not blank, and the
words on the page are the episode's tokens decoded. Also: open-loop numbers, GIF/PNG encoders, a symbolic
grid world, the defusal drawing, and the launcher's errors.

Chromium is required where the environment variable CI is set (`.ci/run` installs it); elsewhere the browser
tests skip when it is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from launch import train
from launch import visualize as launcher
from lwm.visualize import encode_gif, encode_png, lzw_encode, write_mp4

TRAIN = ["--configs", "debug", "tokenchoice", "--env.options.image", "true", "--env.num_envs", "2", "--run.steps",
         "240", "--run.train_fill", "64", "--run.train_ratio", "8", "--batch_length", "8", "--agent.imag.horizon", "5",
         "--run.eval_episodes", "0", "--run.summary_every", "0", "--run.log_every", "30", "--run.report_every", "3600"]


# ------------------------------------------------------------------------------------------ PNG/GIF readers
def read_png(data: bytes) -> np.ndarray:
    """Decodes an 8-bit, non-interlaced grey/RGB/RGBA PNG (all five filters) to [H, W, C] uint8."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, header = 8, b"", None
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        tag, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        i += 12 + n
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0
    c = {0: 1, 2: 3, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    out = np.zeros((h, w * c), np.int32)
    prev = np.zeros(w * c, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            row = line
        elif f == 2:
            row = (line + prev) % 256
        elif f == 1:
            row = line.reshape(w, c).copy()
            row = (np.cumsum(row, 0) % 256).reshape(-1)
        else:
            row = np.zeros(w * c, np.int32)
            for x in range(w * c):
                a = row[x - c] if x >= c else 0
                b, d = prev[x], prev[x - c] if x >= c else 0
                if f == 3:
                    row[x] = (line[x] + (a + b) // 2) % 256
                else:
                    p = a + b - d
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                    row[x] = (line[x] + pred) % 256
        out[y] = row
        prev = row
    return out.reshape(h, w, c).astype(np.uint8)


def read_gif(data: bytes) -> list[np.ndarray]:
    """Palette indices [H, W] of every frame of a GIF with a global palette (LZW decoded here)."""
    assert data[:6] == b"GIF89a"
    w, h, packed = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 * (2 << (packed & 7)) if packed & 0x80 else 0)
    frames = []
    while data[i] != 0x3B:
        if data[i] == 0x21:
            i += 2
            while data[i]:
                i += data[i] + 1
            i += 1
            continue
        assert data[i] == 0x2C
        i += 10
        min_size = data[i]
        i += 1
        payload = bytearray()
        while data[i]:
            payload += data[i + 1:i + 1 + data[i]]
            i += data[i] + 1
        i += 1
        frames.append(np.frombuffer(lzw_decode(bytes(payload), min_size), np.uint8)[: w * h].reshape(h, w))
    return frames


def lzw_decode(data: bytes, min_size: int) -> bytes:
    clear, end = 1 << min_size, (1 << min_size) + 1
    pos, out = 0, bytearray()
    size, table, prev = min_size + 1, None, None
    while True:
        code = 0
        for b in range(size):
            byte = data[(pos + b) // 8] if (pos + b) // 8 < len(data) else 0
            code |= ((byte >> ((pos + b) % 8)) & 1) << b
        pos += size
        if code == clear:
            table = [bytes([k]) for k in range(clear)] + [b"", b""]
            size, prev = min_size + 1, None
            continue
        if code == end:
            return bytes(out)
        if prev is None:
            entry = table[code]
        else:
            entry = table[code] if code < len(table) else prev + prev[:1]
            table.append(prev + entry[:1])
            if len(table) == (1 << size) and size < 12:
                size += 1
        out += entry
        prev = entry


def test_png_and_gif_encoders_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (3, 4), (2, 9, 4), (64, 64, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        back = read_png(encode_png(img))
        np.testing.assert_array_equal(back.reshape(img.shape), img)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), np.float32))
    big = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()  # forces table resets
    assert lzw_decode(lzw_encode(big), 8) == big
    smooth = bytes(np.repeat(np.arange(256, dtype=np.uint8), 40))
    assert lzw_decode(lzw_encode(smooth), 8) == smooth
    frames = [np.full((6, 8, 3), v, np.uint8) for v in (0, 255)] + [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)]
    decoded = read_gif(encode_gif(frames))
    assert len(decoded) == 3 and decoded[0].shape == (6, 8)
    assert (decoded[0] == 0).all() and (decoded[1] == 251).all()  # black and white corners of the colour cube


# --------------------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpointed debug run and its report (page, GIF, returned numbers)."""
    root = tmp_path_factory.mktemp("vis")
    logdir = root / "run"
    train.main([*TRAIN, "--logdir", str(logdir)])
    out = root / "report.html"
    summary = launcher.main(["--logdir", str(logdir), "--episodes", "2", "--context", "1", "--out", str(out),
                             "--gif", str(root / "strip.gif"), "--mp4", str(root / "strip.mp4")])
    return {"root": root, "logdir": logdir, "out": out, "summary": summary}


def test_report_holds_open_loop_numbers(run, capsys):
    s = run["summary"]
    horizon = s["horizon"]
    # tokenchoice (delay 2): 4 steps, 1 observed, 3 imagined
    assert horizon["h"] == [1, 2, 3] and horizon["count"] == [2, 2, 2]
    for name in ("image_mse", "tokens_acc", "vector_mse", "reward_abs"):
        assert len(horizon[name]) == 3 and all(np.isfinite(horizon[name])), name
    assert all(0.0 <= a <= 1.0 for a in horizon["tokens_acc"])
    assert set(s["observed"]) == set(horizon) - {"h", "count"}  # the observed steps' errors beside them
    result = s["result"]
    ep = result["episodes"][0]
    assert ep["open"]["pred"]["image"].shape == (4, 16, 16, 3)
    assert ep["open"]["pred"]["tokens"].shape == (4, 1, 5)  # top 5 ids, argmax first
    assert ep["dream"]["reward"].shape == (3,) and ep["dream"]["action"]["action"].shape == (3,)
    page = run["out"].read_text()
    assert 'id="horizon"' in page.replace("'", '"') and f"{horizon['image_mse'][0]:.4f}" in page
    assert "http://" not in page and "https://" not in page
    assert "image_mse" in result["text"]
    frames = read_gif((run["root"] / "strip.gif").read_bytes())
    assert len(frames) == 4


# ---------------------------------------------------------------------------------------------------- MP4
def mp4_boxes(data: bytes) -> list[str]:
    """The top-level box types of an MP4 file (each box: 32-bit size, 4-character type)."""
    boxes, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        elif size == 0:
            size = len(data) - i
        assert size >= 8, (kind, size)
        boxes.append(kind.decode("latin-1"))
        i += size
    assert i == len(data), "boxes do not tile the file"
    return boxes


def test_mp4_export(run, tmp_path):
    """The launcher's --mp4 strip (and write_mp4 on frames of odd size) is a valid MP4 where ffmpeg is installed."""
    if shutil.which("ffmpeg") is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg is required in CI (.ci/run installs it with apt-get).")
        assert not (run["root"] / "strip.mp4").exists()  # skipped with a note, nothing written
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    data = (run["root"] / "strip.mp4").read_bytes()
    assert run["summary"]["paths"]["mp4"] == str(run["root"] / "strip.mp4")
    assert data[4:8] == b"ftyp" and len(data) > 1000
    boxes = mp4_boxes(data)
    assert boxes[0] == "ftyp" and "moov" in boxes and "mdat" in boxes
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (37, 51, 3), dtype=np.uint8) for _ in range(6)]  # odd sides: padded to even
    assert write_mp4(frames, tmp_path / "odd.mp4")
    odd = (tmp_path / "odd.mp4").read_bytes()
    assert odd[4:8] == b"ftyp" and len(odd) > 1000 and "moov" in mp4_boxes(odd)


def test_mp4_without_ffmpeg_writes_nothing(tmp_path, monkeypatch):
    import lwm.visualize as vis

    monkeypatch.setattr(vis.shutil, "which", lambda name: None)
    assert not write_mp4([np.zeros((8, 8, 3), np.uint8)], tmp_path / "none.mp4")
    assert not (tmp_path / "none.mp4").exists()


# -------------------------------------------------------------------------------------------- the browser
def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class WebDriver:
    """A minimal W3C WebDriver client over chromedriver's HTTP API."""

    def __init__(self, browser: str, driver: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        options = {"binary": browser, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                               "--disable-dev-shm-usage", "--window-size=1200,1000"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options,
                                                 "goog:loggingPrefs": {"browser": "ALL"}}}}
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.proc.kill()
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from None

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        element = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        self.cmd("POST", f"/element/{next(iter(element.values()))}/click", {})

    def key(self, key: str) -> None:
        self.cmd("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]})

    def logs(self) -> list[dict]:
        return self.cmd("POST", "/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium and chromedriver are required in CI (.ci/run installs them with apt-get).")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    driver = WebDriver(*found)
    yield driver
    driver.close()


def _open(browser: WebDriver, path: Path) -> None:
    browser.cmd("POST", "/url", {"url": path.resolve().as_uri()})
    browser.logs()  # nothing before this page


def _errors(browser: WebDriver) -> list[dict]:
    return [e for e in browser.logs() if e.get("level") in ("SEVERE", "ERROR")]


def test_page_in_headless_chromium(run, browser):
    from envs.text import Vocabulary
    from envs.token_world import COLOURS, EXTRA_WORDS

    browser.cmd("POST", "/url", {"url": run["out"].resolve().as_uri()})
    errors = _errors(browser)
    assert not errors, errors
    state = lambda: browser.js("return [document.getElementById('step-label').textContent, "  # noqa: E731
                               "document.getElementById('phase').textContent, "
                               "document.getElementById('slider').value]")
    label, phase, value = state()
    assert label.startswith("step 1 / 4") and phase.startswith("observed") and value == "0"
    browser.js("const s = document.getElementById('slider'); s.value = 2; s.dispatchEvent(new Event('input'));")
    label, phase, _ = state()
    assert label.startswith("step 3 / 4") and phase.startswith("imagined")
    browser.click("#prev")
    assert state()[0].startswith("step 2 / 4")
    browser.key("\ue014")  # ArrowRight
    assert state()[0].startswith("step 3 / 4")
    browser.key("\ue012")  # ArrowLeft
    browser.key("\ue012")
    assert state()[0].startswith("step 1 / 4")

    # The words on the page are the episode's tokens, decoded with the world's vocabulary.
    vocab = Vocabulary(EXTRA_WORDS + COLOURS)
    episodes = run["summary"]["result"]["episodes"]
    for e, ep in enumerate(episodes):
        browser.js(f"const s = document.getElementById('episode'); s.value = {e}; "
                   "s.dispatchEvent(new Event('change'));")
        for t in range(ep["length"]):
            browser.js(f"window.lwmReport.show({t});")
            shown = browser.js("return [document.getElementById('true-text').textContent, "
                               "document.getElementById('pred-text').textContent]")
            assert shown[0] == vocab.decode(ep["obs"]["tokens"][t]), (e, t)
            assert shown[1] == vocab.decode(ep["open"]["pred"]["tokens"][t][:, 0]), (e, t)
    assert vocab.decode(episodes[0]["obs"]["tokens"][0]) in COLOURS  # the heard word is on the page

    # Free imagination, then play: the step advances by itself.
    browser.js("const m = document.getElementById('mode'); m.value = 'dream'; m.dispatchEvent(new Event('change'));")
    assert state()[1].startswith("dream")
    browser.click("#play")
    time.sleep(1.6)
    browser.click("#play")
    assert not state()[0].startswith("step 1 /")
    images = browser.js("return Array.from(document.querySelectorAll('#frames img')).map(i => i.naturalWidth)")
    assert len(images) == 2 and all(w > 0 for w in images)  # real frame and dream (no error image in a dream)

    shot = read_png(base64.b64decode(browser.cmd("GET", "/screenshot")))
    assert shot.shape[0] > 100 and shot.shape[1] > 100
    pixels = shot[..., :3].reshape(-1, 3)
    assert len(np.unique(pixels[:: 7], axis=0)) > 20, "the screenshot is blank"
    assert pixels.std() > 10
    errors = _errors(browser)
    assert not errors, errors


def test_defusal_drawing_of_a_scripted_episode(tmp_path, browser):
    out = tmp_path / "defusal.html"
    launcher.main(["--scripted", "heuristic", "--env", "defusal", "--max_steps", "8", "--out", str(out)])
    page = out.read_text()
    assert "\\u003csvg" in page  # inline SVG drawings in the page's JSON ('<' escaped)
    _open(browser, out)
    assert not _errors(browser)
    n = browser.js("return document.querySelectorAll('#svg svg .bomb').length")
    agents = browser.js("return document.querySelectorAll('#svg svg .agent').length")
    assert n == 5 and agents == 3
    browser.key("\ue014")
    log = browser.js("return document.getElementById('log').textContent")
    assert "alpha:" in log and "log_alpha" in log
    assert not _errors(browser)


# ------------------------------------------------------------------------------------- symbolic grid world
def test_symbolic_grid_world_renders_grids(tmp_path):
    import envs
    from lwm import config
    from lwm.agent import Agent
    from lwm.imagination import Imagination
    from lwm.visualize import visualize

    cfg = config.load(["debug"], {"env.name": "grid_task_s"})
    worlds = [envs.make("grid_task_s", obs="symbolic", seed=i, max_steps=10) for i in range(2)]
    agent = Agent(worlds[0].observation_spec(), worlds[0].action_spec(), cfg)
    ts = agent.init(0)
    out = tmp_path / "grid.html"
    imagination = Imagination(agent)
    result = visualize(agent, ts["params"], worlds, out, vocab=worlds[0].vocab, imagination=imagination,
                       renderers=launcher.grid_renderers(worlds[0].observation_spec()), gif=tmp_path / "g.gif")
    again = imagination.run(ts["params"], [dict(ep) for ep in result["episodes"]], context=result["context"])
    assert imagination.traces == 1  # one compile per (episodes, padded length, context)
    np.testing.assert_array_equal(again["episodes"][0]["open"]["pred"]["grid"],
                                  result["episodes"][0]["open"]["pred"]["grid"])
    ep = result["episodes"][0]
    assert ep["open"]["pred"]["grid"].shape == ep["obs"]["grid"].shape  # argmax codes per cell and channel
    assert "grid_acc" in result["horizon"] and "direction_acc" in result["horizon"]
    page = out.read_text()
    assert page.count("data:image/png;base64,") > 10 and "log_text" in page
    assert read_gif((tmp_path / "g.gif").read_bytes())


# -------------------------------------------------------------------------------------------------- errors
def test_launcher_errors(run, tmp_path):
    with pytest.raises(SystemExit, match=r"--logdir .*nowhere does not exist"):
        launcher.main(["--logdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"holds no config.yaml"):
        launcher.main(["--logdir", str(empty), "--out", str(tmp_path / "r.html")])
    shutil.copy(run["logdir"] / "config.yaml", empty / "config.yaml")
    with pytest.raises(SystemExit, match=r"no complete checkpoint in .*empty"):
        launcher.main(["--logdir", str(empty), "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit, match=r"--checkpoint .*missing: no such directory"):
        launcher.main(["--logdir", str(run["logdir"]), "--checkpoint", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "r.html")])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"--out .*file/r.html: the directory .*file does not exist"):
        launcher.main(["--logdir", str(run["logdir"]), "--out", str(blocker / "r.html")])
    with pytest.raises(SystemExit, match=r"--out .* is a directory"):
        launcher.main(["--logdir", str(run["logdir"]), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--episodes 0 must be >= 1"):
        launcher.main(["--logdir", str(run["logdir"]), "--episodes", "0", "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit, match=r"unknown argument '--epsiodes'"):
        launcher.main(["--logdir", str(run["logdir"]), "--epsiodes", "2"])
    with pytest.raises(SystemExit, match=r"context=9 must be an int in 1..3"):
        launcher.main(["--logdir", str(run["logdir"]), "--episodes", "1", "--context", "9",
                       "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit, match=r"--scripted 'genius' is not known; use one of random_legal, heuristic"):
        launcher.main(["--scripted", "genius", "--env", "defusal", "--out", str(tmp_path / "d.html")])
    assert not (tmp_path / "r.html").exists()


def test_training_writes_a_periodic_report_and_a_tensorboard_image(run):
    from lwm.logger import EVENTS_PREFIX, decode_event, read_records

    page = (run["logdir"] / "report.html").read_text()
    assert 'id="lwm-data"' in page and "Open-loop prediction error by horizon" in page
    images = {}
    for path in sorted(run["logdir"].glob(EVENTS_PREFIX + "*")):
        for record in read_records(path):
            images.update(decode_event(record)["images"])
    strip = images["openloop/strip"]
    picture = read_png(strip["png"])
    assert picture.shape == (strip["height"], strip["width"], 3) and picture.std() > 0
    video = images["openloop/video"]  # an animated GIF: one frame per step of the strip
    frames = read_gif(video["png"])
    assert len(frames) >= 2 and frames[0].shape == (video["height"], video["width"])
    assert video["height"] * len(frames) == strip["height"]


# ------------------------------------------------------------------------------------------ defusal team
TEAM_TRAIN = ["--configs", "defusal_small", "debug", "--env.num_envs", "2", "--run.steps", "150", "--run.train_fill",
              "48", "--run.train_ratio", "8", "--batch_length", "8", "--agent.imag.horizon", "5",
              "--run.eval_episodes", "0", "--run.summary_every", "0", "--run.log_every", "30",
              "--run.report_every", "1"]


def page_json(path: Path) -> dict:
    page = path.read_text()
    start = page.index('<script id="lwm-data" type="application/json">') + len(
        '<script id="lwm-data" type="application/json">')
    return json.loads(page[start:page.index("</script>", start)])


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A checkpointed debug-sized defusal_small team run and its report (two worlds x three agents)."""
    import envs

    root = tmp_path_factory.mktemp("team")
    logdir = root / "run"
    train.main([*TEAM_TRAIN, "--logdir", str(logdir)])
    out = root / "team.html"
    summary = launcher.main(["--logdir", str(logdir), "--episodes", "2", "--context", "1", "--max_steps", "6",
                             "--out", str(out)])
    world = envs.make_batched("defusal_small", 1, message_len=1, token_len=48)
    return {"root": root, "logdir": logdir, "out": out, "summary": summary, "world": world}


def test_decoded_vector_reads_like_the_world_state():
    """read_vector on true observations gives back the state: room, cutters, bomb, known sequence, score, round."""
    import jax

    from envs.defusal import core, render, scripted

    params = core.Params(max_rounds=12)
    key = jax.random.key(4)
    reset, step = (jax.jit(f, static_argnames="params") for f in (core.reset, core.step))
    obs, state = reset(key, params=params)
    policy = jax.jit(scripted.TEAMS["heuristic"], static_argnames="params")
    for _ in range(10):
        s = jax.tree.map(np.asarray, state)
        rem = np.asarray(core.remaining_sequence(state))
        for a in range(params.num_agents):
            b = render.read_vector(np.asarray(obs["vector"][a]), params)
            room = int(s.agent_room[a])
            here = [k for k in range(params.num_bombs) if s.bomb_room[k] == room and s.bomb_status[k] == core.ACTIVE]
            assert b["me"] == a and b["room"] == room and b["room_p"] == 1.0
            np.testing.assert_array_equal(b["tools"], core.tools(params)[a])
            np.testing.assert_array_equal(b["with"], s.agent_room == room)
            assert b["bomb"] == bool(here) and b["score"] == int(s.score) and b["round"] == int(s.round)
            if here:
                k = here[0]
                assert b["left"] == int(s.bomb_phases[k] - s.bomb_progress[k]) and b["known"] == bool(s.knows[a, k])
                if b["known"]:
                    assert b["sequence"] == rem[k].tolist()
            drawing = render.svg_vector(np.asarray(obs["vector"][a]), params, title="t")
            assert drawing.startswith("<svg") and 'class="decoded"' in drawing
            assert drawing.count('class="agent"') == int((s.agent_room == room).sum())
            assert drawing.count('class="bomb"') == int(bool(here))
        key, k_pol, k_env = jax.random.split(key, 3)
        acts, msgs = policy(k_pol, state, params=params)
        obs, state, _, done, _ = step(k_env, state, acts, msgs, params=params)
        if bool(done):
            break
    with pytest.raises(ValueError, match="43 entries for 3 agents"):
        render.read_vector(np.zeros(40), params)


def test_team_checkpoint_report(team):
    """Per world and step: the true drawing, every agent's true and predicted words, its decoded drawing
    (the model's reconstruction of its vector), predicted reward / continue / value and its move and talk."""
    from envs.defusal import core, render

    world, result = team["world"], team["summary"]["result"]
    vocab, params = world.vocab, world.params
    streams = result["episodes"]
    assert len(streams) == 6 and [(ep["world"], ep["agent"]) for ep in streams] == [(w, a) for w in (0, 1)
                                                                                    for a in range(3)]
    for ep in streams:
        assert (ep["obs"]["agent_id"] == ep["agent"]).all() and ep["is_first"][0] and not ep["is_first"][1:].any()
        assert ep["open"]["pred"]["vector/value"].shape == (ep["length"], core.vector_size(params))
    data = page_json(team["out"])
    assert len(data["episodes"]) == 2 and data["meta"]["worlds"] == 2 and data["meta"]["agents"] == 3
    said = 0
    for w, page_ep in enumerate(data["episodes"]):
        members = streams[3 * w:3 * w + 3]
        assert page_ep["agents"] == ["alpha", "bravo", "charlie"] and set(page_ep["modes"]) == {"open", "dream"}
        assert page_ep["length"] == members[0]["length"]
        for t, step in enumerate(page_ep["modes"]["open"]):
            assert step["kind"] == ("observed" if t < 1 else "imagined")
            assert step["svg"].startswith("<svg") and 'class="world"' in step["svg"]
            assert len(step["agents"]) == 3
            for a, (card, ep) in enumerate(zip(step["agents"], members, strict=True)):
                tokens = ep["obs"]["tokens"][t]
                assert card["tokens"][0]["true"] == vocab.decode(tokens)
                assert card["tokens"][0]["pred"] == vocab.decode(ep["open"]["pred"]["tokens"][t][:, 0])
                assert card["decoded"][0]["svg"] == render.svg_vector(ep["open"]["pred"]["vector/value"][t], params)
                assert card["reward"][1] == pytest.approx(float(ep["open"]["reward"][t]), abs=1e-6)
                assert card["value"] == pytest.approx(float(ep["open"]["value"][t]), abs=1e-6)
                move, talk = int(ep["action"]["move"][t]), int(ep["action"]["talk"][t])
                word = "silence" if talk == 0 else core.MESSAGE_WORDS[talk - 1]
                assert card["action"] == f"move {move} ({core.ACTION_NAMES[move]}), talk {talk} ({word})"
                # The message reaches both teammates' next tokens: "<name> says <word>".
                if talk and t + 1 < page_ep["length"]:
                    for mate in range(3):
                        if mate != a:
                            heard = page_ep["modes"]["open"][t + 1]["agents"][mate]["tokens"][0]["true"]
                            assert f"{core.AGENT_NAMES[a]} says {word}" in heard, (w, t, a, mate, heard)
                            said += 1
        dream = page_ep["modes"]["dream"]
        assert all(s["kind"] == "dream" and len(s["agents"]) == 3 and s["agents"][0]["dream_action"] for s in dream)
    assert said > 0, "no message was sent in the report's episodes"
    page = team["out"].read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_team_page_in_headless_chromium(team, browser):
    _open(browser, team["out"])
    assert not _errors(browser)
    count = lambda css: browser.js(f"return document.querySelectorAll('{css}').length")  # noqa: E731
    assert count("#svg svg.world") == 1 and count("#agents .agent-card") == 3 and count("#agents svg.decoded") == 3
    assert count("#svg svg .agent") == 3
    data = page_json(team["out"])
    first = data["episodes"][0]["modes"]["open"]
    names = browser.js("return Array.from(document.querySelectorAll('.agent-card h3')).map(h => h.textContent)")
    assert names == ["alpha", "bravo", "charlie"]
    shown = browser.js("return Array.from(document.querySelectorAll('.true-words')).map(s => s.textContent)")
    assert shown == [card["tokens"][0]["true"] for card in first[0]["agents"]]
    browser.key("\ue014")  # ArrowRight
    label = browser.js("return document.getElementById('step-label').textContent")
    assert label.startswith(f"step 2 / {len(first)}")
    shown = browser.js("return Array.from(document.querySelectorAll('.true-words')).map(s => s.textContent)")
    assert shown == [card["tokens"][0]["true"] for card in first[1]["agents"]]
    assert not _errors(browser)


def test_team_checkpoint_with_another_world_is_a_clear_error(team, tmp_path):
    with pytest.raises(SystemExit, match=r"--env tokenchoice: cannot build it with the run's env.options .*"
                                         r"trained on defusal_small \(a team world of 3 agents"):
        launcher.main(["--logdir", str(team["logdir"]), "--env", "tokenchoice", "--out", str(tmp_path / "r.html")])
    # The full world builds with the run's options but speaks a larger vocabulary (numbers up to 90).
    with pytest.raises(SystemExit, match=r"--env defusal does not fit the checkpoint, trained on defusal_small: "
                                         r"observation 'tokens': checkpoint \(48,\) int32 <= 66, --env \(48,\) "
                                         r"int32 <= 146"):
        launcher.main(["--logdir", str(team["logdir"]), "--env", "defusal", "--out", str(tmp_path / "r.html")])
    assert not (tmp_path / "r.html").exists()


def test_training_writes_a_periodic_team_report(team):
    """`run.report_every` works for team runs: the page holds worlds of three agents each."""
    data = page_json(team["logdir"] / "report.html")
    assert data["episodes"], "the periodic team report has no episodes"
    first = data["episodes"][0]
    steps = first["modes"].get("open") or first["modes"].get("truth")
    assert steps and len(steps[0]["agents"]) == 3
