"""One U-Net for 2D and 3D segmentation.

Inputs are channels-last: `[B, H, W, C]` for `dims=2` and `[B, D, H, W, C]` for `dims=3`. Stage `i` of the encoder
(`down_i`) has `min(features * 2**i, max_features)` channels and two conv-norm-activation blocks; stages after the
first start by downsampling with a strided convolution. The decoder stage `up_i` upsamples to the resolution of
`down_i` (nearest-neighbour resize followed by a convolution, or a transposed convolution), concatenates the skip
connection and applies two blocks. Normalisation keeps no running statistics (instance or group norm), so the
model is a pure function of its parameters and one example's prediction never depends on the rest of the batch.

Per-stage kernel sizes and strides come from the config, so anisotropic 3D volumes can pool in-plane only, e.g.
`strides=((1, 2, 2), (1, 2, 2), (2, 2, 2))` for the three downsamplings of a four-stage network.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _tuple(value, dims: int) -> tuple:
  if isinstance(value, int):
    return (value,) * dims
  return tuple(value)


def _same_padding(size: int, kernel: int, stride: int) -> tuple:
  """XLA's "SAME" padding (low, high) of one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Conv(nn.Module):
  """`nn.Conv` without bias and with "SAME" padding; a 3D convolution can run as one 2D convolution.

  With `as_2d`, a `[B, D, H, W, C]` convolution with kernel `(kd, kh, kw)` gathers the kd depth-shifted copies of
  the input into channels and runs one 2D convolution over the `B * D'` planes with the kernel reshaped to
  `(kh, kw, kd * C, F)`. The parameters are the same `kernel [kd, kh, kw, C, F]` as `nn.Conv`'s, and so is the result
  (up to summation order); XLA:CPU runs 2D convolutions several times faster than 3D ones.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  as_2d: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    x = x.astype(self.dtype)
    if not (self.as_2d and x.ndim == 5):
      spatial = "DHW"[-(x.ndim - 2):]
      return jax.lax.conv_general_dilated(
          x, kernel.astype(self.dtype), tuple(self.strides),
          [_same_padding(n, k, s) for n, k, s in zip(x.shape[1:-1], self.kernel_size, self.strides)],
          dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    kd, kh, kw = self.kernel_size
    sd, sh, sw = self.strides
    batch, depth = x.shape[:2]
    out_depth = -(-depth // sd)
    x = jnp.pad(x, ((0, 0), _same_padding(depth, kd, sd), (0, 0), (0, 0), (0, 0)))
    shifted = [x[:, k:k + (out_depth - 1) * sd + 1:sd] for k in range(kd)]
    planes = jnp.concatenate(shifted, axis=-1).reshape((batch * out_depth,) + x.shape[2:4] + (kd * x.shape[-1],))
    weights = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * x.shape[-1], self.features)
    padding = [_same_padding(planes.shape[1], kh, sh), _same_padding(planes.shape[2], kw, sw)]
    y = jax.lax.conv_general_dilated(planes, weights.astype(self.dtype), (sh, sw), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape((batch, out_depth) + y.shape[1:])


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
    dtype: computation dtype (parameters stay float32).
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
        for axis, stride in enumerate(strides[i], start=1):
          x = jnp.repeat(x, stride, axis=axis)  # nearest-neighbour upsampling by the stage's stride
        x = x[tuple(slice(0, n) for n in skip.shape[:-1])]
        x = Conv(f, kernels[i], ones, self.conv3d_as_2d, self.dtype, name=f"up_{i}_resize")(x)
      elif self.upsample == "transpose":
        x = nn.ConvTranspose(f, strides[i], strides=strides[i], use_bias=False, dtype=self.dtype,
                             name=f"up_{i}_transpose")(x)
      else:
        raise ValueError(f"unknown upsample {self.upsample!r}")
      x = jnp.concatenate([x, skip], axis=-1)
      x = block(f, kernels[i], ones, f"up_{i}_0")(x)
      x = block(f, kernels[i], ones, f"up_{i}_1")(x)

    logits = nn.Conv(self.num_classes, ones, dtype=self.dtype, name="head")(x)  # 1x1(x1): as cheap as a matmul
    return logits.astype(jnp.float32)
