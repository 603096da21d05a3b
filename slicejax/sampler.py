"""Training data for the model axis, sampled on device.

All slices of the training pool sit in one *bank* (`images [N, H, W, C]`, `labels [L, H, W]`, `valid [N, H, W]`),
padded to the group's static in-plane shape. Each model owns a padded list of *entries* (image row, label row,
weight) over the bank, `count` of them real: its annotated slices, plus interpolated ones when interpolation is on
(their label rows are appended to the bank, after the true labels). A batch is drawn inside the jitted step with the
model's key folded with the step, so the sampler has no state of its own beyond the step counter: resuming at step
t draws exactly the batches an uninterrupted run would.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax import data as data_lib


def slice_bank(volumes: Sequence, shape: Sequence[int]) -> dict:
  """Concatenates the slices of `volumes` into a bank padded to in-plane `shape`.

  Args:
    volumes: `data.Volume`s, each with image `[D, H, W, C]` and label `[D, H, W]`.
    shape: static in-plane shape (H', W').

  Returns:
    dict of numpy arrays `images [N, H', W', C]` float32, `labels [N, H', W']` int32, `valid [N, H', W']` float32,
    and `offsets`: case id -> first bank row of the volume.
  """
  images, labels, valid, offsets, row = [], [], [], {}, 0
  for volume in volumes:
    image, mask, _ = data_lib.fit_to_shape(volume.image, shape)
    label, _, _ = data_lib.fit_to_shape(volume.label, shape)
    images.append(image)
    labels.append(label)
    valid.append(mask)
    offsets[volume.case_id] = row
    row += volume.image.shape[0]
  return {
      "images": np.concatenate(images).astype(np.float32),
      "labels": np.concatenate(labels).astype(np.int32),
      "valid": np.concatenate(valid).astype(np.float32),
      "offsets": offsets,
  }


def model_entries(plans: Sequence[Mapping[str, Sequence[int]]], offsets: Mapping[str, int],
                  extra: Sequence[Sequence[tuple]] = ()) -> dict:
  """Per-model entry lists over the bank, padded to the longest.

  Args:
    plans: one annotation plan (case id -> slice indices) per model.
    offsets: case id -> first bank row.
    extra: per model, additional `(image_row, label_row, weight)` entries (interpolated slices).

  Returns:
    dict of `[M, E]` int32 `image_row`, `label_row`, float32 `weight`, and `[M]` int32 `count`.
  """
  lists = []
  for m, plan in enumerate(plans):
    rows = [offsets[case] + i for case in sorted(plan) for i in plan[case]]
    entries = [(r, r, 1.0) for r in rows] + list(extra[m] if extra else ())
    lists.append(entries)
  width = max(len(e) for e in lists)
  out = {"image_row": np.zeros((len(lists), width), np.int32), "label_row": np.zeros((len(lists), width), np.int32),
         "weight": np.zeros((len(lists), width), np.float32), "count": np.zeros((len(lists),), np.int32)}
  for m, entries in enumerate(lists):
    n = len(entries)
    if n:
      rows = np.array(entries, np.float64)
      out["image_row"][m, :n] = rows[:, 0]
      out["label_row"][m, :n] = rows[:, 1]
      out["weight"][m, :n] = rows[:, 2]
    out["count"][m] = n
  return out


def sample(key, bank, entries, batch_size: int):
  """Draws one model's batch, uniformly over its entries.

  Args:
    key: PRNG key.
    bank: dict with `images [N, H, W, C]`, `labels [L, H, W]`, `valid [N, H, W]` (device arrays).
    entries: one model's `image_row [E]`, `label_row [E]`, `weight [E]`, `count []`.
    batch_size: B.

  Returns:
    `images [B, H, W, C]`, `labels [B, H, W]`, `weights [B, H, W]`.
  """
  pick = jax.random.randint(key, (batch_size,), 0, jnp.maximum(entries["count"], 1))
  image_rows = entries["image_row"][pick]
  label_rows = entries["label_row"][pick]
  weights = bank["valid"][image_rows] * entries["weight"][pick][:, None, None]
  # A model without entries (count 0) trains on nothing: zero weights give zero loss and gradient.
  weights = weights * (entries["count"] > 0)
  return bank["images"][image_rows], bank["labels"][label_rows], weights
