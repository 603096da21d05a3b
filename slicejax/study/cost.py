"""Annotation work that follows the content: the foreground an annotator paints in a slice.

The report's cost model (`config.cost`, `slicejax.report.cells.annotation_cost`) charges `seconds_per_slice` for every
annotated slice and, with `seconds_per_kilopixel` set, that many seconds per 1,000 foreground pixels, so that a
slice full of structure costs more than a slice of background and "cheap" and "informative" choices compare at
their real price.

Where the foreground comes from:
  * in a study, from the labels of the annotated slices only (what the annotator painted; a slice's label is read
    once it is annotated, never before): every row records `annotated_foreground`;
  * on a worklist (`slicejax.modes.plan` with a model), from the model's predicted foreground of the listed slices
  (their
    labels do not exist yet): `plan.csv` lists each slice's `predicted_foreground` and `estimated_seconds`.
"""

import numpy as np


def foreground_pixels(plan: dict, volumes, ignore_label=None) -> int:
  """Pixels of a class other than the background (and the ignore label) in the planned slices of `volumes`.

  Args:
    plan: case id -> annotated slice indices.
    volumes: `data.Volume`s holding every planned case (`label [D, H, W]`).
    ignore_label: the dataset's ignore value, or None.
  """
  by_id = {v.case_id: v for v in volumes}
  total = 0
  for case, slices in plan.items():
    label = np.asarray(by_id[case].label[list(slices)])
    painted = label != 0
    if ignore_label is not None:
      painted &= label != ignore_label
    total += int(painted.sum())
  return total


def slice_seconds(foreground, cost: dict) -> np.ndarray:
  """Seconds to annotate slices with `foreground` pixels each under a cost model (no volume opening)."""
  return cost["seconds_per_slice"] + cost.get("seconds_per_kilopixel", 0.0) * np.asarray(foreground) / 1000.0
