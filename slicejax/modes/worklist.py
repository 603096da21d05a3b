"""The next round's worklist: which slices to annotate next, chosen by a trained model (or ensemble) from the slices
not yet annotated, so that a team runs selection in rounds on its own unlabelled data (docs/annotate.md):
plan -> annotate -> train -> next plan.

`python launch.py --mode=plan --config=configs/plan.py --config.data.root=IMAGES --workdir=NEXT
--config.plan.model=RUN --config.plan.annotated=LABELS --config.plan.selection=entropy --config.plan.budget=N
[--config.plan.free=True]`

  * RUN is a trained run's workdir (e.g. `configs/sparse.py` trained on the annotations so far; `plan.point` names
    one of a study's points); `ensemble` uses the point and its members (`slicejax.training.rounds.MEMBER_SEED_STRIDE`).
  * What is annotated: LABELS, a folder of label files `<case>.nii.gz` with the ignore value (the number of
    classes) on every slice nobody annotated (the filled templates of the previous plan, or an export's
    `labelsTr`), or `plan.previous`, a previous plan's workdir (its slices count as annotated).
  * Every slice each volume offers (`plan.offered_slices`) and nobody annotated is scored by the selection module
    (`entropy`, `ensemble`, `hybrid`) on the model's softmax of the image alone; N slices are chosen: N / s in each of
    the s annotated volumes, or with `plan.free` the N best anywhere (new volumes may open).
Written as `slicejax.modes.plan` writes a plan (plan.json, plan.csv, templates, contact sheet); a template of a volume
already annotated keeps its annotations (the file continues), the new slices hold 0 for the annotator, the rest the
ignore value, on the image's grid. plan.csv adds each slice's `predicted_foreground` (pixels) and
`estimated_seconds` under `config.cost` (`slicejax.study.cost`).
"""

import json
import pathlib
import re

import numpy as np

from slicejax.data import index as index_lib
from slicejax.data import nifti
from slicejax.errors import InputError
from slicejax.modes import plan_slices
from slicejax.study import cost as cost_lib
from slicejax.study import grid as study
from slicejax.study import selection as selection_lib
from slicejax.study import sparse
from slicejax.study import uncertainty
from slicejax.training import rounds


def annotated(config, images: index_lib.ImageSet, ignore: int) -> tuple:
  """What is annotated so far: (case id -> slice indices, case id -> the `[X, Y, Z]` labels of its annotated file)."""
  cfg = config.plan
  plan, labels = {}, {}
  if cfg.annotated:
    folder = pathlib.Path(cfg.annotated).expanduser()
    if not folder.is_dir():
      raise InputError("config.plan.annotated", f"{folder} is not a folder of label files")
    for case in images.cases:
      path = folder / f"{case.case_id}.nii.gz"
      if not path.is_file():
        continue
      label = np.asarray(nifti.check_same_grid(path, case.paths[0]).dataobj).astype(np.int64)
      slices = sparse.annotated_slices(np.moveaxis(label, images.slicing_axis, 0), ignore)
      if slices:
        plan[case.case_id], labels[case.case_id] = slices, label
  if cfg.previous:
    path = pathlib.Path(cfg.previous).expanduser() / "plan.json"
    if not path.is_file():
      raise InputError("config.plan.previous", f"{path} does not exist (not a plan workdir)")
    meta = json.loads(path.read_text())
    # A worklist's own plan.json lists what was annotated before it, too.
    for case, slices in [(c, e["slices"]) for c, e in meta["cases"].items()] + list(meta.get("annotated", {}).items()):
      plan[case] = sorted(set(plan.get(case, [])) | set(slices))
  if not plan:
    raise InputError("config.plan.annotated", "nothing is annotated yet: make the first plan without a model")
  return plan, labels


def trained_models(config) -> list:
  """The model of `plan.model` / `plan.point`, and with `ensemble` its members (`predict.TrainedModel`s)."""
  from slicejax.modes import predict
  cfg = config.plan
  first = predict.load_model(cfg.model, cfg.point)
  if cfg.selection != "ensemble":
    return [first]
  groups = json.loads((pathlib.Path(cfg.model).expanduser() / "groups.json").read_text())
  names = {name for group in groups for name in group.values()}
  seed = int(re.search(r"_seed(\d+)$", first.point).group(1))
  members = [first]
  for k in range(1, int(config.rounds.members)):
    name = re.sub(r"_seed\d+$", f"_seed{seed + k * rounds.MEMBER_SEED_STRIDE}", first.point)
    if name in names:
      members.append(predict.load_model(cfg.model, name))
  if len(members) < 2:
    raise InputError("config.plan.selection", f"'ensemble' needs an ensemble point's members; {cfg.model} holds "
                     f"none of {first.point}")
  return members


