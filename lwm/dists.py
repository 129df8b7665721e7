"""Distributions and transforms: symlog/symexp, two-hot regression, categoricals with unimix."""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def symlog(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def twohot_bins(num: int = 255, limit: float = 20.0) -> jax.Array:
    """Bin centres, equally spaced in symlog space over [-limit, limit], exactly symmetric around 0."""
    if num < 3 or num % 2 == 0:
        raise ValueError(f"two-hot bins must be an odd number >= 3 (so that 0 is a bin), got {num}.")
    half = jnp.linspace(0.0, limit, (num + 1) // 2, dtype=jnp.float32)[1:]
    return jnp.concatenate([-half[::-1], jnp.zeros((1,), jnp.float32), half])


def twohot_encode(y: jax.Array, bins: jax.Array) -> jax.Array:
    """Spreads symlog(y) over its two nearest bins by linear interpolation. [...] -> [..., K]."""
    x = jnp.clip(symlog(y.astype(jnp.float32)), bins[0], bins[-1])
    above = jnp.clip(jnp.searchsorted(bins, x, side="right"), 1, len(bins) - 1)
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = (x - lo) / (hi - lo)
    k = len(bins)
    return jax.nn.one_hot(below, k) * (1.0 - w_hi)[..., None] + jax.nn.one_hot(above, k) * w_hi[..., None]


def twohot_mean(logits: jax.Array, bins: jax.Array) -> jax.Array:
    """Prediction of a two-hot head: symexp of the expected bin. [..., K] -> [...]."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    m = bins.shape[0] // 2
    # Sum both halves outward from the centre, so that symmetric probabilities give exactly 0.
    pos = jnp.sum(probs[..., m + 1:] * bins[m + 1:], -1)
    neg = jnp.sum(probs[..., :m][..., ::-1] * bins[:m][::-1], -1)
    return symexp(pos + neg)


def twohot_loss(logits: jax.Array, target: jax.Array, bins: jax.Array) -> jax.Array:
    """Cross-entropy between the head and the two-hot encoding of sg(target). [..., K], [...] -> [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return -jnp.sum(sg(twohot_encode(target, bins)) * logp, -1)


def unimix_logits(logits: jax.Array, mix: float) -> jax.Array:
    """Log-probabilities of (1 - mix) * softmax(logits) + mix * uniform."""
    logits = logits.astype(jnp.float32)
    if mix <= 0:
        return jax.nn.log_softmax(logits, -1)
    probs = (1.0 - mix) * jax.nn.softmax(logits, -1) + mix / logits.shape[-1]
    return jnp.log(probs)


def onehot_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One-hot sample with straight-through gradients: sample + p - sg(p)."""
    idx = jax.random.categorical(key, logits, -1)
    sample = jax.nn.one_hot(idx, logits.shape[-1], dtype=jnp.float32)
    probs = jax.nn.softmax(logits, -1)
    return sample + probs - sg(probs)


def onehot_mode(logits: jax.Array) -> jax.Array:
    probs = jax.nn.softmax(logits, -1)
    mode = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.float32)
    return mode + probs - sg(probs)


def categorical_entropy(logits: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.sum(jnp.exp(logp) * logp, -1)


def categorical_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(p || q) over the last axis."""
    logp = jax.nn.log_softmax(p_logits, -1)
    logq = jax.nn.log_softmax(q_logits, -1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


def kl_losses(post_logits: jax.Array, prior_logits: jax.Array, free_nats: float) -> tuple[jax.Array, jax.Array]:
    """DreamerV3's balanced KL: dyn = max(free, KL(sg(q)||p)), rep = max(free, KL(q||sg(p))).

    Logits are [..., stoch, classes]; the KL is summed over the stoch variables. The max is applied per step,
    so below `free_nats` a term has no gradient.
    """
    dyn = categorical_kl(sg(post_logits), prior_logits).sum(-1)
    rep = categorical_kl(post_logits, sg(prior_logits)).sum(-1)
    return jnp.maximum(dyn, free_nats), jnp.maximum(rep, free_nats)
