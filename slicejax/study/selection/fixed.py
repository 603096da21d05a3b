"""`fixed`: equally spaced slices, interval num_slices / rho, starting at a random offset inside the first interval.

Slice i is `floor(offset + i * num_slices / rho)` with `offset ~ U[0, num_slices / rho)`; since the interval is at
least one slice, the rho indices are distinct, and rho = num_slices picks every slice.
"""

import numpy as np

from slicejax.study.selection import check_rho

NEEDS_EMBEDDINGS = False


def select(num_slices, rho, rng, *, embeddings=None, options=None):
  """Returns sorted int64 `[rho]` equally spaced slice indices in [0, num_slices)."""
  del embeddings, options
  check_rho(num_slices, rho)
  interval = num_slices / rho
  offset = rng.uniform(0.0, interval)
  indices = np.floor(offset + interval * np.arange(rho)).astype(np.int64)
  return np.minimum(indices, num_slices - 1)
