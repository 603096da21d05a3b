"""Augmentation: identities where the transforms are switched off, exact flips, geometry moves labels and weights,
3D patches are never resampled across planes, and the affine warp is a per-example Bernoulli draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.training.inputs import augment


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


def _over_keys(cfg, images, labels, weights, draws, seed):
  """Augments the same batch under `draws` keys: `(images, labels, weights)`, each `[draws, B, ...]`."""
  run = jax.jit(jax.vmap(lambda k: augment.augment_batch(k, images, labels, weights, cfg)))
  return run(jax.random.split(jax.random.key(seed), draws))


@pytest.mark.slow
def test_all_off_is_identity():
  batch = _batch()
  out = augment.augment_batch(jax.random.key(0), *batch, _cfg())
  for a, b in zip(out, batch):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_flip_after_zoom_flips_the_zoomed_slice():
  # A 2x zoom-out of a 5x5 slice keeps the centre 3x3 (weight 1) and a flip of both axes mirrors it: the bright
  # off-centre pixel at (1, 1) reads input (0, 0) unflipped and must appear at (3, 3) once flipped.
  images = jnp.zeros((1, 5, 5, 1)).at[0, 0, 0, 0].set(1.0)
  labels = jnp.zeros((1, 5, 5), jnp.int32).at[0, 0, 0].set(1)
  weights = jnp.ones((1, 5, 5))
  zoom = dict(affine_prob=1.0, rotate_degrees=0.0, scale_range=(0.5, 0.5))
  plain = augment.augment_batch(jax.random.key(6), images, labels, weights, _cfg(**zoom))
  flipped = augment.augment_batch(jax.random.key(6), images, labels, weights, _cfg(**zoom, flip_prob=1.0))
  assert plain[0][0, 1, 1, 0] == 1.0 and plain[1][0, 1, 1] == 1
  for a, b in zip(flipped, plain):
    np.testing.assert_array_equal(a, b[:, ::-1, ::-1])


@pytest.mark.slow
def test_3d_patch_is_warped_plane_by_plane_like_2d_slices():
  images, labels, weights = _batch()
  cfg = _cfg(affine_prob=1.0, rotate_degrees=0.0, scale_range=(0.75, 0.75))
  slices = augment.augment_batch(jax.random.key(8), images, labels, weights, cfg)
  patch = augment.augment_batch(jax.random.key(8), images[None], labels[None], weights[None], cfg)
  assert (slices[2] == 0).any() and (slices[2] == 1).any()
  np.testing.assert_allclose(patch[0][0], slices[0], atol=1e-6)
  np.testing.assert_array_equal(patch[1][0], slices[1])
  np.testing.assert_array_equal(patch[2][0], slices[2])


@pytest.mark.slow
def test_3d_augmentation_never_moves_planes():
  # Patches `[4, 16, 24, 24, 1]` whose image and label are the plane index d.
  depth = jnp.broadcast_to(jnp.arange(16)[:, None, None], (4, 16, 24, 24))
  images, labels, weights = depth[..., None].astype(jnp.float32), depth.astype(jnp.int32), jnp.ones(depth.shape)
  expected = np.broadcast_to(np.arange(16)[:, None, None], (16, 4, 16, 24, 24))  # [draws, B, D, H, W]
  strong = _cfg(affine_prob=1.0, flip_prob=0.5, rotate_degrees=45.0, scale_range=(0.5, 2.0))
  for cfg in (strong, augment.default_config()):
    out_images, out_labels, out_weights = _over_keys(cfg, images, labels, weights, draws=16, seed=9)
    np.testing.assert_array_equal(out_labels, expected)
    # The intensity transform is affine per example: planes 0 and 1 give it back, and the image is d everywhere.
    x = np.asarray(out_images[..., 0], np.float64)
    np.testing.assert_allclose((x - x[:, :, :1]) / (x[:, :, 1:2] - x[:, :, :1]), expected, atol=1e-4)
    # All planes of a patch share one in-plane map, so they lose weight (outside the array) at the same pixels.
    np.testing.assert_array_equal(out_weights, np.broadcast_to(out_weights[:, :, :1], out_weights.shape))
    assert (out_weights == 0).any()


def _warped(cfg, batch, draws, seed):
  """`[draws, batch]` bool: which examples of a random batch of 8x8 slices the augmentation changed."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(batch, 8, 8, 1)), jnp.float32)
  out_images, _, _ = _over_keys(cfg, images, jnp.zeros((batch, 8, 8), jnp.int32), jnp.ones((batch, 8, 8)), draws,
                                seed)
  return np.asarray(jnp.any(out_images != images, axis=(2, 3, 4)))


@pytest.mark.slow
def test_affine_prob_is_a_per_example_bernoulli_draw():
  # Flips and intensity are off, so an example changes exactly when it is warped. 4096 examples at each batch size:
  # the realised fraction is within 4 binomial standard deviations (0.029) of p, also at batch 1 and 2.
  for batch in (1, 2, 32):
    warped = _warped(_cfg(affine_prob=0.3), batch, 4096 // batch, seed=batch)
    assert abs(warped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4096)
  # The number warped varies between batches of 32 like a binomial count (variance 32 * 0.3 * 0.7 = 6.72; 4 and 10
  # are about 3 standard deviations of the variance of 128 batches away), not a fixed share of the batch.
  assert 4.0 < warped.sum(axis=1).var() < 10.0
  assert not _warped(_cfg(affine_prob=0.0), 32, 16, seed=0).any()
  assert _warped(_cfg(affine_prob=1.0), 32, 16, seed=0).all()
