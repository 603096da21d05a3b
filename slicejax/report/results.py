"""Result rows: their schema, and the `results.jsonl` file they live in.

Every trained model appends one JSON object, a *row*, to `WORKDIR/results.jsonl`. `make_row` is the one place that
builds rows; `slicejax.report` reads them. A row holds:
- the point (`name`, `dims`, `budget`, `volumes`, `slices_per_volume` (None for the reference), `selection`,
  `interpolation`, `seed`, `reference`) and what it was trained with (`steps`, `density` = rho / mean depth of the
  annotated volumes);
- test results: `dice_mean` (mean over test volumes of each volume's mean over its defined classes), `dice_per_class`
  ({class name: mean over the volumes where it is defined}), `test_volumes`; the surface metrics the same way,
  `hd95_mean`, `hd95_per_class` (mm) and `nsd_mean`, `nsd_per_class` (at `nsd_tolerance_mm`); `class_volumes`
  ({class: number of test volumes whose truth holds it}); and per test volume, `test_cases` (case ids) and
  `per_volume` ({"dice" | "hd95" | "nsd": `[V][K - 1]` lists in the order of `test_cases` and the classes}), what
  the paired statistics of `slicejax.report.statistics` resample. The same Dice on the validation split as
  `val_dice_mean` and
  `val_dice_per_class` (`val_volumes`; absent with an empty validation split), and `val_curve` ({"steps": [...],
  "dice": [...]}: the mean Dice on a fixed subset of validation volumes during training). Undefined values (see
  `slicejax.evaluation.metrics`) are stored as null;
- `diverged` (and `diverged_step` when true); with interpolation, `interp_dice` (Dice of the interpolated slices,
  null with nothing to interpolate) and `interp_slices`;
- where it ran and how long it took: `group`, `model_index`, `launch` (placement; `launch` is the line of
  `WORKDIR/launches.jsonl`, `slicejax.environment`, that gives the versions and machine of the launch that trained
  it) and the `*_seconds` fields (timing). These depend on the grid and the machine, not on the point, and
  `comparable` leaves them out.
"""

import fcntl
import json
import math
import os

from absl import logging
import numpy as np

from slicejax.errors import InputError
from slicejax import files

PLACEMENT_FIELDS = ("group", "model_index", "launch")


def _number(value):
  value = float(value)
  return None if math.isnan(value) else value


def _per_class(names, values) -> dict:
  return {name: _number(v) for name, v in zip(names, values)}


def _nested(values) -> list:
  return [[_number(v) for v in per_volume] for per_volume in values]


def make_row(point, *, group: int, model_index: int, steps: int, density, class_names, test: dict, val: dict | None,
             diverged: bool, diverged_step: int, interpolation: dict | None, seconds: dict) -> dict:
  """The result row of one trained model.

  Args:
    point: its `study.Point`.
    group, model_index: where it trained.
    steps: training steps.
    density: slices per volume over the mean depth of its annotated volumes (None for the reference).
    class_names: foreground class names, `[K - 1]`.
    test, val: this model's `dice_mean` (scalar) and `dice_per_class` (`[K - 1]`) on the test and validation
      volumes, with `volumes` (their number); test None when not evaluated (no test fields), val None when the split
      has none. Test may also hold `hd95_mean`,
      `hd95_per_class`, `nsd_mean`, `nsd_per_class`, `nsd_tolerance_mm`, `class_volumes` (`[K - 1]`), `cases` and
      `per_volume` ({metric: `[V, K - 1]`}); val may hold `curve` ({"steps", "dice"}).
    diverged, diverged_step: whether (and at which step) its loss or gradients became non-finite.
    interpolation: with interpolation on, the `pooled_interpolation_dice` of its plan; else None.
    seconds: timing fields, e.g. {"train_seconds": ..., "eval_seconds": ...}.
  """
  row = {"name": point.name, **point.fields(), **dict(zip(PLACEMENT_FIELDS, (group, model_index))),
         "density": density, "steps": steps}
  test = {} if test is None else test
  if test:
    row.update(dice_mean=_number(test["dice_mean"]), dice_per_class=_per_class(class_names, test["dice_per_class"]),
               test_volumes=test["volumes"])
  for metric in ("hd95", "nsd"):
    if f"{metric}_mean" in test:
      row.update({f"{metric}_mean": _number(test[f"{metric}_mean"]),
                  f"{metric}_per_class": _per_class(class_names, test[f"{metric}_per_class"])})
  if "nsd_tolerance_mm" in test:
    row["nsd_tolerance_mm"] = float(test["nsd_tolerance_mm"])
  if "class_volumes" in test:
    row["class_volumes"] = {name: int(n) for name, n in zip(class_names, test["class_volumes"])}
  if "per_volume" in test:
    row["test_cases"] = list(test["cases"])
    row["per_volume"] = {metric: _nested(values) for metric, values in test["per_volume"].items()}
  if val is not None:
    row.update(val_dice_mean=_number(val["dice_mean"]), val_dice_per_class=_per_class(class_names,
                                                                                       val["dice_per_class"]),
               val_volumes=val["volumes"])
    if val.get("curve"):
      row["val_curve"] = {"steps": [int(s) for s in val["curve"]["steps"]],
                          "dice": [_number(d) for d in val["curve"]["dice"]]}
  row["diverged"] = bool(diverged)
  if diverged:
    row["diverged_step"] = int(diverged_step)
  if interpolation is not None:
    # No slice between annotated ones (rho = 1): there is nothing to score.
    row.update(interp_dice=_number(interpolation["dice_mean"]) if interpolation["num_slices"] else None,
               interp_slices=int(interpolation["num_slices"]))
  row.update(seconds)
  return row


