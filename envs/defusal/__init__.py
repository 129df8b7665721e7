"""Multi-agent bomb-defusal graph world (ENVIRONMENTS.md §2): pure-JAX core, dm_env adapter, scripted teams."""

from envs.defusal.core import Params, State, observe, reset, step, step_state

__all__ = ["Params", "State", "observe", "reset", "step", "step_state"]
