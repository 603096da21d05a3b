"""Tests of 3D patch sampling on sparse planes, on a hand-built bank whose image channels are voxel coordinates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.errors import InputError
from slicejax.training.inputs import patches

# V = 3 volumes padded to Dm, Hm, Wm = 6, 8, 7. Real extents (D, H, W) below; volume 1 is shorter than the patch in
# H, volume 2 has exactly the patch's depth.
EXTENTS = [(6, 8, 7), (4, 3, 7), (3, 8, 5)]
PATCH = (3, 4, 4)


def _bank():
  """Images carry (v, d, h, w) as channels so a patch tells where it was cut."""
  shape = (3, 6, 8, 7)
  coords = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
  labels = np.zeros(shape, np.uint8)
  labels[0, 1, 6, 2] = 1
  labels[1, 3, 1, 5] = 2
  return {"images": jnp.asarray(coords), "labels": jnp.asarray(labels), "extents": jnp.asarray(EXTENTS, jnp.int32)}


def _valid():
  """`[V, Dm, Hm, Wm]` 1 inside each volume's extent."""
  valid = np.zeros((3, 6, 8, 7), np.float32)
  for v, (d, h, w) in enumerate(EXTENTS):
    valid[v, :d, :h, :w] = 1
  return valid


def _planes():
  """Volume 0: annotated plane 1, interpolated plane 2 (weight 0.5); volume 1: annotated plane 3; volume 2: none."""
  planes = np.zeros((3, 6), np.float32)
  planes[0, 1] = 1.0
  planes[0, 2] = 0.5
  planes[1, 3] = 1.0
  return jnp.asarray(planes)


@functools.partial(jax.jit, static_argnames=("patch", "batch_size"))
def _sample(key, bank, planes, foreground_prob, patch=PATCH, batch_size=256):
  # One batch size throughout, so the file compiles few programs.
  return patches.sample_patches(key, bank, planes, patch, batch_size, foreground_prob=foreground_prob)


def _starts(images):
  """(v, d, h, w) of each patch's first voxel, `[B, 4]` int."""
  return np.asarray(images[:, 0, 0, 0, :]).astype(int)


@pytest.mark.slow
def test_patches_are_cut_from_the_bank_inside_the_volume():
  bank, planes = _bank(), _planes()
  images, labels, _ = _sample(jax.random.key(0), bank, planes, 0.33)
  assert images.shape == (256, 3, 4, 4, 4) and labels.shape == (256, 3, 4, 4)
  offsets = np.stack(np.meshgrid(*[np.arange(p) for p in PATCH], indexing="ij"), axis=-1)
  for image, label, (v, d, h, w) in zip(np.asarray(images), np.asarray(labels), _starts(images)):
    # Contiguous and unclipped: every voxel is its start plus its offset, in one volume.
    np.testing.assert_array_equal(image[..., 0], v)
    np.testing.assert_array_equal(image[..., 1:], offsets + [d, h, w])
    extent = EXTENTS[v]
    for start, size, end in zip((d, h, w), PATCH, extent):
      assert 0 <= start <= max(end - size, 0)
    np.testing.assert_array_equal(label, np.asarray(bank["labels"])[v, d:d + 3, h:h + 4, w:w + 4])


def test_weights_are_plane_weights_times_valid_and_every_patch_has_a_weighted_plane():
  bank, planes = _bank(), _planes()
  images, _, weights = _sample(jax.random.key(1), bank, planes, 0.33)
  valid, plane_weights = _valid(), np.asarray(planes)
  windows = set()
  for weight, (v, d, h, w) in zip(np.asarray(weights), _starts(images)):
    expected = plane_weights[v, d:d + 3, None, None] * valid[v, d:d + 3, h:h + 4, w:w + 4]
    np.testing.assert_array_equal(weight, expected)
    assert weight.max() > 0
    assert v in (0, 1)
    windows.add((v, d))
  # Volume 0: planes 1 and 2 fit windows starting at 0..2; volume 1 (depth 4): plane 3 only in the window at 1.
  assert windows == {(0, 0), (0, 1), (0, 2), (1, 1)}
  # Exact values appear: 1 on annotated planes, 0.5 on the interpolated one, 0 elsewhere.
  assert set(np.unique(np.asarray(weights))) == {0.0, 0.5, 1.0}


def test_centre_planes_are_drawn_uniformly():
  bank, planes = _bank(), _planes()
  images = np.concatenate([_sample(jax.random.key(k), bank, planes, 0.0)[0] for k in range(100, 112)])
  # Volume 1 holds one of the three weighted planes.
  share = np.mean(_starts(images)[:, 0] == 1)
  assert abs(share - 1 / 3) < 0.03


def test_sampling_is_reproducible_per_key_and_differs_between_keys():
  bank, planes = _bank(), _planes()
  first = _sample(jax.random.key(3), bank, planes, 0.33)
  again = _sample(jax.random.key(3), bank, planes, 0.33)
  other = _sample(jax.random.key(4), bank, planes, 0.33)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(_starts(first[0]), _starts(other[0]))


@pytest.mark.slow
def test_foreground_option_centres_on_foreground():
  # One volume, one annotated plane with a single foreground voxel far from the centre.
  shape = (1, 4, 16, 16)
  labels = np.zeros(shape, np.int32)
  labels[0, 1, 12, 3] = 1
  bank = {"images": jnp.zeros(shape + (1,)), "labels": jnp.asarray(labels), "extents": jnp.asarray([shape[1:]])}
  planes = jnp.zeros((1, 4)).at[0, 1].set(1.0)
  hits = {}
  for prob in (0.0, 0.5, 1.0):
    patch_labels = np.concatenate(
        [_sample(jax.random.key(k), bank, planes, prob, patch=(2, 4, 4))[1] for k in range(200, 204)])
    hits[prob] = np.mean(np.asarray(patch_labels).max(axis=(1, 2, 3)) > 0)
  # Uniform in-plane starts hit the voxel with probability (4 / 13)**2 ~ 0.095.
  assert abs(hits[0.0] - (4 / 13)**2) < 0.03
  assert abs(hits[0.5] - (0.5 + 0.5 * (4 / 13)**2)) < 0.05
  assert hits[1.0] == 1.0


def test_model_without_planes_gets_zero_weights():
  bank = _bank()
  _, _, weights = _sample(jax.random.key(6), bank, jnp.zeros((3, 6)), 0.33)
  np.testing.assert_array_equal(np.asarray(weights), np.zeros((256, 3, 4, 4)))


@pytest.mark.slow
def test_models_sample_independently_under_vmap():
  bank, planes = _bank(), _planes()
  keys = jax.random.split(jax.random.key(7), 2)
  stacked = jnp.stack([planes, jnp.zeros_like(planes)])
  sample = jax.jit(jax.vmap(lambda k, p: patches.sample_patches(k, bank, p, PATCH, 256)))
  images, _, weights = sample(keys, stacked)
  alone = _sample(keys[0], bank, planes, 0.33)
  np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(alone[0]))
  np.testing.assert_array_equal(np.asarray(weights[0]), np.asarray(alone[2]))
  np.testing.assert_array_equal(np.asarray(weights[1]), 0)


def test_rejects_patch_larger_than_bank():
  with pytest.raises(InputError, match="patch"):
    patches.sample_patches(jax.random.key(0), _bank(), _planes(), (7, 4, 4), 2)
