"""Dice with nnU-Net's absent-class rule, and the means built on it."""

import math

import numpy as np

from slicejax import metrics


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
