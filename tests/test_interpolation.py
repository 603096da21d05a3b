"""Tests of slicejax.study.interpolation on small hand-built label volumes `[D, H, W]` (slicing axis first)."""

import math
import re

import numpy as np
import pytest

from slicejax.errors import InputError
from slicejax.study import interpolation


def _disks(radii, size=40, centre=19.5):
  """`[len(radii), size, size]` int volume: slice z is the disk of radius radii[z] (0 for none), class 1."""
  yy, xx = np.mgrid[:size, :size]
  dist2 = (yy - centre) ** 2 + (xx - centre) ** 2
  return np.stack([(dist2 <= r * r) & (r > 0) for r in radii]).astype(np.int32)


def _box(shape, rows, cols, value=1):
  """`[H, W]` int slice holding `value` on rows x cols, 0 elsewhere."""
  out = np.zeros(shape, np.int32)
  out[rows, cols] = value
  return out


def test_growing_disk_interpolates_radius_within_one_pixel():
  true_radius = 4.0 + np.arange(11)  # Radius 4 on slice 0 to 14 on slice 10, linear in between.
  label = _disks(true_radius)
  filled, known = interpolation.interpolate(label, [0, 10], 2)
  assert known.all()
  radius = np.sqrt(filled.sum(axis=(1, 2)) / math.pi)
  assert np.all(np.abs(radius - true_radius) <= 1.0), radius
  assert np.all(np.diff(radius) > 0)


def test_scaling_the_spacing_changes_nothing():
  label = _disks(4.0 + np.arange(11))
  plain, _ = interpolation.interpolate(label, [0, 10], 2)
  scaled, _ = interpolation.interpolate(label, [0, 10], 2, spacing=(2.5, 2.5))
  np.testing.assert_array_equal(plain, scaled)


def test_annotated_slices_are_unchanged_and_nothing_is_extrapolated():
  rng = np.random.default_rng(0)
  annotated = [2, 5, 9]
  # Rows that are not annotated hold an invalid class: they must never be read.
  label = np.full((12, 8, 9), 7, np.int32)
  label[annotated] = rng.integers(0, 3, size=(3, 8, 9))
  filled, known = interpolation.interpolate(label, annotated, 3)
  assert filled.dtype == np.int32
  np.testing.assert_array_equal(filled[annotated], label[annotated])
  np.testing.assert_array_equal(known, (np.arange(12) >= 2) & (np.arange(12) <= 9))
  np.testing.assert_array_equal(filled[~known], 0)
  assert filled[known].min() >= 0 and filled[known].max() <= 2


def test_a_single_annotated_slice_is_the_only_known_slice():
  label = _disks([3.0] * 7)
  filled, known = interpolation.interpolate(label, [4], 2)
  np.testing.assert_array_equal(known, np.arange(7) == 4)
  np.testing.assert_array_equal(filled[4], label[4])
  np.testing.assert_array_equal(filled[np.arange(7) != 4], 0)


def test_an_empty_plan_makes_nothing_known():
  filled, known = interpolation.interpolate(_disks([3.0] * 5), np.zeros(0, np.int64), 2)
  assert not known.any() and not filled.any() and filled.shape == (5, 40, 40)


def test_adjacent_annotated_slices_are_copied():
  label = _disks([3.0, 5.0, 2.0, 6.0])
  filled, known = interpolation.interpolate(label, [1, 2], 2)
  np.testing.assert_array_equal(known, [False, True, True, False])
  np.testing.assert_array_equal(filled[1:3], label[1:3])


@pytest.mark.parametrize("present_first", [True, False])
def test_a_class_present_on_one_side_only_vanishes_at_the_midpoint(present_first):
  label = _disks([6.0] + [0.0] * 10)
  annotated = [0, 10]
  if not present_first:
    label = label[::-1].copy()
  filled, _ = interpolation.interpolate(label, annotated, 2)
  area = filled.sum(axis=(1, 2))
  disk = label.max(axis=0).astype(bool)
  # Counted from the side where it is present: non-empty for t < 1/2, empty from t = 1/2 on, never outside the disk.
  from_present = area if present_first else area[::-1]
  assert np.all(from_present[1:5] > 0) and np.all(from_present[5:10] == 0), from_present
  assert np.all(np.diff(from_present[:6]) <= 0)
  assert not np.any(filled[:, ~disk])


@pytest.mark.parametrize("align_centroids", [False, True])
def test_swapping_blobs_leave_no_empty_slice_and_no_spill(align_centroids):
  shape = (12, 30)
  first = _box(shape, slice(3, 9), slice(2, 8), 1) + _box(shape, slice(3, 9), slice(22, 28), 2)
  last = _box(shape, slice(3, 9), slice(2, 8), 2) + _box(shape, slice(3, 9), slice(22, 28), 1)
  label = np.zeros((9,) + shape, np.int32)
  label[0], label[8] = first, last
  filled, _ = interpolation.interpolate(label, [0, 8], 3, align_centroids=align_centroids)
  for z in range(1, 8):
    for k in (1, 2):
      mask = filled[z] == k
      assert mask.any(), (z, k)
      assert not np.any(mask & ~((first == k) | (last == k))), (z, k)
  # The classes cross (aligned) or vanish (plain) in the middle: the nearest annotated slice is copied instead.
  np.testing.assert_array_equal(filled[1:5], np.broadcast_to(first, (4,) + shape))
  np.testing.assert_array_equal(filled[5:8], np.broadcast_to(last, (3,) + shape))


