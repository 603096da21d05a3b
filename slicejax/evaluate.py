"""Dense evaluation of every model of a group on held-out volumes.

The dims modules (`two_d.predictor`, `three_d.predictor`) predict whole volumes on their own grids; `score` turns the
predictions into Dice per model, volume and foreground class with the rule of `slicejax.metrics`.
"""

from typing import Callable, Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from slicejax import metrics


def predict_slices(predict: Callable, params, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Labels for every row of `images`.

  Args:
    predict: model-axis mapped `(params, images [b, H, W, C]) -> labels [M, b, H, W]`.
    params: parameters in the axis form `predict` expects.
    images: `[N, H, W, C]`.
    batch_size: slices per call; the last chunk is padded so every call has the same shape.

  Returns:
    `[M, N, H, W]` uint8 labels.
  """
  chunks = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.zeros((batch_size,) + images.shape[1:], images.dtype)
    padded[:len(chunk)] = chunk
    chunks.append(np.asarray(predict(params, jnp.asarray(padded)))[:, :len(chunk)].astype(np.uint8))
  return np.concatenate(chunks, axis=1)


def score(predictions: Iterable[np.ndarray], volumes: Sequence, num_classes: int) -> dict:
  """Dice of every model on every volume.

  Args:
    predictions: one `[M, D, H, W]` label map per volume, in the order of `volumes`.
    volumes: `data.Volume`s with dense labels `[D, H, W]`.
    num_classes: K, background included.

  Returns:
    dict with `dice [M, V, K-1]` (NaN: class absent from truth and prediction), `volume_mean [M, V]`,
    `dice_mean [M]`, `dice_per_class [M, K-1]` (see `metrics.summarise`) and `volumes` (V).
  """
  dice = []
  for labels, volume in zip(predictions, volumes):
    dice.append([metrics.dice_per_class(labels[m], volume.label, num_classes) for m in range(labels.shape[0])])
  dice = np.asarray(dice, np.float64).transpose(1, 0, 2)
  return {"dice": dice, **metrics.summarise(dice), "volumes": len(volumes)}
