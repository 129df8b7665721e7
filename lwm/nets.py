"""Network building blocks (flax NNX): Linear, BlockLinear, RMSNorm, MLP, CNN encoder and decoder.

Parameters are float32; every layer computes in `dtype` (float32 on CPU, bfloat16 on accelerators).
Normalisation statistics are always taken in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _trunc_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int, scale: float = 1.0):
    """Variance-scaling init (fan_avg, truncated normal), as DreamerV3 uses."""
    std = math.sqrt(scale / ((fan_in + fan_out) / 2)) / 0.87962566103423978
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


class Linear(nnx.Module):
    """y = x @ W (+ b). `init='zeros'` zero-initialises the kernel (reward and critic outputs)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, bias: bool = True, init: str = "normal",
                 scale: float = 1.0, dtype=jnp.float32):
        if init == "zeros":
            kernel = jnp.zeros((din, dout), jnp.float32)
        else:
            kernel = _trunc_normal(rngs.params(), (din, dout), din, dout, scale)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.data(nnx.Param(jnp.zeros((dout,), jnp.float32)) if bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class BlockLinear(nnx.Module):
    """Block-diagonal linear layer: [..., G, din/G] -> [..., G, dout/G] with one kernel per block."""

    def __init__(self, din: int, dout: int, blocks: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if din % blocks or dout % blocks:
            raise ValueError(f"BlockLinear sizes {din}->{dout} must be divisible by blocks={blocks}.")
        gi, go = din // blocks, dout // blocks
        self.kernel = nnx.Param(_trunc_normal(rngs.params(), (blocks, gi, go), gi, go))
        self.bias = nnx.Param(jnp.zeros((blocks, go), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...gi,gio->...go", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMS normalisation over the last axis with a learned scale and offset, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-4, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.offset = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (y * self.scale[...] + self.offset[...]).astype(self.dtype)


class Dense(nnx.Module):
    """Linear (no bias) -> RMSNorm -> SiLU."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.linear = Linear(din, dout, bias=False, rngs=rngs, dtype=dtype)
        self.norm = RMSNorm(dout, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(self.norm(self.linear(x)))


class MLP(nnx.Module):
    """`layers` Dense blocks of `units`; optional output Linear (`out`), zero-initialised if `zero_out`."""

    def __init__(self, din: int, units: int, layers: int, *, rngs: nnx.Rngs, out: int | None = None,
                 zero_out: bool = False, out_scale: float = 1.0, dtype=jnp.float32):
        dims = [din] + [units] * layers
        self.layers = nnx.List([Dense(a, b, rngs=rngs, dtype=dtype) for a, b in zip(dims[:-1], dims[1:], strict=True)])
        init = "zeros" if zero_out else "normal"
        self.out = nnx.data(None if out is None else
                            Linear(dims[-1], out, rngs=rngs, init=init, scale=out_scale, dtype=dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        if self.out is not None:
            x = self.out(x).astype(jnp.float32)
        return x


class Conv(nnx.Module):
    """2-D convolution, NHWC, 'SAME' padding, stride 1."""

    def __init__(self, cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs, bias: bool = True,
                 dtype=jnp.float32):
        fan_in, fan_out = cin * kernel * kernel, cout * kernel * kernel
        self.kernel = nnx.Param(_trunc_normal(rngs.params(), (kernel, kernel, cin, cout), fan_in, fan_out))
        self.bias = nnx.data(nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array, mode: str = "same") -> jax.Array:
        """mode: 'same' (stride-1 conv), 'pool' (then 2x2 max-pool), 'up' (after 2x nearest upsampling)."""
        kernel = self.kernel[...]
        if mode == "pool":
            y = conv_maxpool(x, kernel, self.dtype)
        elif mode == "up":
            y = upsample_conv(x, kernel, self.dtype)
        else:
            y = _conv(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _phase_select(kernel: int, down: bool) -> np.ndarray:
    """S[d, o, p, a] = 1 where hi-res tap d of a stride-1 conv maps to low-res offset o-1 and input phase p
    for output phase a (down: conv then 2x2 pool; up: 2x nearest upsample then conv, p always 0)."""
    r = kernel // 2
    sel = np.zeros((kernel, 3, 2, 2), np.float32)
    for d in range(kernel):
        for a in range(2):
            u = a + d - r
            sel[d, u // 2 + 1, u % 2 if down else 0, a] = 1.0
    return sel


def conv_maxpool(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """Exactly `maxpool2x2(conv_kxk_same(x))`, computed at half resolution.

    The input is rearranged space-to-depth ([H/2, W/2, 4C]) and the k x k kernel is folded into a 3 x 3
    kernel with 4C inputs and 4 output phases; the pool is a max over the phases. The full-resolution
    conv output is never materialised, and the conv gets 4x the channels (much faster on CPUs).
    """
    n, h, w, c = x.shape
    k, out = kernel.shape[0], kernel.shape[-1]
    if k > 5:
        raise ValueError(f"conv_maxpool supports kernels up to 5, got {k}.")
    sel = jnp.asarray(_phase_select(k, True))
    folded = jnp.einsum("ykpa,xlqb,yxco->klpqcabo", sel, sel, kernel).reshape(3, 3, 4 * c, 4 * out)
    xs = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
    y = _conv(xs.astype(dtype), folded.astype(dtype))
    return y.reshape(n, h // 2, w // 2, 4, out).max(3)


def upsample_conv(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """Exactly `conv_kxk_same(nearest_upsample_2x(x))`, computed at the input resolution.

    The k x k kernel is folded into a 3 x 3 kernel with 4 output phases, followed by depth-to-space: 2.7x
    fewer FLOPs for k=5 and no upsampled copy of the input.
    """
    n, h, w, c = x.shape
    k, out = kernel.shape[0], kernel.shape[-1]
    if k > 5:
        raise ValueError(f"upsample_conv supports kernels up to 5, got {k}.")
    sel = jnp.asarray(_phase_select(k, False))[:, :, 0]
    folded = jnp.einsum("yka,xlb,yxco->klcabo", sel, sel, kernel).reshape(3, 3, c, 4 * out)
    y = _conv(x.astype(dtype), folded.astype(dtype))
    return y.reshape(n, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, out)


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _tap_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _xla_conv(x, kernel)


def _tap_conv_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _tap_conv_bwd(res, dy):
    """Kernel gradient as one matmul per tap (x shifted by the tap, contracted with dy over all pixels).

    XLA:CPU's own kernel-gradient convolution runs ~2.5x slower than these matmuls for the small channel
    counts of Dreamer's CNNs; the input gradient keeps XLA's transposed convolution.
    """
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    _, vjp = jax.vjp(lambda v: _xla_conv(v, kernel), x)
    (dx,) = vjp(dy)
    n, h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    xp = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    flat_dy = dy.reshape(-1, cout)
    taps = [xp[:, i:i + h, j:j + w, :].reshape(-1, cin).T @ flat_dy for i in range(kh) for j in range(kw)]
    dk = jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)
    return dx, dk


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' NHWC convolution; on CPU with the faster per-tap kernel gradient."""
    if jax.default_backend() == "cpu":
        return _tap_conv(x, kernel)
    return _xla_conv(x, kernel)


def _flat_batch(x: jax.Array, event_dims: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - event_dims]
    return x.reshape((-1,) + x.shape[x.ndim - event_dims:]), lead


def cnn_stages(height: int, width: int, minres: int = 4) -> int:
    """Number of halvings that bring the image down to `minres`."""
    stages = int(round(math.log2(min(height, width) / minres)))
    if stages < 1 or height % (2**stages) or width % (2**stages):
        raise ValueError(
            f"Image size {height}x{width} is not supported: it must halve down to {minres}x{minres} "
            "(e.g. 16x16, 32x32, 64x64, 96x96).")
    return stages


class ConvEncoder(nnx.Module):
    """uint8 [..., H, W, C] -> x/255 - 0.5 -> per stage: conv k5 -> 2x2 max-pool -> RMSNorm -> SiLU -> flat."""

    def __init__(self, shape: tuple[int, int, int], depth: int, *, rngs: nnx.Rngs, mults=(2, 3, 4, 4),
                 kernel: int = 5, dtype=jnp.float32):
        h, w, c = shape
        stages = cnn_stages(h, w)
        chans = [depth * mults[min(i, len(mults) - 1)] for i in range(stages)]
        self.convs = nnx.List([])
        self.norms = nnx.List([])
        cin = c
        for cout in chans:
            self.convs.append(Conv(cin, cout, kernel, rngs=rngs, bias=False, dtype=dtype))
            self.norms.append(RMSNorm(cout, dtype=dtype))
            cin = cout
        self.out_dim = (h >> stages) * (w >> stages) * cin
        self.dtype = dtype

    def __call__(self, image: jax.Array) -> jax.Array:
        x, lead = _flat_batch(image, 3)
        x = x.astype(self.dtype) / 255.0 - 0.5
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.silu(norm(conv(x, mode="pool")))
        return x.reshape(lead + (-1,))


class ConvDecoder(nnx.Module):
    """features -> Linear -> [4, 4, C] -> per stage: 2x nearest upsample -> conv k5 (-> norm -> SiLU) -> sigmoid."""

    def __init__(self, din: int, shape: tuple[int, int, int], depth: int, *, rngs: nnx.Rngs,
                 mults=(2, 3, 4, 4), kernel: int = 5, dtype=jnp.float32):
        h, w, c = shape
        stages = cnn_stages(h, w)
        chans = [depth * mults[min(i, len(mults) - 1)] for i in range(stages)]
        self.start = (h >> stages, w >> stages, chans[-1])
        self.linear = Linear(din, math.prod(self.start), rngs=rngs, dtype=dtype)
        outs = list(reversed(chans[:-1])) + [c]
        self.convs = nnx.List([])
        self.norms = nnx.List([])
        cin = chans[-1]
        for i, cout in enumerate(outs):
            last = i == len(outs) - 1
            self.convs.append(Conv(cin, cout, kernel, rngs=rngs, bias=last, dtype=dtype))
            self.norms.append(None if last else RMSNorm(cout, dtype=dtype))
            cin = cout
        self.shape = shape

    def __call__(self, feat: jax.Array) -> jax.Array:
        x, lead = _flat_batch(feat, 1)
        x = self.linear(x).reshape((-1,) + self.start)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x, mode="up")
            if norm is not None:
                x = jax.nn.silu(norm(x))
        return jax.nn.sigmoid(x.astype(jnp.float32)).reshape(lead + self.shape)


class GridEncoder(nnx.Module):
    """Symbolic grid int [..., H, W, C] (values 0..classes-1) -> one-hot of every channel per cell -> `layers` x
    (conv k3 -> RMSNorm -> SiLU), spatial size kept -> flat [..., H*W*depth].

    Shared 3x3 filters see every cell the same way, so a rare object anywhere in the view gets the same
    features: far better than one MLP over the flattened one-hot grid, where a few object cells are a tiny
    part of a huge input.
    """

    def __init__(self, shape: tuple[int, int, int], classes: int, depth: int, *, rngs: nnx.Rngs, layers: int = 2,
                 dtype=jnp.float32):
        h, w, c = shape
        self.classes = classes
        self.convs = nnx.List([])
        self.norms = nnx.List([])
        cin = c * classes
        for _ in range(layers):
            self.convs.append(Conv(cin, depth, 3, rngs=rngs, bias=False, dtype=dtype))
            self.norms.append(RMSNorm(depth, dtype=dtype))
            cin = depth
        self.out_dim = h * w * depth
        self.dtype = dtype

    def __call__(self, grid: jax.Array) -> jax.Array:
        x, lead = _flat_batch(grid, 3)
        x = jax.nn.one_hot(x.astype(jnp.int32), self.classes, dtype=self.dtype)
        x = x.reshape(x.shape[:3] + (-1,))
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.silu(norm(conv(x)))
        return x.reshape(lead + (-1,))


class GridDecoder(nnx.Module):
    """features -> Linear -> [H, W, depth] -> RMSNorm -> SiLU -> `layers - 1` x (conv k3 -> norm -> SiLU) ->
    conv k3 -> logits [..., H, W, C, classes] (one categorical per cell and channel)."""

    def __init__(self, din: int, shape: tuple[int, int, int], classes: int, depth: int, *, rngs: nnx.Rngs,
                 layers: int = 2, dtype=jnp.float32):
        h, w, c = shape
        self.shape, self.classes, self.depth = shape, classes, depth
        self.linear = Linear(din, h * w * depth, rngs=rngs, dtype=dtype)
        self.norm0 = RMSNorm(depth, dtype=dtype)
        self.convs = nnx.List([Conv(depth, depth, 3, rngs=rngs, bias=False, dtype=dtype) for _ in range(layers - 1)])
        self.norms = nnx.List([RMSNorm(depth, dtype=dtype) for _ in range(layers - 1)])
        self.out = Conv(depth, c * classes, 3, rngs=rngs, bias=True, dtype=dtype)

    def __call__(self, feat: jax.Array) -> jax.Array:
        h, w, c = self.shape
        x, lead = _flat_batch(feat, 1)
        x = jax.nn.silu(self.norm0(self.linear(x).reshape((-1, h, w, self.depth))))
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.silu(norm(conv(x)))
        x = self.out(x).astype(jnp.float32)
        return x.reshape(lead + (h, w, c, self.classes))
