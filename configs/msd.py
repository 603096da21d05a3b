"""Any MSD or nnU-Net v2 dataset, with no config of its own: settings derived from the dataset's fingerprint.

    python launch.py --config=configs/msd.py --config.data.root=PATH/Task05_Prostate --check
    python launch.py --config=configs/msd.py --config.data.root=PATH/Dataset005_Prostate --workdir=runs/prostate

The folder is an MSD task (dataset.json with `modality`, `labels` {"0": "background", ...} and a `training` list)
or an nnU-Net v2 raw dataset (dataset.json with `channel_names`, `labels` {"background": 0, ...} and `file_ending`;
channel files `imagesTr/CASE_0000.nii.gz`, ...). `slicejax.data.fingerprint` derives the slicing axis, target spacing,
in-plane shape, per-channel normalisation, split and study grid (budgets, slices per volume) from the headers (and,
for CT channels, foreground intensities); they are logged at start and listed by `--check`. Any of them can be set
instead, e.g. `--config.data.slicing_axis=0 --config.data.target_spacing='()' --config.study.budgets='(20, 40)'`.
The network, training and the rest of the grid (random, fixed and ual selections, seeds 0-2, the reference) follow
configs/hippocampus.py.

Arguments:
  quick: a first look at any dataset in a few minutes on 2 CPU cores: slices resampled to at most 128 voxels a side,
    a base-8 network for 100 steps of batch 4, the first derived budget at its first two allocations with random,
    fixed and ual selection, seed 0 and the reference, a 50-step UAL encoder, two learning-curve points on two
    validation volumes, and Dice without HD95/NSD. Its numbers say that the pipeline runs on the data, not which
    allocation is best.
        python launch.py --config=configs/msd.py:quick --config.data.root=PATH
  tiny: a small network, a few steps and the first budget with one or two slices per volume, for tests.
"""

from slicejax import config as config_lib
from slicejax.data import fingerprint


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False, quick=False)
  return fingerprint.dataset_config(
      "no data folder: pass --config.data.root=PATH to an MSD or nnU-Net v2 dataset folder "
      "(dataset.json, imagesTr/, labelsTr/)",
      tiny=arg.tiny, quick=arg.quick, model=dict(features=16, num_stages=4),
      train=dict(steps=2000, batch_size=32, learning_rate=3e-3, warmup_steps=50, log_every=100))
