"""The cases of a dataset folder and the files that make each, found one way for every mode: `find_cases`.

Training, `--check` and export take the labelled cases (`labelled=True`), plan and predict every image, labelled or
not (`labelled=False`). Layouts (`slicejax.data.layouts` tells MSD from nnU-Net v2 by dataset.json):
  * MSD: `labels` ({"0": "background", "1": ...}), `training` (a list of {"image": "./imagesTr/x.nii.gz",
    "label": "./labelsTr/x.nii.gz"}; without it the labelled cases are the files of `labelsTr/`), an optional `test`
    (images: paths or {"image": path}, listed with the images), an optional `modality` ({"0": "T2", ...}) and an
    optional `name`. An image is one file, 3D `[X, Y, Z]` or 4D multi-channel `[X, Y, Z, C]` (channels last).
  * nnU-Net v2 (recognised by `channel_names` or `file_ending`): `channel_names` ({"0": "CT", ...}), `labels`
    ({"background": 0, "x": 1, ...}), `file_ending` (".nii.gz" or ".nii"), no case list: channel i of case x is the
    3D file `imagesTr/x_{i:04d}{file_ending}`. The labelled cases are the files `labelsTr/x{file_ending}`; the images
    are every case of `imagesTr/` and `imagesTs/`.
  * a folder without dataset.json (images only): one case per `.nii.gz` / `.nii` file, or nnU-Net v2 channel files
    `<case>_<cccc>` grouped into cases (`folder_cases`).
Either spelling of `labels` is read in both layouts (`layouts.parse_labels`): a label named "ignore" (nnU-Net v2's
ignore label, the highest value) is not a class. Only files are listed here; their headers are read by
`slicejax.data.index`. Bad input raises `InputError` naming the file.
"""

import dataclasses
import pathlib

from absl import logging

from slicejax.data import layouts
from slicejax.data import nifti
from slicejax.errors import InputError

# `Listing.layout`, as plan.json records it.
MSD, NNUNET, FOLDER = "msd", "nnunet", "folder"


@dataclasses.dataclass(frozen=True, eq=False)
class Listing:
  """A dataset folder's cases as files (`find_cases`); no NIfTI file has been opened.

  Attributes:
    name: dataset.json's `name`, else the folder's name.
    root: the folder.
    layout: `MSD`, `NNUNET` or `FOLDER` (no dataset.json).
    class_names: class names by label value, background first, without the ignore label; None where dataset.json
      declares no `labels`.
    ignore_label: the value of the label named "ignore", else None.
    channel_names: the channels dataset.json names (`modality` or `channel_names`), else None.
    cases: case id -> (image files, label file or None): one image file (3D or 4D), or one 3D file per channel.
  """
  name: str
  root: pathlib.Path
  layout: str
  class_names: tuple | None
  ignore_label: int | None
  channel_names: tuple | None
  cases: dict


def find_cases(root, *, labelled: bool) -> Listing:
  """The cases of an MSD, nnU-Net v2 or (images only) plain NIfTI folder (see the module docstring).

  Args:
    root: the folder.
    labelled: True for the cases that have a label file, each with it (needs dataset.json with `labels`); False
      for every image, labelled or not, without label files.

  Returns:
    A Listing. Labelled cases come in case id order (the files' name order where found in `labelsTr/`); images in
    the order listed (sort them by case id).

  Raises:
    InputError: naming the file for anything missing, unreadable or inconsistent.
  """
  root = pathlib.Path(root)
  json_path = root / "dataset.json"
  if not labelled:
    if not root.is_dir():
      raise InputError(root, "not a folder")
    if not json_path.is_file():
      return Listing(name=root.name, root=root, layout=FOLDER, class_names=None, ignore_label=None,
                     channel_names=None, cases={case: (paths, None) for case, paths in folder_cases(root).items()})
  meta = layouts.read_json(json_path)
  class_names, ignore_label = None, None
  if "labels" in meta:
    class_names, ignore_label = layouts.parse_labels(json_path, meta["labels"])
  elif labelled:
    raise InputError(json_path, "lacks 'labels'")
  layout, why = layouts.detect_layout(json_path, meta)
  logging.info("%s: %s layout (%s)", root, layout, why)
  if layout == layouts.NNUNET:
    channel_names, ending = _nnunet_settings(json_path, meta, why)
    cases = (_from_labels(json_path, meta, ending, channel_names) if labelled
             else _nnunet_images(root, ending, len(channel_names)))
  else:
    channel_names = layouts.index_map(json_path, "modality", meta["modality"]) if "modality" in meta else None
    if not labelled:
      cases = _msd_images(json_path, meta)
    elif "training" in meta:
      cases = _msd_training(json_path, meta["training"])
    else:
      cases = _from_labels(json_path, meta, ".nii.gz", None)
  return Listing(name=str(meta.get("name", root.name)), root=root, layout=NNUNET if layout == layouts.NNUNET else MSD,
                 class_names=class_names, ignore_label=ignore_label, channel_names=channel_names, cases=cases)


