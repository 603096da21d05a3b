"""Sliding-window inference of 3D models over whole volumes (nnU-Net style Gaussian blending).

Conventions:
  * A volume is `image [D, H, W, C]`, channels last, slicing axis first. A patch is `(pd, ph, pw)`.
  * `predict` maps a batch of windows `[b, pd, ph, pw, C]` to logits `[M, b, pd, ph, pw, K]`: M models (the model
    axis, possibly 1) evaluated on the same windows.
  * Windows are placed per axis by `window_starts`: the first at 0, the last flush with the end of the volume, evenly
    spaced in between with a step of at most `patch * (1 - overlap)`. Volumes smaller than the patch must be padded by
    the caller first.

Each voxel's output is the average of the logits of the windows that contain it, weighted by a Gaussian centred on
each window (`gaussian_weights`), since predictions near a window's border see less context and are less reliable.

Static shapes: a volume may be padded beyond the `extent` the windows cover, e.g. to `bucket_shape` of the largest
volume of a test set, so that volumes of different sizes share one compiled program per function. The windows lie
inside the extent, so what lies beyond it never enters a window and the output there is 0.

Execution: the host only plans. It lists the window starts and cuts them into batches of `batch_size` (the last one
padded with copies of the final window, so every call to `predict` has the same shape and compiles once). Windows are
cut out of the image on the device, where the image is copied once, and the weighted logits are accumulated on the
device into the `[M, D, H, W, K]` output, which is donated to each update so it is written in place. The per-voxel sum
of Gaussians depends on the window layout only, so it is accumulated first, batch by batch like the logits, and every
window's logits are scaled by `gaussian / sum of gaussians` as they are added: a voxel covered by a single window gets
exactly that window's logits. All of it is dispatched asynchronously, so the host loop runs ahead of the device.
"""

