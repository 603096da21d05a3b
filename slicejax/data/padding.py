"""Volumes fitted to a static shape: padded (zeros, at the end) or centre-cropped, and predictions fitted back.

A batch holds arrays of one shape, so volumes of different sizes are padded (or cropped) to it; `fit_to_shape` says
where the data lie, `unfit` puts a prediction back on the volume's own grid.
"""

import numpy as np


def fit_to_shape(array: np.ndarray, shape) -> tuple:
  """Pads (zeros, at the end) or centre-crops axes 1..len(shape) of `array` to `shape`.

  Args:
    array: `[D, H, W, ...]`.
    shape: target sizes of axes 1..len(shape), e.g. `(H', W')`.

  Returns:
    (out `[D, H', W', ...]`, valid `[D, H', W']` bool, True where `out` holds data of `array`, offsets): offsets[i]
    is the index in `array` of the first element kept along axis i + 1 (0 where the axis was padded).
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) > array.ndim - 1:
    raise ValueError(f"shape {shape} has more axes than {array.shape} after the first")
  src, dst, offsets = [slice(None)], [slice(None)], []
  for size, target in zip(array.shape[1:], shape):
    offset = max((size - target) // 2, 0)
    kept = min(size, target)
    src.append(slice(offset, offset + kept))
    dst.append(slice(0, kept))
    offsets.append(offset)
  out = np.zeros(array.shape[:1] + shape + array.shape[1 + len(shape):], array.dtype)
  out[tuple(dst)] = array[tuple(src)]
  valid = np.zeros(array.shape[:1] + shape, np.bool_)
  valid[tuple(dst)] = True
  return out, valid, tuple(offsets)


def pad_volume(array: np.ndarray, shape) -> np.ndarray:
  """Zero-pads the first three axes of `[D, H, W, ...]` at the end to `shape` (each at least the array's size)."""
  return np.pad(array, [(0, s - n) for s, n in zip(shape, array.shape[:3])] + [(0, 0)] * (array.ndim - 3))


def unfit(array: np.ndarray, original_hw, offsets) -> np.ndarray:
  """Inverse of `fit_to_shape` for a prediction: `[D, H', W', ...]` -> `[D, H, W, ...]`, cropped-away parts 0.

  Args:
    array: `[D, H', W', ...]`, e.g. a predicted label map.
    original_hw: the sizes `(H, W)` before `fit_to_shape`.
    offsets: the offsets `fit_to_shape` returned.
  """
  original_hw = tuple(int(s) for s in original_hw)
  src, dst = [slice(None)], [slice(None)]
  for size, fitted, offset in zip(original_hw, array.shape[1:], offsets):
    kept = min(size, fitted)
    src.append(slice(0, kept))
    dst.append(slice(offset, offset + kept))
  out = np.zeros(array.shape[:1] + original_hw + array.shape[1 + len(original_hw):], array.dtype)
  out[tuple(dst)] = array[tuple(src)]
  return out
