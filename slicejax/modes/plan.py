"""Annotation plans for unlabelled volumes: which slices of which volumes people should annotate, and the files
they annotate in.

`python launch.py --mode=plan --config=configs/plan.py --config.data.root=IMAGES --workdir=PLAN
[--config.plan.budget=B --config.plan.volumes=S --config.plan.selection=fixed | --config.plan.from_study=STUDY]`

The plan of budget B with s volumes takes rho = B / s slices from each of s volumes, exactly as a study point does
(`slicejax.study.grid.make_plan`: volumes from a seeded permutation, slices by the named strategy inside each volume;
`ual` trains its slice encoder on the images alone, no label needed), among the slices each volume offers: from
its first to its last slice holding a nonzero voxel (the region nnU-Net crops to), so a blank slice is never on the
worklist. With `plan.from_study`, s, rho and the selection are those of the best cell (highest mean Dice over seeds,
`slicejax.report.cells.summarise`) of a finished study at budget B (of `plan.dims`, or any dims).

Files written into WORKDIR (nothing is written before every input has been checked):
  * `plan.json`: the settings, the classes and the ignore value, per case its image file(s), the slicing axis, the
    slice indices in annotation order and the slices it offered (`offered`: `[lo, hi)`), and every volume's offered
    range (`offered`), chosen or not;
  * `plan.csv`: one row per slice: `order, case_id, axis, slice, image, template`; `order` runs volume by volume
    (case id order), slices ascending inside a volume, so an annotator opens each file once;
  * `templates/<case>.nii.gz`: a label file on the image's grid (its affine, sform/qform, voxel size) holding the
    ignore value everywhere except the chosen slices, which hold 0 (background) for the annotator to paint over in
    ITK-SNAP or 3D Slicer; the ignore value is the number of classes K, the label nnU-Net v2 calls "ignore" (the
    highest integer);
  * `contact_sheet.png` (`contact_sheet_<n>.png` beyond `plan.sheet_tiles` slices): every chosen slice, titled with
    its case and index, for a review before annotation starts.
Slice indices are along the NIfTI axis `data.slicing_axis` (0-based, as ITK-SNAP and Slicer number them).
"""

import csv
import io
import json
import math
import pathlib

from absl import logging
import numpy as np

from slicejax import config as config_lib
from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import nifti
from slicejax.errors import InputError
from slicejax import files
from slicejax.modes import plan_slices
from slicejax.report import cells as cells_lib
from slicejax.report import results
from slicejax.study import grid as study
from slicejax.study import selection as selection_lib

# ---------------------------------------------------------------------------------------------------------------------
# What to plan: the allocation and selection, given or read from a study.
# ---------------------------------------------------------------------------------------------------------------------

def best_cell(study_workdir, budget: int, dims: int = 0) -> dict:
  """The best sparse cell of a finished study at `budget`: the highest mean Dice over seeds.

  Args:
    study_workdir: a study's workdir (holding `results.jsonl`).
    budget: B.
    dims: 2 or 3 to consider only those models; 0 for any.

  Returns:
    `cells.summarise`'s cell (dims, volumes, slices_per_volume, selection, interpolation, dice_mean, ...).
  """
  path = pathlib.Path(study_workdir).expanduser() / "results.jsonl"
  if not path.is_file():
    raise InputError("config.plan.from_study", f"{path} does not exist (not a finished study workdir)")
  cells = [c for c in cells_lib.summarise(results.read_rows(path))
           if not c["reference"] and c["rounds"] == 1 and c["budget"] == budget and (not dims or c["dims"] == dims)]
  if not cells:
    raise InputError("config.plan.from_study", f"{path} has no sparse results at budget {budget}"
                     + (f" for {dims}D models" if dims else ""))
  defined = [c for c in cells if not math.isnan(c["dice_mean"])]
  if not defined:
    raise InputError("config.plan.from_study", f"{path} has no defined Dice at budget {budget}")
  return max(defined, key=lambda c: c["dice_mean"])


