"""Wall time of whole study runs through `slicejax.train.train_and_evaluate`, from data loading to the summary.

    python bench/study.py --json                                   # the demo grid (configs/demo.py)
    python bench/study.py --json --grid hippocampus --data PATH/Task04_Hippocampus
    python bench/study.py --json --grid demo,hippocampus --data PATH --quick

Grids:
  demo: configs/demo.py as it is (its docstring lists the models) on a generated phantom.
  hippocampus: a slice of configs/hippocampus.py on an MSD Task04 folder (`--data`): budget 72, 1 or 4 slices per
    volume, random and fixed selection, seed 0, no reference, 300 steps: 4 models of the 2D grid.
`--quick` uses the configs' `tiny` variants instead, only to check the script.

Each run starts in a fresh temporary workdir (or `--workdir/<grid>`, which must not exist), so nothing is resumed
or read from a cache. One record per grid: `wall_s` (the whole `train_and_evaluate` call: loading, plans,
compilation, training, evaluation and summary), `models`, `groups`, `best_dice_mean` over the sparse-slice models
(and per dims in `best_dice_mean_by_dims`) and `reference_dice_mean` when the grid has a reference.
"""

import argparse
import pathlib
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


def grid_config(grid: str, data, quick: bool):
  """The config of one grid and a description of its size."""
  from slicejax import config_lib  # pylint: disable=g-import-not-at-top
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
    return config, "configs/hippocampus.py:tiny"
  config.study.update(HIPPOCAMPUS_SLICE)
  config.train.steps = HIPPOCAMPUS_STEPS
  keys = ", ".join(f"{k}={v!r}" for k, v in HIPPOCAMPUS_SLICE.items())
  return config, f"configs/hippocampus.py with {keys}, steps={HIPPOCAMPUS_STEPS}"


def run_grid(grid: str, data, quick: bool, workdir: pathlib.Path) -> dict:
  import common  # pylint: disable=g-import-not-at-top
  from slicejax import train  # pylint: disable=g-import-not-at-top

  config, size = grid_config(grid, data, quick)
  start = time.perf_counter()
  rows = train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  sparse = [r for r in rows if not r.get("reference")]
  reference = [r["dice_mean"] for r in rows if r.get("reference")]
  best_by_dims = {str(d): max(r["dice_mean"] for r in sparse if r["dims"] == d)
                  for d in sorted({r["dims"] for r in sparse})}
  return {"benchmark": "study", "grid": grid, "size": size, "quick": quick,
          "data": str(data) if grid == "hippocampus" else "phantom", "wall_s": wall, "models": len(rows),
          "groups": len({r["group"] for r in rows}),
          "steps": config.train.steps, "best_dice_mean": max(best_by_dims.values()) if sparse else None,
          "best_dice_mean_by_dims": best_by_dims,
          "reference_dice_mean": max(reference) if reference else None,
          "train_seconds": sum(r["train_seconds"] for r in rows), **common.machine()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--grid", default="demo", help="comma-separated: demo, hippocampus")
  parser.add_argument("--data", help="MSD Task04_Hippocampus folder, for --grid hippocampus")
  parser.add_argument("--workdir", help="keep the runs in WORKDIR/<grid> (default: a temporary folder)")
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
    except InputError as e:
      sys.exit(f"study: {e}")
    common.emit(record, args.json)


if __name__ == "__main__":
  main()
