"""Dice with nnU-Net's absent-class rule, and the means built on it."""

import math
import subprocess
import sys

import numpy as np
import pytest

from slicejax.evaluation import metrics


def test_dice_hand_computed():
  truth = np.array([[0, 1, 1, 2], [0, 0, 1, 2]])
  pred = np.array([[0, 1, 0, 2], [0, 1, 1, 0]])
  # class 1: |P&T| = 2, |P| = 3, |T| = 3 -> 4/6; class 2: |P&T| = 1, |P| = 1, |T| = 2 -> 2/3.
  np.testing.assert_allclose(metrics.dice_per_class(pred, truth, 3), [4 / 6, 2 / 3])


def test_absent_class_rule():
  truth = np.array([0, 1, 1, 0])
  # Class 2 absent from both -> undefined.
  np.testing.assert_allclose(metrics.dice_per_class(truth, truth, 3), [1.0, np.nan])
  # Class 2 absent from truth but predicted -> 0.0.
  np.testing.assert_allclose(metrics.dice_per_class(np.array([0, 1, 1, 2]), truth, 3), [1.0, 0.0])
  # Class 1 present in truth, never predicted -> 0.0.
  np.testing.assert_allclose(metrics.dice_per_class(np.zeros(4, int), truth, 3), [0.0, np.nan])


def test_means_leave_undefined_classes_and_volumes_out():
  nan = np.nan
  # Two models, three volumes, two classes. Volume 2 of model 0 has no class at all.
  dice = np.array([[[1.0, nan], [0.5, 0.25], [nan, nan]],
                   [[0.0, 0.0], [1.0, 1.0], [0.5, nan]]])
  out = metrics.summarise(dice)
  np.testing.assert_allclose(out["volume_mean"], [[1.0, 0.375, nan], [0.0, 1.0, 0.5]])
  np.testing.assert_allclose(out["dice_mean"], [(1.0 + 0.375) / 2, 1.5 / 3])
  np.testing.assert_allclose(out["dice_per_class"], [[0.75, 0.25], [0.5, 0.5]])


def test_nan_mean_of_nothing_is_nan_without_warning(recwarn):
  assert math.isnan(float(metrics.nan_mean([nan := float("nan"), nan])))
  assert not recwarn.list


def _sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
  """A ball in physical coordinates: voxel i covers [i, i + 1) x spacing, its centre at (i + 0.5) x spacing."""
  grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
  return (sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2).astype(np.uint8)


def test_surface_metrics_of_concentric_spheres():
  # Every point of either surface is 3 mm from the other: HD95 is 3 mm (within a voxel of staircase), NSD is 0 at a
  # tolerance well under 3 mm and 1 well above.
  inner, outer = _sphere((30, 30, 30), (15, 15, 15), 8), _sphere((30, 30, 30), (15, 15, 15), 11)
  tight = metrics.surface_metrics(outer, inner, 2, (1, 1, 1), 1.0)
  loose = metrics.surface_metrics(outer, inner, 2, (1, 1, 1), 5.0)
  assert abs(tight["hd95"][0] - 3.0) < 0.5
  assert tight["nsd"][0] == 0.0 and loose["nsd"][0] == 1.0
  # The same physical spheres on a grid twice as coarse along D.
  inner, outer = (_sphere((15, 30, 30), (15, 15, 15), r, (2, 1, 1)) for r in (8, 11))
  coarse = metrics.surface_metrics(outer, inner, 2, (2, 1, 1), 1.0)
  assert abs(coarse["hd95"][0] - 3.0) <= 2.0 and coarse["nsd"][0] == 0.0  # within one coarse voxel


def test_surface_metrics_of_shifted_spheres_and_identity():
  a, b = _sphere((30, 30, 36), (15, 15, 15), 10), _sphere((30, 30, 36), (15, 15, 18), 10)
  # No surface point is farther than the 3 mm shift from the other sphere.
  shifted = metrics.surface_metrics(b, a, 2, (1, 1, 1), 1.0)
  assert 2.0 < shifted["hd95"][0] <= 3.0 and 0.0 < shifted["nsd"][0] < 1.0
  same = metrics.surface_metrics(a, a, 2, (1, 1, 1), 1.0)
  assert same["hd95"][0] == 0.0 and same["nsd"][0] == 1.0


def test_surface_metrics_absent_classes():
  truth = np.zeros((4, 5, 6), np.uint8)
  truth[1:3, 1:3, 1:3] = 1
  prediction = np.zeros_like(truth)
  prediction[0, 0, 0] = 2  # class 2 predicted, absent from the truth; class 1 missed
  out = metrics.surface_metrics(prediction, truth, 4, (1.0, 2.0, 0.5), 1.0)
  diagonal = np.sqrt(4.0 ** 2 + 10.0 ** 2 + 3.0 ** 2)
  np.testing.assert_allclose(out["hd95"][:2], [diagonal, diagonal])
  np.testing.assert_array_equal(out["nsd"][:2], [0.0, 0.0])
  assert np.isnan(out["hd95"][2]) and np.isnan(out["nsd"][2])  # class 3 in neither


def test_ignore_label_voxels_are_not_counted():
  truth = np.array([0, 1, 1, 3, 3, 2])  # 3 = the ignore label of K = 3 classes
  prediction = np.array([0, 1, 0, 1, 2, 2])
  np.testing.assert_array_equal(metrics.confusion_counts(prediction, truth, 3),
                                metrics.confusion_counts(prediction[[0, 1, 2, 5]], truth[[0, 1, 2, 5]], 3))


@pytest.mark.slow
def test_training_imports_without_the_surface_library():
  """The training path imports metrics but computes no surface metrics, so a machine without surface-distance (as a
  bare GPU image) can train; only `surface_metrics` needs the library."""
  blocked = ("import sys; sys.modules['surface_distance'] = None; "  # None in sys.modules: any import of it fails
             "from slicejax.evaluation import metrics; from slicejax.training import train; import numpy as np; "
             "print(metrics.dice_per_class(np.array([0, 1]), np.array([0, 1]), 2))\n"
             "try:\n  metrics.surface_metrics(np.ones((2, 2), int), np.ones((2, 2), int), 2, (1.0, 1.0), 1.0)\n"
             "except ImportError as e:\n  print(type(e).__name__, e.name)")
  process = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == 0, process.stderr
  assert process.stdout.splitlines() == ["[1.]", "ModuleNotFoundError surface_distance"]
