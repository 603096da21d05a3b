"""On-device data augmentation of a batch of 2D slices or 3D patches.

An example is `image [*S, C]`, `label [*S]` and `weight [*S]` (the loss weight: 0 off annotated voxels and on
padding), with `S = (H, W)` for a slice or `S = (D, H, W)` for a patch whose D axis is the slicing axis. The geometry
(flips, rotation, scaling) is one resampling per example that moves all three together (linear interpolation for the
image, nearest for label and weight; voxels that come from outside the array get weight 0, so the loss never sees
invented labels); intensity transforms touch the image only. The geometry acts in the plane of the last two spatial
axes (the slice plane) only: a patch is never resampled along D, so each output plane is its own input plane warped
and annotated planes stay aligned with their labels and weights. All randomness comes from the key passed in.
"""

import jax
import jax.numpy as jnp

from slicejax.config.defaults import augment_config as default_config  # the `train.augment` block


def _plane_map(key, warp, height, width, cfg):
  """Draws one example's in-plane geometry and returns its inverse map.

  The geometry is a rotation and scaling about the plane's centre (only where `warp`), then a flip of each axis with
  probability `flip_prob`. It is written elementwise, without a matrix product, so that without the warp the map is
  exactly the flipped integer grid on every backend and the resampling copies pixels exactly.

  Args:
    key: PRNG key.
    warp: bool scalar, whether to rotate and scale.
    height: H.
    width: W.
    cfg: `default_config()`-like ConfigDict.

  Returns:
    `coords [2, H, W]` float32: the input (row, column) that each output pixel of a plane reads.
  """
  k_angle, k_scale, k_flip = jax.random.split(key, 3)
  angle = jnp.where(warp, jnp.deg2rad(cfg.rotate_degrees) * jax.random.uniform(k_angle, (), minval=-1.0, maxval=1.0),
                    0.0)
  scale = jnp.where(warp, jax.random.uniform(k_scale, (), minval=cfg.scale_range[0], maxval=cfg.scale_range[1]), 1.0)
  size = jnp.array([height, width], jnp.float32)[:, None, None]
  grid = jnp.stack(jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                                indexing="ij"))
  # A flipped output pixel is the unflipped one read from its mirror position.
  grid = jnp.where(jax.random.bernoulli(k_flip, cfg.flip_prob, (2, 1, 1)), size - 1.0 - grid, grid)
  centre = (size - 1.0) / 2.0
  row, col = grid - centre
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  return jnp.stack([cos * row - sin * col, sin * row + cos * col]) + centre


def _augment_one(key, warp, image, label, weight, cfg):
  """Augments one example (`image [*S, C]`, `label [*S]`, `weight [*S]`); `warp` says whether to rotate and scale."""
  height, width = label.shape[-2:]
  k_map, k_scale, k_shift = jax.random.split(key, 3)
  coords = _plane_map(k_map, warp, height, width, cfg)
  inside = jnp.all((coords > -0.5) & (coords < jnp.array([height, width]).reshape(2, 1, 1) - 0.5), axis=0)

  def resample(a, order):
    # One 2D resampling per plane (and channel) at the same coordinates: leading axes are only batched over, so no
    # interpolation can mix or shift planes.
    plane = lambda p: jax.scipy.ndimage.map_coordinates(p, list(coords), order=order, mode="nearest")
    return jax.vmap(plane)(a.reshape((-1, height, width))).reshape(a.shape)

  image = jnp.moveaxis(resample(jnp.moveaxis(image, -1, 0), 1), 0, -1)
  scale = 1.0 + cfg.intensity_scale * jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0)
  shift = cfg.intensity_shift * jax.random.uniform(k_shift, (), minval=-1.0, maxval=1.0)
  return image * scale + shift, resample(label, 0), resample(weight, 0) * inside


def augment_batch(key, images, labels, weights, cfg):
  """Randomly augments a batch.

  Every example is flipped in the slice plane and has its intensities scaled and shifted at random; independently,
  each is rotated and scaled in the slice plane with probability `affine_prob` (a 3D patch plane by plane, never
  along the slicing axis). Shapes are static, so every example is resampled once, with the identity rotation and
  scaling where its draw says no: the cost is one resampling of the batch whatever the probabilities, and an example
  that is neither warped nor flipped comes back exactly (finite images).

  Args:
    key: PRNG key.
    images: `[B, *S, C]` float, `S = (H, W)` or `(D, H, W)` with D the slicing axis.
    labels: `[B, *S]` int.
    weights: `[B, *S]` float loss weights.
    cfg: `default_config()`-like ConfigDict.

  Returns:
    `(images, labels, weights)` with the same shapes and dtypes.
  """
  batch = images.shape[0]
  k_warp, k_rest = jax.random.split(key)
  warp = jax.random.bernoulli(k_warp, cfg.affine_prob, (batch,))
  keys = jax.random.split(k_rest, batch)
  return jax.vmap(_augment_one, in_axes=(0, 0, 0, 0, 0, None))(keys, warp, images, labels, weights, cfg)