def allocation(config) -> dict:
  """{budget, volumes, slices_per_volume, selection, source} of the plan: the config's, or the study's best cell."""
  cfg = config.plan
  if cfg.from_study:
    cell = best_cell(cfg.from_study, cfg.budget, cfg.dims)
    logging.info("Best cell of %s at budget %d: %dD, %d volumes x %d slices, %s (Dice %.3f over %d seeds).",
                 cfg.from_study, cfg.budget, cell["dims"], cell["volumes"], cell["slices_per_volume"],
                 cell["selection"], cell["dice_mean"], cell["n_seeds"])
    return {"budget": cfg.budget, "volumes": cell["volumes"], "slices_per_volume": cell["slices_per_volume"],
            "selection": cell["selection"],
            "source": {"study": str(cfg.from_study), "dims": cell["dims"], "interpolation": cell["interpolation"],
                       "dice_mean": cell["dice_mean"], "seeds": cell["seeds"]}}
  if cfg.budget % cfg.volumes:
    raise InputError("config.plan.volumes", f"{cfg.volumes} volumes do not split budget {cfg.budget} into whole "
                     "slices per volume")
  return {"budget": cfg.budget, "volumes": cfg.volumes, "slices_per_volume": cfg.budget // cfg.volumes,
          "selection": cfg.selection, "source": None}


def class_names(config, images: index_lib.ImageSet) -> tuple:
  """The classes annotators paint: dataset.json's `labels`, else `config.plan.classes`."""
  if config.plan.classes:
    return tuple(config.plan.classes)
  if images.class_names:
    return images.class_names
  raise InputError("config.plan.classes", f"{images.root} declares no classes (no dataset.json 'labels'); name "
                   "them, background first, e.g. --config.plan.classes='(\"background\", \"tumour\")'")


# ---------------------------------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------------------------------

def offered_slices(images: index_lib.ImageSet) -> dict:
  """case id -> `[lo, hi)`: the slices from the first to the last that hold a nonzero voxel in any channel (the
  region nnU-Net crops every case to); slices outside it are blank and never planned.

  Raises:
    InputError: a volume holds no nonzero voxel.
  """
  offered = {}
  for case in images.cases:
    volume = index_lib.read_case(case, images.slicing_axis)
    nonzero = np.flatnonzero(np.any(volume.reshape(volume.shape[0], -1) != 0, axis=1))
    if not nonzero.size:
      raise InputError(case.paths[0], "holds no nonzero voxel: nothing to annotate")
    offered[case.case_id] = (int(nonzero[0]), int(nonzero[-1]) + 1)
  return offered


def make_plan(config, images: index_lib.ImageSet, chosen: dict, offered: dict | None = None) -> dict:
  """case id -> sorted slice indices: `study.make_plan` of the allocation over every volume of `images`, inside
  each volume's `offered` slices (`offered_slices`; None: all)."""
  depths = images.depths()
  if chosen["volumes"] > len(depths):
    raise InputError("config.plan.volumes", f"{chosen['volumes']} volumes exceed the {len(depths)} in {images.root}")
  point = study.Point(dims=2, budget=chosen["budget"], volumes=chosen["volumes"],
                      slices_per_volume=chosen["slices_per_volume"], selection=chosen["selection"],
                      interpolation=False, seed=config.plan.seed)
  strategy = selection_lib.get(point.selection)
  options = config.get(point.selection) if point.selection in config else None
  embeddings = plan_slices.slice_embeddings(config, images) if strategy.NEEDS_EMBEDDINGS else None
  return study.make_plan(point, depths, roi=tuple(config.plan.roi), options=options, embeddings=embeddings,
                         offered=offered)


def template(case: index_lib.ImageCase, slices, slicing_axis: int, ignore: int) -> np.ndarray:
  """`[X, Y, Z]` uint8 (uint16 above 255): `ignore` everywhere but the planes `slices` along `slicing_axis`, 0 there."""
  dtype = np.uint8 if ignore <= np.iinfo(np.uint8).max else np.uint16
  volume = np.full(case.shape, ignore, dtype)
  volume[list(slices)] = 0
  return np.ascontiguousarray(nifti.to_nifti_order(volume, slicing_axis))


# ---------------------------------------------------------------------------------------------------------------------
# The contact sheet.
# ---------------------------------------------------------------------------------------------------------------------

def _tile(image: np.ndarray) -> np.ndarray:
  """`[H, W]` raw slice -> display array in [0, 1], clipped to the 1st-99th percentiles, rows as the screen's."""
  lo, hi = np.percentile(image, [1, 99])
  return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1).T[::-1]


