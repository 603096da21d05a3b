"""Training on real sparse annotations: a dataset whose label files carry an ignore label becomes study points.

A dataset declares its ignore label the way nnU-Net v2 does (a label named "ignore" with the highest value K in
dataset.json; `slicejax.data` keeps that value in the loaded labels). Nothing is simulated: the *annotated plan*
holds, per training volume, the slices (planes along the slicing axis) that have at least one voxel other than the
ignore label, and the models train on those slices only (the plan machinery of `slicejax.training.train`), while the
loss
gives the ignore label's voxels inside them weight 0 (`losses.without_ignored`). A training volume without any
annotated voxel is left out with a warning.

The points: one per dims of `study.dims` and seed of `study.seeds`, selection "annotated", budget B = the number of
annotated slices, s = the number of annotated volumes, rho = B // s (the mean, rounded down: volumes may differ).
"""

from typing import Sequence

from absl import logging
import numpy as np

from slicejax.errors import InputError
from slicejax.study import grid as study

SELECTION = "annotated"


def check_study(study_config, ignore_label) -> bool:
  """Whether the dataset's labels are sparse annotations (an ignore label), after checking that the study's
  selections fit them: "annotated" alone with an ignore label, never "annotated" without one."""
  selections = tuple(study_config.selections)
  if ignore_label is None:
    if SELECTION in selections:
      raise InputError("config.study.selections", f"'{SELECTION}' needs labels with an ignore label (a label named "
                       "'ignore' in dataset.json); this dataset's labels are dense")
    return False
  if selections != (SELECTION,):
    raise InputError("config.study.selections", f"must be ('{SELECTION}',) for a dataset whose labels carry an ignore "
                     f"label ({ignore_label}): its annotated slices are given, not selected; got {selections!r}")
  return True


def annotated_slices(label: np.ndarray, ignore_label: int) -> list:
  """The indices d of `label [D, H, W]` whose plane holds a voxel other than `ignore_label`."""
  return np.flatnonzero((np.asarray(label) != ignore_label).any(axis=(1, 2))).tolist()


def annotated_plan(volumes: Sequence, ignore_label: int) -> dict:
  """case id -> annotated slice indices over `volumes` (`data.Volume`s); volumes with none are left out (warned)."""
  plan = {}
  for volume in volumes:
    slices = annotated_slices(volume.label, ignore_label)
    if slices:
      plan[volume.case_id] = slices
    else:
      logging.warning("%s: no annotated voxel (every label is the ignore label %d); left out of training.",
                      volume.case_id, ignore_label)
  if not plan:
    raise InputError("data", f"no training volume holds an annotated voxel (all labels are the ignore label "
                     f"{ignore_label})")
  return plan


def points(study_config, plan: dict) -> list:
  """The points of an annotated plan: one per dims and seed of `study_config` (see the module docstring)."""
  if study_config.reference:
    raise InputError("config.study.reference", "must be False: the fully annotated reference needs dense labels, "
                     "and this dataset's labels carry an ignore label")
  budget = sum(map(len, plan.values()))
  return [study.Point(dims=int(dims), budget=budget, volumes=len(plan), slices_per_volume=budget // len(plan),
                      selection=SELECTION, interpolation=False, seed=int(seed))
          for dims in study_config.dims for seed in study_config.seeds]
