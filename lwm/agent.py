"""The agent: init / policy / train / report as pure, jitted functions over explicit pytrees.

Train state (a dict pytree):
  params   nnx.State of {wm, actor, critic}
  opt      optax state
  slow     nnx.State of the slow (EMA) critic
  retnorm  float32 [2]: EMA of the 5th and 95th percentile of imagined returns
  step     int32 update counter
  key      PRNG key
Policy carry: {'state': latent {deter, stoch}, 'action': one-hot [N, A]} per environment.

A training batch (from `lwm.replay`): obs dict [B, T, ...], action dict [B, T] (taken after obs t),
reward/is_first/is_terminal [B, T], and the context before step 0: `start` latent and `start_action` ids [B].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lwm import actor_critic as ac
from lwm import dists, parallel
from lwm import nets as nets_lib
from lwm.world_model import WorldModel, obs_keys

sg = jax.lax.stop_gradient

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Nets(nnx.Module):
    def __init__(self, keys, heads, cfg, *, rngs: nnx.Rngs, dtype, mates: int = 0):
        """`mates` > 0 (`agent.team_model`): the RSSM's action input is the agent's own one-hot action followed by
        each of its `mates` teammates' (same heads), and `mates_head` predicts the teammates' actions from a state."""
        action_dim = sum(h.num for h in heads)
        self.wm = WorldModel(keys, action_dim * (1 + mates), cfg, rngs=rngs, dtype=dtype)
        feat = self.wm.rssm.feat_dim
        self.mates_head = (nets_lib.MLP(feat, cfg.units, 1, out=action_dim * mates, rngs=rngs, dtype=dtype)
                           if mates else None)
        self.actor = ac.Actor(feat, heads, units=cfg.units, layers=cfg.actor.layers, unimix=cfg.actor.unimix,
                              rngs=rngs, dtype=dtype)
        self.critic = ac.Critic(feat, units=cfg.units, layers=cfg.critic.layers, bins=cfg.critic.bins, rngs=rngs,
                                dtype=dtype)


def make_optimizer(opt) -> optax.GradientTransformation:
    if opt.kind not in ("laprop", "adam"):
        raise ValueError(f"agent.opt.kind={opt.kind!r} is not known; use 'laprop' or 'adam'.")
    schedule = optax.linear_schedule(0.0, opt.lr, max(1, opt.warmup)) if opt.warmup > 0 else opt.lr
    if opt.kind == "adam":
        return optax.chain(optax.clip_by_global_norm(opt.clip),
                           optax.adam(schedule, b1=opt.beta1, b2=opt.beta2, eps=max(opt.eps, 1e-8)))
    return optax.chain(
        optax.adaptive_grad_clip(opt.agc, eps=1e-3),
        optax.scale_by_rms(decay=opt.beta2, eps=opt.eps, eps_in_sqrt=True, bias_correction=True),
        optax.ema(opt.beta1, debias=True),
        optax.scale_by_learning_rate(schedule),
    )


class Agent:
    """Builds the networks for the given specs and config; exposes jitted pure functions."""

    def __init__(self, obs_spec: Mapping[str, Any], act_spec: Any, config, mesh: jax.sharding.Mesh | None = None):
        """`mesh` (from `parallel.mesh_from_config`): data-parallel train step; None = one device, plain jit."""
        self.config = config
        self.mesh = mesh
        cfg = config.agent
        name = config.jax.compute_dtype
        if name == "auto":  # float32 on CPU (bf16 is no faster there), bfloat16 on GPU/TPU
            name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        if name not in DTYPES:
            raise ValueError(f"jax.compute_dtype={name!r} is not known; use auto or one of {list(DTYPES)}.")
        self.dtype = DTYPES[name]
        self.keys = obs_keys(obs_spec, cfg.obs_keys, cfg.enc.grid)
        self.obs_spec = dict(obs_spec)
        self.heads = ac.action_heads(act_spec)
        self.act_spec = act_spec
        self.mask = ac.parse_mask(cfg.actor.mask, self.obs_spec, self.heads)  # (obs key, head) or None
        if not 0.0 <= cfg.actor.dream_mask <= 1.0:
            raise ValueError(f"agent.actor.dream_mask={cfg.actor.dream_mask!r} must be in [0, 1] (0: imagination "
                             "unmasked; else the decoded probability below which a move is illegal in imagination).")
        if (self.mask is not None and cfg.actor.dream_mask > 0
                and not any(k.name == self.mask[0] and k.kind == "vector" for k in self.keys)):
            raise ValueError(f"agent.actor.mask={cfg.actor.mask!r}: imagination masks with the world model's decoded "
                             f"{self.mask[0]!r}, but agent.obs_keys={cfg.obs_keys!r} leaves it out of the model's "
                             f"keys {[k.name for k in self.keys]}; include it.")
        if cfg.opt.actor_start < 0:  # its type (int) is checked by the config
            raise ValueError(f"agent.opt.actor_start={cfg.opt.actor_start!r} must be an integer >= 0 (train updates "
                             "before the actor's first; 0 = from the first).")
        self.tx = make_optimizer(cfg.opt)
        self.rec_scales = check_rec_scales(cfg.rec_scales, self.keys)
        if config.replay.priority_signal not in ("model", "heads"):
            raise ValueError(f"replay.priority_signal={config.replay.priority_signal!r} is not known; "
                             "use 'model' or 'heads'.")
        explore = cfg.actor.explore
        if isinstance(explore, bool) or not isinstance(explore, int | float) or not 0.0 <= explore < 1.0:
            raise ValueError(f"agent.actor.explore={explore!r} must be a number in [0, 1): the probability that a "
                             "collecting agent-step takes a uniformly drawn legal action instead of the actor's "
                             "(0 = off).")
        look, look_head = cfg.actor.lookahead, cfg.actor.lookahead_head
        if isinstance(look, bool) or not isinstance(look, int | float) or not look >= 0:
            raise ValueError(f"agent.actor.lookahead={look!r} must be a number >= 0 (0 = off).")
        if look_head and look_head not in [h.name for h in self.heads]:
            raise ValueError(f"agent.actor.lookahead_head={look_head!r} is not an action head; heads: "
                             f"{[h.name for h in self.heads]} ('' = the first).")
        self.mates = team_mates(cfg.team_model, self.obs_spec)
        self.joint = check_joint(cfg.imag.joint, self.mates, config.batch_size, config.batch_length, cfg.imag.starts)
        self.team_group = self.mates + 1 if self.joint else 1  # replay rows drawn together (whole teams when joint)
        self.look_head = [h.name for h in self.heads].index(look_head) if look_head else 0
        nets = Nets(self.keys, self.heads, cfg, rngs=nnx.Rngs(0), dtype=self.dtype, mates=self.mates)
        self.graph, params = nnx.split(nets, nnx.Param)
        self.critic_graph, _ = nnx.split(nets.critic, nnx.Param)
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        self.gamma = 1.0 - 1.0 / cfg.imag.gamma_horizon
        self.policy = jax.jit(self._policy, static_argnames=("greedy", "explore", "plan"))
        # Trace counts per jitted function (Python side effect at trace time): the train step must trace
        # exactly once per Agent; more means a shape or dtype drifted (tests also check with chex).
        self.traces = {"policy": 0, "train": 0, "report": 0}
        self.train = jax.jit(self._train, donate_argnums=(0,))
        self.report = jax.jit(self._report, static_argnames=("context",))
        if mesh is not None:
            self._shard(mesh)

    def _shard(self, mesh: jax.sharding.Mesh) -> None:
        """Data parallel over `mesh`: the train step takes a replicated state and a batch split along B.

        The state's buffers are donated (updated in place). Policy and report run on this process's first
        device with a view of the replicated parameters (`parallel.local_view`): a host's environment batch
        is small, need not divide by the devices, and stays on its own host.
        """
        parallel.check_batch_size(self.config.batch_size, mesh)
        state, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        self.train = jax.jit(self._train, in_shardings=(state, data), out_shardings=(state, state, data),
                             donate_argnums=(0,))
        policy, report = self.policy, self.report
        self.policy = lambda params, *args, **kw: policy(parallel.local_view(params), *args, **kw)
        self.report = lambda params, *args, **kw: report(parallel.local_view(params), *args, **kw)

    def shard_batch(self, batch: dict) -> dict:
        """A host batch of this process as the train step's input: split over the mesh (unchanged without one)."""
        return batch if self.mesh is None else parallel.shard_batch(batch, self.mesh)

    def place_state(self, ts: dict) -> dict:
        """A train state (fresh or restored from a checkpoint) replicated on the mesh (unchanged without one)."""
        return ts if self.mesh is None else parallel.replicate(ts, self.mesh)

    # ----------------------------------------------------------------------------------------------- init
    def init(self, seed: int) -> dict:
        """A fresh train state: parameters from `seed`, zero optimizer state, slow critic = critic."""
        nets = Nets(self.keys, self.heads, self.config.agent, rngs=nnx.Rngs(seed), dtype=self.dtype,
                    mates=self.mates)
        _, params = nnx.split(nets, nnx.Param)
        return self.place_state({
            "params": params,
            "opt": self.tx.init(params),
            "slow": jax.tree.map(jnp.copy, params["critic"]),
            "retnorm": jnp.zeros((2,), jnp.float32),
            "step": jnp.zeros((), jnp.int32),
            "key": jax.random.key(seed + 1),
        })

    def init_policy(self, num: int) -> dict:
        r = self.config.agent.rssm
        return {
            "state": {"deter": jnp.zeros((num, r.deter), jnp.float32),
                      "stoch": jnp.zeros((num, r.stoch, r.classes), jnp.float32)},
            "action": jnp.zeros((num, sum(h.num for h in self.heads) * (1 + self.mates)), jnp.float32),
        }

    # ---------------------------------------------------------------------------------------------- mates
    def _mates_onehot(self, ids: Mapping[str, jax.Array]) -> jax.Array:
        """{head: teammates' ids [..., M] (replay's `mates`, with the head's `low`)} -> one-hot [..., M·D], mate
        by mate, each in the own action's layout (D = the summed head sizes)."""
        per_mate = [ac.onehot_actions(self.heads, {h.name: ids[h.name][..., j] - h.low for h in self.heads})
                    for j in range(self.mates)]
        return jnp.concatenate(per_mate, -1)

    def mates_logits(self, nets, feat: jax.Array) -> list[dict[str, jax.Array]]:
        """Per teammate, the teammate-action head's logits {head: [..., num]} from the states `feat`."""
        flat = nets.mates_head(feat).astype(jnp.float32)
        d = sum(h.num for h in self.heads)
        out = []
        for j in range(self.mates):
            i, logits = j * d, {}
            for h in self.heads:
                logits[h.name] = flat[..., i: i + h.num]
                i += h.num
            out.append(logits)
        return out

    def joint_action(self, nets, feat: jax.Array, own: jax.Array, key: jax.Array, greedy: bool = False) -> jax.Array:
        """The RSSM's action input: `own` one-hot [..., D], then (with `agent.team_model`) teammates' actions drawn
        from the teammate-action head at the states `feat` (argmax when `greedy`)."""
        if not self.mates:
            return own
        keys = jax.random.split(key, self.mates)
        drawn = [ac.onehot_actions(self.heads, ac.sample_actions(self.heads, logits, k, greedy))
                 for logits, k in zip(self.mates_logits(nets, feat), keys, strict=True)]
        return jnp.concatenate([own, *drawn], -1)

    def prev_actions(self, batch: Mapping[str, Any]) -> jax.Array:
        """[B, T, D·(1 + mates)]: the one-hot action taken before each step of a replay batch (its own, then its
        teammates' with `agent.team_model`); step 0's is the chunk's `start_action` (and `start_mates`)."""
        own = ac.onehot_actions(self.heads, {h.name: batch["action"][h.name] - h.low for h in self.heads})
        start = ac.onehot_actions(self.heads, {h.name: batch["start_action"][h.name] - h.low for h in self.heads})
        if self.mates:
            if "mates" not in batch:
                raise ValueError("agent.team_model: the batch holds no teammates' actions ('mates'); collect it with "
                                 "TeamDriver(..., mates=True).")
            own = jnp.concatenate([own, self._mates_onehot(batch["mates"])], -1)
            start = jnp.concatenate([start, self._mates_onehot(batch["start_mates"])], -1)
        return jnp.concatenate([start[:, None], own[:, :-1]], 1)

    def mates_loss(self, nets, feat: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
        """[B, T]: cross-entropy of the teammates' actions taken after step t, from the posterior at t."""
        total = 0.0
        for j, logits in enumerate(self.mates_logits(nets, feat)):
            for h in self.heads:
                label = (batch["mates"][h.name][..., j] - h.low).astype(jnp.int32)
                logp = jax.nn.log_softmax(logits[h.name], -1)
                total = total - jnp.take_along_axis(logp, label[..., None], -1)[..., 0]
        return total

    # --------------------------------------------------------------------------------------------- policy
    def _policy(self, params, carry, obs, is_first, key, greedy: bool = False, explore: bool = False,
                plan: int = 0, force: dict | None = None):
        """One environment step for N worlds: observe, then act. Returns (carry, actions, latent to store).
        With `explore` (the training collector, when `agent.actor.explore` > 0) each stream takes, with that
        probability, a uniformly drawn action per head (legal ones only on the masked head) instead of the actor's:
        replay then shows the world model what the policy's own moves never try.
        With `plan` > 0 (acting only) the `agent.actor.lookahead_head` action is chosen by the model instead of the
        actor: the legal action of highest one-step value (reward + γ·cont·value, what the lookahead term trains
        the actor towards), averaged over `plan` prior draws, the other heads and the teammates' actions (team
        model: the teammate-action head's draws) as the actor and the head give them.
        With `force` ({"mask": bool [N], head: [N] action values}, a scripted guide's worlds: `lwm.team`) the rows
        in the mask take the given actions instead (the carry, and so the next posterior, sees what was taken)."""
        self.traces["policy"] += 1
        nets = nnx.merge(self.graph, params)
        k1, k2 = jax.random.split(key)
        k3 = jax.random.fold_in(k2, 1)  # the teammates' draw (agent.team_model); k2 as before for the own action
        embed = nets.wm.encoder({k.name: obs[k.name] for k in self.keys})
        state, _ = nets.wm.rssm.obs_step(carry["state"], carry["action"], embed, is_first, k1)
        feat = nets.wm.rssm.feat(state)

        def observed_mask(logits):  # acting: the observed mask (imagination uses the decoded one: `dream_logits`)
            if self.mask is None:
                return logits
            key_name, head = self.mask
            return {**logits, head: ac.mask_logits(logits[head], obs[key_name])}

        logits = observed_mask(nets.actor(feat))
        idx = ac.sample_actions(self.heads, logits, k2, greedy)
        if explore and not greedy and self.config.agent.actor.explore > 0:
            k4, k5 = jax.random.split(jax.random.fold_in(k2, 2))
            flat = observed_mask({h: jnp.zeros_like(v) for h, v in logits.items()})  # uniform over what acting allows
            wild = ac.sample_actions(self.heads, flat, k4)
            take = jax.random.bernoulli(k5, self.config.agent.actor.explore, feat.shape[:-1])
            idx = {h: jnp.where(take, wild[h], idx[h]) for h in idx}
        if force is not None:
            if plan:
                raise ValueError("Agent.policy: plan and force do not go together (a guided row has no choice).")
            idx = {h.name: jnp.where(force["mask"], (force[h.name] - h.low).astype(idx[h.name].dtype), idx[h.name])
                   for h in self.heads}
        joint = self.joint_action(nets, feat, ac.onehot_actions(self.heads, idx), k3, greedy)
        if plan:
            idx = self._plan(nets, state, idx, joint, obs, jax.random.fold_in(k2, 3), plan)
            width = sum(h.num for h in self.heads)
            joint = jnp.concatenate([ac.onehot_actions(self.heads, idx), joint[..., width:]], -1)
        carry = {"state": state, "action": joint}
        actions = {h.name: idx[h.name] + h.low for h in self.heads}
        return carry, actions, state

    def _plan(self, nets, state, idx: dict[str, jax.Array], joint: jax.Array, obs, key: jax.Array,
              samples: int) -> dict[str, jax.Array]:
        """The actor's action indices `idx` {head: [N]} with the lookahead head's replaced by its legal action of
        highest one-step value from the posterior `state`, the mean over `samples` prior draws; `joint` is the
        joint action [N, D·(1 + mates)] of the actor and the teammate-action head that the rest is taken from."""
        q = jax.vmap(lambda k: self.lookahead_q(nets, state, joint, k))(jax.random.split(key, samples)).mean(0)
        head = self.heads[self.look_head]
        if self.mask is not None and self.mask[1] == head.name:
            q = jnp.where(ac.mask_logits(jnp.zeros_like(q), obs[self.mask[0]]) == 0, q, -jnp.inf)
        return {**idx, head.name: jnp.argmax(q, -1).astype(idx[head.name].dtype)}

    def dream_logits(self, actor, wm, feat: jax.Array, taken: dict[str, jax.Array] | None = None
                     ) -> dict[str, jax.Array]:
        """The actor's logits in imagination. With `agent.actor.mask`, the masked head's illegal actions are those
        the world model decodes as illegal from `feat` (decoded probability below `agent.actor.dream_mask`; acting
        masks with the observed flags): a masked policy never takes an illegal action, so replay holds none and
        the model cannot know their outcome; unmasked, the actor would learn from what the model makes up for them.
        `taken` (indices per head) are always allowed, so that the log-probability of an action sampled in the
        dream stays finite if a flag decoded again flips. A row with no legal action is left unmasked (as when
        acting)."""
        logits = actor(feat)
        threshold = self.config.agent.actor.dream_mask
        if self.mask is None or threshold <= 0:
            return logits
        key_name, head = self.mask
        legal = wm.decoder.predict_flags(feat, key_name, threshold)
        legal = legal | ~jnp.any(legal, -1, keepdims=True)
        if taken is not None:
            legal = legal | (jnp.arange(legal.shape[-1]) == taken[head][..., None])
        return {**logits, head: ac.mask_logits(logits[head], legal)}

    # ---------------------------------------------------------------------------------------------- train
    def _losses(self, params, slow, retnorm, batch, key):
        cfg = self.config.agent
        nets = nnx.merge(self.graph, params)
        wm = nets.wm
        k_obs, k_img, k_starts = jax.random.split(key, 3)
        obs = {k.name: batch["obs"][k.name] for k in self.keys}
        prev = self.prev_actions(batch)  # [B, T, D·(1 + mates)]
        wm_losses, post, feat, _ = wm.loss(obs, prev, batch["reward"], batch["is_first"], batch["is_terminal"],
                                           batch["start"], k_obs, cfg.free_nats)
        if self.mates:
            wm_losses["mates"] = self.mates_loss(nets, feat, batch)
        s = cfg.loss_scales
        scale = {"reward": s.reward, "cont": s.cont, "dyn": s.dyn, "rep": s.rep, "mates": s.mates,
                 **{f"rec_{k}": s.rec * float(v) for k, v in self.rec_scales.items()}}
        wm_total = sum(v * scale.get(k, s.rec) for k, v in wm_losses.items())  # [B, T]

        # Imagination from every posterior state. It needs no gradients at all (REINFORCE uses the log-probs
        # recomputed below), so it runs on stop-gradient copies of world model and actor: no backward pass
        # through the H-step scan.
        frozen = nnx.merge(self.graph, sg(params))
        wm_sg = frozen.wm
        B, T = batch["reward"].shape
        start = jax.tree.map(lambda x: sg(x).reshape((B * T,) + x.shape[2:]), post)
        start_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)
        group = self.team_group
        idx = start_indices(B, T, cfg.imag.starts, k_starts, group)  # None = every posterior state
        if idx is not None:  # the B last states of the rows first (they bootstrap the replay returns)
            start = jax.tree.map(lambda x: x[idx], start)
            start_cont = start_cont[idx]
        mate_rows = joint_mates(B, T, group, cfg.imag.starts) if self.joint else None

        def policy(state, k):
            k_own, k_mates = jax.random.split(k) if self.mates else (k, k)
            feat_s = wm_sg.rssm.feat(state)
            logits = self.dream_logits(frozen.actor, wm_sg, feat_s)
            own = ac.onehot_actions(self.heads, ac.sample_actions(self.heads, logits, k_own))
            if mate_rows is not None:  # joint imagination: each teammate's own imagined action, same step
                return jnp.concatenate([own, *[own[r] for r in mate_rows]], -1)
            return self.joint_action(frozen, feat_s, own, k_mates)  # own first: `split_onehot` reads it

        states, img_actions = wm_sg.rssm.imagine(start, policy, cfg.imag.horizon, k_img)  # [N, H+1]
        ifeat = sg(wm_sg.rssm.feat(states))
        reward = wm_sg.reward_mean(ifeat[:, 1:])
        cont = wm_sg.cont_prob(ifeat[:, 1:])
        value = nets.critic.mean(ifeat)  # [N, H+1]
        ret = ac.lambda_return(reward, cont, sg(value[:, 1:]), sg(value[:, -1]), self.gamma, cfg.imag.lam)
        weight = sg(jnp.cumprod(jnp.concatenate([start_cont[:, None], cont[:, :-1]], 1), 1))  # [N, H]
        rn = cfg.retnorm
        new_retnorm = ac.retnorm_update(retnorm, ret, rn.decay, rn.low, rn.high)
        norm = ac.retnorm_scale(new_retnorm, rn.limit)
        adv = sg((ret - value[:, :-1]) / norm)
        look = cfg.actor.lookahead
        if look > 0:  # before `idx` is reused: the all-action term at the imagination starts
            look_loss, look_gap = self.lookahead_loss(nets, frozen, start, ifeat[:, 0], img_actions[:, 0], norm,
                                                      jax.random.fold_in(k_img, 1))
            img_total_extra = look * (start_cont * look_loss).mean()
        else:
            img_total_extra = 0.0
        idx = ac.split_onehot(self.heads, img_actions[:, :-1])
        # The masked head's flags come from the frozen decoder (no gradient into the world model from here).
        logits = self.dream_logits(nets.actor, wm_sg, ifeat[:, :-1], idx)
        logp = ac.log_prob(self.heads, logits, idx)
        ent = ac.entropy(self.heads, logits)
        policy_loss = -(adv * logp + cfg.actor.entropy * ent)
        bins = dists.twohot_bins(cfg.critic.bins)
        vlogits = nets.critic(ifeat[:, :-1])
        slow_critic = nnx.merge(self.critic_graph, slow)
        slow_mean = sg(slow_critic.mean(ifeat[:, :-1]))
        value_loss = dists.twohot_loss(vlogits, sg(ret), bins)
        slowreg_loss = dists.twohot_loss(vlogits, slow_mean, bins)
        img_total = (weight * (s.policy * policy_loss + s.value * value_loss + s.slowreg * slowreg_loss)).mean()
        img_total = img_total + s.policy * img_total_extra

        # Replay value loss: the critic on real sequences, λ-returns from real rewards, bootstrapped at the end
        # with the imagined return of the last posterior state.
        rfeat = sg(feat)
        rvalue_logits = nets.critic(rfeat)
        rvalue = sg(dists.twohot_mean(rvalue_logits, bins))
        first = batch["is_first"].astype(jnp.float32)
        rcont = (1.0 - batch["is_terminal"].astype(jnp.float32)) * (1.0 - first)
        boot = ret[:B, 0] if idx is not None else ret[:, 0].reshape(B, T)[:, -1]
        rret = ac.lambda_return(batch["reward"][:, 1:].astype(jnp.float32), rcont[:, 1:], rvalue[:, 1:], boot,
                                self.gamma, cfg.imag.lam)
        rweight = 1.0 - first[:, 1:]
        repval = (rweight * dists.twohot_loss(rvalue_logits[:, :-1], sg(rret), bins)).mean()
        total = wm_total.mean() + img_total + s.repval * repval

        metrics = {f"loss/{k}": v.mean() for k, v in wm_losses.items()}
        metrics.update({
            "loss/policy": (weight * policy_loss).mean(), "loss/value": (weight * value_loss).mean(),
            "loss/slowreg": (weight * slowreg_loss).mean(), "loss/repval": repval, "loss/total": total,
            "imag/return": ret.mean(), "imag/reward": reward.mean(), "imag/value": value.mean(),
            "imag/entropy": ent.mean(), "imag/retnorm_scale": norm, "imag/adv_std": adv.std(),
            "wm/kl": jnp.maximum(wm_losses["dyn"], 0).mean(),
        })
        if look > 0:
            metrics["imag/lookahead_gap"] = look_gap.mean()
        signal = self.config.replay.priority_signal
        prio = wm_losses["reward"] + wm_losses["cont"] if signal == "heads" else wm_total
        return total, (metrics, new_retnorm, {**post, "loss": sg(prio)})

    def one_step(self, frozen, start, action0: jax.Array, key: jax.Array, head: int | None = None
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """([N, n] reward, cont, value): the model one step after each of the n actions of action head `head`
        (default `agent.actor.lookahead_head`) from the states `start` [N, ...], the rest of the joint action
        (teammates' included) as in `action0` [N, D], with the same prior noise for every action."""
        i = self.look_head if head is None else head
        off, n = sum(h.num for h in self.heads[:i]), self.heads[i].num
        start, action0 = sg(start), sg(action0)
        acts = jnp.broadcast_to(action0[None], (n,) + action0.shape)
        acts = acts.at[:, :, off: off + n].set(jnp.eye(n, dtype=action0.dtype)[:, None, :])  # [n, N, D]
        nxt = jax.vmap(lambda a: frozen.wm.rssm.img_step(start, a, key))(acts)  # common noise over k
        f = sg(frozen.wm.rssm.feat(nxt))
        return tuple(sg(x.T) for x in (frozen.wm.reward_mean(f), frozen.wm.cont_prob(f), frozen.critic.mean(f)))

    def lookahead_q(self, frozen, start, action0: jax.Array, key: jax.Array) -> jax.Array:
        """[N, n]: the model's one-step value of each of the n actions of `agent.actor.lookahead_head` from the
        states `start` [N, ...], the rest of the joint action as in `action0` [N, D]: reward + γ·cont·value."""
        reward, cont, value = self.one_step(frozen, start, action0, key)
        return reward + self.gamma * cont * value

    def lookahead_loss(self, nets, frozen, start, feat0: jax.Array, action0: jax.Array, norm: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """([N] loss, [N] gap): the all-action policy term at the imagination starts `start` (features `feat0`).
        Every action k of `agent.actor.lookahead_head` (the rest of the joint action, teammates' included, as
        drawn at step 0) is scored one step ahead by the frozen model, Q_k = reward + γ·cont·value of the next
        state (the same prior noise for every k), and the actor is pushed towards the better ones:
        −Σ_k π_k (Q_k − Σ_j π_j Q_j) / norm. No sampling of the own action, so the model's differences between
        actions (e.g. which colour completes the teammates' cuts) reach the actor without REINFORCE's noise."""
        q = self.lookahead_q(frozen, start, action0, key)
        logits = self.dream_logits(nets.actor, frozen.wm, sg(feat0))[self.heads[self.look_head].name]
        pi = jax.nn.softmax(logits.astype(jnp.float32), -1)
        adv = sg((q - jnp.sum(sg(pi) * q, -1, keepdims=True)) / norm)
        # (its value is 0 by construction, its gradient is not); `gap`: how much the best action beats the policy
        gap = jnp.max(jnp.where(pi > 0, adv, -jnp.inf), -1)
        return -jnp.sum(pi * adv, -1), sg(gap)

    def _train(self, ts, batch):
        """One update of world model, actor and critic on one batch. Returns (state, metrics, posteriors).

        `posteriors` holds the latent states {deter, stoch} [B, T, ...] (written back to replay) and `loss` [B, T],
        the replay's sampling priority of every step: the world-model loss (`replay.priority_signal: model`) or
        the reward + continue losses (`heads`: rare rewards and episode ends stand out)."""
        self.traces["train"] += 1
        key, sub = jax.random.split(ts["key"])
        grads, (metrics, retnorm, post) = jax.grad(self._losses, has_aux=True)(
            ts["params"], ts["slow"], ts["retnorm"], batch, sub)
        updates, opt = self.tx.update(grads, ts["opt"], ts["params"])
        opt_cfg = self.config.agent.opt
        if opt_cfg.actor_scale != 1.0 or opt_cfg.actor_start > 0:
            # The actor's own learning rate (lr * actor_scale), and none before update `actor_start`: the world
            # model and critic learn from the initial policy's data before the actor acts on what they predict.
            scale = jnp.where(ts["step"] >= opt_cfg.actor_start, opt_cfg.actor_scale, 0.0)
            updates = jax.tree_util.tree_map_with_path(
                lambda path, u: (u * scale.astype(u.dtype) if path and getattr(path[0], "key", None) == "actor"
                                 else u), updates)
        params = optax.apply_updates(ts["params"], updates)
        rate = self.config.agent.critic.slow_rate
        slow = jax.tree.map(lambda s, p: (1 - rate) * s + rate * p, ts["slow"], params["critic"])
        metrics["opt/grad_norm"] = optax.tree.norm(grads)
        metrics["opt/update_norm"] = optax.tree.norm(updates)
        # Non-finite guard: `train/finite` is false when any loss or norm is NaN or infinite, and then the update
        # is not applied (the old params, optimizer state, slow critic and return norm are kept; the key still
        # advances). The loop stops on it (run.nonfinite=stop) or counts it and goes on (skip).
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
        metrics["train/finite"] = finite
        params, opt, slow, retnorm = jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), (params, opt, slow, retnorm),
            (ts["params"], ts["opt"], ts["slow"], ts["retnorm"]))
        new = {"params": params, "opt": opt, "slow": slow, "retnorm": retnorm, "step": ts["step"] + 1, "key": key}
        return new, metrics, post

    # --------------------------------------------------------------------------------------------- report
    def _report(self, params, batch, key, context: int | None = None):
        """Open-loop prediction: observe `context` steps, then imagine the rest from the real actions.

        Returns per-step errors (image MSE per pixel, vector MSE, token accuracy; averaged over the batch), the
        predictions, reward, continue probability, critic value and the latent states [B, T] (posteriors for
        the first `context` steps, prior-only after). `context` is static: one compile per (shape, context).
        """
        self.traces["report"] += 1
        nets = nnx.merge(self.graph, params)
        wm = nets.wm
        T = batch["reward"].shape[1]
        context = context if context is not None else T // 2
        obs = {k.name: batch["obs"][k.name] for k in self.keys}
        prev = self.prev_actions(batch)
        k1, k2 = jax.random.split(key)
        embed = wm.encoder(jax.tree.map(lambda x: x[:, :context], obs))
        post, _, _ = wm.rssm.observe(batch["start"], prev[:, :context], embed, batch["is_first"][:, :context], k1)
        last = jax.tree.map(lambda x: x[:, -1], post)

        def step(state, inputs):
            act, k = inputs
            new = wm.rssm.img_step(state, act, k)
            return new, new

        keys = jax.random.split(k2, T - context)
        _, imagined = jax.lax.scan(step, last, (jnp.swapaxes(prev[:, context:], 0, 1), keys))
        imagined = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), imagined)
        states = jax.tree.map(lambda a, b: jnp.concatenate([a, b], 1), post, imagined)
        feats = wm.rssm.feat(states)
        pred = wm.decoder.predict(feats)
        out = {"pred": pred, "reward": wm.reward_mean(feats), "cont": wm.cont_prob(feats),
               "value": nets.critic.mean(feats), "state": states}
        for k in self.keys:
            p, x = pred[k.name], obs[k.name]
            axes = tuple(range(2, x.ndim))
            if k.kind == "image":
                err = jnp.square(p - x.astype(jnp.float32) / 255.0).mean(axes)
            elif k.kind in ("tokens", "onehot"):
                hit = (jnp.argmax(p, -1) == (x.astype(jnp.int32) - k.low)).astype(jnp.float32)
                err = hit.mean(axes) if axes else hit
            else:
                err = jnp.square(p - dists.symlog(x.astype(jnp.float32))).mean(axes) if axes else jnp.square(
                    p - dists.symlog(x.astype(jnp.float32)))
            name = "acc" if k.kind in ("tokens", "onehot") else "mse"
            out[f"openloop/{k.name}_{name}"] = err.mean(0)  # [T]: per step, observed then imagined
        return out

    # ------------------------------------------------------------------------------------------ utilities
    def flops_per_update(self, ts, batch) -> float:
        """XLA's FLOP count for one compiled train step (0 where the backend does not report it)."""
        compiled = self.train.lower(ts, batch).compile()
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0] if cost else {}
        return float((cost or {}).get("flops", 0.0))

    def param_count(self) -> int:
        return int(self.num_params)


