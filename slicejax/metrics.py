"""Dense evaluation metrics.

Dice per foreground class of one volume, with a fixed rule for classes that are absent:
- absent from both truth and prediction: Dice 1.0 (nothing to find, nothing wrongly found);
- absent from the truth but predicted: Dice 0.0 (every predicted voxel is a false positive);
- present in the truth and absent from the prediction: Dice 0.0 by the formula.
A volume's `dice_mean` is the mean over foreground classes; a study cell's figure is the mean over test volumes.
"""

import numpy as np


def confusion_counts(prediction, truth, num_classes):
  """Per-class (intersection, predicted, true) voxel counts.

  Args:
    prediction: `[...]` integer labels.
    truth: `[...]` integer labels, same shape.
    num_classes: K, background included.

  Returns:
    `[K, 3]` int64 array of (|P & T|, |P|, |T|) per class.
  """
  prediction = np.asarray(prediction).ravel().astype(np.int64)
  truth = np.asarray(truth).ravel().astype(np.int64)
  if prediction.shape != truth.shape:
    raise ValueError(f"prediction and truth differ in size: {prediction.shape} vs {truth.shape}")
  joint = np.bincount(prediction * num_classes + truth, minlength=num_classes * num_classes)
  joint = joint.reshape(num_classes, num_classes)
  return np.stack([np.diag(joint), joint.sum(axis=1), joint.sum(axis=0)], axis=1)


def dice_from_counts(counts):
  """Dice per foreground class from `[K, 3]` counts, with the absent-class rule of this module; returns `[K - 1]`."""
  intersection, predicted, true = counts[1:, 0], counts[1:, 1], counts[1:, 2]
  denominator = predicted + true
  return np.where(denominator == 0, 1.0, 2.0 * intersection / np.maximum(denominator, 1))


def dice_per_class(prediction, truth, num_classes):
  """Dice per foreground class of one volume, `[K - 1]` float64."""
  return dice_from_counts(confusion_counts(prediction, truth, num_classes))
