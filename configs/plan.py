"""An annotation plan for unlabelled volumes (`slicejax.modes.plan`): which slices of which volumes to annotate, label
templates to annotate in, and a contact sheet to review.

    python launch.py --mode=plan --config=configs/plan.py --config.data.root=IMAGES --workdir=PLAN \
        --config.plan.budget=32 --config.plan.volumes=16 --config.plan.selection=fixed
    # or s, rho and the selection of the best cell of a finished study at that budget:
    python launch.py --mode=plan --config=configs/plan.py --config.data.root=IMAGES --workdir=PLAN \
        --config.plan.budget=32 --config.plan.from_study=runs/demo

IMAGES is an MSD or nnU-Net v2 raw folder (labels not needed) or a folder of .nii.gz files (then name the classes:
`--config.plan.classes='("background", "tumour")'`). `--config.data.slicing_axis` is the NIfTI axis annotators page
along. Expected: seconds for `random`/`fixed`; `ual` first trains its slice encoder on the images (minutes on a CPU,
cached).

Arguments (`configs/plan.py:phantom`): plan on the demo's phantom images (`configs/demo.py`), labels unused.
"""

from slicejax import config as config_lib


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, phantom=False)
  config = config_lib.base()
  config.plan = config_lib.plan_block()
  if arg.phantom:
    config.data.source = "phantom"
    config.data.phantom.update(num_cases=60, shape=(40, 40, 24), num_channels=1, seed=0)
  config.lock()
  return config