import functools
import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax.errors import InputError


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125, floor: float = 1e-6) -> np.ndarray:
  """Importance of each voxel of a window: a Gaussian centred on the window.

  Args:
    patch: window shape `(pd, ph, pw)` (any number of axes).
    sigma_scale: standard deviation per axis as a fraction of the window size along that axis.
    floor: smallest weight, so that voxels covered only by window corners keep a positive normaliser.

  Returns:
    `[pd, ph, pw]` float32, maximum 1 (at the centre, `(p - 1) / 2` per axis, so the weights are symmetric under
    flipping any axis), minimum at least `floor`.
  """
  if sigma_scale <= 0:
    raise InputError("sigma_scale", f"must be positive, got {sigma_scale}")
  weights = np.ones((), np.float64)
  for size in patch:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    axis = np.exp(-0.5 * (offsets / (size * sigma_scale))**2)
    weights = np.multiply.outer(weights, axis)
  weights = weights / weights.max()
  return np.maximum(weights, floor).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list:
  """Start indices of windows of length `patch` that cover `[0, size)` along one axis.

  Args:
    size: length of the axis; at least `patch`.
    patch: window length.
    overlap: fraction of a window shared with the next one, in [0, 1). The step between starts is at most
      `floor(patch * (1 - overlap))` (but at least 1).

  Returns:
    Increasing starts, the first 0 and the last `size - patch`, spread as evenly as whole numbers allow.
  """
  if not 0 <= overlap < 1:
    raise InputError("overlap", f"must be in [0, 1), got {overlap}")
  if patch < 1 or size < patch:
    raise InputError("patch", f"window of {patch} does not fit an axis of {size} (pad the volume first)")
  span = size - patch
  if span == 0:
    return [0]
  max_step = max(1, math.floor(patch * (1 - overlap)))
  intervals = math.ceil(span / max_step)
  # Rounding i * span / intervals keeps every step <= ceil(span / intervals) <= max_step.
  return [(2 * i * span + intervals) // (2 * intervals) for i in range(intervals + 1)]


def bucket_size(size: int) -> int:
  """The smallest size of at least `size` with at most three significant bits (4, 5, 6 or 7 times a power of two):
  at most 25% more than `size`, and four sizes per octave, so that volumes of different sizes share a few shapes."""
  size = int(size)
  quantum = 1 << max(0, size.bit_length() - 3)
  return -(-size // quantum) * quantum


def bucket_shape(shape: Sequence[int]) -> tuple:
  """`bucket_size` of every axis of `shape`."""
  return tuple(bucket_size(n) for n in shape)


@functools.partial(jax.jit, static_argnums=2)
def _cut_windows(image, starts, patch):
  """`image [D, H, W, C]`, `starts [b, 3]` -> windows `[b, pd, ph, pw, C]`."""
  cut = lambda s: jax.lax.dynamic_slice(image, (s[0], s[1], s[2], 0), tuple(patch) + image.shape[-1:])
  return jax.vmap(cut)(starts)


@functools.partial(jax.jit, donate_argnums=0)
def _add_gaussians(normaliser, gaussian, starts, count):
  """Adds `gaussian [pd, ph, pw]` at each of the first `count` windows `starts [b, 3]` into `normaliser [D, H, W]`."""

  def add(i, total):
    at = tuple(starts[i])
    window = jax.lax.dynamic_slice(total, at, gaussian.shape)
    return jax.lax.dynamic_update_slice(total, window + gaussian, at)

  return jax.lax.fori_loop(0, count, add, normaliser)


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(total, logits, gaussian, normaliser, starts, count):
  """Adds the first `count` windows' `logits [M, b, pd, ph, pw, K]`, weighted, into `total [M, D, H, W, K]`."""
  num_models, num_classes = total.shape[0], total.shape[-1]

  def add(i, total):
    d, h, w = starts[i, 0], starts[i, 1], starts[i, 2]
    scale = gaussian / jax.lax.dynamic_slice(normaliser, (d, h, w), gaussian.shape)
    at = (0, d, h, w, 0)
    window = jax.lax.dynamic_slice(total, at, (num_models,) + gaussian.shape + (num_classes,))
    return jax.lax.dynamic_update_slice(total, window + logits[:, i] * scale[None, ..., None], at)

  return jax.lax.fori_loop(0, count, add, total)


def sliding_window_logits(predict: Callable, image, patch: Sequence[int], *, extent: Sequence[int] | None = None,
                          overlap: float = 0.5, batch_size: int = 4, sigma_scale: float = 0.125) -> jax.Array:
  """Gaussian-blended logits of `predict` over a whole volume.

  Args:
    predict: windows `[b, pd, ph, pw, C]` -> logits `[M, b, pd, ph, pw, K]`, with `b = batch_size`.
    image: `[D, H, W, C]` (numpy or jax), at least `patch` along each spatial axis.
    patch: window shape `(pd, ph, pw)`.
    extent: `(d, h, w)`, the part of `image` at the origin that the windows cover (at least `patch`, at most the
      image); the rest is padding that gives the image a shape shared with other volumes. None: the whole image.
    overlap: fraction of a window shared with its neighbour along each axis (see `window_starts`).
    batch_size: windows per call to `predict`.
    sigma_scale: Gaussian standard deviation as a fraction of the window (see `gaussian_weights`).

  Returns:
    `[M, D, H, W, K]` float32 device array: per voxel of the extent, the sum over the windows containing it of
    `gaussian * logits`, divided by the sum of their `gaussian`; 0 outside the extent. Compiled once per image shape,
    patch, batch size and M, whatever the extent.
  """
  patch = tuple(int(p) for p in patch)
  if image.ndim != 4 or len(patch) != 3:
    raise InputError("image", f"needs [D, H, W, C] and a 3D patch, got shape {image.shape} and patch {patch}")
  if batch_size < 1:
    raise InputError("batch_size", f"must be at least 1, got {batch_size}")
  shape = tuple(image.shape[:3])
  extent = shape if extent is None else tuple(int(n) for n in extent)
  if len(extent) != 3 or any(n > s for n, s in zip(extent, shape)):
    raise InputError("extent", f"{extent} must be 3 sizes within the image's {shape}")
  per_axis = [window_starts(size, p, overlap) for size, p in zip(extent, patch)]
  starts = np.array(list(itertools.product(*per_axis)), np.int32)
  num_windows = len(starts)
  num_batches = -(-num_windows // batch_size)
  starts = np.concatenate([starts, np.repeat(starts[-1:], num_batches * batch_size - num_windows, axis=0)])
  batches = [(jnp.asarray(starts[b * batch_size:(b + 1) * batch_size]), min(batch_size, num_windows - b * batch_size))
             for b in range(num_batches)]

  image = jnp.asarray(image)
  gaussian = jnp.asarray(gaussian_weights(patch, sigma_scale))
  normaliser = jnp.zeros(shape, jnp.float32)
  for batch_starts, count in batches:
    normaliser = _add_gaussians(normaliser, gaussian, batch_starts, count)
  total = None
  for batch_starts, count in batches:
    logits = predict(_cut_windows(image, batch_starts, patch))
    if logits.ndim != 6 or logits.shape[1:5] != (batch_size,) + patch:
      raise ValueError(f"predict must return [M, {batch_size}, *{patch}, K] logits, got shape {logits.shape}")
    if total is None:
      total = jnp.zeros((logits.shape[0],) + shape + logits.shape[-1:], jnp.float32)
    total = _accumulate(total, logits.astype(jnp.float32), gaussian, normaliser, batch_starts, count)
  return total
