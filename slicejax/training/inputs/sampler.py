from slicejax.data import padding
"""Training data for the model axis, sampled on device.

The slices a group's plans reference sit in one *bank* (`images [N, H, W, C]`, `labels [L, H, W]` uint8,
`extents [N, 2]`, the size of each slice's real data before padding), padded to the group's static in-plane shape and
to the grid's largest bank, so that every group of a grid has the same shapes and one compiled step serves them all.
Each model owns a padded list of *entries* (image row, label row, weight) over the bank, `count` of them real: its
annotated slices, plus interpolated ones when interpolation is on (their label rows are appended to the bank, after
the true labels). A batch is drawn inside the jitted step with the
model's key folded with the step, so the sampler has no state of its own beyond the step counter: resuming at step
t draws exactly the batches an uninterrupted run would.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np



def slice_bank(volumes: Sequence, shape: Sequence[int], keep: Mapping[str, Sequence[int]] | None = None,
               image_dtype=np.float32) -> dict:
  """Concatenates slices of `volumes` into a bank padded to in-plane `shape`.

  Args:
    volumes: `data.Volume`s, each with image `[D, H, W, C]` and label `[D, H, W]`.
    shape: static in-plane shape (H', W').
    keep: case id -> the slice indices to put in the bank (sorted); None keeps every slice of every volume.
    image_dtype: dtype of the bank's images.

  Returns:
    dict of numpy arrays `images [N, H', W', C]`, `labels [N, H', W']` uint8, `extents [N, 2]` int32 (the height and
    width of each slice's real data, a box at the origin: the rest is padding), and `rows`: case id -> `[D]` int32
    bank row of each slice of the volume (-1 where it is not in the bank).
  """
  images, labels, extents, rows, row = [], [], [], {}, 0
  for volume in volumes:
    chosen = np.arange(volume.depth) if keep is None else np.asarray(keep.get(volume.case_id, ()), np.int64)
    image, _, _ = padding.fit_to_shape(volume.image[chosen], shape)
    label, _, _ = padding.fit_to_shape(volume.label[chosen], shape)
    images.append(image.astype(image_dtype))
    labels.append(label.astype(np.uint8))
    extents.append(np.tile(np.minimum(volume.label.shape[1:], shape), (len(chosen), 1)))
    rows[volume.case_id] = np.full(volume.depth, -1, np.int32)
    rows[volume.case_id][chosen] = row + np.arange(len(chosen))
    row += len(chosen)
  return {
      "images": np.concatenate(images),
      "labels": np.concatenate(labels),
      "extents": np.concatenate(extents).astype(np.int32),
      "rows": rows,
  }


def pad_rows(arrays: Mapping[str, np.ndarray], size: int) -> dict:
  """Zero-pads every array along its first axis to `size` rows (static shapes shared by every group of a grid)."""
  out = {}
  for name, array in arrays.items():
    if len(array) > size:
      raise ValueError(f"{name} has {len(array)} rows, more than the padded size {size}")
    out[name] = np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:], array.dtype)])
  return out


def model_entries(plans: Sequence[Mapping[str, Sequence[int]]], rows: Mapping[str, np.ndarray],
                  extra: Sequence[Sequence[tuple]] = (), width: int | None = None) -> dict:
  """Per-model entry lists over the bank, padded to the longest (or to `width`).

  Args:
    plans: one annotation plan (case id -> slice indices) per model.
    rows: case id -> `[D]` bank row of each slice (`slice_bank`'s `rows`).
    extra: per model, additional `(image_row, label_row, weight)` entries (interpolated slices).
    width: pad the entry lists to this length; None: the longest list.

  Returns:
    dict of `[M, E]` int32 `image_row`, `label_row`, float32 `weight`, and `[M]` int32 `count`.
  """
  lists = []
  for m, plan in enumerate(plans):
    annotated = [int(rows[case][i]) for case in sorted(plan) for i in plan[case]]
    entries = [(r, r, 1.0) for r in annotated] + list(extra[m] if extra else ())
    lists.append(entries)
  width = max(len(e) for e in lists) if width is None else width
  out = {"image_row": np.zeros((len(lists), width), np.int32), "label_row": np.zeros((len(lists), width), np.int32),
         "weight": np.zeros((len(lists), width), np.float32), "count": np.zeros((len(lists),), np.int32)}
  for m, entries in enumerate(lists):
    n = len(entries)
    if n:
      table = np.array(entries, np.float64)
      out["image_row"][m, :n] = table[:, 0]
      out["label_row"][m, :n] = table[:, 1]
      out["weight"][m, :n] = table[:, 2]
    out["count"][m] = n
  return out


def in_extent(extents, shape):
  """`[..., H, W]` float32 mask, 1 inside each `extents [..., 2]` box at the origin of an `(H, W)` plane."""
  iy = jnp.arange(shape[0])[:, None]
  ix = jnp.arange(shape[1])[None, :]
  return ((iy < extents[..., 0, None, None]) & (ix < extents[..., 1, None, None])).astype(jnp.float32)


def sample(key, bank, entries, batch_size: int):
  """Draws one model's batch, uniformly over its entries.

  Args:
    key: PRNG key.
    bank: dict with `images [N, H, W, C]`, `labels [L, H, W]`, `extents [N, 2]` (device arrays).
    entries: one model's `image_row [E]`, `label_row [E]`, `weight [E]`, `count []`.
    batch_size: B.

  Returns:
    `images [B, H, W, C]`, `labels [B, H, W]` int32, `weights [B, H, W]` float32.
  """
  pick = jax.random.randint(key, (batch_size,), 0, jnp.maximum(entries["count"], 1))
  image_rows = entries["image_row"][pick]
  label_rows = entries["label_row"][pick]
  weights = in_extent(bank["extents"][image_rows], bank["images"].shape[1:3]) * entries["weight"][pick][:, None, None]
  # A model without entries (count 0) trains on nothing: zero weights give zero loss and gradient.
  weights = weights * (entries["count"] > 0)
  return bank["images"][image_rows], bank["labels"][label_rows].astype(jnp.int32), weights
