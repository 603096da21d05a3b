"""ATLAS v2.0 (Anatomical Tracings of Lesions After Stroke) -> nnU-Net v2 layout.

Source: https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html (INDI; the archive is released after accepting
its data use agreement); Liew et al., "A large, curated, open-source stroke neuroimaging dataset to improve lesion
segmentation algorithms", Scientific Data 9, 320 (2022). Terms: those of the data use agreement; not redistributed
here.

Native layout (BIDS-like derivatives, searched recursively): per subject and session
`sub-XXX_ses-Y_space-MNI152NLin2009aSym_T1w.nii.gz` with the lesion mask
`sub-XXX_ses-Y_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz` in the same folder. Output: case
`sub-XXX_ses-Y`, channel "T1", labels background/lesion (masks stored as 0/1, in any numeric type).

    python -m slicejax.convert.atlas --src=PATH/ATLAS_2/Training --dst=PATH/ATLAS_v2
"""

import pathlib

from absl import app
import numpy as np

from slicejax import convert
from slicejax.data import nifti
from slicejax.errors import InputError

LABELS = ("background", "lesion")
_T1 = "_T1w.nii.gz"
_MASK = "_label-L_desc-T1lesion_mask.nii.gz"


def find_cases(src) -> list:
  """[(case_id, T1 path, mask path)] sorted by case id; InputError if none or a mask is missing."""
  src = pathlib.Path(src)
  if not src.is_dir():
    raise InputError(src, "not a folder")
  cases = {}
  for t1 in sorted(src.rglob(f"sub-*{_T1}")):
    if t1.name.startswith("."):
      continue
    mask = t1.with_name(t1.name[:-len(_T1)] + _MASK)
    if not mask.is_file():
      raise InputError(t1, f"has no lesion mask {mask.name} next to it")
    # sub-r001s001_ses-1_space-... -> sub-r001s001_ses-1
    case_id = "_".join(p for p in t1.name.split("_") if p.startswith(("sub-", "ses-")))
    if case_id in cases:
      raise InputError(t1, f"case {case_id} found twice (also {cases[case_id][1]})")
    cases[case_id] = (case_id, t1, mask)
  if not cases:
    raise InputError(src, f"holds no sub-*{_T1} files (ATLAS v2.0 layout)")
  return [cases[c] for c in sorted(cases)]


def convert_atlas(src, dst) -> int:
  """Converts; returns the number of cases written."""
  dst = convert.check_destination(dst)
  cases = find_cases(src)
  # Every check, the label values included, before the first file is written.
  for _, t1, mask in cases:
    convert.check_pair(t1, mask)
    convert.as_label(mask, np.asarray(nifti.load(mask).dataobj), (0, 1))
  for case_id, t1, mask in cases:
    image = nifti.load(t1)
    label = convert.as_label(mask, np.asarray(nifti.load(mask).dataobj), (0, 1))
    convert.write_case(dst, case_id, [np.asarray(image.dataobj)], label, image.affine)
  convert.write_dataset_json(dst, name="ATLAS_v2.0", channel_names=("T1",), labels=LABELS, num_training=len(cases),
                             reference="Liew et al., Scientific Data 9, 320 (2022)",
                             source="https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html",
                             licence="ATLAS v2.0 data use agreement (see the source)")
  return len(cases)


if __name__ == "__main__":
  app.run(convert.main(convert_atlas))
