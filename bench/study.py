"""Wall time of whole study runs through `slicejax.training.train.train_and_evaluate`, from data loading to the summary.

    python bench/study.py --json                                   # the demo grid (configs/demo.py)
    python bench/study.py --json --grid hippocampus --data PATH/Task04_Hippocampus
    python bench/study.py --json --grid hippocampus --data PATH --whole-grid   # and the default grid, extrapolated
    python bench/study.py --json --grid demo,hippocampus --data PATH --quick

Grids:
  demo: configs/demo.py as it is (its docstring lists the models) on a generated phantom.
  hippocampus: a slice of configs/hippocampus.py on an MSD Task04 folder (`--data`): budget 72, 1 or 4 slices per
    volume, random and fixed selection, seed 0, no reference, 300 steps: 4 models of the 2D grid, in one group. It
    logs every 10 steps (the default grid: 100), which changes no result and gives `--whole-grid` its step rate.
`--quick` uses the configs' `tiny` variants instead, only to check the script.

Each run starts in a fresh temporary workdir (or `--workdir/<grid>`, which must not exist), so nothing is resumed
or read from a cache. One record per grid: `wall_s` (the whole `train_and_evaluate` call: loading, plans,
compilation, training, evaluation and summary), `models`, `groups`, `best_dice_mean` over the sparse-slice models
(and per dims in `best_dice_mean_by_dims`) and `reference_dice_mean` when the grid has a reference.

`--whole-grid` (hippocampus only) then gives the whole default 2D grid of configs/hippocampus.py (145 models in 19
groups of at most 8, 2000 steps each, on the hippocampus data) a time without running it, in records
`{"benchmark": "study_whole_grid", "extrapolated": true, ...}`. From the slice's run (M_s models, S_s steps):
  r       seconds per step of the slice's group: the median, over the intervals between consecutive logged steps, of
          the interval's seconds per step (the loss events' wall times in the run's curves), leaving out the
          intervals that hold a validation curve or a checkpoint;
  fixed_s the group's training seconds less r x S_s: compilation, the first step, curves and checkpoints;
  e       evaluation seconds per model (test volumes with surface metrics, validation volumes);
  setup_s the run's wall time less training and evaluation: loading, plans, summary;
and from the default grid itself (N models in G groups of S steps; the ual selection's slice encoder, trained once,
timed from a fresh cache as `encoder_s`):
  extrapolated_s = setup_s + encoder_s + G x fixed_s + N x S x r / M_s + N x e.
It assumes that a model's share of a step is the same in a group of up to 8 models as in the slice's 4 (a GPU
usually runs 8 models in less than twice the time of 4) and that every group pays the slice's compilation again
(groups of one grid share programs where their shapes agree), so it tends to overestimate. A first record with
`"partial": true` and `encoder_s` null comes before the encoder is trained; the complete record follows.
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The hippocampus slice timed here: the grid keys it sets, and the training steps.
HIPPOCAMPUS_SLICE = dict(budgets=(72,), slices_per_volume=(1, 4), selections=("random", "fixed"), seeds=(0,),
                         reference=False)
HIPPOCAMPUS_STEPS = 300
# The slice logs its loss this often, so that its curves time the steps between validation curves (`--whole-grid`).
HIPPOCAMPUS_LOG_EVERY = 10


def grid_config(grid: str, data, quick: bool):
  """The config of one grid and a description of its size."""
  from slicejax import config as config_lib  # pylint: disable=g-import-not-at-top
  from slicejax.errors import InputError  # pylint: disable=g-import-not-at-top

  if grid == "demo":
    spec = str(ROOT / "configs" / "demo.py") + (":tiny" if quick else "")
    return config_lib.load(spec), "configs/demo.py" + (":tiny" if quick else " (whole grid)")
  if grid != "hippocampus":
    raise InputError("--grid", f"unknown grid {grid!r} (demo or hippocampus)")
  if not data:
    raise InputError("--data", "the hippocampus grid needs an MSD Task04_Hippocampus folder")
  config = config_lib.load(str(ROOT / "configs" / "hippocampus.py") + (":tiny" if quick else ""))
  config.data.root = str(data)
  if quick:
    config.train.log_every = 1
    return config, "configs/hippocampus.py:tiny, logging every step"
  config.study.update(HIPPOCAMPUS_SLICE)
  config.train.update(steps=HIPPOCAMPUS_STEPS, log_every=HIPPOCAMPUS_LOG_EVERY)
  keys = ", ".join(f"{k}={v!r}" for k, v in HIPPOCAMPUS_SLICE.items())
  return config, f"configs/hippocampus.py with {keys}, steps={HIPPOCAMPUS_STEPS}"


def logged_step_times(workdir: pathlib.Path) -> dict:
  """step -> wall time (s) at which a run logged its models' losses for that step, read from its curves' event
  files (`slicejax.console.CurveWriter`); a loss is logged once the step's result has been fetched."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top

  times = {}
  for path in sorted(workdir.rglob("events.out.tfevents.*")):
    for raw in event_file_loader.RawEventFileLoader(str(path)).Load():
      event = event_pb2.Event.FromString(raw)
      if any(value.tag.startswith("loss/") for value in event.summary.value):
        times[int(event.step)] = event.wall_time
  return times


