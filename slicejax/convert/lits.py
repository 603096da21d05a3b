"""LiTS17 (Liver Tumor Segmentation Challenge 2017) -> nnU-Net v2 layout.

Source: https://competitions.codalab.org/competitions/17094 (also mirrored on Academic Torrents); Bilic et al., "The
Liver Tumor Segmentation Benchmark (LiTS)", Medical Image Analysis 84, 2023. Terms: see the challenge page (the
data are shared for research under CC BY-NC-SA 4.0); not redistributed here.

Native layout: 131 training CT volumes `volume-N.nii` with `segmentation-N.nii` (0 background, 1 liver, 2 tumour),
N = 0..130, in one folder or split over `Training Batch 1/` and `Training Batch 2/` (searched recursively, `.nii` or
`.nii.gz`). Output: case `lits_NNN`, channel "CT" (Hounsfield units as stored), labels background/liver/tumour.

    python -m slicejax.convert.lits --src=PATH/LiTS17 --dst=PATH/LiTS17_v2
"""

import pathlib
import re

from absl import app
import numpy as np

from slicejax import convert
from slicejax.data import nifti
from slicejax.errors import InputError

LABELS = ("background", "liver", "tumour")
_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")


def find_cases(src) -> list:
  """[(case_id, volume path, segmentation path)] sorted by N; InputError if none or a segmentation is missing."""
  src = pathlib.Path(src)
  if not src.is_dir():
    raise InputError(src, "not a folder")
  cases = {}
  for path in sorted(src.rglob("volume-*.nii*")):
    match = _VOLUME.match(path.name)
    if not match:
      continue
    number = int(match.group(1))
    candidates = [path.with_name(f"segmentation-{match.group(1)}{ext}") for ext in (".nii", ".nii.gz")]
    segmentation = next((p for p in candidates if p.is_file()), None)
    if segmentation is None:
      raise InputError(path, f"has no segmentation-{match.group(1)}.nii(.gz) next to it")
    if number in cases:
      raise InputError(path, f"volume {number} found twice (also {cases[number][1]})")
    cases[number] = (f"lits_{number:03d}", path, segmentation)
  if not cases:
    raise InputError(src, "holds no volume-N.nii files (LiTS17 layout)")
  return [cases[n] for n in sorted(cases)]


def convert_lits(src, dst) -> int:
  """Converts; returns the number of cases written."""
  dst = convert.check_destination(dst)
  cases = find_cases(src)
  # Every check, the label values included, before the first file is written.
  for _, volume, segmentation in cases:
    convert.check_pair(volume, segmentation)
    convert.as_label(segmentation, np.asarray(nifti.load(segmentation).dataobj), range(len(LABELS)))
  for case_id, volume, segmentation in cases:
    image = nifti.load(volume)
    label = convert.as_label(segmentation, np.asarray(nifti.load(segmentation).dataobj), range(len(LABELS)))
    convert.write_case(dst, case_id, [np.asarray(image.dataobj)], label, image.affine)
  convert.write_dataset_json(dst, name="LiTS17", channel_names=("CT",), labels=LABELS, num_training=len(cases),
                             reference="Bilic et al., Medical Image Analysis 84, 2023",
                             source="https://competitions.codalab.org/competitions/17094",
                             licence="CC BY-NC-SA 4.0 (see the source)")
  return len(cases)


if __name__ == "__main__":
  app.run(convert.main(convert_lits))
