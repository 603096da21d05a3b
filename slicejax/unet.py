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


class ConvBlock(nn.Module):
  """Convolution, normalisation, leaky ReLU."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, tuple(self.kernel_size), strides=tuple(self.strides), padding="SAME",
                use_bias=False, dtype=self.dtype)(x)
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
    block = lambda f, k, s, name: ConvBlock(f, k, s, self.norm, self.dtype, name=name)

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
        x = jax.image.resize(x, x.shape[:1] + skip.shape[1:-1] + x.shape[-1:], "nearest")
        x = nn.Conv(f, kernels[i], padding="SAME", use_bias=False, dtype=self.dtype, name=f"up_{i}_resize")(x)
      elif self.upsample == "transpose":
        x = nn.ConvTranspose(f, strides[i], strides=strides[i], use_bias=False, dtype=self.dtype,
                             name=f"up_{i}_transpose")(x)
      else:
        raise ValueError(f"unknown upsample {self.upsample!r}")
      x = jnp.concatenate([x, skip], axis=-1)
      x = block(f, kernels[i], ones, f"up_{i}_0")(x)
      x = block(f, kernels[i], ones, f"up_{i}_1")(x)

    logits = nn.Conv(self.num_classes, ones, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)