def team_mates(team_model: Any, obs_spec: Mapping[str, Any]) -> int:
    """Teammates per agent the world model takes the actions of: 0 unless `agent.team_model` (then the team
    world's `agent_id` spec gives A - 1)."""
    if not isinstance(team_model, bool):
        raise ValueError(f"agent.team_model={team_model!r} must be true or false.")
    if not team_model:
        return 0
    spec = obs_spec.get("agent_id")
    if spec is None or int(getattr(spec, "maximum", 0)) < 1:
        raise ValueError("agent.team_model=true needs a team world of two or more agents (an 'agent_id' "
                         f"observation, lwm.team); this world's observations are {sorted(obs_spec)}.")
    return int(spec.maximum)


def check_rec_scales(scales: Any, keys: Sequence[Any]) -> dict[str, float]:
    """`agent.rec_scales` ({observation key: factor on its reconstruction loss}) checked against the encoded keys."""
    scales = dict(scales or {})
    names = [k.name for k in keys]
    out = {}
    for name, value in scales.items():
        if name not in names and value == 1.0:  # neutral: a preset that swaps the grid for pixels sets grid: 1
            continue
        if name not in names:
            raise ValueError(f"agent.rec_scales names {name!r}, which the model does not encode; "
                             f"encoded keys: {', '.join(names)}.")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"agent.rec_scales.{name}={value!r} must be a number >= 0.") from None
        if not out[name] >= 0.0:
            raise ValueError(f"agent.rec_scales.{name}={value!r} must be a number >= 0.")
    return out


