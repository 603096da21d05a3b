"""Duke Breast Cancer MRI (DBC) with the published 3D breast, fibroglandular tissue (FGT) and vessel segmentations
-> nnU-Net v2 layout. Needs pydicom (`pip install slicejax[dicom]`).

Sources: the images, https://doi.org/10.7937/TCIA.e3sv-re93 (The Cancer Imaging Archive, DICOM; TCIA's data usage
policy and the collection's licence, CC BY-NC 4.0, apply); the segmentations of 100 cases, the supplemental data of
Lew et al., "A publicly available deep learning model and dataset for segmentation of breast, fibroglandular tissue,
and vessels in breast MRI", Scientific Reports 14, 5383 (2024), on the same TCIA page. Not redistributed here.

Native layout: `SRC/Breast_MRI_NNN/<study>/<series>/*.dcm` (searched recursively per patient) and, in
SEGMENTATIONS, 3D Slicer files `Segmentation_Breast_MRI_NNN_Breast.seg.nrrd` and
`Segmentation_Breast_MRI_NNN_Dense_and_Vessels.seg.nrrd`, drawn on the fat-saturated T1 pre-contrast series. The
series is the one whose SeriesDescription contains `--series` ("pre" by default). Slices are ordered along the
normal of ImageOrientationPatient; unequal slice spacing, or differing orientation, size or pixel spacing within the
series, is bad input. Segments are mapped by their names in the NRRD header (`SegmentK_Name`, `SegmentK_LabelValue`):
every segment of the Breast file -> breast (1); of the other, names with "vessel" -> vessels (3), the rest -> FGT
(2); FGT and vessels lie inside the breast and take precedence. Only patients with both segmentation files are
converted. Output: case `Breast_MRI_NNN`, channel "T1_pre" (MRI), labels background/breast/FGT/vessels.

    python -m slicejax.convert.dbc --src=PATH/Duke-Breast-Cancer-MRI --segmentations=PATH/segmentations \\
        --dst=PATH/DBC_v2
"""

import gzip
import pathlib
import re

from absl import app
from absl import flags
import numpy as np

from slicejax import convert
from slicejax.errors import InputError

LABELS = ("background", "breast", "FGT", "vessels")
_SEGMENTATIONS = flags.DEFINE_string("segmentations", None, "Folder of the Segmentation_*.seg.nrrd files.")
_SERIES = flags.DEFINE_string("series", "pre", "Substring of the SeriesDescription of the series to convert.")
_PATIENT = re.compile(r"^Breast_MRI_\d+$")
_LPS_TO_RAS = np.diag([-1., -1., 1., 1.])
_SPACING_TOLERANCE = 1e-3  # relative
_AFFINE_TOLERANCE = 1e-2  # mm
_NRRD_TYPES = {"uchar": np.uint8, "unsigned char": np.uint8, "uint8": np.uint8, "char": np.int8, "int8": np.int8,
               "short": np.int16, "int16": np.int16, "ushort": np.uint16, "unsigned short": np.uint16,
               "uint16": np.uint16, "int": np.int32, "int32": np.int32, "uint": np.uint32, "uint32": np.uint32}


def _pydicom():
  try:
    import pydicom  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InputError("pydicom", "not installed; pip install 'slicejax[dicom]'") from e
  return pydicom


