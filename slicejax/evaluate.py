"""Dense evaluation of every model of a group on held-out volumes.

2D models predict every slice of every test volume (batched over slices, and over the model axis by the group's
strategy); predictions are cropped back to each volume's original in-plane shape. 3D models predict whole volumes by
Gaussian-weighted sliding windows. Dice per foreground class is computed per volume with the rule in `metrics`.
"""

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from slicejax import data as data_lib
from slicejax import metrics
from slicejax import sampler
from slicejax import sliding_window


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


def evaluate(predict: Callable, params, volumes: Sequence, shape, num_classes: int, batch_size: int) -> dict:
  """Dice of every model on every volume.

  Args:
    predict: as in `predict_slices`.
    params: parameters in axis form.
    volumes: test `data.Volume`s with dense labels.
    shape: the static in-plane shape the models were trained at.
    num_classes: K, background included.
    batch_size: slices per prediction call.

  Returns:
    dict with `dice [M, V, K-1]` (per model, volume and foreground class), `dice_mean [M]` (mean over volumes of
    the mean over classes) and `dice_per_class [M, K-1]` (mean over volumes).
  """
  bank = sampler.slice_bank(volumes, shape)
  labels = predict_slices(predict, params, bank["images"], batch_size)
  dice = np.zeros((labels.shape[0], len(volumes), num_classes - 1))
  for v, volume in enumerate(volumes):
    start = bank["offsets"][volume.case_id]
    _, _, offsets = data_lib.fit_to_shape(volume.label[:1], shape)
    for m in range(labels.shape[0]):
      prediction = data_lib.unfit(labels[m, start:start + volume.depth], volume.label.shape[1:], offsets)
      dice[m, v] = metrics.dice_per_class(prediction, volume.label, num_classes)
  return {"dice": dice, "dice_mean": dice.mean(axis=2).mean(axis=1), "dice_per_class": dice.mean(axis=1)}


def evaluate_volumes(predict_logits: Callable, volumes: Sequence, patch, num_classes: int, *, overlap: float,
                     batch_size: int) -> dict:
  """Dice of every model on every volume, by Gaussian-weighted sliding-window inference (3D models).

  Args:
    predict_logits: windows `[b, pd, ph, pw, C]` -> logits `[M, b, pd, ph, pw, K]` (the model axis mapped).
    volumes: test `data.Volume`s; each is padded at the end to at least the patch, and predictions are cropped back.
    patch: window shape `(pd, ph, pw)`.
    num_classes: K.
    overlap: window overlap fraction.
    batch_size: windows per call.

  Returns:
    As `evaluate`.
  """
  dice = None
  for v, volume in enumerate(volumes):
    shape = tuple(max(n, p) for n, p in zip(volume.label.shape, patch))
    image = data_lib.pad_volume(volume.image, shape)
    logits = sliding_window.sliding_window_logits(predict_logits, image, patch, overlap=overlap,
                                                  batch_size=batch_size)
    depth, height, width = volume.label.shape
    labels = np.asarray(jnp.argmax(logits, axis=-1))[:, :depth, :height, :width]
    if dice is None:
      dice = np.zeros((labels.shape[0], len(volumes), num_classes - 1))
    for m in range(labels.shape[0]):
      dice[m, v] = metrics.dice_per_class(labels[m], volume.label, num_classes)
  return {"dice": dice, "dice_mean": dice.mean(axis=2).mean(axis=1), "dice_per_class": dice.mean(axis=1)}