def start_indices(B: int, T: int, starts: int, key: jax.Array, group: int = 1) -> jax.Array | None:
    """Which of the B·T posterior states start imagination: None for all (`starts` 0 or ≥ B·T), else the last
    state of every row (indices [0, B)) followed by `starts` − B others drawn without replacement. With `group`
    > 1 (joint imagination: rows g·group .. g·group + group − 1 are one world's agents) the others are drawn as
    whole groups, the same step of each of a group's rows, listed one group after another."""
    if starts <= 0 or starts >= B * T:
        return None
    if starts < B:
        raise ValueError(f"agent.imag.starts={starts} must be 0 (every posterior state) or at least batch_size={B} "
                         "(the last state of every sequence starts imagination).")
    if (starts - B) % group:
        ok = B + (starts - B) // group * group
        raise ValueError(f"agent.imag.starts={starts}: with agent.imag.joint, starts - batch_size = {starts - B} "
                         f"must be a multiple of the {group} agents of a team (e.g. {ok}).")
    last = jnp.arange(B) * T + (T - 1)
    others = jax.random.permutation(key, B // group * (T - 1))[: (starts - B) // group]
    rows = (others // (T - 1))[:, None] * group + jnp.arange(group)[None]  # [k, group]
    return jnp.concatenate([last, (rows * T + (others % (T - 1))[:, None]).reshape(-1)])


def joint_mates(B: int, T: int, group: int, num_starts: int) -> list[np.ndarray]:
    """For joint imagination: per teammate j (relative order a + 1 + j, as `lwm.team.mates_of`), the position of
    each start state's teammate j among the starts: all B·T states row-major (`num_starts` 0), else the
    `num_starts` of `start_indices`' layout (consecutive groups)."""
    every = num_starts <= 0 or num_starts >= B * T
    n = np.arange(B * T if every else num_starts)
    agent, stride = ((n // T) % group, T) if every else (n % group, 1)
    return [n + ((agent + 1 + j) % group - agent) * stride for j in range(group - 1)]


def check_joint(joint: Any, mates: int, B: int, T: int, starts: int) -> bool:
    """Validates `agent.imag.joint` against the team model, the batch size and the imagination starts."""
    if not isinstance(joint, bool):
        raise ValueError(f"agent.imag.joint={joint!r} must be true or false.")
    if joint and not mates:
        raise ValueError("agent.imag.joint=true imagines a team's agents together through the teammates' actions "
                         "the world model takes; it needs agent.team_model=true (a team world).")
    group = mates + 1 if joint else 1
    if B % group:
        raise ValueError(f"agent.imag.joint=true draws whole teams of {group} agents: batch_size={B} must be a "
                         f"multiple of {group} (e.g. {B - B % group or group}).")
    if 0 < starts < B * T:
        start_indices(B, T, starts, jax.random.key(0), group)  # raises on a bad count
    return joint


def describe_size(num: int) -> str:
    return f"{num / 1e6:.2f}M" if num >= 1e5 else f"{num / 1e3:.1f}k"