def read_series(folder, description: str) -> tuple:
  """Reads the one series under `folder` whose SeriesDescription contains `description` (case-insensitive).

  Returns:
    (volume `[X, Y, Z]` float32 (X along columns, Y along rows, Z slices in order along the normal), affine `[4, 4]`
    voxel -> RAS mm).
  """
  pydicom = _pydicom()
  folder = pathlib.Path(folder)
  series = {}
  for path in sorted(folder.rglob("*.dcm")):
    try:
      header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises several types for a damaged file
      raise InputError(path, f"cannot read DICOM: {type(e).__name__}: {e}") from e
    series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
  chosen = [files for files in series.values()
            if description.lower() in str(files[0][1].get("SeriesDescription", "")).lower()]
  if len(chosen) != 1:
    found = sorted(str(files[0][1].get("SeriesDescription", "")) for files in series.values())
    raise InputError(folder, f"{len(chosen)} series match '{description}' (series: {found})")
  files = chosen[0]
  first = files[0][1]
  keys = ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
  for path, header in files:
    for key in keys:
      if key not in header:
        raise InputError(path, f"lacks {key}")
      if not np.allclose(np.asarray(header.get(key), np.float64), np.asarray(first.get(key), np.float64)):
        raise InputError(path, f"{key} differs from the rest of the series ({files[0][0].name})")
  orientation = np.asarray(first.ImageOrientationPatient, np.float64)
  row_cosine, column_cosine = orientation[:3], orientation[3:]
  normal = np.cross(row_cosine, column_cosine)
  positions = {path: np.asarray(header.ImagePositionPatient, np.float64) for path, header in files}
  order = sorted(files, key=lambda f: float(positions[f[0]] @ normal))
  depths = np.array([positions[path] @ normal for path, _ in order])
  steps = np.diff(depths)
  if len(order) > 1 and (steps.min() <= 0 or steps.max() - steps.min() > _SPACING_TOLERANCE * steps.mean()):
    raise InputError(folder, f"inconsistent slice spacing in series '{first.get('SeriesDescription', '')}': steps "
                     f"from {steps.min():.4g} to {steps.max():.4g} mm")
  slice_step = float(steps.mean()) if len(order) > 1 else float(first.get("SliceThickness", 1.0))
  row_spacing, column_spacing = (float(s) for s in first.PixelSpacing)
  slices = []
  for path, _ in order:
    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    slices.append(pixels.T)  # [rows, columns] -> [X = columns, Y = rows]
  affine = np.eye(4)
  affine[:3, 0] = row_cosine * column_spacing
  affine[:3, 1] = column_cosine * row_spacing
  affine[:3, 2] = normal * slice_step
  affine[:3, 3] = positions[order[0][0]]
  return np.stack(slices, axis=-1), _LPS_TO_RAS @ affine


