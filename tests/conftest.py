"""Test set-up: CPU only, a persistent compilation cache shared by the suite (keeps CI fast), and the number of
parallel test workers (pytest-xdist, one module per worker)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LWM_JAX_CACHE", str(ROOT / ".jax_cache"))

from lwm.runtime import setup_jax  # noqa: E402

setup_jax("cpu", os.environ["LWM_JAX_CACHE"])


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: LWM_TEST_WORKERS if set, else one worker per core up to 4 (each worker is a JAX process that
    compiles its modules' functions; more would mostly add memory, since XLA already uses every core)."""
    value = os.environ.get("LWM_TEST_WORKERS")
    if value is not None:
        if not value.isdigit():
            raise ValueError(f"LWM_TEST_WORKERS={value!r}: expected a whole number of workers (0 runs in-process)")
        return int(value)
    return max(1, min(os.cpu_count() or 1, 4))
