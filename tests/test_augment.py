"""Augmentation: identities where the transforms are switched off, exact flips, geometry moves labels and weights."""

import jax
import jax.numpy as jnp
import numpy as np

from slicejax import augment


def _batch():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(4, 6, 8, 2)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(4, 6, 8)), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 2, size=(4, 6, 8)), jnp.float32)
  return images, labels, weights


def _cfg(**kw):
  cfg = augment.default_config()
  cfg.update(flip_prob=0.0, affine_prob=0.0, intensity_scale=0.0, intensity_shift=0.0)
  cfg.update(**kw)
  return cfg


def test_all_off_is_identity():
  batch = _batch()
  out = augment.augment_batch(jax.random.key(0), *batch, _cfg())
  for a, b in zip(out, batch):
    np.testing.assert_array_equal(a, b)


def test_flip_always_flips_both_plane_axes():
  images, labels, weights = _batch()
  out = augment.augment_batch(jax.random.key(1), images, labels, weights, _cfg(flip_prob=1.0))
  np.testing.assert_array_equal(out[0], images[:, ::-1, ::-1])
  np.testing.assert_array_equal(out[1], labels[:, ::-1, ::-1])
  np.testing.assert_array_equal(out[2], weights[:, ::-1, ::-1])


def test_identity_affine_and_intensity_range():
  images, labels, weights = _batch()
  cfg = _cfg(affine_prob=1.0, rotate_degrees=0.0, scale_range=(1.0, 1.0))
  out = augment.augment_batch(jax.random.key(2), images, labels, weights, cfg)
  np.testing.assert_allclose(out[0], images, atol=1e-5)
  np.testing.assert_array_equal(out[1], labels)
  np.testing.assert_array_equal(out[2], weights)
  out = augment.augment_batch(jax.random.key(3), images, labels, weights, _cfg(intensity_scale=0.1))
  ratio = np.asarray(out[0] / images).reshape(4, -1)
  np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-5)
  assert np.all((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6))


def test_quarter_turn_moves_labels_with_image_and_zeroes_outside():
  labels = jnp.zeros((1, 5, 5), jnp.int32).at[0, 0, 2].set(1)
  images = labels[..., None].astype(jnp.float32)
  weights = jnp.ones((1, 5, 5))
  cfg = _cfg(affine_prob=1.0, rotate_degrees=90.0, scale_range=(1.0, 1.0))
  # Whatever angle the key draws, the label moves with the image (linear vs nearest interpolation agree on a
  # single bright pixel thresholded at one half).
  out_images, out_labels, out_weights = augment.augment_batch(jax.random.key(5), images, labels, weights, cfg)
  np.testing.assert_array_equal(np.asarray(out_images[..., 0] > 0.5), np.asarray(out_labels == 1))
  # A 2x zoom-in samples the corners from outside the square: they lose their weight, the centre keeps it.
  cfg = _cfg(affine_prob=1.0, rotate_degrees=0.0, scale_range=(2.0, 2.0))
  _, _, zoomed = augment.augment_batch(jax.random.key(5), images, labels, weights, cfg)
  np.testing.assert_array_equal(zoomed[0], jnp.ones((5, 5)))
  cfg = _cfg(affine_prob=1.0, rotate_degrees=0.0, scale_range=(0.5, 0.5))
  _, _, shrunk = augment.augment_batch(jax.random.key(5), images, labels, weights, cfg)
  assert shrunk[0, 2, 2] == 1.0 and shrunk[0, 0, 0] == 0.0 and shrunk[0, 4, 4] == 0.0