def read_seg_nrrd(path) -> tuple:
  """Reads a 3D Slicer `.seg.nrrd` (one layer; raw or gzip encoding).

  Returns:
    (labels `[X, Y, Z]` int, affine `[4, 4]` voxel -> RAS mm, {label value: segment name}).
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e
  head, sep, body = raw.partition(b"\n\n")
  if not raw.startswith(b"NRRD") or not sep:
    raise InputError(path, "not a NRRD file")
  fields, keys = {}, {}
  for line in head.decode("latin-1").splitlines()[1:]:
    if line.startswith("#"):
      continue
    if ":=" in line:
      key, _, value = line.partition(":=")
      keys[key.strip()] = value.strip()
    elif ":" in line:
      key, _, value = line.partition(":")
      fields[key.strip()] = value.strip()
  try:
    sizes = [int(s) for s in fields["sizes"].split()]
    dtype = np.dtype(_NRRD_TYPES[fields["type"]])
    encoding = fields.get("encoding", "raw")
    directions = [[float(x) for x in d.strip("()").split(",")]
                  for d in re.findall(r"\([^)]*\)", fields["space directions"])]
    origin = [float(x) for x in fields.get("space origin", "(0,0,0)").strip("()").split(",")]
  except (KeyError, ValueError) as e:
    raise InputError(path, f"unsupported NRRD header ({type(e).__name__}: {e})") from e
  if len(sizes) != 3 or len(directions) != 3:
    raise InputError(path, f"expected a 3D single-layer segmentation, got sizes {sizes}")
  if encoding in ("gzip", "gz"):
    body = gzip.decompress(body)
  elif encoding != "raw":
    raise InputError(path, f"unsupported NRRD encoding '{encoding}'")
  if fields.get("endian", "little") == "big":
    dtype = dtype.newbyteorder(">")
  count = int(np.prod(sizes))
  if len(body) != count * dtype.itemsize:
    raise InputError(path, f"holds {len(body)} data bytes, sizes {sizes} of {dtype} need {count * dtype.itemsize}")
  labels = np.frombuffer(body, dtype).reshape(sizes[::-1]).T  # NRRD's first axis is the fastest
  affine = np.eye(4)
  affine[:3, :3] = np.array(directions).T
  affine[:3, 3] = origin
  if fields.get("space", "left-posterior-superior") in ("left-posterior-superior", "LPS"):
    affine = _LPS_TO_RAS @ affine
  names = {}
  for key, value in keys.items():
    match = re.match(r"^Segment(\d+)_Name$", key)
    if match:
      names[int(keys.get(f"Segment{match.group(1)}_LabelValue", int(match.group(1)) + 1))] = value
  return np.asarray(labels), affine, names


def _labels(breast_path, dense_path, shape, affine) -> np.ndarray:
  out = np.zeros(shape, np.uint8)
  for path, is_breast in ((breast_path, True), (dense_path, False)):
    labels, seg_affine, names = read_seg_nrrd(path)
    if labels.shape != shape or np.max(np.abs(seg_affine - affine)) > _AFFINE_TOLERANCE:
      raise InputError(path, f"grid (shape {labels.shape}) differs from the image series' (shape {shape})")
    for value in (int(v) for v in np.unique(labels) if v):
      if value not in names:
        raise InputError(path, f"label value {value} has no segment name in the header")
      target = 1 if is_breast else 3 if "vessel" in names[value].lower() else 2
      out[labels == value] = target
  return out


def find_cases(src, segmentations) -> list:
  """[(case_id, patient folder, breast nrrd, dense-and-vessels nrrd)] for the patients with both files."""
  src, segmentations = pathlib.Path(src), pathlib.Path(segmentations or "")
  for folder in (src, segmentations):
    if not folder.is_dir():
      raise InputError(folder, "not a folder (--src and --segmentations are required)")
  cases = []
  for patient in sorted(p for p in src.iterdir() if p.is_dir() and _PATIENT.match(p.name)):
    breast = segmentations / f"Segmentation_{patient.name}_Breast.seg.nrrd"
    dense = segmentations / f"Segmentation_{patient.name}_Dense_and_Vessels.seg.nrrd"
    if breast.is_file() and dense.is_file():
      cases.append((patient.name, patient, breast, dense))
  if not cases:
    raise InputError(segmentations, f"holds no Segmentation_<patient>_Breast.seg.nrrd and _Dense_and_Vessels.seg.nrrd "
                     f"pair for a Breast_MRI_NNN folder of {src}")
  return cases


def convert_dbc(src, dst, segmentations=None, series: str = "pre") -> int:
  """Converts; returns the number of cases written. Every case is read and checked before anything is written."""
  _pydicom()
  dst = convert.check_destination(dst)
  cases = find_cases(src, segmentations)
  for _, patient, breast, dense in cases:
    image, affine = read_series(patient, series)
    _labels(breast, dense, image.shape, affine)
  for case_id, patient, breast, dense in cases:
    image, affine = read_series(patient, series)
    convert.write_case(dst, case_id, [image], _labels(breast, dense, image.shape, affine), affine)
  convert.write_dataset_json(dst, name="DBC", channel_names=("T1_pre",), labels=LABELS, num_training=len(cases),
                             reference="Lew et al., Scientific Reports 14, 5383 (2024)",
                             source="https://doi.org/10.7937/TCIA.e3sv-re93",
                             licence="TCIA data usage policy, CC BY-NC 4.0 (see the source)")
  return len(cases)


if __name__ == "__main__":
  app.run(convert.main(lambda src, dst: convert_dbc(src, dst, _SEGMENTATIONS.value, _SERIES.value)))
