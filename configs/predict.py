"""Segments new volumes with a trained model (`slicejax.modes.predict`), writing NIfTI label maps on each input's grid.

    python launch.py --mode=predict --config=configs/predict.py --config.predict.model=RUN \
        --config.predict.input=IMAGES --workdir=PREDICTIONS [--config.predict.probabilities=True]

RUN is the workdir of a training run; for a study, name one of its points with `--config.predict.point=NAME` (a
file name of RUN/plans/ without .json). IMAGES is an MSD or nnU-Net v2 raw folder or a folder of .nii.gz files.
Writes PREDICTIONS/<case>.nii.gz (and <case>_probabilities.nii.gz). Expected: seconds per volume on a CPU in 2D.
"""

import ml_collections

from slicejax import config as config_lib


def get_config(arg=""):
  del arg
  config = ml_collections.ConfigDict()
  config.predict = config_lib.predict_block()
  config.lock()
  return config
