"""Demo: the whole study on an embedded phantom, in a few minutes on a laptop CPU.

    python launch.py --config=configs/demo.py --workdir=runs/demo

Generates 64 synthetic MRI-like volumes (40 x 40 x 20-24 voxels, two structures) once, in the MSD layout, into the
cache (`phantoms/` of `config.data.cache_dir`, the user cache by default; `python -m slicejax.cache` lists it),
reads them back through the same reader as real data, and trains 2 budgets x 2 allocations x {random, fixed, ual} x
2 seeds = 24 sparse-slice models (budgets 8 and 32, 1 or 8 slices per volume; 600 steps of batch 8) with a small 2D
U-Net, the fully annotated reference (2 seeds, 3,000 steps in a group of its own), a group of 2 models selected in
2 rounds (entropy at budget 32, 4 volumes x 8 slices, 2 seeds: trained twice, once per round), and a 3D group of
2 models (budget 32 at 16 volumes x 2 slices, with and without mask interpolation).
Expected: about 9 minutes on 2 CPU cores; the best sparse cell reaches a mean Dice above 0.8, and the reference
scores above every sparse cell.

Arguments (`configs/demo.py:tiny`): `tiny` shrinks everything for tests (seconds).
"""

from slicejax import config as config_lib


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, tiny=False)
  config = config_lib.base()
  config.data.source = "phantom"
  config.data.slicing_axis = 2
  # 8 validation volumes: learning curves ("still improving") on fewer swing with one volume's rim.
  config.data.phantom.update(num_cases=64, shape=(40, 40, 24), num_channels=1, seed=0)
  config.data.split.update(train=40, val=8, test=16, seed=0)

  config.model.update(features=8, num_stages=3)
  # 600 steps of batch 8: most sparse cells' validation curves level off by step 400-500 (learning curves of a
  # 1,200-step pilot and of this recipe). The reference sees every slice of 40 volumes, 30 times more than the
  # largest cell, and needs about 3,000 steps, so it trains them in a group of its own (`study.reference_steps`);
  # cells are compared with each other at equal steps, never with it.
  config.train.update(steps=600, batch_size=8, learning_rate=5e-3, warmup_steps=20, log_every=50)

  config.study.update(budgets=(8, 32), slices_per_volume=(1, 8), selections=("random", "fixed", "ual", "entropy"),
                      seeds=(0, 1), reference=True, reference_seeds=(0, 1), reference_steps=3000)
  # One cell selected in rounds (slicejax.training.rounds): entropy at budget 32, 4 volumes x 8 slices, 4 of them by
  # fixed
  # interval in round 0 and 4 by the round-0 model's predictive entropy, compared with the one-shot 4 x 8 cells.
  config.study.update(rounds=(2,), round_budgets=(32,), round_slices_per_volume=(8,))
  # A small 3D group: low density (16 volumes x 2 slices), with and without mask interpolation.
  config.study.dims = (2, 3)
  config.study.three_d.update(budgets=(32,), slices_per_volume=(2,), selections=("fixed",),
                              interpolation=(False, True), seeds=(0,), reference=(False,))
  config.three_d.update(features=8, num_stages=3, patch=(16, 32, 32), batch_size=2, eval_batch_size=8)
  config.model_axis.max_models = 24

  if arg.tiny:
    config.data.phantom.update(num_cases=12, shape=(16, 16, 8))
    config.data.split.update(train=8, val=1, test=3)
    config.model.update(features=4, num_stages=2)
    config.train.update(steps=6, batch_size=4, warmup_steps=2, log_every=3)
    config.study.update(reference_seeds=(0,), reference_steps=0)
    config.study.update(budgets=(8,), slices_per_volume=(1, 2), selections=("random", "fixed"), seeds=(0,),
                        dims=(2,))
    config.study.three_d.update(budgets=(8,), slices_per_volume=(1, 2))
    config.three_d.update(features=4, num_stages=2, patch=(4, 16, 16))
    config.eval.batch_size = 8
    config.model_axis.chunk = 1  # runs this short are mostly compilation: one program of one model
  config.lock()
  return config
