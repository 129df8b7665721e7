"""Pure maths of the agent: transforms, two-hot regression, balanced KL, λ-returns, return normalisation,
unimix / straight-through sampling and the shapes and reset behaviour of the RSSM."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm import actor_critic as ac
from lwm import dists
from lwm.rssm import RSSM

# ------------------------------------------------------------------------------------------ symlog / symexp

WIDE = np.array([0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 1e2, -1e2, 1e4, -1e4,
                 1e6, -1e6], np.float32)


def test_symlog_matches_definition():
    x = WIDE.astype(np.float64)
    want = np.sign(x) * np.log1p(np.abs(x))
    np.testing.assert_allclose(np.asarray(dists.symlog(jnp.asarray(WIDE))), want, rtol=1e-6, atol=0)
    assert float(dists.symlog(jnp.float32(0.0))) == 0.0
    assert float(dists.symexp(jnp.float32(0.0))) == 0.0
    # Odd functions.
    np.testing.assert_array_equal(np.asarray(dists.symlog(-jnp.asarray(WIDE))),
                                  -np.asarray(dists.symlog(jnp.asarray(WIDE))))


@pytest.mark.parametrize("direction", ["symexp(symlog(x))", "symlog(symexp(x))"])
def test_symlog_symexp_are_inverse(direction):
    if direction == "symexp(symlog(x))":
        x = np.concatenate([WIDE, np.geomspace(1e-6, 1e6, 97, dtype=np.float32),
                            -np.geomspace(1e-6, 1e6, 97, dtype=np.float32)])
        out = dists.symexp(dists.symlog(jnp.asarray(x)))
    else:  # symlog(1e6) ~ 13.8, so symexp's domain of interest is about [-14, 14]
        x = np.concatenate([np.array([0.0, 1e-6, -1e-6], np.float32),
                            np.linspace(-14, 14, 201, dtype=np.float32)])
        out = dists.symlog(dists.symexp(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(out), x, rtol=2e-6, atol=1e-12)


# -------------------------------------------------------------------------------------------------- two-hot

BINS = dists.twohot_bins(255, 20.0)


def test_twohot_bins_layout():
    b = np.asarray(BINS)
    assert b.shape == (255,)
    np.testing.assert_allclose(b[[0, -1]], [-20.0, 20.0])
    np.testing.assert_allclose(np.diff(b), 40.0 / 254, rtol=1e-4)


def _targets() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array([0.0, 1e-6, -1e-6, 1.0, -1.0, 1e4, -1e4], np.float32)
    on_bins = np.asarray(dists.symexp(BINS[100:160:7]))  # exactly on bin centres
    log_spread = np.sign(rng.normal(size=200)) * np.expm1(rng.uniform(0, 9.2, 200))
    return np.concatenate([special, on_bins, rng.uniform(-1e4, 1e4, 200), log_spread]).astype(np.float32)


def test_twohot_encode_is_a_two_hot_distribution():
    y = _targets()
    enc = np.asarray(dists.twohot_encode(jnp.asarray(y), BINS))
    assert enc.shape == y.shape + (255,)
    assert (enc >= 0).all()
    np.testing.assert_allclose(enc.sum(-1), 1.0, atol=1e-6)
    for row in enc:
        nz = np.flatnonzero(row)
        assert 1 <= len(nz) <= 2, nz
        if len(nz) == 2:
            assert nz[1] - nz[0] == 1, f"non-zeros {nz} are not adjacent bins"
    # The expectation over the bins is symlog(y): linear interpolation between the two nearest bins.
    np.testing.assert_allclose((enc * np.asarray(BINS)).sum(-1), np.asarray(dists.symlog(jnp.asarray(y))),
                               rtol=1e-5, atol=1e-5)


def test_twohot_round_trip():
    y = _targets()
    probs = dists.twohot_encode(jnp.asarray(y), BINS)
    decoded = np.asarray(dists.twohot_mean(jnp.log(probs), BINS))
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded, y, rtol=1e-4, atol=1e-5)


def test_twohot_clips_beyond_bin_range():
    y = jnp.asarray([1e12, -1e12, 1e30, -1e30, np.inf, -np.inf], jnp.float32)
    enc = np.asarray(dists.twohot_encode(y, BINS))
    top = np.zeros(255, np.float32)
    top[-1] = 1
    for row, sign in zip(enc, [1, -1, 1, -1, 1, -1], strict=True):
        np.testing.assert_allclose(row, top if sign > 0 else top[::-1], atol=1e-6)
    decoded = np.asarray(dists.twohot_mean(jnp.log(jnp.asarray(enc)), BINS))
    edge = float(dists.symexp(jnp.float32(20.0)))
    np.testing.assert_allclose(decoded, [edge, -edge] * 3, rtol=1e-4)


def test_twohot_loss_is_cross_entropy_without_target_gradient():
    y = jnp.asarray([0.3, -7.0, 150.0], jnp.float32)
    logits = jax.random.normal(jax.random.key(0), (3, 255))
    enc = dists.twohot_encode(y, BINS)
    want = -(enc * jax.nn.log_softmax(logits, -1)).sum(-1)
    np.testing.assert_allclose(dists.twohot_loss(logits, y, BINS), want, rtol=1e-5)
    g = jax.grad(lambda t: dists.twohot_loss(logits, t, BINS).sum())(y)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    # The loss is minimal (zero gradient) where the head equals the two-hot target.
    g_logits = jax.grad(lambda lg: dists.twohot_loss(lg, y, BINS).sum())(jnp.log(enc + 1e-30))
    np.testing.assert_allclose(np.asarray(g_logits), 0.0, atol=1e-6)


def _zero_init_heads():
    feat = jax.random.normal(jax.random.key(1), (5, 7, 24)) * 3.0
    critic = ac.Critic(24, units=16, layers=2, bins=255, rngs=nnx.Rngs(0))
    # The reward head of the world model is the same construction: a zero-initialised two-hot MLP.
    from lwm.nets import MLP
    reward = MLP(24, 16, 1, out=255, zero_out=True, rngs=nnx.Rngs(1))
    return critic.mean(feat), dists.twohot_mean(reward(feat), BINS), critic(feat)


def test_zero_init_heads_predict_zero():
    value, reward, logits = _zero_init_heads()
    np.testing.assert_array_equal(np.asarray(logits), 0.0)  # the output layer is exactly zero
    chex.assert_shape([value, reward], (5, 7))
    np.testing.assert_allclose(np.asarray(value), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(reward), 0.0, atol=1e-6)


def test_zero_init_heads_predict_exactly_zero():
    value, reward, _ = _zero_init_heads()
    np.testing.assert_array_equal(np.asarray(value), 0.0)
    np.testing.assert_array_equal(np.asarray(reward), 0.0)


# ------------------------------------------------------------------------------------- KL balance, free nats

def _np_kl(p_logits, q_logits):
    def logsoftmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lp, lq = logsoftmax(p_logits.astype(np.float64)), logsoftmax(q_logits.astype(np.float64))
    return (np.exp(lp) * (lp - lq)).sum(-1).sum(-1)  # summed over classes, then over stoch variables


def _kl_inputs(scale=2.0, shape=(6, 4, 5)):
    k1, k2 = jax.random.split(jax.random.key(3))
    return jax.random.normal(k1, shape) * scale, jax.random.normal(k2, shape) * scale


@pytest.mark.parametrize("free", [0.0, 1.0, 5.0, 1e3])
def test_kl_value_is_max_free_kl(free):
    post, prior = _kl_inputs()
    dyn, rep = dists.kl_losses(post, prior, free)
    chex.assert_shape([dyn, rep], (6,))
    kl = _np_kl(np.asarray(post), np.asarray(prior))
    np.testing.assert_allclose(np.asarray(dyn), np.maximum(free, kl), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rep), np.maximum(free, kl), rtol=1e-5, atol=1e-6)


def _kl_grads(post, prior, free):
    dyn_g = jax.grad(lambda q, p: dists.kl_losses(q, p, free)[0].sum(), argnums=(0, 1))(post, prior)
    rep_g = jax.grad(lambda q, p: dists.kl_losses(q, p, free)[1].sum(), argnums=(0, 1))(post, prior)
    return dyn_g, rep_g


def test_kl_balance_gradients_above_free_nats():
    post, prior = _kl_inputs()
    assert (_np_kl(np.asarray(post), np.asarray(prior)) > 1.0).all()
    (dyn_post, dyn_prior), (rep_post, rep_prior) = _kl_grads(post, prior, 1.0)
    np.testing.assert_array_equal(np.asarray(dyn_post), 0.0)  # dyn trains only the prior
    np.testing.assert_array_equal(np.asarray(rep_prior), 0.0)  # rep trains only the posterior
    assert np.abs(np.asarray(dyn_prior)).sum(axis=(1, 2)).min() > 1e-4
    assert np.abs(np.asarray(rep_post)).sum(axis=(1, 2)).min() > 1e-4


def test_kl_below_free_nats_has_no_gradient():
    post, prior = _kl_inputs()
    for grads in _kl_grads(post, prior, 1e3):
        for g in grads:
            np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_free_nats_clip_is_per_step():
    post, prior = _kl_inputs(shape=(2, 4, 5))
    post = post.at[1].set(prior[1] + 1e-3)  # step 1: KL ~ 0 < free; step 0: KL > free
    kl = _np_kl(np.asarray(post), np.asarray(prior))
    assert kl[0] > 1.0 > kl[1]
    (_, dyn_prior), (rep_post, _) = _kl_grads(post, prior, 1.0)
    for g in (dyn_prior, rep_post):
        g = np.asarray(g)
        assert np.abs(g[0]).sum() > 1e-4
        np.testing.assert_array_equal(g[1], 0.0)


# ------------------------------------------------------------------------------------------------- λ-returns

def _loop_lambda_return(r, c, v, boot, gamma, lam):
    n, t = r.shape
    out = np.zeros((n, t), np.float64)
    for i in range(n):
        nxt = boot[i]
        for j in reversed(range(t)):
            nxt = r[i, j] + gamma * c[i, j] * ((1 - lam) * v[i, j] + lam * nxt)
            out[i, j] = nxt
    return out


def _rand_lambda_inputs(n, t, seed):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n, t)).astype(np.float32)
    c = (rng.random((n, t)) > 0.2).astype(np.float32) * rng.uniform(0.5, 1.0, (n, t)).astype(np.float32)
    v = rng.normal(size=(n, t)).astype(np.float32) * 3
    boot = rng.normal(size=(n,)).astype(np.float32) * 3
    return r, c, v, boot


@pytest.mark.parametrize("n,t,gamma,lam", [(1, 1, 0.99, 0.95), (3, 7, 0.997, 0.95), (5, 15, 0.9, 0.5),
                                           (4, 16, 0.997, 0.0), (4, 16, 0.997, 1.0), (2, 33, 1.0, 0.8)])
def test_lambda_return_matches_python_loop(n, t, gamma, lam):
    r, c, v, boot = _rand_lambda_inputs(n, t, seed=n * 100 + t)
    got = np.asarray(ac.lambda_return(*map(jnp.asarray, (r, c, v, boot)), gamma, lam))
    assert got.shape == (n, t)
    np.testing.assert_allclose(got, _loop_lambda_return(r, c, v, boot, gamma, lam), rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_one_step_td():
    r, c, v, boot = _rand_lambda_inputs(3, 9, seed=1)
    got = ac.lambda_return(jnp.asarray(r), jnp.asarray(c), jnp.asarray(v), jnp.asarray(boot), 0.99, 0.0)
    np.testing.assert_allclose(np.asarray(got), r + 0.99 * c * v, rtol=1e-6, atol=1e-6)


def test_lambda_one_is_monte_carlo_with_bootstrap():
    r, c, v, boot = _rand_lambda_inputs(3, 9, seed=2)
    gamma = 0.95
    got = np.asarray(ac.lambda_return(*map(jnp.asarray, (r, c, v, boot)), gamma, 1.0))
    for i in range(3):
        for j in range(9):
            disc, total = 1.0, 0.0
            for k in range(j, 9):
                total += disc * r[i, k]
                disc *= gamma * c[i, k]
            total += disc * boot[i]
            np.testing.assert_allclose(got[i, j], total, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- return normalisation

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retnorm_update_is_ema_of_percentiles(seed):
    rng = np.random.default_rng(seed)
    state = rng.normal(size=2).astype(np.float32)
    returns = (rng.normal(size=(64, 15)) * rng.uniform(0.1, 10)).astype(np.float32)
    got = ac.retnorm_update(jnp.asarray(state), jnp.asarray(returns), 0.99, 0.05, 0.95)
    pct = np.percentile(returns.astype(np.float64), [5, 95])  # numpy's default: linear interpolation
    np.testing.assert_allclose(np.asarray(got), 0.99 * state + 0.01 * pct, rtol=1e-5, atol=1e-6)
    # Repeated updates converge to the percentiles.
    s = jnp.zeros(2)
    for _ in range(300):
        s = ac.retnorm_update(s, jnp.asarray(returns), 0.9, 0.05, 0.95)
    np.testing.assert_allclose(np.asarray(s), pct, rtol=1e-4, atol=1e-4)


def test_retnorm_update_has_no_gradient_through_returns():
    returns = jax.random.normal(jax.random.key(0), (8, 5))
    g = jax.grad(lambda x: ac.retnorm_update(jnp.zeros(2), x, 0.99, 0.05, 0.95).sum())(returns)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("lo,hi,want", [(-0.2, 0.3, 1.0), (0.0, 1.0, 1.0), (-3.0, 2.5, 5.5),
                                        (10.0, 14.0, 4.0)])
def test_retnorm_scale_is_max_one_spread(lo, hi, want):
    got = float(ac.retnorm_scale(jnp.asarray([lo, hi], jnp.float32), 1.0))
    assert got == pytest.approx(max(1.0, hi - lo)) == pytest.approx(want)


# ------------------------------------------------------------------------------ unimix and straight-through

@pytest.mark.parametrize("mix", [0.01, 0.1])
def test_unimix_probabilities_have_a_floor(mix):
    logits = jax.random.normal(jax.random.key(0), (10, 4, 6)) * 30.0
    logits = logits.at[0, 0].set(jnp.asarray([1e4, -1e4, 0, 0, 0, 0]))
    probs = np.exp(np.asarray(dists.unimix_logits(logits, mix), np.float64))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert probs.min() >= mix / 6 * (1 - 1e-5)
    want = (1 - mix) * np.asarray(jax.nn.softmax(logits, -1)) + mix / 6
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)


def test_unimix_zero_is_log_softmax():
    logits = jax.random.normal(jax.random.key(0), (3, 5))
    np.testing.assert_allclose(dists.unimix_logits(logits, 0.0), jax.nn.log_softmax(logits), rtol=1e-6)


def test_straight_through_sample_is_one_hot_with_softmax_gradient():
    logits = jax.random.normal(jax.random.key(0), (64, 4, 5)) * 2.0
    key = jax.random.key(1)
    sample = np.asarray(dists.onehot_sample(key, logits))
    np.testing.assert_allclose(sample.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(sample, np.round(sample), atol=1e-6)  # one-hot in value (up to rounding)
    # Samples follow the distribution: empirical frequencies over many draws.
    many = dists.onehot_sample(jax.random.key(2), jnp.broadcast_to(logits[0, 0], (20000, 5)))
    np.testing.assert_allclose(np.asarray(many).mean(0), np.asarray(jax.nn.softmax(logits[0, 0])), atol=0.015)
    w = jax.random.normal(jax.random.key(3), logits.shape)
    g_st = jax.grad(lambda lg: (dists.onehot_sample(key, lg) * w).sum())(logits)
    g_soft = jax.grad(lambda lg: (jax.nn.softmax(lg, -1) * w).sum())(logits)
    np.testing.assert_allclose(np.asarray(g_st), np.asarray(g_soft), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(g_st)).sum() > 0


def test_onehot_mode_is_argmax():
    logits = jax.random.normal(jax.random.key(4), (8, 3, 5))
    mode = np.asarray(dists.onehot_mode(logits))
    np.testing.assert_allclose(mode, np.asarray(jax.nn.one_hot(jnp.argmax(logits, -1), 5)), atol=1e-6)


# -------------------------------------------------------------------------------------------------- RSSM

D, H, S, C, G, E, A = 32, 16, 4, 5, 4, 12, 3


@pytest.fixture(scope="module")
def rssm():
    return RSSM(E, A, deter=D, hidden=H, stoch=S, classes=C, blocks=G, unimix=0.01, rngs=nnx.Rngs(0))


def _assert_one_hot_rows(stoch):
    stoch = np.asarray(stoch)
    np.testing.assert_allclose(stoch.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(stoch, np.round(stoch), atol=1e-5)


def test_rssm_rejects_indivisible_blocks():
    with pytest.raises(ValueError, match="divisible"):
        RSSM(E, A, deter=30, hidden=H, stoch=S, classes=C, blocks=4, unimix=0.01, rngs=nnx.Rngs(0))


def test_rssm_observe_and_imagine_shapes(rssm):
    B, T, N, horizon = 3, 6, 5, 4
    keys = jax.random.split(jax.random.key(0), 4)
    actions = jax.nn.one_hot(jax.random.randint(keys[0], (B, T), 0, A), A)
    embeds = jax.random.normal(keys[1], (B, T, E))
    is_first = jnp.zeros((B, T), bool).at[:, 0].set(True)
    states, post, prior = rssm.observe(rssm.initial((B,)), actions, embeds, is_first, keys[2])
    chex.assert_shape(states["deter"], (B, T, D))
    chex.assert_shape(states["stoch"], (B, T, S, C))
    chex.assert_shape([post, prior], (B, T, S, C))
    chex.assert_tree_all_finite((states, post, prior))
    _assert_one_hot_rows(states["stoch"])
    assert rssm.feat_dim == D + S * C
    chex.assert_shape(rssm.feat(states), (B, T, D + S * C))
    # Logits are unimix log-probabilities.
    np.testing.assert_allclose(np.exp(np.asarray(prior)).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(post)).sum(-1), 1.0, rtol=1e-5)

    start = jax.tree.map(lambda x: x.reshape((B * T,) + x.shape[2:])[:N], states)

    def policy(state, key):
        chex.assert_shape(state["deter"], (N, D))
        return jax.nn.one_hot(jax.random.randint(key, (N,), 0, A), A)

    img, img_actions = rssm.imagine(start, policy, horizon, keys[3])
    chex.assert_shape(img["deter"], (N, horizon + 1, D))
    chex.assert_shape(img["stoch"], (N, horizon + 1, S, C))
    chex.assert_shape(img_actions, (N, horizon + 1, A))
    _assert_one_hot_rows(img["stoch"])
    np.testing.assert_allclose(np.asarray(img_actions).sum(-1), 1.0)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[:, 0], img), start)  # index 0 is the start state


def test_rssm_is_first_resets_state(rssm):
    N = 4
    k = jax.random.split(jax.random.key(7), 5)
    state = {"deter": jax.random.normal(k[0], (N, D)),
             "stoch": jax.nn.one_hot(jax.random.randint(k[1], (N, S), 0, C), C)}
    action = jax.nn.one_hot(jax.random.randint(k[2], (N,), 0, A), A)
    embed = jax.random.normal(k[3], (N, E))
    reset, reset_logits = rssm.obs_step(state, action, embed, jnp.ones((N,), jnp.float32), k[4])
    fresh, fresh_logits = rssm.obs_step(rssm.initial((N,)), jnp.zeros_like(action), embed,
                                        jnp.zeros((N,), jnp.float32), k[4])
    chex.assert_trees_all_close((reset, reset_logits), (fresh, fresh_logits), rtol=1e-6, atol=1e-6)
    # Without the reset the carried state matters.
    kept, _ = rssm.obs_step(state, action, embed, jnp.zeros((N,), jnp.float32), k[4])
    assert not np.allclose(np.asarray(kept["deter"]), np.asarray(fresh["deter"]), atol=1e-3)
    # Mixed batch: rows reset independently.
    mixed = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    out, _ = rssm.obs_step(state, action, embed, mixed, k[4])
    out, fresh, kept = (np.asarray(x["deter"]) for x in (out, fresh, kept))
    np.testing.assert_allclose(out[[0, 2]], fresh[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(out[[1, 3]], kept[[1, 3]], atol=1e-6)


def test_rssm_observe_resets_mid_sequence(rssm):
    """A reset at step t makes the rest of the sequence independent of everything before t."""
    B, T, t0 = 2, 6, 3
    k = jax.random.split(jax.random.key(11), 4)
    actions = jax.nn.one_hot(jax.random.randint(k[0], (B, T), 0, A), A)
    embeds = jax.random.normal(k[1], (B, T, E))
    other = embeds.at[:, :t0].set(jax.random.normal(k[2], (B, t0, E)))  # different past
    is_first = jnp.zeros((B, T), bool).at[:, 0].set(True).at[:, t0].set(True)
    a, _, _ = rssm.observe(rssm.initial((B,)), actions, embeds, is_first, k[3])
    b, _, _ = rssm.observe(rssm.initial((B,)), actions, other, is_first, k[3])
    np.testing.assert_allclose(np.asarray(a["deter"][:, t0:]), np.asarray(b["deter"][:, t0:]), atol=1e-5)
    assert not np.allclose(np.asarray(a["deter"][:, :t0]), np.asarray(b["deter"][:, :t0]), atol=1e-3)


def _grid_spec():
    import dm_env

    return {
        "grid": dm_env.specs.BoundedArray((7, 7, 3), np.int32, 0, 10, "grid"),
        "direction": dm_env.specs.BoundedArray((), np.int32, 0, 3, "direction"),
        "tokens": dm_env.specs.BoundedArray((1,), np.int32, 0, 20, "tokens"),
    }


def test_symbolic_grids_get_the_conv_encoder_unless_mlp_is_asked():
    from lwm.world_model import obs_keys

    keys = {k.name: k for k in obs_keys(_grid_spec(), ".*")}
    assert keys["grid"].kind == "onehot" and keys["grid"].conv and keys["grid"].classes == 11
    assert keys["direction"].kind == "onehot" and not keys["direction"].conv
    flat = {k.name: k for k in obs_keys(_grid_spec(), ".*", grid="mlp")}
    assert flat["grid"].kind == "onehot" and not flat["grid"].conv
    with pytest.raises(ValueError, match="agent.enc.grid='cnn'"):
        obs_keys(_grid_spec(), ".*", grid="cnn")


def test_grid_encoder_is_translation_equivariant_and_decoder_gives_cell_logits():
    from lwm.nets import GridDecoder, GridEncoder

    enc = GridEncoder((7, 7, 3), 11, 8, rngs=nnx.Rngs(0))
    grid = np.ones((7, 7, 3), np.int32)
    a, b = grid.copy(), grid.copy()
    a[3, 3, 0] = 6  # one object in the middle
    b[3, 4, 0] = 6  # the same object one cell to the right
    fa = np.asarray(enc(jnp.asarray(a)[None, None])).reshape(7, 7, 8)
    fb = np.asarray(enc(jnp.asarray(b)[None, None])).reshape(7, 7, 8)
    assert enc.out_dim == 7 * 7 * 8
    # Where the 5x5 receptive field (two 3x3 convs) stays inside the grid, shifting the input shifts the features.
    np.testing.assert_allclose(fa[:, 2:4], fb[:, 3:5], atol=1e-5)
    assert not np.allclose(fa, fb)
    dec = GridDecoder(16, (7, 7, 3), 11, 8, rngs=nnx.Rngs(1))
    logits = dec(jnp.zeros((2, 5, 16)))
    chex.assert_shape(logits, (2, 5, 7, 7, 3, 11))
