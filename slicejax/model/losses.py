"""Masked segmentation losses for sparsely annotated volumes.

Every loss takes a per-voxel weight that is 0 where nothing is annotated (and on padding) and returns a pair
`(sum, normalizer)`; the caller divides last with `divide`, which maps 0 / 0 to 0. Nothing branches on data, so an
example or a whole batch without annotated voxels gives exactly zero loss and zero gradient instead of a NaN, and
voxels with weight 0 never receive gradient.

Labels outside `[0, K)` are voxels nobody annotated: a dataset's ignore label (nnU-Net v2's "ignore", the value K
above every class, `slicejax.data`). `segmentation_loss` gives them weight 0, so they never reach the loss or its
gradient, whatever their slice's weight; labels of real classes are unaffected.

Logits and weights are cast to float32 first, so softmax, log-softmax and every sum run in float32 whatever dtype the
model computes in (`slicejax.training.precision`); gradients flow back through the cast in the logits' own dtype.
"""

import jax
import jax.numpy as jnp


def divide(total, normalizer):
  """`total / normalizer`, and 0 where the normalizer is 0."""
  return total / jnp.maximum(normalizer, 1e-12) * (normalizer > 0)


def _float32(logits, weights):
  """`(logits, weights)` in float32: a bfloat16 softmax or sum over a batch's voxels keeps only 8 significant bits."""
  return logits.astype(jnp.float32), weights.astype(jnp.float32)


def _only_weighted(logits, weights):
  # Logits of unweighted voxels are replaced by zeros, so even a non-finite value there cannot reach the loss or
  # its gradient (a product with a zero weight would still turn NaN into NaN).
  return jnp.where(weights[..., None] > 0, logits, 0.0)


def masked_cross_entropy(logits, labels, weights):
  """Weighted cross-entropy summed over voxels.

  Args:
    logits: `[..., K]` unnormalised class scores.
    labels: `[...]` integer labels in [0, K).
    weights: `[...]` non-negative voxel weights (0 = not annotated).

  Returns:
    `(sum of weight * CE, sum of weights)`, both float32 scalars.
  """
  logits, weights = _float32(logits, weights)
  log_probs = jax.nn.log_softmax(_only_weighted(logits, weights), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(picked * weights), jnp.sum(weights)


def masked_soft_dice(logits, labels, weights, *, smooth=1e-5):
  """Soft Dice loss over the foreground classes, computed on the weighted voxels of the whole batch.

  For each foreground class k: `1 - (2 sum(w p_k y_k) + smooth) / (sum(w p_k) + sum(w y_k) + smooth)`, where `p` are
  softmax probabilities and `y` the one-hot labels. A class counts only where the batch has annotated voxels, so an
  unannotated batch contributes nothing.

  Args:
    logits: `[..., K]`.
    labels: `[...]` integer labels.
    weights: `[...]` voxel weights.
    smooth: additive smoothing of numerator and denominator.

  Returns:
    `(sum over foreground classes of the Dice loss, number of foreground classes counted)`, float32 scalars.
  """
  logits, weights = _float32(logits, weights)
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(_only_weighted(logits, weights), axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
  w = weights[..., None]
  axes = tuple(range(logits.ndim - 1))
  intersection = jnp.sum(w * probs * onehot, axis=axes)[1:]
  predicted = jnp.sum(w * probs, axis=axes)[1:]
  target = jnp.sum(w * onehot, axis=axes)[1:]
  dice = (2.0 * intersection + smooth) / (predicted + target + smooth)
  counted = (jnp.sum(weights) > 0).astype(probs.dtype)
  return jnp.sum(1.0 - dice) * counted, (num_classes - 1) * counted


def without_ignored(labels, weights, num_classes: int):
  """`(labels, weights)` with every voxel whose label is outside `[0, num_classes)` (the ignore label) set to label 0
  and weight 0."""
  annotated = (labels >= 0) & (labels < num_classes)
  return jnp.where(annotated, labels, 0), jnp.where(annotated, weights, 0)


def segmentation_loss(logits, labels, weights, *, ce_weight=1.0, dice_weight=1.0):
  """Cross-entropy plus soft Dice on the weighted voxels; shapes as in `masked_cross_entropy`. Voxels of the ignore
  label (labels >= K) weigh 0 (`without_ignored`).

  Returns:
    `(loss, aux)` with the scalar loss and a dict of its parts.
  """
  labels, weights = without_ignored(labels, weights, logits.shape[-1])
  ce = divide(*masked_cross_entropy(logits, labels, weights))
  dice = divide(*masked_soft_dice(logits, labels, weights))
  return ce_weight * ce + dice_weight * dice, {"ce": ce, "dice_loss": dice}
