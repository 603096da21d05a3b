"""Stands in for annotators: fills the chosen slices of a plan's templates from existing label files.

    python tools/fill_templates.py --plan=PLAN --labels=LABELS --out=ANNOTATIONS

For every case of PLAN/plan.json, reads PLAN/templates/<case>.nii.gz and LABELS/<case>.nii.gz (same grid), copies
the labels onto the template's chosen slices (the voxels that are not the ignore value) and writes
ANNOTATIONS/<case>.nii.gz on the template's grid: what an annotator's file looks like after painting in ITK-SNAP or
3D Slicer. Used by docs/annotate.md with the phantom's true labels.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
import numpy as np

from slicejax.data import nifti
from slicejax.errors import InputError

_PLAN = flags.DEFINE_string("plan", None, "A plan workdir (launch.py --mode=plan).")
_LABELS = flags.DEFINE_string("labels", None, "Folder of dense label files <case>.nii.gz.")
_OUT = flags.DEFINE_string("out", None, "Folder for the filled files.")
flags.mark_flags_as_required(["plan", "labels", "out"])


def fill(plan_dir, labels_dir, out_dir) -> list:
  """Writes the filled templates; returns their paths."""
  plan_dir, labels_dir, out_dir = (pathlib.Path(p) for p in (plan_dir, labels_dir, out_dir))
  meta = json.loads((plan_dir / "plan.json").read_text())
  written = []
  for case in sorted(meta["cases"]):
    template_path = plan_dir / meta["cases"][case]["template"]
    template = nifti.load(template_path)
    labels = nifti.check_same_grid(labels_dir / f"{case}.nii.gz", template_path)
    filled = np.asarray(template.dataobj).copy()
    chosen = filled != meta["ignore_label"]
    filled[chosen] = np.asarray(labels.dataobj)[chosen]
    written.append(nifti.save_like(out_dir / f"{case}.nii.gz", filled, template))
  return written


def main(argv):
  del argv
  try:
    print(f"filled {len(fill(_PLAN.value, _LABELS.value, _OUT.value))} templates into {_OUT.value}")
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
