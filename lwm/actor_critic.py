"""Actor-critic learned in imagination: λ-returns, return normalisation, REINFORCE, two-hot critic."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm import dists
from lwm.nets import MLP, Linear

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class ActionHead:
    name: str
    num: int
    low: int = 0


def action_heads(act_spec) -> tuple[ActionHead, ...]:
    """Discrete action heads from a dm_env spec (one array, or a dict of arrays for several heads)."""
    specs = act_spec if isinstance(act_spec, Mapping) else {"action": act_spec}
    heads = []
    for name, spec in specs.items():
        if isinstance(spec, dm_env.specs.DiscreteArray):
            heads.append(ActionHead(name, int(spec.num_values)))
        elif (isinstance(spec, dm_env.specs.BoundedArray) and np.issubdtype(spec.dtype, np.integer)
              and spec.shape == ()):
            heads.append(ActionHead(name, int(spec.maximum) - int(spec.minimum) + 1, int(spec.minimum)))
        else:
            raise ValueError(f"Action spec {name!r} = {spec} is not supported: lwm's actor needs discrete scalar "
                             "actions (dm_env.specs.DiscreteArray, or a dict of them for several heads).")
    return tuple(heads)


def parse_mask(spec: str, obs_spec: Mapping, heads: tuple[ActionHead, ...]) -> tuple[str, str] | None:
    """`agent.actor.mask` = 'OBS_KEY:HEAD' (e.g. 'action_mask:move'): the bool observation [num] that marks the
    head's legal actions when acting. '' = no mask. Raises ValueError naming what is wrong."""
    if not spec:
        return None
    key, _, head = spec.partition(":")
    names = [h.name for h in heads]
    if not head and len(heads) == 1:
        head = heads[0].name
    if head not in names:
        raise ValueError(f"agent.actor.mask={spec!r}: head {head!r} is not an action head; heads: {names} "
                         "(write OBS_KEY:HEAD).")
    num = next(h.num for h in heads if h.name == head)
    if key not in obs_spec:
        raise ValueError(f"agent.actor.mask={spec!r}: observation {key!r} does not exist; keys: {sorted(obs_spec)}.")
    s = obs_spec[key]
    if tuple(s.shape) != (num,) or np.dtype(s.dtype) != np.bool_:
        raise ValueError(f"agent.actor.mask={spec!r}: observation {key!r} is {s}; it must be bool [{num}] "
                         f"(one flag per action of head {head!r}).")
    return key, head


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Illegal actions (mask False) get a probability of ~0; rows with no legal action are left unmasked."""
    mask = mask.astype(bool) | ~jnp.any(mask, -1, keepdims=True)
    return jnp.where(mask, logits, -1e9)


class Actor(nnx.Module):
    """Independent categorical heads (1% unimix) on a shared MLP; output layers initialised small."""

    def __init__(self, feat_dim: int, heads: tuple[ActionHead, ...], *, units: int, layers: int, unimix: float,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.heads = heads
        self.unimix = unimix
        self.mlp = MLP(feat_dim, units, layers, rngs=rngs, dtype=dtype)
        self.outs = nnx.Dict({h.name: Linear(units, h.num, rngs=rngs, scale=0.01, dtype=dtype) for h in heads})

    def __call__(self, feat: jax.Array) -> dict[str, jax.Array]:
        x = self.mlp(feat)
        return {h.name: dists.unimix_logits(self.outs[h.name](x), self.unimix) for h in self.heads}


def sample_actions(heads, logits: dict[str, jax.Array], key: jax.Array, greedy: bool = False) -> dict[str, jax.Array]:
    keys = jax.random.split(key, len(heads))
    if greedy:
        return {h.name: jnp.argmax(logits[h.name], -1).astype(jnp.int32) for h in heads}
    return {h.name: jax.random.categorical(k, logits[h.name], -1).astype(jnp.int32)
            for h, k in zip(heads, keys, strict=True)}


def onehot_actions(heads, idx: dict[str, jax.Array]) -> jax.Array:
    """Concatenated one-hot of every head: the action input of the RSSM."""
    return jnp.concatenate([jax.nn.one_hot(idx[h.name], h.num, dtype=jnp.float32) for h in heads], -1)


def split_onehot(heads, onehot: jax.Array) -> dict[str, jax.Array]:
    out, i = {}, 0
    for h in heads:
        out[h.name] = jnp.argmax(onehot[..., i: i + h.num], -1)
        i += h.num
    return out


def log_prob(heads, logits, idx) -> jax.Array:
    return sum(jnp.take_along_axis(logits[h.name], idx[h.name][..., None], -1)[..., 0] for h in heads)


def entropy(heads, logits) -> jax.Array:
    return sum(dists.categorical_entropy(logits[h.name]) for h in heads)


class Critic(nnx.Module):
    """Two-hot value head over symlog bins; the output layer is zero-initialised."""

    def __init__(self, feat_dim: int, *, units: int, layers: int, bins: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.mlp = MLP(feat_dim, units, layers, out=bins, zero_out=True, rngs=rngs, dtype=dtype)
        self.bins = bins

    def __call__(self, feat: jax.Array) -> jax.Array:
        return self.mlp(feat)

    def mean(self, feat: jax.Array) -> jax.Array:
        return dists.twohot_mean(self(feat), dists.twohot_bins(self.bins))


def lambda_return(reward: jax.Array, cont: jax.Array, next_value: jax.Array, bootstrap: jax.Array,
                  gamma: float, lam: float) -> jax.Array:
    """R_t = r_{t+1} + γ c_{t+1} ((1-λ) v_{t+1} + λ R_{t+1}), with R_T = bootstrap.

    `reward`, `cont`, `next_value` are [N, T] and hold r_{t+1}, c_{t+1}, v_{t+1} at index t; `bootstrap` [N].
    """
    def step(nxt, inputs):
        r, c, v = inputs
        ret = r + gamma * c * ((1.0 - lam) * v + lam * nxt)
        return ret, ret

    _, rets = jax.lax.scan(step, bootstrap, (reward.T, cont.T, next_value.T), reverse=True)
    return rets.T


def retnorm_update(state: jax.Array, returns: jax.Array, decay: float, low: float, high: float) -> jax.Array:
    """EMA of the (low, high) percentiles of the returns. state: [2]."""
    flat = returns.reshape(-1).astype(jnp.float32)
    new = jnp.stack([jnp.quantile(flat, low), jnp.quantile(flat, high)])
    return decay * state + (1.0 - decay) * sg(new)


def retnorm_scale(state: jax.Array, limit: float) -> jax.Array:
    return jnp.maximum(limit, state[1] - state[0])
