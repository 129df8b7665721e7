"""Process-wide JAX set-up: platform and the persistent compilation cache. Call before any JAX work."""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

PLATFORMS = ("cpu", "gpu", "tpu")


def setup_jax(platform: str = "cpu", cache_dir: str = "") -> None:
    """Selects the platform and turns on the persistent compilation cache in `cache_dir` ('' = off)."""
    if platform not in PLATFORMS:
        raise ValueError(f"jax.platform={platform!r} is not known; use one of {', '.join(PLATFORMS)}.")
    import jax

    jax.config.update("jax_platforms", gpu_backend() if platform == "gpu" else platform)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def gpu_backend() -> str:
    """JAX's name for the GPU backend installed here: 'rocm' where only a ROCm plugin is installed, else 'cuda'.

    Found from the installed plugin packages, without starting any backend (multi-host set-up must come first);
    naming a backend whose plugin is missing is an error in recent JAX, so 'cuda,rocm' cannot be used.
    """
    names = {m.name for m in pkgutil.iter_modules()}
    plugins = set()
    try:
        import jax_plugins

        plugins = {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    except ImportError:
        pass
    rocm = any(n.startswith("jax_rocm") for n in names) or any("rocm" in n for n in plugins)
    cuda = any(n.startswith("jax_cuda") for n in names) or any("cuda" in n for n in plugins)
    return "rocm" if rocm and not cuda else "cuda"


def default_cache_dir(logdir: str) -> str:
    """`<logdir parent>/.jax_cache`, unless LWM_JAX_CACHE names another place."""
    return os.environ.get("LWM_JAX_CACHE") or str(Path(logdir).resolve().parent / ".jax_cache")