def contact_sheets(plan: dict, images: index_lib.ImageSet, tiles_per_sheet: int) -> list:
  """PNG bytes of the chosen slices (channel 0), `tiles_per_sheet` per sheet, each titled `case [axis=a] index`."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  by_id = images.by_id()
  tiles = []
  for case in sorted(plan):
    volume = index_lib.read_case(by_id[case], images.slicing_axis)
    tiles += [(f"{case} [{images.slicing_axis}] {i}", _tile(volume[i, ..., 0])) for i in plan[case]]
  sheets = []
  for start in range(0, len(tiles), tiles_per_sheet):
    page = tiles[start:start + tiles_per_sheet]
    columns = min(8, len(page))
    lines = -(-len(page) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(2 * columns, 2.2 * lines), squeeze=False)
    for ax in axes.ravel():
      ax.axis("off")
    for ax, (title, tile) in zip(axes.ravel(), page):
      ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      ax.set_title(title, fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    sheets.append(buffer.getvalue())
  return sheets


# ---------------------------------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------------------------------

def build(config) -> dict:
  """Checks every input and builds the plan without writing anything.

  Returns:
    {"meta": plan.json's content, "rows": plan.csv's rows, "images": the ImageSet, "plan": case -> slices}.
  """
  config_lib.validate_plan(config)
  images = index_lib.index_images(data_lib.dataset_root(config), slicing_axis=config.data.slicing_axis)
  names = class_names(config, images)
  offered = offered_slices(images)
  if config.plan.model:  # the next round's worklist, chosen by a trained model (`slicejax.modes.worklist`)
    from slicejax.modes import worklist
    return worklist.build(config, images, names, offered)
  chosen = allocation(config)
  plan = make_plan(config, images, chosen, offered)
  ordered = plan_slices.rows(plan, images)
  ignore = len(names)
  meta = {
      "format": 1, "dataset": images.name, "root": images.root, "layout": images.layout,
      "slicing_axis": images.slicing_axis, "budget": chosen["budget"], "volumes": chosen["volumes"],
      "slices_per_volume": chosen["slices_per_volume"], "selection": chosen["selection"], "seed": config.plan.seed,
      "roi": list(config.plan.roi), "from_study": chosen["source"],
      "class_names": list(names), "ignore_label": ignore, "channel_names": list(images.channel_names),
      **plan_slices.entries(plan, images, offered),
  }
  return {"meta": meta, "rows": ordered, "images": images, "plan": plan}


def _csv(ordered: list) -> str:
  buffer = io.StringIO()
  # A worklist chosen by a model adds its columns (`slicejax.modes.worklist`).
  fields = list(ordered[0]) if ordered else ["order", "case_id", "axis", "slice", "image", "template"]
  writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  writer.writerows(ordered)
  return buffer.getvalue()


def write(workdir, built: dict, tiles_per_sheet: int = 64) -> pathlib.Path:
  """Writes plan.json, plan.csv, the templates and the contact sheet(s) of `build`'s result into `workdir`."""
  workdir = pathlib.Path(workdir)
  meta, images, plan = built["meta"], built["images"], built["plan"]
  existing = workdir / "plan.json"
  if existing.is_file() and json.loads(existing.read_text()) != meta:
    raise InputError(workdir, "holds a different plan (plan.json); choose another --workdir or remove it")
  (workdir / plan_slices.TEMPLATES).mkdir(parents=True, exist_ok=True)
  by_id = images.by_id()
  for case, slices in sorted(plan.items()):
    reference = nifti.load(by_id[case].paths[0])
    label = template(by_id[case], slices, images.slicing_axis, meta["ignore_label"])
    if case in built.get("base", {}):  # a worklist continues the volume's annotations so far
      label = np.where(label == meta["ignore_label"], built["base"][case], label).astype(label.dtype)
    nifti.save_like(workdir / plan_slices.TEMPLATES / f"{case}.nii.gz", label, reference)
  sheets = contact_sheets(plan, images, tiles_per_sheet)
  for old in workdir.glob("contact_sheet*.png"):
    old.unlink()
  for n, png in enumerate(sheets):
    files.atomic_write(workdir / ("contact_sheet.png" if len(sheets) == 1 else f"contact_sheet_{n + 1}.png"), png)
  files.atomic_write(workdir / "plan.csv", _csv(built["rows"]))
  files.atomic_write(existing, json.dumps(meta, indent=1))
  return workdir


def run(config, workdir) -> dict:
  """`build` then `write`: the annotation plan of `config` in `workdir`; returns `build`'s result."""
  built = build(config)
  write(workdir, built, config.plan.sheet_tiles)
  meta = built["meta"]
  logging.info("Plan: %d slices (%d volumes x %d, %s) of %s, ignore value %d, in %s.", len(built["rows"]),
               meta["volumes"], meta["slices_per_volume"], meta["selection"], meta["root"], meta["ignore_label"],
               workdir)
  return built
