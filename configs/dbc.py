"""Duke Breast Cancer MRI with the published breast, FGT and vessel segmentations (100 fat-saturated T1
pre-contrast volumes, about 512 x 512 x 160 voxels of 0.7 x 0.7 x 1.1 mm) converted to the nnU-Net v2 layout, with
settings from its fingerprint (as configs/msd.py).

    pip install 'slicejax[dicom]'
    python -m slicejax.convert.dbc --src=PATH/Duke-Breast-Cancer-MRI --segmentations=PATH/segs --dst=PATH/DBC_v2
    python launch.py --config=configs/dbc.py --config.data.root=PATH/DBC_v2 --check
    python launch.py --config=configs/dbc.py --config.data.root=PATH/DBC_v2 --workdir=runs/dbc

Derived (see slicejax.data.fingerprint): the slicing axis (the coarsest, else NIfTI axis 2), the median spacing,
z-score
normalisation (MRI), a 20% test / 10% validation split. Meant for an accelerator.

Arguments:
  tiny: a small network and a few steps, for tests on generated data.
"""

from slicejax import config as config_lib
from slicejax.data import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  # Volumes far larger than hippocampus: one more stage, smaller batches, longer training.
  return fingerprint.dataset_config(
      "no data folder: convert DBC (python -m slicejax.convert.dbc --src=... --segmentations=... "
      "--dst=...) and pass --config.data.root=DST",
      tiny=arg.tiny, model=dict(features=16, num_stages=5),
      train=dict(steps=4000, batch_size=16, learning_rate=2e-3, warmup_steps=100, log_every=100), eval_batch_size=16)
