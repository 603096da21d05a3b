"""Sparse annotations as an nnU-Net v2 raw dataset, so nnU-Net trains on exactly the slices slicejax chose.

Two sources (`config.export`):
  * a plan (`slicejax.modes.plan`) and its annotations: the filled templates `<case>.nii.gz` (the plan's own
  `templates/`
    by default), each checked against its image (shape, affine) and for its values (classes, or the ignore value);
  * a study point (`STUDY/plans/<point>.json`): the true labels of its annotated slices, the ignore value elsewhere,
    the simulated annotations the point trained on (interpolated slices are not exported).
A volume without any annotated voxel is left out, with a warning.

Written into WORKDIR, the layout of nnU-Net v2's `nnUNet_raw/DatasetXXX_Name` folders:
  * `imagesTr/<case>_<cccc>.nii.gz`: one 3D file per channel (a 4D image is split; a 3D `.nii.gz` is copied);
  * `labelsTr/<case>.nii.gz`: uint8 labels on the image's grid, K (the number of classes) where nothing is annotated;
  * `dataset.json`: `channel_names`, `labels` ({"background": 0, ..., "ignore": K}), `numTraining`, `file_ending`.
slicejax reads the folder back as a dataset with an ignore label (`slicejax.data`), and `verify` runs nnU-Net v2's own
integrity check on it (`nnunetv2.experiment_planning.verify_dataset_integrity`, the `nnunet` extra).
"""

import contextlib
import io
import json
import pathlib
import shutil

from absl import logging
import ml_collections
import numpy as np

from slicejax import config as config_lib
from slicejax.data import index as index_lib
from slicejax.data import layouts
from slicejax.data import load as data_lib
from slicejax.data import nifti
from slicejax.data import resample as resample_lib
from slicejax.errors import InputError
from slicejax import files

FILE_ENDING = ".nii.gz"


def dataset_json(name: str, channel_names, class_names, num_training: int) -> dict:
  """nnU-Net v2's dataset.json for classes `class_names` (background first) plus the ignore label K."""
  labels = {str(n): i for i, n in enumerate(class_names)}
  labels[layouts.IGNORE_NAME] = len(class_names)
  return {"name": name, "channel_names": {str(i): str(n) for i, n in enumerate(channel_names)}, "labels": labels,
          "numTraining": int(num_training), "file_ending": FILE_ENDING,
          "description": "sparse annotations: voxels labelled 'ignore' were not annotated"}


def _checked_values(path, label: np.ndarray, num_classes: int) -> np.ndarray:
  """`label` as uint8 after checking that it holds classes 0..K-1 and the ignore value K only."""
  if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
    raise InputError(path, "holds non-integer label values")
  values = np.unique(label).astype(np.int64)
  bad = [int(v) for v in values if not 0 <= v <= num_classes]
  if bad:
    raise InputError(path, f"label values {bad[:5]} are neither classes (0..{num_classes - 1}) nor the ignore value "
                     f"{num_classes}")
  return label.astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# The two sources: [(case id, image files, label [X, Y, Z] uint8)] plus names.
# ---------------------------------------------------------------------------------------------------------------------

def _read_plan(plan_dir) -> dict:
  path = pathlib.Path(plan_dir).expanduser() / "plan.json"
  if not path.is_file():
    raise InputError(path, "missing (config.export.plan must be a plan workdir, written by --mode=plan)")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(path, f"not valid JSON: {e}") from e


def check_against_plan(path, label: np.ndarray, planned, axis: int, ignore: int) -> dict:
  """Compares a returned label file with its plan, plane by plane along the slicing axis.

  Returns:
    {"planned", "annotated" (planned planes holding an annotated voxel), "empty" (planned planes holding background
    only: left empty, or truly without foreground), "unannotated" (planned planes still all ignore), "unplanned"
    (planes outside the plan holding annotated voxels)}, counts.

  Raises:
    InputError: the file holds no ignore value at all: a dense label, not the plan's annotations.
  """
  if not np.any(label == ignore):
    raise InputError(path, f"holds no ignore value ({ignore}): a dense label, not annotations of the plan's "
                           f"{len(planned)} slices")
  other = tuple(a for a in range(3) if a != axis)
  annotated = np.any(label != ignore, axis=other)
  foreground = np.any((label != ignore) & (label != 0), axis=other)
  planned = sorted(set(int(i) for i in planned))
  mask = np.zeros(label.shape[axis], bool)
  mask[planned] = True
  return {"planned": len(planned), "annotated": int(annotated[mask].sum()),
          "empty": int((annotated & ~foreground)[mask].sum()), "unannotated": int((~annotated)[mask].sum()),
          "unplanned": int(annotated[~mask].sum())}


