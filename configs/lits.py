"""LiTS17 (131 contrast-enhanced abdominal CT volumes, liver and tumour) converted to the nnU-Net v2 layout, with
settings from its fingerprint (as configs/msd.py) and the hippocampus grid's network and training.

    python -m slicejax.convert.lits --src=PATH/LiTS17 --dst=PATH/LiTS17_v2
    python launch.py --config=configs/lits.py --config.data.root=PATH/LiTS17_v2 --check
    python launch.py --config=configs/lits.py --config.data.root=PATH/LiTS17_v2 --workdir=runs/lits

Derived (see slicejax.fingerprint): slicing along the coarse (axial) axis, the median spacing, nnU-Net's CT
normalisation from the foreground (liver and tumour) intensities, a 20% test / 10% validation split. In-plane the
volumes are 512 x 512 at 0.6-1 mm; slices 0.7-5 mm. Meant for an accelerator.

Arguments:
  tiny: a small network and a few steps, for tests on generated data.
"""

from slicejax import config_lib
from slicejax import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  config = config_lib.base()
  config.data.update(
      source="msd",
      missing_root_hint="no data folder: convert LiTS17 (python -m slicejax.convert.lits --src=... --dst=...) and "
                        "pass --config.data.root=DST")
  config.model.update(features=16, num_stages=5)
  config.train.update(steps=4000, batch_size=16, learning_rate=2e-3, warmup_steps=100, log_every=100)
  config.eval.batch_size = 16
  config.study.update(selections=("random", "fixed", "ual"), seeds=(0, 1, 2), reference=True, reference_seeds=(0,))
  if arg.tiny:
    config.model.update(features=4, num_stages=2)
    config.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    config.study.update(selections=("random",), seeds=(0,), reference=False)
    config.eval.batch_size = 16
  fingerprint.bind(config, tiny=arg.tiny)
  config.lock()
  return config
