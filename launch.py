"""Runs a study grid: `python launch.py --config=configs/NAME.py[:ARGS] --workdir=DIR [--config.key=value ...]`."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from slicejax import train
from slicejax.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, plans and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except InputError as err:
    logging.error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
