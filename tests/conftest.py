"""Test set-up: CPU only, a persistent compilation cache shared by the suite (keeps CI fast)."""

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
