"""Dice with the absent-class rule."""

import numpy as np

from slicejax import metrics


def test_dice_hand_computed():
  truth = np.array([[0, 1, 1, 2], [0, 0, 1, 2]])
  pred = np.array([[0, 1, 0, 2], [0, 1, 1, 0]])
  # class 1: |P&T| = 2, |P| = 3, |T| = 3 -> 4/6; class 2: |P&T| = 1, |P| = 1, |T| = 2 -> 2/3.
  np.testing.assert_allclose(metrics.dice_per_class(pred, truth, 3), [4 / 6, 2 / 3])


def test_absent_class_rule():
  truth = np.array([0, 1, 1, 0])
  # Class 2 absent from both -> 1.0.
  np.testing.assert_allclose(metrics.dice_per_class(truth, truth, 3), [1.0, 1.0])
  # Class 2 absent from truth but predicted -> 0.0.
  np.testing.assert_allclose(metrics.dice_per_class(np.array([0, 1, 1, 2]), truth, 3), [1.0, 0.0])
  # Class 1 present in truth, never predicted -> 0.0.
  np.testing.assert_allclose(metrics.dice_per_class(np.zeros(4, int), truth, 3), [0.0, 1.0])
