"""Metrics: one JSON object per line in `metrics.jsonl`, TensorBoard scalars, and console lines.

The TensorBoard event files (`events.out.tfevents.*` in the logdir, one per process start) are written here
directly: TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) around hand-encoded `Event`
protocol buffers holding `Summary.Value(tag, simple_value)`; no TensorFlow or tensorboard package is needed
to write them, and `tensorboard --logdir <runs>` reads them.

A resumed run rewinds both logs to their sizes at the checkpoint it resumes from (`rewind`), so the steps in
them stay continuous after a crash.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents."


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        value = arr.item() if arr.size == 1 else arr.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# --------------------------------------------------------------------------------------- TensorBoard events
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int | None = None, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None, images: Mapping[str, tuple[bytes, int, int]] | None = None
                 ) -> bytes:
    """An `Event` protobuf: wall_time (1, double), step (2, int64), file_version (3), summary (5).

    `images`: {tag: (PNG bytes, height, width)} as `Summary.Value(tag, image=Summary.Image(...))` (field 4:
    height 1, width 2, colorspace 3, encoded_image_string 4); TensorBoard shows them under Images."""
    out = _field(1, 1) + struct.pack("<d", wall_time)
    if step is not None:
        out += _field(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _bytes_field(5, summary)
    if images:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, _field(1, 0) + _varint(h) + _field(2, 0)
                                                                          + _varint(w) + _field(3, 0) + _varint(3)
                                                                          + _bytes_field(4, png)))
            for tag, (png, h, w) in images.items())
        out += _bytes_field(5, summary)
    return out


def frame_record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc(header)) + payload + struct.pack("<I", masked_crc(payload))


def read_records(path: str | Path) -> list[bytes]:
    """The payloads of a TFRecord file; raises ValueError on a bad checksum or a truncated record."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}.")
        header = data[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != masked_crc(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}.")
        payload = data[i + 12:i + 12 + length]
        end = i + 12 + length + 4
        if end > len(data) or struct.unpack("<I", data[end - 4:end])[0] != masked_crc(payload):
            raise ValueError(f"{path}: bad or truncated payload at byte {i}.")
        out.append(payload)
        i = end
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _fields(data: bytes):
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def decode_event(payload: bytes) -> dict:
    """{'wall_time', 'step', 'file_version', 'scalars': {tag: value}, 'images': {tag: {height, width, png}}} of
    one `encode_event` payload."""
    event: dict[str, Any] = {"step": 0, "scalars": {}, "images": {}}
    for number, _, value in _fields(payload):
        if number == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for n, _, v in _fields(value):
                if n != 1:
                    continue
                tag, simple, image = None, None, None
                for vn, _, vv in _fields(v):
                    if vn == 1:
                        tag = vv.decode()
                    elif vn == 2:
                        simple = struct.unpack("<f", vv)[0]
                    elif vn == 4:
                        names = {1: "height", 2: "width", 3: "colorspace", 4: "png"}
                        image = {names[n]: x for n, _, x in _fields(vv) if n in names}
                if tag is not None and simple is not None:
                    event["scalars"][tag] = simple
                if tag is not None and image is not None:
                    event["images"][tag] = image
    return event


class EventWriter:
    """Appends scalar summaries to a new TensorBoard event file in `logdir`."""

    def __init__(self, logdir: str | Path):
        name = f"{EVENTS_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(logdir) / name
        self.file = self.path.open("ab")
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, payload: bytes) -> None:
        self.file.write(frame_record(payload))

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        if values:
            self._write(encode_event(time.time() if wall_time is None else wall_time, step, values))

    def images(self, step: int, images: Mapping[str, tuple[bytes, int, int]], wall_time: float | None = None) -> None:
        """Image summaries {tag: (PNG bytes, height, width)} at `step`."""
        if images:
            self._write(encode_event(time.time() if wall_time is None else wall_time, step, images=images))
            self.flush()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------------- the logger