def _nnunet_settings(json_path: pathlib.Path, meta: dict, why: str) -> tuple:
  """(channel names, file ending) of an nnU-Net v2 dataset.json."""
  if "channel_names" not in meta:
    raise InputError(json_path, f"has 'file_ending' but lacks 'channel_names' (read as {layouts.NNUNET}: {why})")
  channel_names = layouts.index_map(json_path, "channel_names", meta["channel_names"])
  ending = meta.get("file_ending")
  if not isinstance(ending, str):
    raise InputError(json_path, f"lacks 'file_ending', e.g. \".nii.gz\" (read as {layouts.NNUNET}: {why})")
  if ending not in nifti.NIFTI_ENDINGS:
    raise InputError(json_path, f"'file_ending' {ending!r} is not supported; NIfTI only: {nifti.NIFTI_ENDINGS}")
  return channel_names, ending


def _case_id(image_path: str) -> str:
  name = pathlib.PurePosixPath(image_path).name
  return nifti.strip_ending(name) or name


# ---------------------------------------------------------------------------------------------------------------------
# Labelled cases.
# ---------------------------------------------------------------------------------------------------------------------


def _msd_training(json_path: pathlib.Path, training) -> dict:
  """MSD `training` list -> {case_id: ((image_path,), label_path)} in case id order."""
  if not isinstance(training, list):
    raise InputError(json_path, "'training' must be a list")
  if not training:
    raise InputError(json_path, "'training' is empty: no cases to load")
  root = json_path.parent
  pairs = {}
  for i, entry in enumerate(training):
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
      raise InputError(json_path, f"training[{i}] must have string 'image' and 'label' entries")
    case_id = _case_id(entry["image"])
    if case_id in pairs:
      raise InputError(json_path, f"case '{case_id}' is listed twice in 'training'")
    pairs[case_id] = ((root / entry["image"],), root / entry["label"])
  return {c: pairs[c] for c in sorted(pairs)}


def _from_labels(json_path: pathlib.Path, meta: dict, ending: str, channel_names) -> dict:
  """The cases of the files of `labelsTr/` -> {case_id: (image paths, label_path)} in the files' name order.

  nnU-Net v2 (`channel_names` given): channel i of case x is `imagesTr/x_{i:04d}{ending}`. MSD without a `training`
  list: one (3D or 4D) image `imagesTr/x{ending}` per case.
  """
  root = json_path.parent
  labels_dir = root / "labelsTr"
  if not labels_dir.is_dir():
    raise InputError(labels_dir, f"missing (and {json_path.name} has no 'training' list, so cases are read from it)")
  names = layouts.listed_files(labels_dir, ending)
  if not names:
    others = sorted(p.name for p in labels_dir.iterdir() if not p.name.startswith("."))
    hint = f"; found e.g. '{others[0]}': does 'file_ending' in {json_path.name} match the files?" if others else ""
    raise InputError(labels_dir, f"no label files ending in '{ending}'{hint}")
  if isinstance(meta.get("numTraining"), int) and meta["numTraining"] != len(names):
    raise InputError(labels_dir, f"holds {len(names)} label files but {json_path.name} says numTraining "
                     f"{meta['numTraining']}")
  pairs = {}
  for name in names:
    case_id = name[:-len(ending)]
    if channel_names is None:
      images = (root / "imagesTr" / f"{case_id}{ending}",)
    else:
      images = tuple(root / "imagesTr" / f"{case_id}_{i:04d}{ending}" for i in range(len(channel_names)))
    for i, path in enumerate(images):
      if not path.is_file():
        what = f"channel {i} ('{channel_names[i]}') of case '{case_id}'" if channel_names else f"case '{case_id}'"
        raise InputError(path, f"missing: the image of {what} (label {labels_dir.name}/{name})")
    pairs[case_id] = (images, labels_dir / name)
  return pairs


