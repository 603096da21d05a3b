"""`annotated`: the slices people actually annotated, read from label files that carry an ignore label.

Such a dataset's plan is not chosen but found (`slicejax.study.sparse.annotated_plan`): a slice is annotated when any of
its voxels holds a value other than the ignore label. There is nothing to select, so `select` refuses.
"""

from slicejax.errors import InputError

NEEDS_EMBEDDINGS = False


def select(num_slices, rho, rng, *, embeddings=None, options=None):
  del num_slices, rho, rng, embeddings, options
  raise InputError("selection", "'annotated' plans are read from label files with an ignore label, not selected")
