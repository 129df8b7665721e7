"""Recurrent state-space model with a block GRU and categorical latents (DreamerV3).

A latent state is a dict {'deter': [..., D], 'stoch': [..., S, C]} (stoch one-hot, straight-through).
`observe` and `imagine` are `lax.scan`s; all randomness comes from explicit keys.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lwm import dists
from lwm.nets import MLP, BlockLinear, Dense, RMSNorm

State = dict[str, jax.Array]


class RSSM(nnx.Module):
    def __init__(self, embed_dim: int, action_dim: int, *, deter: int, hidden: int, stoch: int, classes: int,
                 blocks: int, unimix: float, rngs: nnx.Rngs, dtype=jnp.float32):
        if deter % blocks:
            raise ValueError(f"agent.rssm.deter={deter} must be divisible by agent.rssm.blocks={blocks}.")
        self.deter, self.stoch, self.classes, self.blocks = deter, stoch, classes, blocks
        self.unimix = unimix
        self.dtype = dtype
        # GRU inputs: h, flat z and the action, each through Linear -> RMSNorm -> SiLU.
        self.in_deter = Dense(deter, hidden, rngs=rngs, dtype=dtype)
        self.in_stoch = Dense(stoch * classes, hidden, rngs=rngs, dtype=dtype)
        self.in_action = Dense(action_dim, hidden, rngs=rngs, dtype=dtype)
        g = deter // blocks
        self.gru_hidden = BlockLinear(blocks * (g + 3 * hidden), deter, blocks, rngs=rngs, dtype=dtype)
        self.gru_norm = RMSNorm(g, dtype=dtype)
        self.gru_gates = BlockLinear(deter, 3 * deter, blocks, rngs=rngs, dtype=dtype)
        self.prior_net = MLP(deter, hidden, 1, out=stoch * classes, rngs=rngs, dtype=dtype)
        self.post_net = MLP(deter + embed_dim, hidden, 1, out=stoch * classes, rngs=rngs, dtype=dtype)

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    def initial(self, batch_shape: tuple[int, ...]) -> State:
        return {
            "deter": jnp.zeros(batch_shape + (self.deter,), jnp.float32),
            "stoch": jnp.zeros(batch_shape + (self.stoch, self.classes), jnp.float32),
        }

    def feat(self, state: State) -> jax.Array:
        stoch = state["stoch"].reshape(state["stoch"].shape[:-2] + (-1,))
        return jnp.concatenate([state["deter"], stoch], -1)

    def _logits(self, net: MLP, x: jax.Array) -> jax.Array:
        logits = net(x).reshape(x.shape[:-1] + (self.stoch, self.classes))
        return dists.unimix_logits(logits, self.unimix)

    def prior_logits(self, deter: jax.Array) -> jax.Array:
        return self._logits(self.prior_net, deter)

    def post_logits(self, deter: jax.Array, embed: jax.Array) -> jax.Array:
        return self._logits(self.post_net, jnp.concatenate([deter, embed.astype(deter.dtype)], -1))

    def gru(self, deter: jax.Array, stoch: jax.Array, action: jax.Array) -> jax.Array:
        """One block-GRU step: h' from (h, z, a)."""
        stoch = stoch.reshape(stoch.shape[:-2] + (-1,))
        x = jnp.concatenate([self.in_deter(deter), self.in_stoch(stoch), self.in_action(action)], -1)
        g = self.deter // self.blocks
        lead = deter.shape[:-1]
        xb = jnp.broadcast_to(x[..., None, :], lead + (self.blocks, x.shape[-1]))
        hb = deter.reshape(lead + (self.blocks, g)).astype(self.dtype)
        y = self.gru_hidden(jnp.concatenate([hb, xb], -1))
        y = jax.nn.silu(self.gru_norm(y))
        gates = self.gru_gates(y).astype(jnp.float32)  # [..., G, 3g]
        reset, cand, update = jnp.split(gates, 3, -1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        new = update * cand + (1.0 - update) * deter.reshape(lead + (self.blocks, g))
        return new.reshape(lead + (self.deter,))

    def obs_step(self, state: State, action: jax.Array, embed: jax.Array, is_first: jax.Array,
                 key: jax.Array) -> tuple[State, jax.Array]:
        """Posterior step. Resets state and previous action where `is_first`. Returns (state, post_logits)."""
        keep = (1.0 - is_first.astype(jnp.float32))
        state = jax.tree.map(lambda x: x * keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), state)
        action = action * keep[..., None]
        deter = self.gru(state["deter"], state["stoch"], action)
        logits = self.post_logits(deter, embed)
        stoch = dists.onehot_sample(key, logits)
        return {"deter": deter, "stoch": stoch}, logits

    def img_step(self, state: State, action: jax.Array, key: jax.Array) -> State:
        deter = self.gru(state["deter"], state["stoch"], action)
        stoch = dists.onehot_sample(key, self.prior_logits(deter))
        return {"deter": deter, "stoch": stoch}

    def observe(self, state: State, actions: jax.Array, embeds: jax.Array, is_first: jax.Array,
                key: jax.Array) -> tuple[State, jax.Array, jax.Array]:
        """Filters a sequence. Inputs are time-major-free: [B, T, ...], `actions[:, t]` precedes step t.

        Returns posterior states [B, T, ...], posterior logits and prior logits [B, T, S, C]. The prior is
        computed after the scan from the deterministic states (one batched matmul instead of T small ones).
        """
        keys = jax.random.split(key, actions.shape[1])
        swap = lambda x: jnp.swapaxes(x, 0, 1)

        def step(carry, inputs):
            act, emb, first, k = inputs
            new, logits = self.obs_step(carry, act, emb, first, k)
            return new, (new, logits)

        _, (states, post_logits) = jax.lax.scan(
            step, state, (swap(actions), swap(embeds), swap(is_first), keys))
        states = jax.tree.map(swap, states)
        post_logits = swap(post_logits)
        prior_logits = self.prior_logits(states["deter"])
        return states, post_logits, prior_logits

    def imagine(self, state: State, policy: Callable[[State, jax.Array], jax.Array], horizon: int,
                key: jax.Array) -> tuple[State, jax.Array]:
        """Rolls the prior forward `horizon` steps from `state` [N, ...] with actions from `policy`.

        `policy(state, key) -> action [N, A]` (one-hot, concatenated over heads). Returns states
        [N, H+1, ...] (index 0 is the start) and actions [N, H+1, A] (the action taken in each state).
        """
        def step(carry, k):
            k1, k2 = jax.random.split(k)
            action = policy(carry, k1)
            new = self.img_step(carry, action, k2)
            return new, (carry, action)

        keys = jax.random.split(key, horizon + 1)
        last, (states, actions) = jax.lax.scan(step, state, keys[:-1])
        last_action = policy(last, keys[-1])
        states = jax.tree.map(lambda xs, x: jnp.concatenate([xs, x[None]], 0), states, last)
        actions = jnp.concatenate([actions, last_action[None]], 0)
        swap = lambda x: jnp.swapaxes(x, 0, 1)
        return jax.tree.map(swap, states), swap(actions)
