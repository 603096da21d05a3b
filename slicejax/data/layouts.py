"""The two dataset layouts slicejax reads, MSD and nnU-Net v2: which one a dataset.json describes, and its labels.

Decided once for every mode (training, --check, plan, predict, export): `slicejax.data.cases.find_cases` lists the
cases of a folder, labelled or not, through `detect_layout` and `parse_labels`.
"""

import json
import pathlib
import re

from slicejax.errors import InputError

# A label of this name in dataset.json is nnU-Net v2's ignore label: voxels not annotated, not a class.
IGNORE_NAME = "ignore"
# The name of an nnU-Net v2 channel file without its ending: `<case>_<cccc>`, channel cccc of a case.
CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")


def read_json(path: pathlib.Path) -> dict:
  """A dataset.json's object.

  Raises:
    InputError: the file is missing, not JSON, or not a JSON object.
  """
  if not path.is_file():
    raise InputError(path, "missing (expected an MSD or nnU-Net v2 dataset.json)")
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(path, f"not valid JSON: {e}") from e
  if not isinstance(meta, dict):
    raise InputError(path, "not a JSON object")
  return meta


def index_map(path, key: str, mapping) -> tuple:
  """{"0": name0, "1": name1, ...} (or the inverse, {name: 0, ...}) -> (name0, name1, ...); keys must be 0..K-1."""
  if not isinstance(mapping, dict) or not mapping:
    raise InputError(path, f"'{key}' must be a non-empty object")
  items = list(mapping.items())
  if all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
    items = [(v, k) for k, v in items]
  try:
    by_index = {int(k): str(v) for k, v in items}
  except (TypeError, ValueError) as e:
    raise InputError(path, f"'{key}' keys must be integers, got {list(mapping)}") from e
  if sorted(by_index) != list(range(len(by_index))):
    raise InputError(path, f"'{key}' must be numbered 0..{len(by_index) - 1}, got {sorted(by_index)}")
  return tuple(by_index[i] for i in range(len(by_index)))


def parse_labels(path, mapping) -> tuple:
  """dataset.json `labels` -> (class_names, ignore_label).

  Both spellings are read: MSD {"0": "background", "1": "x"} and nnU-Net v2 {"background": 0, "x": 1}. A label
  named "ignore" (nnU-Net v2's ignore label) must carry the highest value; it is not a class.
  """
  if not isinstance(mapping, dict) or not mapping:
    raise InputError(path, "'labels' must be a non-empty object")
  if any(isinstance(v, (list, tuple)) for v in mapping.values()):
    raise InputError(path, "'labels' holds region-based entries (lists of values), which are not supported")
  ignore = [k for k, v in mapping.items() if IGNORE_NAME in (k, v)]
  if not ignore:
    return index_map(path, "labels", mapping), None
  if len(ignore) > 1:
    raise InputError(path, f"'labels' names '{IGNORE_NAME}' {len(ignore)} times")
  value = ignore[0] if mapping[ignore[0]] == IGNORE_NAME else mapping[ignore[0]]
  rest = {k: v for k, v in mapping.items() if k != ignore[0]}
  try:
    value = int(value)
  except (TypeError, ValueError) as e:
    raise InputError(path, f"'labels': '{IGNORE_NAME}' must have an integer value, got {value!r}") from e
  spelled_v2 = all(isinstance(v, int) and not isinstance(v, bool) for v in rest.values())
  others = [v if spelled_v2 else k for k, v in rest.items()]
  try:
    highest = max(int(v) for v in others) if others else -1
  except (TypeError, ValueError) as e:
    raise InputError(path, f"'labels' keys must be integers, got {list(mapping)}") from e
  if value <= highest:
    raise InputError(path, f"'labels': '{IGNORE_NAME}' must have the highest value (above {highest}), got {value}")
  return index_map(path, "labels", rest), value


def listed_files(folder: pathlib.Path, ending: str) -> list:
  """Names in `folder` ending in `ending`, sorted, without hidden files (e.g. the `._x.nii.gz` of macOS archives)."""
  return sorted(p.name for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))


MSD, NNUNET = "MSD", "nnU-Net v2"


def _channel_files(folder: pathlib.Path, ending: str) -> list:
  """Names in `folder` named like nnU-Net v2 channel files, `<case>_<cccc><ending>`."""
  return [n for n in listed_files(folder, ending) if CHANNEL_FILE.match(n[:-len(ending)])] if folder.is_dir() else []


def detect_layout(json_path, meta: dict) -> tuple:
  """The layout of a dataset folder, decided once for every mode (training, --check, plan, predict, export).

  The keys decide where they agree: `channel_names` or `file_ending` without `modality` is nnU-Net v2; `modality`
  or a `training` list without `channel_names` is MSD. A dataset.json holding both `modality` and `channel_names`
  (a converted folder, say) is decided by its files: every image of `imagesTr/` named `<case>_<cccc><ending>` with
  channels 0..C-1 and no `training` list whose images exist is nnU-Net v2, else MSD.

  Returns:
    (layout, why): `MSD` or `NNUNET`, and the evidence in a few words (said in messages and the log).
  """
  json_path = pathlib.Path(json_path)
  has_v2 = "channel_names" in meta or "file_ending" in meta
  has_msd = "modality" in meta or isinstance(meta.get("training"), list)
  if has_v2 and not has_msd:
    return NNUNET, "dataset.json has 'channel_names'/'file_ending'"
  if not has_v2:
    return MSD, "dataset.json has " + ("'modality'" if "modality" in meta else "no nnU-Net v2 keys")
  images = json_path.parent / "imagesTr"
  ending = meta.get("file_ending") if isinstance(meta.get("file_ending"), str) else ".nii.gz"
  training = meta.get("training") if isinstance(meta.get("training"), list) else []
  listed = [json_path.parent / e["image"] for e in training if isinstance(e, dict) and isinstance(e.get("image"), str)]
  if listed and all(path.is_file() for path in listed):
    return MSD, "dataset.json has both layouts' keys; its 'training' list names files that exist"
  channel_files = _channel_files(images, ending)
  channels = len(meta["channel_names"]) if isinstance(meta.get("channel_names"), dict) else 0
  found = {int(n[:-len(ending)][-4:]) for n in channel_files}
  if channel_files and len(channel_files) == len(listed_files(images, ending)) and found == set(range(channels)):
    return NNUNET, f"dataset.json has both layouts' keys; imagesTr/ holds <case>_<cccc>{ending} channel files"
  return MSD, "dataset.json has both layouts' keys; imagesTr/ holds one file per case"
