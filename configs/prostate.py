"""MSD Task05 Prostate (T2 and ADC MRI as two channels, 32 labelled volumes of ~320 x 320 x 15-20 voxels at about
0.6 x 0.6 x 3.6 mm; peripheral and transition zones).

    python launch.py --config=configs/prostate.py --config.data.root=PATH/Task05_Prostate --workdir=runs/prostate

The task as distributed: dataset.json with `modality` {"0": "T2", "1": "ADC"} and labels {"0": "background",
"1": "PZ", "2": "TZ"}, 4D images `imagesTr/prostate_NN.nii.gz` [X, Y, Z, 2]. The in-plane spacing (0.6-0.75 mm) is
resampled to 0.625 mm, the slices (3-4 mm) are kept (`data.target_spacing = (0.625, 0.625, 0)`); predictions are
scored on each file's own grid. Slices are the axial planes (NIfTI axis 2, 15-24 per volume), centre-cropped or
padded to 256 x 256; both channels z-scored. Split by case
with seed 0: 22 training pool, 2 validation, 8 test. Grid: budgets {11, 22, 44, 88} x rho in {1, 2, 4, 8} where
s <= 22 x {random, fixed, ual} x seeds {0, 1, 2}, plus the reference. Meant for an accelerator: a 256 x 256 base-16
U-Net step takes about a second per model on a 2-core CPU.

Arguments:
  tiny: small shapes and steps, for tests on a generated two-channel dataset.
"""

from slicejax import config as config_lib


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  config = config_lib.base()
  config.data.update(
      source="msd", slicing_axis=2, normalization="zscore", shape=(256, 256), target_spacing=(0.625, 0.625, 0.),
      root="data/Task05_Prostate", download_task="Task05_Prostate",
      missing_root_hint=("no data folder: run `python -m slicejax.download --task=Task05_Prostate --dest=data`, "
                         "or pass --config.data.root=PATH to a copy of Task05_Prostate"))
  config.data.split.update(train=22, val=2, test=8, seed=0)

  config.model.update(features=16, num_stages=5)
  config.train.update(steps=2000, batch_size=16, learning_rate=2e-3, warmup_steps=100, log_every=100)
  config.eval.batch_size = 32

  config.study.update(budgets=(11, 22, 44, 88), slices_per_volume=(1, 2, 4, 8), selections=("random", "fixed", "ual"),
                      seeds=(0, 1, 2), reference=True, reference_seeds=(0,))
  config.model_axis.max_models = 8

  if arg.tiny:
    config.data.update(shape=(), target_spacing=())
    config.data.split.update(train=6, val=1, test=2)
    config.model.update(features=4, num_stages=2)
    config.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    config.study.update(budgets=(6,), slices_per_volume=(1, 2), selections=("random",), seeds=(0,))
    config.eval.batch_size = 16
    config.model_axis.chunk = 1  # runs this short are mostly compilation: one program of one model
  config.lock()
  return config
