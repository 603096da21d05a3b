"""Compilations of a whole study grid: how many XLA programs a launch compiles, and how large its device banks are.

    python bench/grid_compiles.py --json --data PATH/Task04_Hippocampus      # the hippocampus 2D grid (145 models)
    python bench/grid_compiles.py --json --quick                             # the tiny demo grid, any machine

Runs the config's grid through `train.train_and_evaluate` in this process with `train.steps=2` (compilation does not
depend on the step count) and a small test and validation split (evaluation programs have fixed shapes, whatever the
number of volumes), with the persistent compilation cache off, and counts XLA compilations through jax.monitoring,
by program name. `programs` counts what trains, evaluates or initialises models (`unrolled`: a chunk of the model
axis, `init_one`); the rest are single operations dispatched eagerly (array transfers, concatenations), each
compiled once per shape in a few milliseconds. Target (issue "Ready for accelerators"): at most 4 programs for the
hippocampus 2D grid. Also reports, per dims, the device bytes of a group's bank (images, labels, extents) padded to
the grid's largest group, against the whole training pool in float32 images, int32 labels and a float32 validity
mask (the bank before).
"""

import argparse
import collections
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import common  # noqa: E402  pylint: disable=wrong-import-position

_PROGRAMS = ("jit(unrolled)", "jit(init_one)")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="", help="MSD Task04 hippocampus folder; the hippocampus grid")
  parser.add_argument("--quick", action="store_true", help="the tiny demo grid instead")
  parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
  args = parser.parse_args()
  if not args.quick and not args.data:
    parser.error("--data PATH (or --quick)")

  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import monitoring  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from slicejax import config as config_lib
  from slicejax.training import train  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_enable_compilation_cache", False)
  counts = collections.Counter()

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      counts[kwargs.get("fun_name")] += 1

  monitoring.register_event_duration_secs_listener(listener)
  repo = pathlib.Path(__file__).resolve().parent.parent
  if args.quick:
    config = config_lib.load(str(repo / "configs/demo.py:tiny"))
  else:
    config = config_lib.load(str(repo / "configs/hippocampus.py"))
  with config.unlocked():
    if not args.quick:
      config.data.root = args.data
      config.data.split.update(test=4, val=2)
    config.train.update(steps=2, warmup_steps=1, log_every=1)
  with tempfile.TemporaryDirectory() as workdir:
    dataset, splits, groups, plans, _ = train.prepare(config)
    sizes = train.grid_sizes(config, groups, plans)
    train.train_and_evaluate(config, workdir)
  banks = {}
  for dims, size in sizes.items():
    dims_points = [p for g in groups for p in g if p.dims == dims]
    group = [g for g in groups if g[0].dims == dims][0]
    bank, _, _ = train.DIMS[dims].training_data(config, group, [plans[p.name] for p in group], splits["train"],
                                                dataset.num_classes,
                                                train.DIMS[dims].example_shape(config, sum(splits.values(), [])),
                                                size)
    pool = splits["train"]
    if dims == 2:
      shape = bank["images"].shape[1:3]
      before = sum(v.depth for v in pool) * int(np.prod(shape)) * (4 * dataset.num_channels + 4 + 4)
    else:
      before = len(pool) * int(np.prod(bank["images"].shape[1:4])) * (4 * dataset.num_channels + 4 + 4)
    banks[f"{dims}d"] = {"models": len(dims_points), "groups": sum(g[0].dims == dims for g in groups),
                         "bank_bytes": int(sum(a.nbytes for a in bank.values())), "whole_pool_bytes": int(before),
                         "padded_sizes": size}
  programs = {name: n for name, n in counts.items() if name in _PROGRAMS}
  record = {"benchmark": "grid_compiles", "grid": "demo_tiny" if args.quick else "hippocampus",
            "points": sum(map(len, groups)), "groups": len(groups), "programs": sum(programs.values()),
            "program_counts": programs, "eager_compiles": sum(counts.values()) - sum(programs.values()),
            "banks": banks, **common.machine()}
  common.emit(record, args.json)


if __name__ == "__main__":
  main()