def step_seconds(times: dict, config) -> tuple:
  """Seconds per training step of a one-group run from its logged steps (`logged_step_times`).

  The interval after a logged step a holds a's validation curve or checkpoint when one is due at a (both run after
  a's loss is logged, the first curve compiling the predictor); such intervals are left out unless no other exists.

  Returns:
    (the median over the intervals of seconds per step, or None with fewer than two logged steps; whether only
    intervals free of curves and checkpoints were used).
  """
  from slicejax.training import train  # pylint: disable=g-import-not-at-top

  steps = sorted(times)
  busy = set(train.curve_schedule(config.train.steps, config.eval.curve_points))
  busy |= {s for s in steps if s % config.train.checkpoint_every == 0}
  intervals = list(zip(steps, steps[1:]))
  clean = [(a, b) for a, b in intervals if a not in busy]
  if not intervals:
    return None, False
  return statistics.median((times[b] - times[a]) / (b - a) for a, b in clean or intervals), bool(clean)


def run_grid(grid: str, data, quick: bool, workdir: pathlib.Path) -> dict:
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training import precision
  from slicejax.training import train  # pylint: disable=g-import-not-at-top

  config, size = grid_config(grid, data, quick)
  start = time.perf_counter()
  rows = train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  sparse = [r for r in rows if not r.get("reference")]
  reference = [r["dice_mean"] for r in rows if r.get("reference")]
  best_by_dims = {str(d): max(r["dice_mean"] for r in sparse if r["dims"] == d)
                  for d in sorted({r["dims"] for r in sparse})}
  groups = {r["group"]: r["group_train_seconds"] for r in rows}
  group_train, evaluation = sum(groups.values()), sum(r["eval_seconds"] for r in rows)
  step_s, clean = step_seconds(logged_step_times(workdir), config) if len(groups) == 1 else (None, False)
  return {"benchmark": "study", "grid": grid, "size": size, "quick": quick,
          "data": str(data) if grid == "hippocampus" else "phantom", "wall_s": wall, "models": len(rows),
          "groups": len(groups), "steps": config.train.steps, "dtype": str(precision.compute_dtype(config)),
          "best_dice_mean": max(best_by_dims.values()) if sparse else None,
          "best_dice_mean_by_dims": best_by_dims,
          "reference_dice_mean": max(reference) if reference else None,
          "train_seconds": sum(r["train_seconds"] for r in rows), "group_train_s": group_train,
          "eval_s_per_model": evaluation / len(rows), "setup_s": wall - group_train - evaluation,
          "step_s": step_s, "step_s_between_curves": clean, **common.machine()}


