"""`random`: rho distinct slices drawn uniformly at random from the volume."""

import numpy as np

from slicejax.study.selection import check_rho

NEEDS_EMBEDDINGS = False


def select(num_slices, rho, rng, *, embeddings=None, options=None):
  """Returns sorted int64 `[rho]` distinct slice indices in [0, num_slices)."""
  del embeddings, options
  check_rho(num_slices, rho)
  return np.sort(rng.choice(num_slices, size=rho, replace=False)).astype(np.int64)
