"""Environments for the language world-model agent (dm_env API, never imports the agent).

Use ``envs.make(name, **options)``; ``envs.names()`` lists the registered worlds.
"""

from envs import token_world as _token_world
from envs.registry import describe, make, names, register
from envs.text import Vocabulary

__all__ = ["Vocabulary", "describe", "make", "names", "register"]

register(
    _token_world.NAME,
    _token_world.make_tokenchoice,
    defaults=_token_world.DEFAULTS,
    description=_token_world.DESCRIPTION,
)
