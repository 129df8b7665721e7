"""Environments for the language world-model agent (dm_env API, never imports the agent).

Use ``envs.make(name, **options)``; ``envs.names()`` lists the registered worlds.
"""

from envs import token_world as _token_world
from envs.registry import (
    describe,
    has_batched,
    make,
    make_batched,
    names,
    register,
    register_batched,
    register_missing,
)
from envs.text import Vocabulary

__all__ = ["Vocabulary", "describe", "has_batched", "make", "make_batched", "names", "register", "register_batched"]

register(
    _token_world.NAME,
    _token_world.make_tokenchoice,
    defaults=_token_world.DEFAULTS,
    description=_token_world.DESCRIPTION,
)

from envs.defusal import env as _defusal_env  # noqa: E402

register(
    _defusal_env.NAME,
    _defusal_env.make_defusal,
    defaults=_defusal_env.DEFAULTS,
    description=_defusal_env.DESCRIPTION,
)
register(
    "defusal_small",
    _defusal_env.make_defusal,
    defaults=_defusal_env.SMALL_DEFAULTS,
    description=_defusal_env.SMALL_DESCRIPTION,
)
register_batched(_defusal_env.NAME, _defusal_env.make_defusal_batched)
register_batched("defusal_small", _defusal_env.make_defusal_batched)

from envs import gym_adapter as _gym_adapter  # noqa: E402

register(
    _gym_adapter.NAME,
    _gym_adapter.make_minigrid,
    defaults=_gym_adapter.DEFAULTS,
    description=_gym_adapter.DESCRIPTION,
)

from envs import hinted_grid as _hinted_grid  # noqa: E402

for _name, (_cls, _sizes, _about) in _hinted_grid.WORLDS.items():
    register(_name, _hinted_grid.factory(_name), defaults=_hinted_grid.DEFAULTS, description=_about)
del _name, _cls, _sizes, _about

from envs import homegrid as _homegrid  # noqa: E402  (never imports the optional HomeGrid package)

if _homegrid.available():  # optional extra: pip install -e '.[homegrid]'
    register(
        _homegrid.NAME,
        _homegrid.make_homegrid,
        defaults=_homegrid.DEFAULTS,
        description=_homegrid.DESCRIPTION,
    )
else:
    register_missing(_homegrid.NAME, f"install it with {_homegrid.INSTALL_HINT}")
