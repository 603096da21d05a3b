"""Benchmark: mask interpolation of a full MSD Task04 hippocampus annotation plan.

Workload: the label volumes of the first `--volumes` training cases listed in dataset.json, read with nibabel as
stored (x, y, z) and converted to int32 (a few files store labels as float32), with the last axis moved to the front
as the slicing axis, so a volume is `[D, H, W]` with D about 36. Each volume is annotated on `--rho` equally spaced
slices, the centres of rho equal intervals (floor((i + 1/2) * D / rho)), and interpolated with
`slicejax.study.interpolation.interpolate` (plain, or with `--align`). Loading is not timed; the interpolation of all
volumes is run once to warm up, then `--repeats` times, and the median wall time is reported with the Dice of the
interpolated slices against the true labels, pooled over all volumes.

Usage (about 5 s in all on 2 CPU cores, of which about 0.6 s per timed run; prints one JSON line):
  .venv/bin/python bench/interpolation.py --data PATH/Task04_Hippocampus --json
"""

import json
import pathlib
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import nibabel as nib
import numpy as np

from slicejax.errors import InputError
from slicejax.study import interpolation

_DATA = flags.DEFINE_string("data", None, "MSD Task04 hippocampus folder (with dataset.json and labelsTr/).")
_VOLUMES = flags.DEFINE_integer("volumes", 180, "Number of training cases, first ones in dataset.json order.")
_RHO = flags.DEFINE_integer("rho", 4, "Annotated slices per volume.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after one warm-up run.")
_ALIGN = flags.DEFINE_bool("align", False, "Interpolate with centroid alignment (align_centroids=True).")
_JSON = flags.DEFINE_bool("json", False, "Print only the JSON result line.")
flags.mark_flag_as_required("data")


def load_labels(root: pathlib.Path, count: int) -> tuple[list[np.ndarray], list[tuple[float, float]], int]:
  """Label volumes `[D, H, W]` (slicing axis = NIfTI axis 2), their in-plane spacings, and the number of classes."""
  meta_path = root / "dataset.json"
  meta = json.loads(meta_path.read_text())
  cases = meta["training"][:count]
  if len(cases) < count:
    raise InputError(meta_path, f"{len(cases)} training cases listed, {count} asked for")
  labels, spacings = [], []
  for case in cases:
    path = root / case["label"]
    image = nib.load(path)
    # A few label files are stored as float32; they must still hold whole class numbers.
    label = np.asarray(image.dataobj)
    if not np.array_equal(label, np.round(label)):
      raise InputError(path, "label volume holds non-integer values")
    labels.append(np.moveaxis(label.astype(np.int32), 2, 0))
    zooms = image.header.get_zooms()
    spacings.append((float(zooms[0]), float(zooms[1])))
  return labels, spacings, len(meta["labels"])


def fixed_slices(depth: int, rho: int) -> np.ndarray:
  """`[rho]` centres of rho equal intervals of a depth-`depth` volume."""
  return np.floor((np.arange(rho) + 0.5) * depth / rho).astype(np.int64)


def main(argv):
  del argv
  if _JSON.value:
    logging.set_verbosity(logging.ERROR)
  labels, spacings, num_classes = load_labels(pathlib.Path(_DATA.value), _VOLUMES.value)
  plans = [fixed_slices(y.shape[0], _RHO.value) for y in labels]
  logging.info("%d volumes, depths %d..%d, %d classes", len(labels), min(y.shape[0] for y in labels),
               max(y.shape[0] for y in labels), num_classes)

  def run_once():
    return [interpolation.interpolate(y, a, num_classes, s, align_centroids=_ALIGN.value)[0]
            for y, a, s in zip(labels, plans, spacings)]

  filleds = run_once()
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run_once()
    times.append(time.perf_counter() - start)
  logging.info("run times (s): %s", ", ".join(f"{s:.3f}" for s in times))
  dice = interpolation.pooled_interpolation_dice(labels, filleds, plans, num_classes)
  logging.info("interpolated slices: %d, Dice per class: %s", dice["num_slices"], dice["dice_per_class"])
  print(json.dumps({
      "benchmark": "interpolation",
      "volumes": len(labels),
      "rho": _RHO.value,
      "align": _ALIGN.value,
      "median_s": round(statistics.median(times), 4),
      "interp_dice_mean": round(dice["dice_mean"], 4),
  }))


if __name__ == "__main__":
  app.run(main)