def test_a_blob_moving_beyond_its_width_never_vanishes():
  shape = (20, 40)
  label = np.stack([_box(shape, slice(6, 12), slice(3 + 2 * z, 9 + 2 * z)) for z in range(11)])
  plain, _ = interpolation.interpolate(label, [0, 10], 2)
  hull = label[0].astype(bool) | label[10].astype(bool)
  for z in range(1, 10):
    assert plain[z].sum() == 36 and not np.any(plain[z][~hull]), z
  # With centroid alignment the translation is reproduced exactly.
  aligned, _ = interpolation.interpolate(label, [0, 10], 2, align_centroids=True)
  np.testing.assert_array_equal(aligned, label)


def test_adjacent_classes_keep_their_shared_boundary():
  label = _disks(4.0 + np.arange(11))
  left = np.arange(40) < 20
  label = np.where(label > 0, np.where(left, 1, 2), 0).astype(np.int32)  # Left half class 1, right half class 2.
  filled, _ = interpolation.interpolate(label, [0, 10], 3)
  union, _ = interpolation.interpolate((label > 0).astype(np.int32), [0, 10], 2)
  # The two classes together fill exactly the interpolation of their union: no gap opens between them.
  np.testing.assert_array_equal(filled > 0, union > 0)
  for z in range(1, 10):
    assert not np.any(filled[z][:, ~left] == 1) and not np.any(filled[z][:, left] == 2), z
    both = (union[z][:, 19] > 0) & (union[z][:, 20] > 0)
    np.testing.assert_array_equal(filled[z][both, 19], 1)
    np.testing.assert_array_equal(filled[z][both, 20], 2)
    assert both.sum() >= 10


def test_interpolation_dice_on_a_hand_built_case():
  label = np.zeros((4, 4, 4), np.int32)
  filled = np.zeros_like(label)
  # Interpolated slices are 1 and 2 (annotated 0 and 3). Class 1: truth 4 voxels, prediction 4, overlap 2.
  label[1, 0, :] = 1
  filled[1, 0, :2] = 1
  filled[2, 3, :2] = 1
  # Class 2: absent from truth and prediction on the interpolated slices; a mismatch on an annotated slice is ignored.
  filled[0, 2, 2] = 2
  dice = interpolation.pooled_interpolation_dice([label], [filled], [[0, 3]], 3)
  assert dice["dice_per_class"][0] == 0.5 and math.isnan(dice["dice_per_class"][1])
  assert (dice["dice_mean"], dice["num_slices"]) == (0.5, 2)


def test_interpolation_dice_absent_from_truth_only_scores_zero():
  label = np.zeros((3, 2, 2), np.int32)
  filled = np.zeros_like(label)
  filled[1, 0, 0] = 2
  dice = interpolation.pooled_interpolation_dice([label], [filled], [[0, 2]], 3)
  assert math.isnan(dice["dice_per_class"][0]) and dice["dice_per_class"][1] == 0.0
  assert (dice["dice_mean"], dice["num_slices"]) == (0.0, 1)


def test_pooled_dice_sums_counts_over_volumes():
  first_label = np.zeros((3, 2, 4), np.int32)
  first_filled = np.zeros_like(first_label)
  first_label[1, 0, :] = 1  # Class 1: truth 4, prediction 4, overlap 2.
  first_filled[1, 0, :2] = 1
  first_filled[1, 1, :2] = 1
  second_label = np.zeros((5, 2, 2), np.int32)
  second_filled = np.zeros_like(second_label)
  second_label[2, 0, :] = 1  # Class 1: truth 2, prediction 2, overlap 2 (Dice 1 alone).
  second_filled[2, 0, :] = 1
  second_label[3, 1, 1] = 2  # Class 2: truth 1, prediction 0.
  pooled = interpolation.pooled_interpolation_dice(
      [first_label, second_label], [first_filled, second_filled], [[0, 2], [1, 4]], 3)
  # Class 1: 2 * (2 + 2) / (8 + 4); class 2: 0 / 1.
  assert pooled["dice_per_class"] == pytest.approx([2 / 3, 0.0], abs=1e-12)
  assert pooled["dice_mean"] == pytest.approx(1 / 3, abs=1e-12)
  assert pooled["num_slices"] == 3


def test_dice_without_interpolated_slices_is_undefined():
  label = np.ones((4, 2, 2), np.int32)
  dice = interpolation.pooled_interpolation_dice([label], [label], [[1]], 2)
  assert dice["num_slices"] == 0 and math.isnan(dice["dice_mean"]) and math.isnan(dice["dice_per_class"][0])


@pytest.mark.parametrize("label, annotated, num_classes, problem", [
    (np.zeros((4, 3)), [0, 2], 2, "label must be [D, H, W]"),
    (np.zeros((4, 3, 3), np.float32), [0, 2], 2, "must hold integers"),
    (np.zeros((4, 3, 3), np.int32), [2, 0], 2, "sorted and distinct"),
    (np.zeros((4, 3, 3), np.int32), [1, 1], 2, "sorted and distinct"),
    (np.zeros((4, 3, 3), np.int32), [0, 4], 2, "out of range"),
    (np.zeros((4, 3, 3), np.int32), [0, 2], 1, "num_classes"),
    (np.full((4, 3, 3), 3, np.int32), [0, 2], 3, "annotated labels must lie in [0, 3)"),
])
def test_bad_input_raises_input_error(label, annotated, num_classes, problem):
  with pytest.raises(InputError, match=re.escape(problem)):
    interpolation.interpolate(label, annotated, num_classes)
