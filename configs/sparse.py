"""Training on real sparse annotations: a dataset whose label files carry nnU-Net v2's ignore label (a label named
"ignore" in dataset.json, the highest value), e.g. the export of an annotated plan (docs/annotate.md).

    python launch.py --config=configs/sparse.py --config.data.root=DATASET --workdir=RUN

The models train on the slices that hold annotated voxels (ignore-label voxels weigh 0 in the loss); a volume without
any is left out with a warning (`slicejax.study.sparse`). RUN keeps the checkpoint, config.json and model.json, which
`--mode=predict` reads. The split holds one test volume, scored on its labels (`--config.data.split.test`), and every
other volume trains (`data.split.train` 0), so it fits a dataset of any size from 2 volumes. The network and schedule
are
the demo's (`configs/demo.py`): about 1 minute on 2 CPU cores for 300 steps in 2D, about 40 s in 3D (docs/annotate.md's
worked example: 15 volumes x 2 planes).

The data settings follow the dataset's fingerprint as in `configs/msd.py` (slicing axis, target spacing, in-plane
shape, normalisation; `--check` lists them, and each key can be set instead); the split and the training are this
config's own.

Arguments (`configs/sparse.py:3d`): a 3D U-Net on patches instead of the 2D one; a patch centred on a plane annotated
in part is placed on one of its annotated voxels (`slicejax.training.inputs.patches`).
"""

from slicejax import config as config_lib
from slicejax.data import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, **{"3d": False})
  config = config_lib.base()
  config.data.update(source="msd", missing_root_hint="no data folder: pass --config.data.root=PATH to the folder of "
                     "annotated files (dataset.json, imagesTr/, labelsTr/)")
  config.data.split.update(train=0, val=0, test=1, seed=0)
  config.model.update(features=8, num_stages=3)
  config.train.update(steps=300, batch_size=16, learning_rate=5e-3, warmup_steps=20, log_every=50)
  config.study.update(dims=(3,) if arg["3d"] else (2,), budgets=(), selections=("annotated",), seeds=(0,),
                      reference=False)
  config.three_d.update(features=8, num_stages=3, patch=(16, 32, 32), batch_size=2, eval_batch_size=8)
  # The data settings of the study's own configs (configs/msd.py): slicing axis, target spacing, in-plane shape and
  # per-channel normalisation (CT statistics from this split's training pool) from the dataset's fingerprint.
  fingerprint.bind(config, split_and_grid=False)
  config.lock()
  return config
