"""Runs a study grid: `python launch.py --config=configs/NAME.py[:ARGS] [--workdir=DIR] [--config.key=value ...]`;
without `--workdir` a run writes into `runs/<NAME>[_<ARGS>]`, said in its first line.

`--mode` chooses what runs: `study` (the default, above); `plan` writes an annotation plan for unlabelled volumes
(configs/plan.py), `predict` segments new volumes with a trained model (configs/predict.py), `export` writes sparse
annotations as an nnU-Net v2 raw dataset (configs/export.py); each writes into --workdir (docs/annotate.md).

`--check` instead loads and validates the config and the data and describes the run (classes, shapes, split, grid,
an estimate of time and memory from a few measured steps) without training or writing anything.

Several processes (hosts of a TPU pod slice, SLURM tasks) run one grid together with `--distributed`, or with
`--coordinator=HOST:PORT --num_processes=N --process_id=I` given explicitly (README.md, "Scale-out").

stdout carries the run's lines for people (workdir, progress, phases, results); stderr warnings and errors only, with
`--verbosity=1` (`-v 1`) adding slicejax's INFO records, `-v 2` the libraries' INFO lines, `-v 3` their DEBUG lines.

Bad input (data, config values, a misspelt config key, a workdir in use) ends with one line `error: <where>: <what>`
on stderr and exit status 2, before anything in the workdir changes.
"""

import os
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from slicejax import config as config_lib
from slicejax import console
from slicejax.data import load as data_lib
from slicejax.errors import exit_with
from slicejax.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, plans and checkpoints; default "
                                "runs/<config name>[_<config argument>].")
_MODE = flags.DEFINE_enum("mode", "study", ["study", "plan", "predict", "export"],
                          "study: train and evaluate the config's grid; plan: an annotation plan for unlabelled "
                          "volumes; predict: segment new volumes; export: an nnU-Net v2 raw dataset.")
_CHECK = flags.DEFINE_bool("check", False, "Check the config and the data and describe the run (grid, time and memory "
                           "estimate), without training or writing anything; needs no --workdir.")
_FRESH = flags.DEFINE_bool("fresh", False, "If WORKDIR holds a run of a different config, start this one in a new "
                           "subfolder WORKDIR/run_<n> instead of refusing.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join the other processes of a multi-host run "
                                  "(jax.distributed.initialize() reads them from the TPU pod, SLURM, ... environment).")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of process 0, for a multi-process run given "
                                   "explicitly (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, with --coordinator.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator.")
flags.mark_flags_as_required(["config"])


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, ValueError, AttributeError, TypeError) as err:
    while err.args and isinstance(err.args[0], BaseException):
      err = err.args[0]
    if isinstance(err, KeyError):  # ml_collections: an override names a key the config does not have.
      exit_with(f"config: no such key {err.args[0] if err.args else err}")
    lines = str(err).strip().splitlines()
    # A config file that raised: its own last line says what went wrong.
    exit_with(f"--config: {lines[-1]}" if "Traceback" in str(err) else err)


def _workdir(config) -> str:
  """--workdir, or the config's default `runs/<config name>[_<argument>]`, announced as the run's first line once
  the config and the data folder have passed their checks (a refusal stays one line)."""
  if _WORKDIR.value:
    return _WORKDIR.value
  path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
  name = pathlib.Path(path).stem + ("_" + re.sub(r"[^A-Za-z0-9.-]+", "_", arg).strip("_") if arg else "")
  workdir = os.path.join("runs", name)
  if _MODE.value == "study":
    config_lib.validate(config)
    if config.data.source != "phantom":
      data_lib.dataset_root(config)  # a missing dataset is refused before the workdir is announced
  print(f"workdir: {workdir} (the default for this config; --workdir=DIR chooses another)", flush=True)
  return workdir


def _run_mode(mode: str, config, workdir) -> None:
  """The modes other than the study; their modules are imported only when used."""
  if mode == "plan":
    from slicejax.modes import plan
    plan.run(config, workdir)
  elif mode == "predict":
    from slicejax.modes import predict
    predict.run(config, workdir)
  elif mode == "export":
    from slicejax.modes import export
    export.run(config, workdir)


def main(argv):
  del argv
  console.setup_logging(logging.get_verbosity())
  console.set_output(sys.stdout)
  try:
    config = _CONFIG.value
    config.get("seed")  # A config file that failed to load raises here.
  except OSError as err:
    exit_with(f"{config_flags.get_config_filename(flags.FLAGS['config'])}: cannot load the config "
          f"({err.__cause__ or err})")
  try:
    if _MODE.value != "study":
      _run_mode(_MODE.value, config, _workdir(config))
      return
    # The config's values are checked before JAX and the trainer are imported, so a bad value fails in a moment.
    config_lib.validate(config)
    if _CHECK.value:
      from slicejax.modes import check
      print("\n".join(check.dry_run(config)))
      return
    workdir = _workdir(config)
    import jax
    from slicejax.training import distributed
    from slicejax.training import train
    # Compiled programs persist across launches (a resumed or repeated grid skips compilation), in the cache folder
    # unless JAX_COMPILATION_CACHE_DIR names another.
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir", str(data_lib.cache_dir(config) / "jax"))
    distributed.initialize(_DISTRIBUTED.value, coordinator=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                           process_id=_PROCESS_ID.value)
    train.train_and_evaluate(config, workdir, fresh=_FRESH.value)
  except InputError as err:
    exit_with(err)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