def extrapolate(measured: dict, models: int, groups: int, steps: int, encoder_s) -> dict:
  """The default grid's time from a one-group run's `measured` record (formula in the module docstring)."""
  r = measured["step_s"]
  fixed = measured["group_train_s"] - r * measured["steps"]
  parts = {"setup_s": measured["setup_s"], "encoder_s": encoder_s, "groups_fixed_s": groups * fixed,
           "steps_s": models * steps * r / measured["models"], "eval_s": models * measured["eval_s_per_model"]}
  total = sum(v for v in parts.values() if v is not None)
  return {"from_slice": {k: measured[k] for k in ("models", "steps", "step_s", "step_s_between_curves", "setup_s",
                                                  "eval_s_per_model", "group_train_s")},
          "fixed_s": fixed, **parts, "extrapolated_s": total, "extrapolated_min": total / 60}


def whole_grid(data, quick: bool, measured: dict, as_json: bool) -> None:
  """Emits the extrapolated time of the default hippocampus 2D grid (`--whole-grid`), first without the encoder."""
  import common  # pylint: disable=g-import-not-at-top
  from slicejax import config as config_lib
  from slicejax.study import selection
  from slicejax.study import grid as study_lib
  from slicejax.training import train  # pylint: disable=g-import-not-at-top
  from slicejax.errors import InputError  # pylint: disable=g-import-not-at-top

  if measured["step_s"] is None:
    raise InputError("--whole-grid", "the slice's run logged fewer than two steps: no step time to extrapolate from")
  config = config_lib.load(str(ROOT / "configs" / "hippocampus.py"))
  config.data.root = str(data)
  if quick:  # the encoder's code path only
    config.ual.encoder.update(features=(8,), norm_groups=8, embedding_dim=8, projection_dim=8, steps=2, batch_size=8,
                              log_every=1)
  with tempfile.TemporaryDirectory(prefix="slicejax_study_cache_") as cache:
    # A fresh cache, so that the encoder is trained here rather than read from an earlier run's cache entry.
    config.data.cache_dir = cache
    _, _, _, points, _ = train.read_inputs(config)
    groups = study_lib.group(points, config.model_axis.max_models)
    ual = sum(1 for p in points if not p.reference and selection.get(p.selection).NEEDS_EMBEDDINGS)
    record = {"benchmark": "study_whole_grid", "extrapolated": True, "grid": "configs/hippocampus.py (default 2D grid)",
              "quick": quick, "data": str(data), "models": len(points), "groups": len(groups),
              "group_sizes": [len(g) for g in groups], "ual_models": ual, "steps": config.train.steps,
              "formula": "setup_s + encoder_s + groups x fixed_s + models x steps x step_s / slice models + "
                         "models x eval_s_per_model", **common.machine()}
    extrapolation = lambda encoder_s: extrapolate(measured, len(points), len(groups), config.train.steps, encoder_s)
    common.emit(dict(record, partial=True, **extrapolation(None)), as_json)
    costs = train.prepare(config)[-1] if ual else {}
  common.emit(dict(record, **extrapolation(costs.get("encoder_seconds", 0.0))), as_json)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--grid", default="demo", help="comma-separated: demo, hippocampus")
  parser.add_argument("--data", help="MSD Task04_Hippocampus folder, for --grid hippocampus")
  parser.add_argument("--workdir", help="keep the runs in WORKDIR/<grid> (default: a temporary folder)")
  parser.add_argument("--whole-grid", action="store_true",
                      help="with the hippocampus grid: also the default 2D grid's time, extrapolated (see above)")
  parser.add_argument("--quick", action="store_true", help="the configs' tiny variants")
  args = parser.parse_args()

  from absl import logging  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.errors import InputError  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING if args.json else logging.INFO)
  for grid in args.grid.split(","):
    try:
      if args.workdir:
        workdir = pathlib.Path(args.workdir) / grid
        if workdir.exists():
          raise InputError(workdir, "exists; a timed run starts in a new folder")
        record = run_grid(grid, args.data, args.quick, workdir)
      else:
        with tempfile.TemporaryDirectory(prefix=f"slicejax_study_{grid}_") as tmp:
          record = run_grid(grid, args.data, args.quick, pathlib.Path(tmp))
      common.emit(record, args.json)
      if args.whole_grid and grid == "hippocampus":
        whole_grid(args.data, args.quick, record, args.json)
    except InputError as e:
      sys.exit(f"study: {e}")


if __name__ == "__main__":
  main()
