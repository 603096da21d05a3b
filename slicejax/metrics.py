"""Dense evaluation metrics, with the one absent-class rule of slicejax.

Dice per foreground class follows nnU-Net's evaluation:
- absent from both truth and prediction: undefined (NaN), left out of every mean (nothing to find, nothing found);
- absent from the truth but predicted: Dice 0.0 (every predicted voxel is a false positive);
- present in the truth and absent from the prediction: Dice 0.0 by the formula.
A volume's Dice is the mean over its defined classes (NaN when no foreground class occurs in truth or prediction);
a model's `dice_mean` is the mean over test volumes of the defined volume means, its `dice_per_class` the mean of each
class over the volumes where it is defined. Interpolation quality (`slicejax.interpolation`) pools counts over
slices with the same rule.
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
  """Dice per foreground class from `[..., K, 3]` counts; `[..., K - 1]`, NaN where a class is absent from both."""
  counts = np.asarray(counts)
  intersection, predicted, true = counts[..., 1:, 0], counts[..., 1:, 1], counts[..., 1:, 2]
  denominator = predicted + true
  return np.where(denominator == 0, np.nan, 2.0 * intersection / np.maximum(denominator, 1))


def dice_per_class(prediction, truth, num_classes):
  """Dice per foreground class of one volume, `[K - 1]` float64 (NaN: absent from both)."""
  return dice_from_counts(confusion_counts(prediction, truth, num_classes))


def nan_mean(values, axis=None):
  """Mean over the defined (non-NaN) entries along `axis`; NaN where none is defined, without a warning."""
  values = np.asarray(values, np.float64)
  defined = ~np.isnan(values)
  total = np.where(defined, values, 0.0).sum(axis=axis)
  count = defined.sum(axis=axis)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarise(dice):
  """Means of per-volume Dice `[..., V, K - 1]`.

  Returns:
    dict of `volume_mean [..., V]` (mean over defined classes), `dice_mean [...]` (mean over volumes of the defined
    volume means) and `dice_per_class [..., K - 1]` (mean over the volumes where the class is defined).
  """
  volume_mean = nan_mean(dice, axis=-1)
  return {"volume_mean": volume_mean, "dice_mean": nan_mean(volume_mean, axis=-1),
          "dice_per_class": nan_mean(dice, axis=-2)}