def from_plan(plan_dir, annotations="") -> dict:
  """The annotated cases of a plan: its filled label files, checked against their images and the plan
  (`check_against_plan`; a warning per case with planned slices left unannotated or background only, or painted
  slices the plan does not list).

  Returns:
    {"name", "class_names", "channel_names", "cases": [(case_id, image paths, label [X, Y, Z] uint8)], "checks":
    {case id: `check_against_plan`'s counts}}.
  """
  plan_dir = pathlib.Path(plan_dir).expanduser()
  meta = _read_plan(plan_dir)
  folder = pathlib.Path(annotations).expanduser() if annotations else plan_dir / "templates"
  num_classes = len(meta["class_names"])
  cases = []
  for case_id, entry in sorted(meta["cases"].items()):
    path = folder / f"{case_id}.nii.gz"
    image_paths = [pathlib.Path(p) for p in entry["image"]]
    label = nifti.check_same_grid(path, image_paths[0])
    cases.append((case_id, image_paths, _checked_values(path, np.asanyarray(label.dataobj), num_classes)))
  checks = {}
  for case_id, _, label in cases:
    path = folder / f"{case_id}.nii.gz"
    found = checks[case_id] = check_against_plan(path, label, meta["cases"][case_id]["slices"],
                                                 int(meta["slicing_axis"]), num_classes)
    problems = [f"{found[k]} {text}" for k, text in (
        ("unannotated", "planned slice(s) not annotated (still the ignore value)"),
        ("empty", "planned slice(s) holding background only (left empty?)"),
        ("unplanned", "slice(s) annotated outside the plan (exported as annotated)")) if found[k]]
    if problems:
      logging.warning("%s: %s of %d planned", path, "; ".join(problems), found["planned"])
  return {"name": meta["dataset"], "class_names": meta["class_names"], "channel_names": meta["channel_names"],
          "cases": cases, "checks": checks}