# ---------------------------------------------------------------------------------------------------------------------
# Images, labelled or not.
# ---------------------------------------------------------------------------------------------------------------------


def _msd_images(json_path: pathlib.Path, meta: dict) -> dict:
  """The images of MSD's `training` and `test` entries -> {case_id: ((image_path,), None)}."""
  entries = list(meta.get("training") or [])
  entries += [{"image": e} if isinstance(e, str) else e for e in meta.get("test") or []]
  cases = {}
  for i, entry in enumerate(entries):
    image = entry.get("image") if isinstance(entry, dict) else None
    if not isinstance(image, str):
      raise InputError(json_path, f"entry {i} of 'training'/'test' has no string 'image'")
    case_id = _case_id(image)
    if case_id in cases:
      raise InputError(json_path, f"case '{case_id}' is listed twice")
    cases[case_id] = ((json_path.parent / image,), None)
  if not cases:
    raise InputError(json_path, "lists no images in 'training' or 'test'")
  return cases


def _nnunet_images(root: pathlib.Path, ending: str, channels: int) -> dict:
  """The channel files of `imagesTr/` and `imagesTs/` -> {case_id: (channel paths, None)}."""
  found = {}
  for folder in ("imagesTr", "imagesTs"):
    for path in sorted((root / folder).glob(f"*{ending}")) if (root / folder).is_dir() else ():
      match = layouts.CHANNEL_FILE.match(path.name[:-len(ending)])
      if not match:
        raise InputError(path, f"not named <case>_<cccc>{ending} (nnU-Net v2 raw layout)")
      found.setdefault(match.group(1), {})[int(match.group(2))] = path
  cases = {}
  for case_id, by_channel in found.items():
    if sorted(by_channel) != list(range(channels)):
      raise InputError(root / "imagesTr", f"case {case_id} has channel files {sorted(by_channel)}, dataset.json "
                       f"declares {channels} channel(s) (0..{channels - 1})")
    cases[case_id] = (tuple(by_channel[i] for i in range(channels)), None)
  if not cases:
    raise InputError(root, f"no images named <case>_0000{ending} in imagesTr/ or imagesTs/")
  return cases


def folder_cases(root: pathlib.Path) -> dict:
  """case id -> its files, in a folder without dataset.json: one case per file, or nnU-Net v2 channel files grouped
  into cases when every file is named `<case>_<cccc>` and the cases all have the channels 0..C-1 (with several
  cases, or a single channel: `case_0000`, `case_0001`, ... of one name are read as cases otherwise).

  Raises:
    InputError: the folder holds no NIfTI file.
  """
  files = {nifti.strip_ending(p.name): p for p in sorted(root.iterdir()) if nifti.strip_ending(p.name)
           and not p.name.startswith(".")}
  if not files:
    raise InputError(root, "holds no dataset.json and no .nii.gz / .nii files")
  matches = {stem: layouts.CHANNEL_FILE.match(stem) for stem in files}
  if all(matches.values()):
    grouped = {}
    for stem, match in matches.items():
      grouped.setdefault(match.group(1), {})[int(match.group(2))] = files[stem]
    channel_sets = {tuple(sorted(by_channel)) for by_channel in grouped.values()}
    (channels,) = channel_sets if len(channel_sets) == 1 else ((),)
    if channels and channels == tuple(range(len(channels))) and (len(grouped) > 1 or len(channels) == 1):
      return {case: tuple(by_channel[i] for i in channels) for case, by_channel in grouped.items()}
  return {stem: (path,) for stem, path in files.items()}