class Logger:
    """Writes metric rows to `metrics.jsonl` and (if `tensorboard`) to a TensorBoard event file."""

    def __init__(self, logdir: str | Path, console_every: float = 10.0, tensorboard: bool = True):
        self.logdir = Path(logdir)
        self.path = self.logdir / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")
        self.events = EventWriter(self.logdir) if tensorboard else None
        self.console_every = console_every
        self.last_console = 0.0

    def write(self, record: Mapping[str, Any]) -> None:
        """One row; its numeric values also go to TensorBoard at `record['step']`."""
        row = {k: _plain(v) for k, v in record.items()}
        row.setdefault("time", round(time.time(), 3))
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.events is not None:
            scalars = {k: float(v) for k, v in row.items() if k not in ("step", "time") and _is_number(v)}
            self.events.scalars(int(row.get("step", 0)), scalars, wall_time=row["time"])
            self.events.flush()

    def console(self, text: str, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_console >= self.console_every:
            print(text, flush=True)
            self.last_console = now

    def positions(self) -> dict[str, int]:
        """Byte sizes of this logdir's metric and event files now (stored in checkpoints; see `rewind`)."""
        self.file.flush()
        if self.events is not None:
            self.events.flush()
        return log_positions(self.logdir)

    def close(self) -> None:
        self.file.close()
        if self.events is not None:
            self.events.close()


def log_positions(logdir: str | Path) -> dict[str, int]:
    logdir = Path(logdir)
    files = [logdir / METRICS] + sorted(logdir.glob(EVENTS_PREFIX + "*"))
    return {p.name: p.stat().st_size for p in files if p.exists()}


def _is_eval_row(line: bytes, step: int) -> bool:
    """A metrics row holding only the end-of-run evaluation (``eval/*`` keys) of the checkpoint at `step`."""
    try:
        row = json.loads(line)
    except ValueError:
        return False
    keys = [k for k in row if k not in ("step", "updates", "time")]
    return row.get("step") == step and bool(keys) and all(k.startswith("eval/") for k in keys)


def rewind(logdir: str | Path, positions: Mapping[str, int], step: int | None = None) -> int:
    """Cuts the metric and event files back to `positions` (files absent there are removed).

    Used on resume: rows written after the checkpoint belong to steps that will be run again. The evaluation
    row of the checkpoint's own `step` (written after the final checkpoint of a run) describes that checkpoint
    and is kept in the metrics file. Returns how many metric rows were dropped.
    """
    logdir = Path(logdir)
    dropped = 0
    kept: list[bytes] = []
    for path in [logdir / METRICS] + sorted(logdir.glob(EVENTS_PREFIX + "*")):
        if not path.exists():
            continue
        keep = int(positions.get(path.name, 0))
        size = path.stat().st_size
        if path.name == METRICS and size > keep:
            with path.open("rb") as f:
                f.seek(keep)
                lines = [line for line in f.read().split(b"\n") if line.strip()]
            kept = [line for line in lines if step is not None and _is_eval_row(line, step)]
            dropped = len(lines) - len(kept)
        if keep == 0 and path.name != METRICS:
            path.unlink()
        elif size > keep:
            with path.open("r+b") as f:
                f.truncate(keep)
                f.seek(keep)
                if path.name == METRICS:
                    f.write(b"".join(line + b"\n" for line in kept))
    events = sorted(logdir.glob(EVENTS_PREFIX + "*"))
    if kept and events:  # the kept evaluation goes back into TensorBoard too (the newest file: the one that had it)
        with events[-1].open("ab") as f:
            for line in kept:
                row = json.loads(line)
                scalars = {k: float(v) for k, v in row.items() if k.startswith("eval/") and _is_number(v)}
                if scalars:
                    f.write(frame_record(encode_event(float(row.get("time", time.time())), step, scalars)))
    return dropped


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
    """Averages a list of metric dicts (device arrays are fetched here, once per log interval)."""
    if not history:
        return {}
    keys = history[0].keys()
    stacked = {k: np.asarray([np.asarray(h[k], np.float64) for h in history]) for k in keys}
    return {k: float(v.mean()) for k, v in stacked.items()}