def comparable(row: dict) -> dict:
  """The row without placement, timing and model-count fields (a round history's too: a model a family shares counts
  a share to each point): what must be equal for the same point trained anywhere."""
  drop = lambda k: k.endswith(("_seconds", "trained_models"))
  out = {k: v for k, v in row.items() if k not in PLACEMENT_FIELDS and not drop(k)}
  if "round_history" in out:
    out["round_history"] = [{k: v for k, v in entry.items() if not drop(k)} for entry in out["round_history"]]
  return out


def read_rows(path) -> list[dict]:
  """Reads the rows of a results file.

  Args:
    path: a `results.jsonl` file, one JSON object per line. A missing file holds no rows.

  Returns:
    The rows in file order. An unterminated last line that is not valid JSON (a writer killed mid-line) is skipped
    with a warning.

  Raises:
    InputError: naming `path:line` for any other line that is not a JSON object.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return []
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as err:
    raise InputError(path, f"not UTF-8 text ({err.reason})") from err
  # A file that ends in a newline leaves an empty last element; anything else there was never terminated.
  lines = text.split("\n")
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as err:
      if number == len(lines):
        logging.warning("%s:%d: ignoring a torn last line (%d characters)", path, number, len(line))
        break
      raise InputError(f"{path}:{number}", f"not valid JSON ({err.msg})") from err
    if not isinstance(row, dict):
      raise InputError(f"{path}:{number}", f"not a JSON object but {type(row).__name__}")
    rows.append(row)
  return rows


def append_rows(path, rows) -> None:
  """Appends rows to a results file without ever leaving it torn.

  The existing rows and the new ones are written to a temporary file that replaces `path` atomically; a torn last
  line left by an older writer is dropped on the way. An exclusive lock on `path + ".lock"` serialises writers that
  share the file, so none loses another's rows.

  Args:
    path: the `results.jsonl` file; its folder must exist.
    rows: dicts of JSON values; numpy and jax scalars and arrays are converted to plain numbers and lists.

  Raises:
    InputError: a new row is not a dict or holds a value JSON cannot store. Nothing is written then.
  """
  path = os.fspath(path)
  new_lines = []
  for index, row in enumerate(rows):
    if not isinstance(row, dict):
      raise InputError(f"new row {index}", f"not a dict but {type(row).__name__}")
    try:
      new_lines.append(json.dumps(row, default=_json_default, allow_nan=False) + "\n")
    except (TypeError, ValueError) as err:
      raise InputError(f"new row {index}", str(err)) from err
  with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    old_lines = [json.dumps(row) + "\n" for row in read_rows(path)]
    files.atomic_write(path, "".join(old_lines + new_lines))


def _json_default(value):
  # Metrics often arrive as numpy or jax scalars, which json cannot store directly.
  if hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")
