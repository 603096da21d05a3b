"""Tests of sliding-window inference: window layout, Gaussian weights, the blend and shape buckets, pinned by hand."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.errors import InputError
from slicejax.evaluation import sliding_window
from slicejax.model import unet


def test_window_starts_hand_computed():
  assert sliding_window.window_starts(8, 8, 0.5) == [0]
  assert sliding_window.window_starts(10, 4, 0.5) == [0, 2, 4, 6]
  # span 7 at most 2 apart: 4 intervals of 1.75, rounded.
  assert sliding_window.window_starts(11, 4, 0.5) == [0, 2, 4, 5, 7]
  assert sliding_window.window_starts(5, 3, 0.5) == [0, 1, 2]
  assert sliding_window.window_starts(9, 3, 0.0) == [0, 3, 6]
  assert sliding_window.window_starts(10, 3, 0.0) == [0, 2, 5, 7]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_window_starts_cover_every_voxel_with_bounded_step(overlap):
  for patch, size in itertools.product(range(1, 9), range(1, 30)):
    if size < patch:
      continue
    starts = sliding_window.window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    steps = np.diff(starts)
    assert np.all(steps >= 1)
    assert np.all(steps <= max(1, np.floor(patch * (1 - overlap))))
    covered = np.zeros(size, bool)
    for s in starts:
      covered[s:s + patch] = True
    assert covered.all()


def test_window_starts_rejects_bad_input():
  with pytest.raises(InputError, match="pad the volume"):
    sliding_window.window_starts(3, 4, 0.5)
  with pytest.raises(InputError, match="overlap"):
    sliding_window.window_starts(8, 4, 1.0)


def test_gaussian_weights_values_and_symmetry():
  weights = sliding_window.gaussian_weights((3, 4, 5))
  assert weights.shape == (3, 4, 5) and weights.dtype == np.float32
  np.testing.assert_array_equal(weights, weights[::-1])
  np.testing.assert_array_equal(weights, weights[:, ::-1])
  np.testing.assert_array_equal(weights, weights[:, :, ::-1])
  assert np.all(weights > 0)
  # Odd sizes peak at exactly 1 in the middle; sigma = 3 * 0.125 along D.
  line = sliding_window.gaussian_weights((3,))
  np.testing.assert_allclose(line, [np.exp(-0.5 / 0.375**2), 1.0, np.exp(-0.5 / 0.375**2)], rtol=1e-6)
  # Even sizes: the two middle voxels share the maximum, 1.
  np.testing.assert_array_equal(sliding_window.gaussian_weights((4,))[1:3], [1.0, 1.0])
  assert weights.max() == 1.0
  # Far corners underflow towards 0 and are held at the floor.
  assert sliding_window.gaussian_weights((64, 64, 64))[0, 0, 0] == np.float32(1e-6)


def _linear_predict(num_models=2, channels=2, num_classes=3, seed=0):
  """A fixed random linear map per voxel, per model: windows [b, ..., C] -> [M, b, ..., K]."""
  matrix = jnp.asarray(np.random.default_rng(seed).normal(size=(num_models, channels, num_classes)), jnp.float32)
  return lambda windows: jnp.einsum("bdhwc,mck->mbdhwk", windows, matrix)


def test_single_window_equals_one_forward_pass():
  image = np.random.default_rng(1).normal(size=(3, 5, 4, 2)).astype(np.float32)
  predict = _linear_predict()
  out = sliding_window.sliding_window_logits(predict, image, (3, 5, 4), batch_size=3)
  assert out.shape == (2, 3, 5, 4, 3) and out.dtype == jnp.float32
  # The one window is padded with two copies to batch_size 3; its own output is returned unchanged.
  expected = predict(jnp.asarray(np.stack([image] * 3)))[:, 0]
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.slow
def test_single_window_equals_unet_forward_pass():
  model = unet.UNet(num_classes=2, dims=3, features=4, num_stages=2)
  image = np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype(np.float32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 1)))
  predict = jax.jit(lambda windows: model.apply(params, windows)[None])
  out = sliding_window.sliding_window_logits(predict, image, (4, 8, 8), batch_size=1)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(predict(jnp.asarray(image[None]))[:, 0]))


def test_overlapping_windows_blend_by_hand():
  # D = 5, patch 3 along D with overlap 0.5: windows start at d = 0, 1, 2. The patch covers H and W whole, so only
  # the Gaussian along D matters: weights (a, 1, a) with a = exp(-1 / (2 * 0.375**2)).
  image = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None, None], (5, 2, 2, 1))
  # Each window's logits are constant: 10 * its start for model 0 and -start for model 1.
  predict = lambda w: jnp.stack([10 * w[:, :1, :1, :1, :] * jnp.ones_like(w), -w[:, :1, :1, :1, :] * jnp.ones_like(w)])
  out = np.asarray(sliding_window.sliding_window_logits(predict, image, (3, 2, 2), overlap=0.5, batch_size=2))
  a = np.exp(-1 / (2 * 0.375**2))
  per_plane = np.array([0., 10 * a / (1 + a), (10 + 20 * a) / (1 + 2 * a), (10 * a + 20) / (1 + a), 20.])
  expected = np.stack([per_plane, -per_plane / 10])[:, :, None, None, None] * np.ones((1, 1, 2, 2, 1))
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def _reference_blend(predict_one, image, patch, overlap):
  """Straightforward numpy blend, one window at a time."""
  gaussian = sliding_window.gaussian_weights(patch).astype(np.float64)
  total, norm = None, np.zeros(image.shape[:3])
  per_axis = [sliding_window.window_starts(s, p, overlap) for s, p in zip(image.shape[:3], patch)]
  for d, h, w in itertools.product(*per_axis):
    where = (slice(d, d + patch[0]), slice(h, h + patch[1]), slice(w, w + patch[2]))
    logits = np.asarray(predict_one(image[where]), np.float64)
    if total is None:
      total = np.zeros((logits.shape[0],) + image.shape[:3] + logits.shape[-1:])
    total[(slice(None),) + where] += gaussian[None, ..., None] * logits
    norm[where] += gaussian
  return total / norm[None, ..., None]


@pytest.mark.slow
def test_unet_overlapping_windows_match_reference_blend():
  model = unet.UNet(num_classes=2, dims=3, features=4, num_stages=2)
  image = np.random.default_rng(3).normal(size=(6, 9, 8, 1)).astype(np.float32)
  patch = (4, 4, 8)
  params = model.init(jax.random.key(1), jnp.zeros((1,) + patch + (1,)))
  predict = jax.jit(lambda windows: model.apply(params, windows)[None])
  # Starts (0, 2) x (0, 2, 3, 5) x (0,): 8 windows, in batches of 3 with the last padded by one copy.
  out = sliding_window.sliding_window_logits(predict, image, patch, overlap=0.5, batch_size=3)
  expected = _reference_blend(lambda window: predict(jnp.asarray(window[None]))[:, 0], image, patch, 0.5)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_rejects_image_smaller_than_patch():
  with pytest.raises(InputError, match="pad the volume"):
    sliding_window.sliding_window_logits(_linear_predict(), np.zeros((2, 4, 4, 2), np.float32), (3, 4, 4))


def test_bucket_size_hand_computed():
  # At most three significant bits: 4, 5, 6 or 7 times a power of two, never more than 25% above the size.
  assert [sliding_window.bucket_size(n) for n in (1, 5, 7, 8, 9, 10, 11, 17, 33, 64, 65, 130)] == [
      1, 5, 7, 8, 10, 10, 12, 20, 40, 64, 80, 160]
  for n in range(1, 600):
    bucket = sliding_window.bucket_size(n)
    assert n <= bucket < 1.25 * n
  assert sliding_window.bucket_shape((9, 10, 33)) == (10, 10, 40)


@pytest.mark.slow
def test_extent_in_a_padded_image_blends_as_the_image_alone_and_compiles_once():
  image = np.random.default_rng(4).normal(size=(8, 8, 8, 2)).astype(np.float32)
  predict = _linear_predict()
  programs = (sliding_window._cut_windows, sliding_window._add_gaussians, sliding_window._accumulate)
  extents = [(5, 6, 7), (8, 4, 4), (4, 8, 5)]
  padded = {}
  for extent in extents:
    # Zeros beyond the extent, as a volume padded to a bucket has.
    padded[extent] = np.zeros_like(image)
    padded[extent][:extent[0], :extent[1], :extent[2]] = image[:extent[0], :extent[1], :extent[2]]
  before = [f._cache_size() for f in programs]
  outs = [np.asarray(sliding_window.sliding_window_logits(predict, padded[e], (4, 4, 4), extent=e, batch_size=3))
          for e in extents]
  # Three extents in one 8^3 image: each program compiles at most once.
  assert all(f._cache_size() - b <= 1 for f, b in zip(programs, before))
  for extent, out in zip(extents, outs):
    inside = tuple(slice(0, n) for n in extent)
    alone = sliding_window.sliding_window_logits(predict, padded[extent][inside], (4, 4, 4), batch_size=3)
    np.testing.assert_array_equal(out[(slice(None),) + inside], np.asarray(alone))
    outside = np.ones(image.shape[:3], bool)
    outside[inside] = False
    assert not np.any(out[:, outside])
  with pytest.raises(InputError, match="extent"):
    sliding_window.sliding_window_logits(predict, image, (4, 4, 4), extent=(9, 8, 8))
