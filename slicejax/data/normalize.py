"""Intensity normalisation of one volume, per channel (the settings are described in `slicejax.data.load`; a config's
check parses them, `slicejax.config.checks.parse_normalization`).
"""

import numpy as np

from slicejax.config.checks import parse_normalization
from slicejax.errors import InputError

_STD_FLOOR = 1e-8


def normalize_float64(image: np.ndarray, normalization: str, ct_window) -> np.ndarray:
  """`normalize` in float64, before rounding."""
  items = parse_normalization(normalization)
  x = image.astype(np.float64)
  if len(items) not in (1, x.shape[-1]):
    raise InputError("normalization", f"{normalization!r} gives {len(items)} channel settings for an image of "
                     f"{x.shape[-1]} channels")
  out = np.empty_like(x)
  spatial = tuple(range(x.ndim - 1))
  for c in range(x.shape[-1]):
    item, v = items[c if len(items) > 1 else 0], x[..., c]
    if item == ("zscore",):
      out[..., c] = (v - v.mean(axis=spatial)) / max(v.std(axis=spatial), _STD_FLOOR)
    elif item == ("ct",):
      lo, hi = ct_window
      out[..., c] = 2. * (np.clip(v, lo, hi) - lo) / (hi - lo) - 1.
    else:
      _, lo, hi, mean, std = item
      out[..., c] = (np.clip(v, lo, hi) - mean) / std
  return out


def normalize(image: np.ndarray, normalization: str, ct_window=(-1000., 1000.)) -> np.ndarray:
  """Normalises each channel of one volume (see the module docstring).

  Args:
    image: `[D, H, W, C]` raw intensities, any real dtype.
    normalization: "zscore", "ct", or one item per channel (see `parse_normalization`).
    ct_window: `(lo, hi)` clipping window for "ct".

  Returns:
    `[D, H, W, C]` float16, computed in float64 and rounded once.
  """
  return normalize_float64(image, normalization, ct_window).astype(np.float16)