def study_config(study_dir) -> ml_collections.ConfigDict:
  """A study workdir's resolved config (`config.json`)."""
  path = pathlib.Path(study_dir).expanduser() / "config.json"
  if not path.is_file():
    raise InputError(path, "missing (not a study workdir)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def masked_label(label: np.ndarray, slices, slicing_axis: int, ignore: int) -> np.ndarray:
  """`label [X, Y, Z]` with `ignore` on every plane along `slicing_axis` that is not in `slices`."""
  out = np.full(label.shape, ignore, np.uint8)
  keep = [slice(None)] * 3
  keep[slicing_axis] = list(slices)
  out[tuple(keep)] = label[tuple(keep)]
  return out


def file_planes(case, planes) -> list:
  """The planes of a case's files that a plan's planes (on the study's grid, resampled when `data.target_spacing`
  changed the slicing axis) are made from (`resample.source_planes`): the planes an annotator would have painted."""
  if not case.resampled or case.shape[0] == case.original_shape[0]:
    return sorted(planes)
  coarse = resample_lib.coarse_axis(case.original_spacing) == 0  # the slicing axis is volume axis 0
  sources = resample_lib.source_planes(case.original_shape[0], case.shape[0], coarse=coarse)
  return sorted({j for i in planes for j in sources[i]})


def from_study(study_dir, point: str) -> dict:
  """The simulated annotations of one study point: its plan's slices of the true labels; as `from_plan`."""
  study_dir = pathlib.Path(study_dir).expanduser()
  plan_path = study_dir / "plans" / f"{point}.json"
  if not plan_path.is_file():
    known = sorted(p.stem for p in (study_dir / "plans").glob("*.json"))
    raise InputError(plan_path, f"missing: no point {point!r} in {study_dir}" +
                     (f" (e.g. {', '.join(known[:3])})" if known else ""))
  plan = json.loads(plan_path.read_text())
  config = study_config(study_dir)
  axis = int(config.data.slicing_axis)
  index = index_lib.index_msd(data_lib.dataset_root(config), slicing_axis=axis,
                              target_spacing=tuple(config.data.get("target_spacing") or ()))
  by_id = {c.case_id: c for c in index.cases}
  missing = sorted(set(plan) - set(by_id))
  if missing:
    raise InputError(plan_path, f"plans case(s) {missing[:3]} that {index.root} does not hold")
  cases = []
  for case_id in sorted(plan):
    case = by_id[case_id]
    label = _checked_values(case.label_path, nifti.read_array(case.label_path), index.num_classes)
    cases.append((case_id, list(case.image_paths),
                  masked_label(label, file_planes(case, plan[case_id]), axis, index.num_classes)))
  return {"name": f"{index.name}_{point}", "class_names": list(index.class_names),
          "channel_names": list(index.channel_names), "cases": cases}


# ---------------------------------------------------------------------------------------------------------------------
# Writing and checking.
# ---------------------------------------------------------------------------------------------------------------------

def _write_channels(case_id: str, image_paths, num_channels: int, folder: pathlib.Path) -> list:
  """imagesTr/<case>_<cccc>.nii.gz for every channel; a single 3D .nii.gz file is copied byte for byte."""
  written = []
  if len(image_paths) == num_channels:
    for c, path in enumerate(image_paths):
      target = folder / f"{case_id}_{c:04d}{FILE_ENDING}"
      image = nifti.load(path)
      if len(image.shape) != 3:
        raise InputError(path, f"expected a 3D channel file, got shape {tuple(image.shape)}")
      if path.name.endswith(".nii.gz"):
        files.atomic_write(target, path.read_bytes())
      else:
        nifti.save_like(target, nifti.read_array(path, np.float32), image)
      written.append(target)
    return written
  image = nifti.load(image_paths[0])
  data = nifti.read_array(image_paths[0], np.float32)
  if data.ndim != 4 or data.shape[3] != num_channels:
    raise InputError(image_paths[0], f"expected {num_channels} channels, got shape {data.shape}")
  for c in range(num_channels):
    target = folder / f"{case_id}_{c:04d}{FILE_ENDING}"
    nifti.save_like(target, np.ascontiguousarray(data[..., c]), image)
    written.append(target)
  return written


def write(workdir, source: dict) -> pathlib.Path:
  """Writes `source` (`from_plan` / `from_study`) as an nnU-Net v2 raw dataset into `workdir`.

  Cases without an annotated voxel are left out (warned). A folder that already holds files other than an earlier
  export's is refused; an earlier export's files that this one does not write are removed.
  """
  workdir = pathlib.Path(workdir).expanduser()
  if workdir.exists() and any(workdir.iterdir()) and not (workdir / "dataset.json").is_file():
    raise InputError(workdir, "exists and is not an nnU-Net raw dataset folder; choose another --workdir")
  ignore = len(source["class_names"])
  kept = []
  for case_id, image_paths, label in source["cases"]:
    if not (label != ignore).any():
      logging.warning("%s: no annotated voxel, left out of the export.", case_id)
      continue
    kept.append((case_id, image_paths, label))
  if not kept:
    raise InputError(workdir, "nothing to export: no case holds an annotated voxel")
  images, labels = workdir / "imagesTr", workdir / "labelsTr"
  images.mkdir(parents=True, exist_ok=True)
  labels.mkdir(parents=True, exist_ok=True)
  written = set()
  for case_id, image_paths, label in kept:
    written.update(_write_channels(case_id, image_paths, len(source["channel_names"]), images))
    written.add(nifti.save_like(labels / f"{case_id}{FILE_ENDING}", label, nifti.load(image_paths[0])))
  for stale in set(images.iterdir()) | set(labels.iterdir()):
    if stale not in written:
      stale.unlink() if stale.is_file() else shutil.rmtree(stale)
  meta = dataset_json(source["name"], source["channel_names"], source["class_names"], len(kept))
  files.atomic_write(workdir / "dataset.json", json.dumps(meta, indent=1))
  logging.info("Exported %d cases (%d annotated slices' worth of labels) to %s.", len(kept),
               sum(int((label != ignore).any(axis=(0, 1)).sum()) for _, _, label in kept), workdir)
  return workdir


def verify(folder) -> str:
  """Runs nnU-Net v2's integrity check (`verify_dataset_integrity`) on `folder`; returns what it printed.

  Raises:
    InputError: nnunetv2 is not installed, or the check fails (its message).
  """
  try:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
  except ImportError as e:
    raise InputError("config.export.verify", f"needs nnU-Net v2 (pip install -e '.[nnunet]'): {e}") from e
  printed = io.StringIO()
  try:
    with contextlib.redirect_stdout(printed):
      verify_dataset_integrity(str(folder), num_processes=1)
  except (AssertionError, RuntimeError, FileNotFoundError) as e:
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    raise InputError(folder, f"nnU-Net v2's integrity check failed: {' '.join(str(e).split()) or lines[-1:]}") from e
  return printed.getvalue()


def run(config, workdir) -> pathlib.Path:
  """`--mode=export`: the plan or study point of `config.export` as an nnU-Net v2 raw dataset in `workdir`."""
  config_lib.validate_export(config)
  cfg = config.export
  source = from_plan(cfg.plan, cfg.annotations) if cfg.plan else from_study(cfg.study, cfg.point)
  folder = write(workdir, source)
  if cfg.verify:
    verify(folder)
    logging.info("nnU-Net v2's integrity check passed on %s.", folder)
  return folder
