"""LiTS17 (131 contrast-enhanced abdominal CT volumes, liver and tumour) converted to the nnU-Net v2 layout, with
settings from its fingerprint (as configs/msd.py) and the hippocampus grid's network and training.

    python -m slicejax.convert.lits --src=PATH/LiTS17 --dst=PATH/LiTS17_v2
    python launch.py --config=configs/lits.py --config.data.root=PATH/LiTS17_v2 --check
    python launch.py --config=configs/lits.py --config.data.root=PATH/LiTS17_v2 --workdir=runs/lits

Derived (see slicejax.data.fingerprint): slicing along the coarse (axial) axis, the median spacing, nnU-Net's CT
normalisation from the foreground (liver and tumour) intensities, a 20% test / 10% validation split. In-plane the
volumes are 512 x 512 at 0.6-1 mm; slices 0.7-5 mm. Meant for an accelerator.

Arguments:
  tiny: a small network and a few steps, for tests on generated data.
"""

from slicejax import config as config_lib
from slicejax.data import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  # Volumes far larger than hippocampus: one more stage, smaller batches, longer training.
  return fingerprint.dataset_config(
      "no data folder: convert LiTS17 (python -m slicejax.convert.lits --src=... --dst=...) and pass "
      "--config.data.root=DST",
      tiny=arg.tiny, model=dict(features=16, num_stages=5),
      train=dict(steps=4000, batch_size=16, learning_rate=2e-3, warmup_steps=100, log_every=100), eval_batch_size=16)
