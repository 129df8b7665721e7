"""The world model: one encoder that fuses every observation key by its kind, the RSSM, and the heads.

Observation kinds (decided from the dm_env spec of each key):
  image   uint8 [H, W, C]                       -> CNN                   -> decoded by a conv decoder (MSE)
  tokens  int [L] named `tokens`, bounded       -> learned embedding+MLP -> categorical over the vocabulary
  onehot  other bounded int arrays (e.g. a dir) -> one-hot, with vectors -> categorical
  vector  float / bool / unbounded int arrays   -> symlog, MLP           -> symlog MSE
All embeddings are concatenated before the posterior.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm import dists
from lwm.nets import MLP, ConvDecoder, ConvEncoder, GridDecoder, GridEncoder
from lwm.rssm import RSSM


@dataclasses.dataclass(frozen=True)
class ObsKey:
    name: str
    kind: str  # image | tokens | onehot | vector
    shape: tuple[int, ...]
    dtype: str
    classes: int = 0  # vocabulary size for tokens, number of values for onehot
    low: int = 0
    spatial: bool = False  # a onehot key of shape [H, W, C] (a symbolic grid): conv encoder and decoder

    @property
    def conv(self) -> bool:
        return self.kind == "onehot" and self.spatial

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def obs_keys(obs_spec: Mapping[str, dm_env.specs.Array], pattern: str, grid: str = "conv") -> tuple[ObsKey, ...]:
    """Classifies the observation keys the model uses (those matching `pattern`, never `log_*`).

    `grid`: how bounded int observations of shape [H, W, C] (symbolic grids) are encoded and decoded: 'conv'
    (3x3 convolutions over the cells) or 'mlp' (flattened one-hot, like any other discrete key).
    """
    if grid not in ("conv", "mlp"):
        raise ValueError(f"agent.enc.grid={grid!r} is not known; use 'conv' or 'mlp'.")
    if not isinstance(obs_spec, Mapping):
        raise TypeError(f"The observation spec must be a dict of dm_env specs, got {type(obs_spec).__name__}.")
    regex = re.compile(pattern)
    out = []
    for name, spec in sorted(obs_spec.items()):
        if name.startswith("log_") or not regex.search(name):
            continue
        dtype = np.dtype(spec.dtype)
        shape = tuple(int(s) for s in spec.shape)
        bounded = isinstance(spec, dm_env.specs.BoundedArray)
        if dtype == np.uint8 and len(shape) == 3:
            out.append(ObsKey(name, "image", shape, dtype.name))
        elif np.issubdtype(dtype, np.integer) and bounded and name == "tokens":
            if len(shape) != 1 or int(np.min(spec.minimum)) != 0:
                raise ValueError(f"Observation 'tokens' must be int [L] with minimum 0, got spec {spec}.")
            out.append(ObsKey(name, "tokens", shape, dtype.name, classes=int(np.max(spec.maximum)) + 1))
        elif np.issubdtype(dtype, np.integer) and bounded and int(np.max(spec.maximum) - np.min(spec.minimum)) < 256:
            low = int(np.min(spec.minimum))
            spatial = grid == "conv" and len(shape) == 3 and min(shape[:2]) >= 3
            out.append(ObsKey(name, "onehot", shape, dtype.name, int(np.max(spec.maximum)) - low + 1, low, spatial))
        elif np.issubdtype(dtype, np.number) or dtype == np.bool_:
            if len(shape) > 2:
                raise ValueError(f"Observation {name!r} has shape {shape}: only uint8 [H, W, C] images may have "
                                 "rank 3; vectors must be rank 0-2.")
            out.append(ObsKey(name, "vector", shape, dtype.name))
        else:
            raise ValueError(f"Observation {name!r} has dtype {dtype} that the encoder cannot use; "
                             "exclude it with agent.obs_keys or name it log_*.")
    if not out:
        raise ValueError(f"No observation key matches agent.obs_keys={pattern!r}; keys: {sorted(obs_spec)}.")
    return tuple(out)


class Encoder(nnx.Module):
    def __init__(self, keys: tuple[ObsKey, ...], *, units: int, layers: int, cnn_depth: int, token_embed: int,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.keys = keys
        self.cnns = nnx.Dict({k.name: ConvEncoder(k.shape, cnn_depth, rngs=rngs, dtype=dtype)
                              for k in keys if k.kind == "image"})
        self.grids = nnx.Dict({k.name: GridEncoder(k.shape, k.classes, 4 * cnn_depth, rngs=rngs, dtype=dtype)
                               for k in keys if k.conv})
        vec_dim = sum(k.size * (k.classes if k.kind == "onehot" else 1) for k in keys
                      if k.kind in ("vector", "onehot") and not k.conv)
        self.vec_mlp = nnx.data(MLP(vec_dim, units, layers, rngs=rngs, dtype=dtype) if vec_dim else None)
        self.tables = nnx.Dict({
            k.name: nnx.Param(jax.random.normal(rngs.params(), (k.classes, token_embed), jnp.float32))
            for k in keys if k.kind == "tokens"})
        self.tok_mlps = nnx.Dict({k.name: MLP(k.size * token_embed, units, max(layers, 1), rngs=rngs, dtype=dtype)
                                  for k in keys if k.kind == "tokens"})
        self.out_dim = (sum(c.out_dim for c in self.cnns.values()) + sum(g.out_dim for g in self.grids.values())
                        + (units if vec_dim else 0)
                        + units * len(self.tok_mlps))
        self.dtype = dtype

    def __call__(self, obs: Mapping[str, jax.Array]) -> jax.Array:
        """obs: dict of [B, T, ...] (or [B, ...]) arrays -> embedding [B, T, E]."""
        parts, vecs = [], []
        lead = None
        for k in self.keys:
            x = obs[k.name]
            lead = x.shape[: x.ndim - len(k.shape)]
            if k.kind == "image":
                parts.append(self.cnns[k.name](x))
            elif k.kind == "tokens":
                emb = jnp.take(self.tables[k.name][...], x.astype(jnp.int32), axis=0).astype(self.dtype)
                parts.append(self.tok_mlps[k.name](emb.reshape(lead + (-1,))))
            elif k.conv:
                parts.append(self.grids[k.name](x.astype(jnp.int32) - k.low))
            elif k.kind == "onehot":
                oh = jax.nn.one_hot(x.astype(jnp.int32) - k.low, k.classes, dtype=self.dtype)
                vecs.append(oh.reshape(lead + (-1,)))
            else:
                vecs.append(dists.symlog(x.astype(jnp.float32)).reshape(lead + (-1,)).astype(self.dtype))
        if vecs:
            parts.append(self.vec_mlp(jnp.concatenate(vecs, -1)))
        return jnp.concatenate([p.astype(self.dtype) for p in parts], -1)


class Decoder(nnx.Module):
    """Reconstructs every encoded key from the features; `loss` returns per-key losses [B, T]."""

    def __init__(self, keys: tuple[ObsKey, ...], feat_dim: int, *, units: int, layers: int, cnn_depth: int,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.keys = keys
        self.cnns = nnx.Dict({k.name: ConvDecoder(feat_dim, k.shape, cnn_depth, rngs=rngs, dtype=dtype)
                              for k in keys if k.kind == "image"})
        self.grids = nnx.Dict({k.name: GridDecoder(feat_dim, k.shape, k.classes, 4 * cnn_depth, rngs=rngs,
                                                   dtype=dtype) for k in keys if k.conv})
        vec_out = sum(k.size * (k.classes if k.kind == "onehot" else 1) for k in keys
                      if k.kind in ("vector", "onehot") and not k.conv)
        self.vec_mlp = nnx.data(MLP(feat_dim, units, layers, out=vec_out, rngs=rngs, dtype=dtype) if vec_out else None)
        self.tok_mlps = nnx.Dict({k.name: MLP(feat_dim, units, layers, out=k.size * k.classes, rngs=rngs, dtype=dtype)
                                  for k in keys if k.kind == "tokens"})

    def predict(self, feat: jax.Array) -> dict[str, jax.Array]:
        """Means for images/vectors, logits [..., *shape, classes] for tokens/onehots."""
        lead = feat.shape[:-1]
        out = {name: cnn(feat) for name, cnn in self.cnns.items()}
        out.update({name: dec(feat) for name, dec in self.grids.items()})
        for name, mlp in self.tok_mlps.items():
            k = next(k for k in self.keys if k.name == name)
            out[name] = mlp(feat).reshape(lead + k.shape + (k.classes,))
        if self.vec_mlp is not None:
            flat = self.vec_mlp(feat)
            for k, i, n in self._vector_parts():
                tail = k.shape + ((k.classes,) if k.kind == "onehot" else ())
                out[k.name] = flat[..., i: i + n].reshape(lead + tail)
        return out

    def _vector_parts(self) -> list[tuple[ObsKey, int, int]]:
        """(key, offset, width) of each vector / flat one-hot key in the vector head's output, in key order."""
        parts, i = [], 0
        for k in self.keys:
            if k.kind in ("vector", "onehot") and not k.conv:
                n = k.size * (k.classes if k.kind == "onehot" else 1)
                parts.append((k, i, n))
                i += n
        return parts

    def predict_flags(self, feat: jax.Array, name: str, threshold: float = 0.5) -> jax.Array:
        """bool [..., *shape]: the decoded value of the bool vector observation `name` (e.g. a legal-action mask),
        true where its predicted probability is at least `threshold`. Runs only the vector head, not the token or
        image decoders. The vector head predicts symlog(x), so for x in {0, 1} its mean is P(x = 1) * symlog(1)."""
        for k, i, n in self._vector_parts():
            if k.name == name and k.kind == "vector":
                if k.dtype != "bool":
                    raise ValueError(f"observation {name!r} is {k.dtype}; only a bool vector decodes as flags.")
                flat = self.vec_mlp(feat)[..., i: i + n]
                return flat.reshape(feat.shape[:-1] + k.shape) >= threshold * float(np.log1p(1.0))
        vectors = [k.name for k, _, _ in self._vector_parts() if k.kind == "vector"]
        raise ValueError(f"observation {name!r} is not a vector the world model reconstructs; "
                         f"reconstructed vectors: {vectors}.")

    def loss(self, feat: jax.Array, obs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        pred = self.predict(feat)
        losses = {}
        for k in self.keys:
            p, x = pred[k.name], obs[k.name]
            axes = tuple(range(-len(k.shape), 0)) if k.shape else ()
            if k.kind == "image":
                target = x.astype(jnp.float32) / 255.0
                losses[k.name] = jnp.square(p - target).sum(axes)
            elif k.kind in ("tokens", "onehot"):
                labels = x.astype(jnp.int32) - k.low
                logp = jax.nn.log_softmax(p.astype(jnp.float32), -1)
                nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
                losses[k.name] = nll.sum(axes) if axes else nll
            else:
                err = jnp.square(p - dists.symlog(x.astype(jnp.float32)))
                losses[k.name] = err.sum(axes) if axes else err
        return losses


class WorldModel(nnx.Module):
    def __init__(self, keys: tuple[ObsKey, ...], action_dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        a = cfg
        self.encoder = Encoder(keys, units=a.units, layers=a.enc.layers, cnn_depth=a.enc.cnn_depth,
                               token_embed=a.enc.token_embed, rngs=rngs, dtype=dtype)
        r = a.rssm
        self.rssm = RSSM(self.encoder.out_dim, action_dim, deter=r.deter, hidden=r.hidden, stoch=r.stoch,
                         classes=r.classes, blocks=r.blocks, unimix=r.unimix, rngs=rngs, dtype=dtype)
        feat = self.rssm.feat_dim
        self.decoder = Decoder(keys, feat, units=a.units, layers=a.dec.layers, cnn_depth=a.enc.cnn_depth,
                               rngs=rngs, dtype=dtype)
        self.reward = MLP(feat, a.units, a.reward_head.layers, out=a.reward_head.bins, zero_out=True, rngs=rngs,
                          dtype=dtype)
        self.cont = MLP(feat, a.units, a.cont_head.layers, out=1, rngs=rngs, dtype=dtype)
        self.bins = a.reward_head.bins

    def reward_mean(self, feat: jax.Array) -> jax.Array:
        return dists.twohot_mean(self.reward(feat), dists.twohot_bins(self.bins))

    def cont_prob(self, feat: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.cont(feat)[..., 0])

    def loss(self, obs, prev_actions, reward, is_first, is_terminal, start, key, free_nats: float):
        """Per-step world-model losses [B, T] and the posterior states.

        `prev_actions[:, t]` is the (one-hot) action taken before observation t; `start` is the latent state
        before the first step (zeros, or the state stored in replay).
        """
        embed = self.encoder(obs)
        post, post_logits, prior_logits = self.rssm.observe(start, prev_actions, embed, is_first, key)
        feat = self.rssm.feat(post)
        losses = {f"rec_{k}": v for k, v in self.decoder.loss(feat, obs).items()}
        losses["reward"] = dists.twohot_loss(self.reward(feat), reward, dists.twohot_bins(self.bins))
        cont_logit = self.cont(feat)[..., 0]
        target = 1.0 - is_terminal.astype(jnp.float32)
        losses["cont"] = -(target * jax.nn.log_sigmoid(cont_logit) + (1 - target) * jax.nn.log_sigmoid(-cont_logit))
        losses["dyn"], losses["rep"] = dists.kl_losses(post_logits, prior_logits, free_nats)
        return losses, post, feat, (post_logits, prior_logits)