def choose(config, images: index_lib.ImageSet, offered: dict, so_far: dict) -> tuple:
  """The next slices: (case id -> new slice indices, case id -> `[D]` predicted foreground pixels per slice)."""
  from slicejax.modes import predict
  cfg = config.plan
  models = trained_models(config)
  method = selection_lib.get(cfg.selection)
  if cfg.free:  # s x quota slices anywhere: one "volume" of the whole budget
    volumes, quota = 1, cfg.budget
  elif cfg.budget % len(so_far):
    raise InputError("config.plan.budget", f"{cfg.budget} slices do not split over the {len(so_far)} annotated "
                     "volumes; choose a multiple, or --config.plan.free=True")
  else:
    volumes, quota = len(so_far), cfg.budget // len(so_far)
  point = study.Point(dims=2, budget=cfg.budget, volumes=volumes, slices_per_volume=quota, selection=cfg.selection,
                      interpolation=False, seed=cfg.seed, rounds=2, free=cfg.free)
  for case in [] if cfg.free else [c for c in images.cases if c.case_id in so_far]:
    left = len(rounds.candidates(case.depth, tuple(cfg.roi), so_far[case.case_id], offered[case.case_id]))
    if left < quota:
      raise InputError(case.paths[0], f"{left} slices of it are left to annotate, fewer than the {quota} per volume "
                       f"that config.plan.budget={cfg.budget} asks; lower the budget or set --config.plan.free=True")
  scores, foreground = {}, {}
  for case in images.cases if cfg.free else [c for c in images.cases if c.case_id in so_far]:
    probs = np.stack([np.moveaxis(predict.predict_case(m, case, cfg.batch_size), images.slicing_axis, 0)
                      for m in models])  # [E, D, H, W, K], on the image's own grid
    valid = np.ones(probs.shape[1:4], bool)
    scores[case.case_id] = method.scores(probs, valid, config.rounds)
    foreground[case.case_id] = uncertainty.foreground_pixels(probs, valid)
  embeddings = None
  if method.NEEDS_EMBEDDINGS:
    embeddings = plan_slices.slice_embeddings(config, images)
  added = rounds.choose_next(point, so_far, scores, quota, options=config.rounds, roi=tuple(cfg.roi),
                             offered=offered, embeddings=embeddings)
  return added, foreground


def build(config, images: index_lib.ImageSet, names: tuple, offered: dict) -> dict:
  """The worklist as `plan.build` returns a plan, with `base`: case id -> the annotations a template continues."""
  cfg = config.plan
  method = selection_lib.get(cfg.selection)
  if not (getattr(method, "MODEL_BASED", False) and method.NEEDS_MODEL):
    raise InputError("config.plan.selection", f"with config.plan.model, must be a model-based selection (entropy, "
                     f"ensemble, hybrid), got {cfg.selection!r}")
  ignore = len(names)
  so_far, base = annotated(config, images, ignore)
  added, foreground = choose(config, images, offered, so_far)
  ordered = plan_slices.rows(added, images)
  for row in ordered:
    pixels = int(foreground[row["case_id"]][row["slice"]])
    row.update(predicted_foreground=pixels, estimated_seconds=float(cost_lib.slice_seconds(pixels, config.cost)))
  total = sum(map(len, added.values()))
  meta = {
      "format": 1, "dataset": images.name, "root": images.root, "layout": images.layout,
      "slicing_axis": images.slicing_axis, "budget": total, "volumes": len(added),
      "slices_per_volume": total // max(len(added), 1), "selection": cfg.selection, "seed": cfg.seed,
      "roi": list(cfg.roi), "from_study": None,
      "from_model": {"model": str(cfg.model), "point": cfg.point, "free": bool(cfg.free),
                     "annotated": str(cfg.annotated), "previous": str(cfg.previous),
                     "estimated_seconds": sum(row["estimated_seconds"] for row in ordered)},
      "annotated": {case: slices for case, slices in sorted(so_far.items())},
      "class_names": list(names), "ignore_label": ignore, "channel_names": list(images.channel_names),
      **plan_slices.entries(added, images, offered),
  }
  return {"meta": meta, "rows": ordered, "images": images, "plan": added,
          "base": {case: base[case] for case in added if case in base}}
