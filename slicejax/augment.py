"""On-device data augmentation of a batch, written for any number of spatial dimensions.

An example is `image [*S, C]`, `label [*S]` and `weight [*S]` (the loss weight: 0 off annotated voxels and on
padding). Geometric transforms move all three together (linear interpolation for the image, nearest for label and
weight; voxels that come from outside the array get weight 0, so the loss never sees invented labels); intensity
transforms touch the image only. Rotation acts in the plane of the last two spatial axes (the slice plane), so 3D
patches of anisotropic volumes are never rotated across slices. All randomness comes from the key passed in.
"""

import jax
import jax.numpy as jnp
import ml_collections


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      flip_prob=0.5,          # per spatial axis of the slice plane
      affine_prob=0.3,        # fraction of each batch that is rotated and scaled
      rotate_degrees=15.0,    # maximum in-plane rotation
      scale_range=(0.85, 1.15),
      intensity_scale=0.1,    # image * U[1 - s, 1 + s]
      intensity_shift=0.1,    # image + U[-s, s] (in z-score units)
  ))


def _affine(key, image, label, weight, cfg):
  spatial = image.shape[:-1]
  dims = len(spatial)
  k_angle, k_scale = jax.random.split(key)
  angle = jnp.deg2rad(cfg.rotate_degrees) * jax.random.uniform(k_angle, (), minval=-1.0, maxval=1.0)
  scale = jax.random.uniform(k_scale, (), minval=cfg.scale_range[0], maxval=cfg.scale_range[1])
  # Inverse map from output to input coordinates about the centre; rotation in the last two axes.
  matrix = jnp.eye(dims)
  rotation = jnp.array([[jnp.cos(angle), -jnp.sin(angle)], [jnp.sin(angle), jnp.cos(angle)]])
  matrix = matrix.at[dims - 2:, dims - 2:].set(rotation) / scale
  centre = (jnp.array(spatial, jnp.float32) - 1.0) / 2.0
  grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in spatial], indexing="ij"))
  coords = jnp.einsum("ij,j...->i...", matrix, grid - centre.reshape((dims,) + (1,) * dims)) + centre.reshape(
      (dims,) + (1,) * dims)
  inside = jnp.all((coords > -0.5) & (coords < jnp.array(spatial).reshape((dims,) + (1,) * dims) - 0.5), axis=0)
  warp = lambda a, order: jax.scipy.ndimage.map_coordinates(a, list(coords), order=order, mode="nearest")
  image = jnp.stack([warp(image[..., c], 1) for c in range(image.shape[-1])], axis=-1)
  label = warp(label, 0).astype(label.dtype)
  weight = warp(weight, 0) * inside
  return image, label, weight


def _flip_and_intensity(key, image, label, weight, cfg):
  dims = label.ndim
  k_flip, k_scale, k_shift = jax.random.split(key, 3)
  for i, k in zip(range(max(dims - 2, 0), dims), jax.random.split(k_flip, dims)):
    flip = jax.random.bernoulli(k, cfg.flip_prob)
    image = jnp.where(flip, jnp.flip(image, i), image)
    label = jnp.where(flip, jnp.flip(label, i), label)
    weight = jnp.where(flip, jnp.flip(weight, i), weight)
  scale = 1.0 + cfg.intensity_scale * jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0)
  shift = cfg.intensity_shift * jax.random.uniform(k_shift, (), minval=-1.0, maxval=1.0)
  return image * scale + shift, label, weight


def augment_batch(key, images, labels, weights, cfg):
  """Randomly augments a batch.

  Every example is flipped in the slice plane and has its intensities scaled and shifted at random. A rotation with
  scaling is applied to the first `round(affine_prob * B)` examples only: examples arrive in random order, so this
  warps a random subset of that size, and the costly resampling runs only where it is used.

  Args:
    key: PRNG key.
    images: `[B, *S, C]` float.
    labels: `[B, *S]` int.
    weights: `[B, *S]` float loss weights.
    cfg: `default_config()`-like ConfigDict.

  Returns:
    `(images, labels, weights)` with the same shapes and dtypes.
  """
  batch = images.shape[0]
  k_affine, k_rest = jax.random.split(key)
  warped = int(round(cfg.affine_prob * batch))
  if warped:
    keys = jax.random.split(k_affine, warped)
    parts = jax.vmap(_affine, in_axes=(0, 0, 0, 0, None))(keys, images[:warped], labels[:warped], weights[:warped],
                                                         cfg)
    images, labels, weights = (jnp.concatenate([p, a[warped:]]) for p, a in zip(parts, (images, labels, weights)))
  keys = jax.random.split(k_rest, batch)
  return jax.vmap(_flip_and_intensity, in_axes=(0, 0, 0, 0, None))(keys, images, labels, weights, cfg)
