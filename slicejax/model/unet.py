"""One U-Net for 2D and 3D segmentation.

Inputs are channels-last: `[B, H, W, C]` for `dims=2` and `[B, D, H, W, C]` for `dims=3`. Stage `i` of the encoder
(`down_i`) has `min(features * 2**i, max_features)` channels and two conv-norm-activation blocks; stages after the
first start by downsampling with a strided convolution. The decoder stage `up_i` upsamples to the resolution of
`down_i` (nearest-neighbour resize followed by a convolution, or a transposed convolution), concatenates the skip
connection and applies two blocks. Resize-then-convolve runs at the low resolution where the sizes divide by the
stride (`upsample_conv`: the same parameters and results, without the upsampled tensor). Normalisation keeps no
running statistics (instance or group norm), so the model is a pure function of its parameters and one example's
prediction never depends on the rest of the batch.

Precision (`dtype`, from `slicejax.training.precision`): parameters are float32 and are cast to `dtype` where they are
used, so
gradients and the optimiser stay float32; convolutions and activations run in `dtype`; normalisation statistics and
the normalisation itself are computed in float32 and rounded to `dtype` once; the 1x1 head runs in float32, so the
logits are float32 whatever `dtype` is.

Per-stage kernel sizes and strides come from the config, so anisotropic 3D volumes can pool in-plane only, e.g.
`strides=((1, 2, 2), (1, 2, 2), (2, 2, 2))` for the three downsamplings of a four-stage network.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _tuple(value, dims: int) -> tuple:
  if isinstance(value, int):
    return (value,) * dims
  return tuple(value)


def _same_padding(size: int, kernel: int, stride: int) -> tuple:
  """XLA's "SAME" padding (low, high) of one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv(x, kernel, strides: Sequence[int], as_2d: bool = False):
  """Bias-free "SAME" convolution of channels-last `x [B, *spatial, C]` with `kernel [*k, C, F]`.

  With `as_2d`, a `[B, D, H, W, C]` convolution with kernel `(kd, kh, kw)` gathers the kd depth-shifted copies of
  the input into channels and runs one 2D convolution over the `B * D'` planes with the kernel reshaped to
  `(kh, kw, kd * C, F)`: the same result up to summation order, and XLA:CPU runs 2D convolutions several times
  faster than 3D ones.
  """
  kernel_size = kernel.shape[:-2]
  if not (as_2d and x.ndim == 5):
    spatial = "DHW"[-(x.ndim - 2):]
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(strides),
        [_same_padding(n, k, s) for n, k, s in zip(x.shape[1:-1], kernel_size, strides)],
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
  kd, kh, kw = kernel_size
  sd, sh, sw = strides
  batch, depth = x.shape[:2]
  out_depth = -(-depth // sd)
  x = jnp.pad(x, ((0, 0), _same_padding(depth, kd, sd), (0, 0), (0, 0), (0, 0)))
  shifted = [x[:, k:k + (out_depth - 1) * sd + 1:sd] for k in range(kd)]
  planes = jnp.concatenate(shifted, axis=-1).reshape((batch * out_depth,) + x.shape[2:4] + (kd * x.shape[-1],))
  weights = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * x.shape[-1], kernel.shape[-1])
  padding = [_same_padding(planes.shape[1], kh, sh), _same_padding(planes.shape[2], kw, sw)]
  y = jax.lax.conv_general_dilated(planes, weights, (sh, sw), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape((batch, out_depth) + y.shape[1:])


def _phase_taps(stride: int, kernel: int) -> np.ndarray:
  """`taps [stride, K, kernel]`: `taps[a, d, p] = 1` where tap p of a "SAME" stride-1 convolution with an odd
  `kernel`, at output phase a (position modulo `stride`) of a nearest-neighbour upsampled input, reads the
  low-resolution offset `d - K // 2`; K is odd, so a "SAME" K-tap convolution at the low resolution pads the same."""
  pad = (kernel - 1) // 2
  offsets = np.array([[(a + p - pad) // stride for p in range(kernel)] for a in range(stride)])
  reach = int(np.abs(offsets).max())
  assert offsets.min() == -reach or reach == 0, (stride, kernel)  # symmetric reach for odd kernels
  taps = np.zeros((stride, 2 * reach + 1, kernel), np.float32)
  for a in range(stride):
    for p in range(kernel):
      taps[a, offsets[a, p] + reach, p] = 1.0
  return taps


def upsample_conv(x, kernel, strides: Sequence[int], as_2d: bool = False):
  """`conv(nearest_upsample(x, strides), kernel)` computed at the low resolution ("sub-pixel" form).

  Each output phase (position modulo the stride) of a convolution over a nearest-neighbour upsampled input is a
  convolution of the low-resolution input with summed kernel taps. So one convolution with `prod(strides) * F`
  outputs, whose kernel a fixed linear map builds from `kernel [*k, C, F]`, and a depth-to-space shuffle give the
  same result up to summation order without forming the upsampled input; gradients, the kernel's included, flow
  through the same map. Odd kernel sizes only. `x [B, *low, C]` -> `[B, *(low * strides), F]` in `x.dtype`; the
  taps are summed in `kernel.dtype`.
  """
  dims = x.ndim - 2
  if not all(k % 2 for k in kernel.shape[:dims]):
    raise ValueError(f"upsample_conv needs odd kernel sizes, got {kernel.shape[:dims]}")
  features = kernel.shape[-1]
  combined = kernel
  for stride, k in zip(strides, kernel.shape[:dims]):  # contract the leading tap axis, append (phase, offset)
    combined = jnp.tensordot(combined, _phase_taps(stride, k).astype(kernel.dtype), axes=((0,), (2,)))
  # [C, F, a1, d1, ..., an, dn] -> [d1..dn, C, a1..an, F] -> [*d, C, prod(strides) * F]
  order = [3 + 2 * i for i in range(dims)] + [0] + [2 + 2 * i for i in range(dims)] + [1]
  combined = combined.transpose(order)
  combined = combined.reshape(combined.shape[:dims + 1] + (-1,))
  y = conv(x, combined.astype(x.dtype), (1,) * dims, as_2d)  # [B, *low, prod(strides) * F]
  batch, low = y.shape[0], y.shape[1:-1]
  y = y.reshape((batch,) + low + tuple(strides) + (features,))
  order = [0] + [i for axis in range(dims) for i in (1 + axis, 1 + dims + axis)] + [1 + 2 * dims]
  return y.transpose(order).reshape((batch,) + tuple(n * s for n, s in zip(low, strides)) + (features,))


class Conv(nn.Module):
  """`nn.Conv` without bias and with "SAME" padding, optionally after a nearest-neighbour upsampling.

  The parameter is `kernel [*kernel_size, C, F]` as in `nn.Conv`. With `upsample` strides, the layer computes
  `conv(nearest_upsample(x, upsample), kernel)` through `upsample_conv`; `as_2d` runs 3D convolutions as 2D ones
  (see `conv`).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  as_2d: bool = False
  dtype: jnp.dtype = jnp.float32
  upsample: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    x = x.astype(self.dtype)
    if self.upsample is not None:
      return upsample_conv(x, kernel, self.upsample, self.as_2d)  # sums taps in float32, then casts
    return conv(x, kernel.astype(self.dtype), self.strides, self.as_2d)


class ConvBlock(nn.Module):
  """Convolution, normalisation, leaky ReLU."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  norm: str
  as_2d: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, tuple(self.kernel_size), tuple(self.strides), self.as_2d, self.dtype, name="conv")(x)
    # flax computes the statistics and normalises in at least float32 (`force_float32_reductions`); `dtype` is only
    # the output's. The variance is E[x^2] - E[x]^2, which bfloat16's 8 bits would lose where the mean dominates.
    if self.norm == "instance":
      x = nn.GroupNorm(num_groups=None, group_size=1, dtype=self.dtype)(x)
    elif self.norm == "group":
      x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype)(x)
    elif self.norm != "none":
      raise ValueError(f"unknown norm {self.norm!r}")
    return nn.leaky_relu(x, 0.01)


class UNet(nn.Module):
  """U-Net with `num_stages` resolutions.

  Attributes:
    num_classes: output channels (background included).
    dims: 2 or 3 spatial dimensions.
    features: channels of the first stage; doubled per stage up to `max_features`.
    num_stages: number of resolutions (`num_stages - 1` downsamplings).
    kernel_sizes: one kernel size per stage (int or per-dim tuple); None means 3 everywhere.
    strides: one downsampling stride per stage after the first (int or per-dim tuple); None means 2 everywhere.
    norm: "instance", "group" or "none".
    upsample: "resize" (nearest resize then conv) or "transpose" (transposed conv).
    conv3d_as_2d: run 3D convolutions as 2D convolutions over depth-stacked planes (see `Conv`).
    dtype: compute dtype of the convolutions and activations (float32 or bfloat16); parameters, normalisation
      statistics and the logits stay float32.
  """
  num_classes: int
  dims: int = 2
  features: int = 16
  max_features: int = 320
  num_stages: int = 4
  kernel_sizes: Optional[Sequence] = None
  strides: Optional[Sequence] = None
  norm: str = "instance"
  upsample: str = "resize"
  conv3d_as_2d: bool = False
  dtype: jnp.dtype = jnp.float32

  def _stage_features(self, i):
    return min(self.features * 2**i, self.max_features)

  @nn.compact
  def __call__(self, x):
    """Maps images `[B, *spatial, C]` to logits `[B, *spatial, num_classes]` (float32)."""
    if x.ndim != self.dims + 2:
      raise ValueError(f"UNet(dims={self.dims}) needs [B, *spatial, C] input, got shape {x.shape}")
    kernels = [_tuple(k, self.dims) for k in (self.kernel_sizes or [3] * self.num_stages)]
    strides = [_tuple(s, self.dims) for s in (self.strides or [2] * (self.num_stages - 1))]
    if len(kernels) != self.num_stages or len(strides) != self.num_stages - 1:
      raise ValueError("kernel_sizes needs one entry per stage and strides one per downsampling")
    ones = (1,) * self.dims
    block = lambda f, k, s, name: ConvBlock(f, k, s, self.norm, self.conv3d_as_2d, self.dtype, name=name)

    x = x.astype(self.dtype)
    skips = []
    for i in range(self.num_stages):
      f = self._stage_features(i)
      x = block(f, kernels[i], strides[i - 1] if i else ones, f"down_{i}_0")(x)
      x = block(f, kernels[i], ones, f"down_{i}_1")(x)
      skips.append(x)

    for i in reversed(range(self.num_stages - 1)):
      f = self._stage_features(i)
      skip = skips[i]
      if self.upsample == "resize":
        name = f"up_{i}_resize"
        if skip.shape[1:-1] == tuple(n * s for n, s in zip(x.shape[1:-1], strides[i])) and all(
            k % 2 for k in kernels[i]):
          x = Conv(f, kernels[i], ones, self.conv3d_as_2d, self.dtype, upsample=strides[i], name=name)(x)
        else:  # odd sizes: upsample, crop to the skip connection, convolve
          for axis, stride in enumerate(strides[i], start=1):
            x = jnp.repeat(x, stride, axis=axis)
          x = x[tuple(slice(0, n) for n in skip.shape[:-1])]
          x = Conv(f, kernels[i], ones, self.conv3d_as_2d, self.dtype, name=name)(x)
      elif self.upsample == "transpose":
        x = nn.ConvTranspose(f, strides[i], strides=strides[i], use_bias=False, dtype=self.dtype,
                             name=f"up_{i}_transpose")(x)
      else:
        raise ValueError(f"unknown upsample {self.upsample!r}")
      x = jnp.concatenate([x, skip], axis=-1)
      x = block(f, kernels[i], ones, f"up_{i}_0")(x)
      x = block(f, kernels[i], ones, f"up_{i}_1")(x)

    # 1x1(x1), as cheap as a matmul, so it runs in float32: the logits are not rounded to bfloat16's 8 bits.
    return nn.Conv(self.num_classes, ones, dtype=jnp.float32, name="head")(x)
