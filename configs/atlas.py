"""ATLAS v2.0 (655 T1-weighted MRI volumes in MNI space, 1 mm isotropic, stroke lesions) converted to the nnU-Net v2
layout, with settings from its fingerprint (as configs/msd.py) and the hippocampus grid's network and training.

    python -m slicejax.convert.atlas --src=PATH/ATLAS_2/Training --dst=PATH/ATLAS_v2
    python launch.py --config=configs/atlas.py --config.data.root=PATH/ATLAS_v2 --check
    python launch.py --config=configs/atlas.py --config.data.root=PATH/ATLAS_v2 --workdir=runs/atlas

Derived (see slicejax.data.fingerprint): isotropic, so slices along NIfTI axis 2 (axial), no resampling, z-score
normalisation, a 20% test / 10% validation split. Volumes are 197 x 233 x 189.

Arguments:
  tiny: a small network and a few steps, for tests on generated data.
"""

from slicejax import config as config_lib
from slicejax.data import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  # Volumes far larger than hippocampus: one more stage, smaller batches, longer training.
  return fingerprint.dataset_config(
      "no data folder: convert ATLAS v2.0 (python -m slicejax.convert.atlas --src=... --dst=...) and pass "
      "--config.data.root=DST",
      tiny=arg.tiny, model=dict(features=16, num_stages=5),
      train=dict(steps=4000, batch_size=16, learning_rate=2e-3, warmup_steps=100, log_every=100), eval_batch_size=16)
