"""What the first plan (`slicejax.modes.plan`) and the next round's worklist (`slicejax.modes.worklist`) share: the
images' slice embeddings that the `ual` and `hybrid` selections choose with, and the chosen slices as plan.csv's
rows and plan.json's entries, each volume's naming its template in `TEMPLATES/`.
"""

import numpy as np

from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import normalize
from slicejax.data import padding

TEMPLATES = "templates"


def slice_embeddings(config, images: index_lib.ImageSet) -> dict:
  """Slice embeddings of every volume from the UAL encoder, trained on the images alone (`slicejax.study.encoder`)."""
  from slicejax.study import encoder  # Only `ual` plans need the encoder (and its JAX programs).
  volumes = {c.case_id: normalize.normalize(index_lib.read_case(c, images.slicing_axis), config.data.normalization,
                                           tuple(config.data.ct_window)) for c in images.cases}
  if config.data.shape:
    shape = tuple(config.data.shape)
  else:
    multiple = 2 ** (config.model.num_stages - 1)
    shape = tuple(int(-(-s // multiple) * multiple) for s in np.max([v.shape[1:3] for v in volumes.values()], 0))
  fitted = {case: padding.fit_to_shape(v, shape)[0].astype(np.float32) for case, v in volumes.items()}
  embeddings, _ = encoder.slice_embeddings(fitted, config.ual.encoder, seed=config.ual.seed,
                                           cache_dir=data_lib.cache_dir(config) / "encoder")
  return embeddings


def rows(plan: dict, images: index_lib.ImageSet) -> list:
  """The plan's slices in annotation order: case by case (sorted ids), slices ascending."""
  by_id = images.by_id()
  out = []
  for case in sorted(plan):
    for index in plan[case]:
      out.append({"order": len(out) + 1, "case_id": case, "axis": images.slicing_axis, "slice": int(index),
                  "image": ";".join(str(p) for p in by_id[case].paths),
                  "template": f"{TEMPLATES}/{case}.nii.gz"})
  return out


def entries(plan: dict, images: index_lib.ImageSet, offered: dict) -> dict:
  """plan.json's `cases` (per planned case its image file(s), slices, offered slices and template) and `offered`
  (every volume's offered `[lo, hi)`)."""
  return {
      "cases": {case: {"image": [str(p) for p in images.by_id()[case].paths], "slices": plan[case],
                       "offered": list(offered[case]), "template": f"{TEMPLATES}/{case}.nii.gz"}
                for case in sorted(plan)},
      "offered": {case: list(lohi) for case, lohi in sorted(offered.items())},
  }
