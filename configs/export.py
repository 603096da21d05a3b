"""Writes sparse annotations as an nnU-Net v2 raw dataset (`slicejax.modes.export`): imagesTr/<case>_<cccc>.nii.gz,
labelsTr/<case>.nii.gz with the ignore label on every voxel nobody annotated, and dataset.json.

    # a plan's annotations (the filled templates, <case>.nii.gz):
    python launch.py --mode=export --config=configs/export.py --config.export.plan=PLAN \
        --config.export.annotations=ANNOTATED --workdir=nnUNet_raw/Dataset501_Mine
    # a study point's simulated annotations (its plan's slices of the true labels):
    python launch.py --mode=export --config=configs/export.py --config.export.study=runs/demo \
        --config.export.point=2d_b32_s16_rho2_random_seed0 --workdir=nnUNet_raw/Dataset502_Demo

`--config.export.verify=True` then runs nnU-Net v2's own integrity check on the folder (`pip install -e
'.[nnunet]'`). Expected: seconds.
"""

import ml_collections

from slicejax import config as config_lib


def get_config(arg=""):
  del arg
  config = ml_collections.ConfigDict()
  config.export = config_lib.export_block()
  config.lock()
  return config
