"""Tests for config_lib.validate: every config in configs/ passes, and each bad value gets one exact message."""

import pathlib
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from slicejax import config as config_lib
from slicejax.errors import InputError

# Every documented variant of the configs in configs/.
CONFIGS = ["demo.py", "demo.py:tiny", "hippocampus.py", "hippocampus.py:reference", "hippocampus.py:reference3d",
           "hippocampus.py:tiny", "hippocampus.py:converged=rounds,budget=144",
           "hippocampus.py:converged=grid3d,budget=288", "hippocampus.py:converged=recipe3d",
           "hippocampus.py:converged=doubling,budget=288", "hippocampus.py:converged=doubling,budget=72,more=True",
           "hippocampus.py:converged=reference3d", "hippocampus.py:converged=retrain,budget=144,middle=True",
           "hippocampus.py:converged=grid,budget=144,cells=extremes",
           "prostate.py",
           "prostate.py:tiny"]
MISSING = object()
# The base of every case is the tiny demo: phantom source (12 cases split 8 + 1 + 3), a 2-stage 4-feature U-Net,
# 6 steps with 2 warmup, budget 8 at 1 or 2 slices per volume, selections random and fixed, dims (2,); its 3D grid
# is budget 8 at 1 or 2 slices per volume, fixed, with and without interpolation, no reference, patch (4, 16, 16).
WITH_3D = {"study.dims": (2, 3)}
WITH_UAL = {"study.selections": ("fixed", "ual")}
ENC = "ual.encoder."

# (overrides, the error message). Values of the wrong type are set on a config without type checks, as a config
# built in Python (a notebook, a test) may hold them.
BAD = [
    ({"seed": -1}, "config.seed: must be >= 0, got -1"),
    # stats
    ({"stats.margin": 0.0}, "config.stats.margin: must be > 0, got 0.0"),
    ({"stats.alpha": 0.5}, "config.stats.alpha: must be in (0, 0.5), got 0.5"),
    ({"stats.min_seeds": 1}, "config.stats.min_seeds: must be >= 2, got 1"),
    ({"stats.max_improving_share": 1.5}, "config.stats.max_improving_share: must be in [0, 1], got 1.5"),
    ({"stats.steps_tolerance": 0.0}, "config.stats.steps_tolerance: must be > 0, got 0.0"),
    ({"train.steps": MISSING}, "config.train.steps: missing"),
    # train
    ({"train.steps": 0}, "config.train.steps: must be >= 1, got 0"),
    ({"train.steps": "20"}, "config.train.steps: must be an integer, got '20'"),
    ({"train.steps": 20.0}, "config.train.steps: must be an integer, got 20.0"),
    ({"train.steps": True}, "config.train.steps: must be an integer, got True"),
    ({"train.steps": 20, "train.warmup_steps": 50}, "config.train.warmup_steps: must be < config.train.steps (20), "
     "got 50"),
    ({"train.warmup_steps": 6}, "config.train.warmup_steps: must be < config.train.steps (6), got 6"),
    ({"train.warmup_steps": -1}, "config.train.warmup_steps: must be >= 0, got -1"),
    ({"train.batch_size": 0}, "config.train.batch_size: must be >= 1, got 0"),
    ({"train.learning_rate": 0.0}, "config.train.learning_rate: must be > 0, got 0.0"),
    ({"train.learning_rate": -1.0}, "config.train.learning_rate: must be > 0, got -1.0"),
    ({"train.learning_rate": "fast"}, "config.train.learning_rate: must be a finite number, got 'fast'"),
    ({"train.learning_rate": float("nan")}, "config.train.learning_rate: must be a finite number, got nan"),
    ({"train.learning_rate": None}, "config.train.learning_rate: must be a finite number, got None"),
    ({"train.weight_decay": -0.5}, "config.train.weight_decay: must be >= 0, got -0.5"),
    ({"train.final_lr_fraction": 1.5}, "config.train.final_lr_fraction: must be in [0, 1], got 1.5"),
    ({"train.grad_clip": 0.0}, "config.train.grad_clip: must be > 0, got 0.0"),
    ({"train.ce_weight": -1.0}, "config.train.ce_weight: must be >= 0, got -1.0"),
    ({"train.dice_weight": -1.0}, "config.train.dice_weight: must be >= 0, got -1.0"),
    ({"train.ce_weight": 0.0, "train.dice_weight": 0.0},
     "config.train.dice_weight: must be > 0 when config.train.ce_weight is 0 (the loss would be 0)"),
    ({"train.log_every": 0}, "config.train.log_every: must be >= 1, got 0"),
    ({"train.checkpoint_every": 0}, "config.train.checkpoint_every: must be >= 1, got 0"),
    ({"train.augment.flip_prob": 1.5}, "config.train.augment.flip_prob: must be in [0, 1], got 1.5"),
    ({"train.augment.affine_prob": -0.1}, "config.train.augment.affine_prob: must be in [0, 1], got -0.1"),
    ({"train.augment.rotate_degrees": -1.0}, "config.train.augment.rotate_degrees: must be >= 0, got -1.0"),
    ({"train.augment.scale_range": (1.2, 0.8)},
     "config.train.augment.scale_range: must be two numbers (lo, hi) with 0 < lo <= hi, got (1.2, 0.8)"),
    ({"train.augment.scale_range": (0.0, 1.0)},
     "config.train.augment.scale_range: must be two numbers (lo, hi) with 0 < lo <= hi, got (0.0, 1.0)"),
    ({"train.augment.scale_range": (1.0,)},
     "config.train.augment.scale_range: must be two numbers (lo, hi) with 0 < lo <= hi, got (1.0,)"),
    ({"train.augment.intensity_scale": -0.1}, "config.train.augment.intensity_scale: must be >= 0, got -0.1"),
    ({"train.augment.intensity_shift": -0.1}, "config.train.augment.intensity_shift: must be >= 0, got -0.1"),
    # model
    ({"model.name": "resnet"}, "config.model.name: must be one of unet, got 'resnet'"),
    ({"model.norm": "banana"}, "config.model.norm: must be one of instance, group, none, got 'banana'"),
    ({"model.upsample": "bilinear"}, "config.model.upsample: must be one of resize, transpose, got 'bilinear'"),
    ({"model.dtype": "float64"}, "config.model.dtype: must be one of auto, float32, bfloat16, got 'float64'"),
    ({"model.features": 0}, "config.model.features: must be >= 1, got 0"),
    ({"model.num_stages": 0}, "config.model.num_stages: must be >= 1, got 0"),
    ({"model.max_features": 2}, "config.model.max_features: must be >= config.model.features (4), got 2"),
    ({"model.norm": "group", "model.features": 12}, "config.model.features: with config.model.norm 'group', every "
     "stage's channels must be a multiple of 8 (or below it); stage 0 has 12"),
    # data
    ({"data.source": "s3"}, "config.data.source: must be one of msd, phantom, got 's3'"),
    ({"data.root": 5}, "config.data.root: must be a string, got 5"),
    ({"data.slicing_axis": 3}, "config.data.slicing_axis: must be in [0, 2], got 3"),
    ({"data.normalization": "minmax"}, "config.data.normalization: must be one of zscore, ct, got 'minmax'"),
    ({"data.ct_window": (1000.0, -1000.0)},
     "config.data.ct_window: must be two numbers (lo, hi) with lo < hi, got (1000.0, -1000.0)"),
    ({"data.shape": (31, 32)}, "config.data.shape: must be () or two positive integers divisible by 2 "
     "(2**(config.model.num_stages - 1)), got (31, 32)"),
    ({"data.shape": (32,)}, "config.data.shape: must be () or two positive integers divisible by 2 "
     "(2**(config.model.num_stages - 1)), got (32,)"),
    ({"data.split.train": -1}, "config.data.split.train: must be >= 0, got -1"),
    ({"data.split.val": -1}, "config.data.split.val: must be >= 0, got -1"),
    ({"data.split.test": 0}, "config.data.split.test: must be >= 1, got 0"),
    ({"data.split.seed": -1}, "config.data.split.seed: must be >= 0, got -1"),
    ({"data.phantom.num_cases": 11},
     "config.data.phantom.num_cases: must be >= the split's train + val + test (12), got 11"),
    ({"data.phantom.shape": (16, 16)},
     "config.data.phantom.shape: must be three positive integers (X, Y, Z), got (16, 16)"),
    ({"data.phantom.num_channels": 0}, "config.data.phantom.num_channels: must be in [1, 2], got 0"),
    # study
    ({"study.dims": ()}, "config.study.dims: must be a non-empty subset of (2, 3), got ()"),
    ({"study.dims": (4,)}, "config.study.dims: must be a non-empty subset of (2, 3), got (4,)"),
    ({"study.dims": (2, 2)}, "config.study.dims: must be a non-empty subset of (2, 3), got (2, 2)"),
    ({"study.budgets": (0,)}, "config.study.budgets: must be a tuple of positive integers, got (0,)"),
    ({"study.budgets": 8}, "config.study.budgets: must be a tuple of positive integers, got 8"),
    ({"study.budgets": (8.5,)}, "config.study.budgets: must be a tuple of positive integers, got (8.5,)"),
    ({"study.slices_per_volume": (0,)},
     "config.study.slices_per_volume: must be a tuple of positive integers, got (0,)"),
    # selection in rounds
    ({"study.rounds": (1,)}, "config.study.rounds: must be a non-empty tuple of integers >= 2, got (1,)"),
    ({"study.round_allocation": ("both",)},
     'config.study.round_allocation: must be a non-empty subset of ("fixed", "free"), got (\'both\',)'),
    ({"study.selections": ("entropy",), "rounds.first_selection": "ensemble"},
     "config.rounds.first_selection: must be a one-shot selection (random, fixed or ual), got 'ensemble'"),
    ({"study.selections": ("entropy",), "rounds.first_share": 1.0},
     "config.rounds.first_share: must be in (0, 1), got 1.0"),
    ({"study.selections": ("ensemble",), "rounds.members": 1}, "config.rounds.members: must be >= 2, got 1"),
    ({"study.dims": (2, 3), "study.three_d.selections": ("hybrid",)},
     "config.study.three_d.selections: 'hybrid' selects in rounds, which only 2D points do"),
    ({"study.selections": ("nope",)},
     "config.study.selections: must name modules of slicejax/study/selection (annotated, ensemble, entropy, fixed, hybrid, passive, random, ual), got 'nope'"),
    ({"study.selections": ("random", 1)}, "config.study.selections: must be a tuple of selection names, got "
     "('random', 1)"),
    ({"study.interpolation": ("yes",)}, "config.study.interpolation: must be a tuple of booleans, got ('yes',)"),
    ({"study.seeds": (-1,)}, "config.study.seeds: must be a tuple of non-negative integers, got (-1,)"),
    ({"study.seeds": ()}, "config.study.seeds: must not be empty while config.study.budgets is (8,)"),
    ({"study.reference": "yes"}, "config.study.reference: must be True or False, got 'yes'"),
    ({"study.reference_seeds": ()}, "config.study.reference_seeds: must not be empty when the reference is trained"),
    ({"study.budgets": (), "study.reference": False}, "config.study: the grid is empty: no budgets and no reference"),
    ({"study.roi": (0.5, 0.5)},
     "config.study.roi: must be () or two fractions (lo, hi) with 0 <= lo < hi <= 1, got (0.5, 0.5)"),
    ({"study.roi": (0.2, 1.2)},
     "config.study.roi: must be () or two fractions (lo, hi) with 0 <= lo < hi <= 1, got (0.2, 1.2)"),
    ({"study.three_d.budgets": (0,)}, "config.study.three_d.budgets: must be a tuple of positive integers, got (0,)"),
    ({"study.three_d.selections": ("nope",)},
     "config.study.three_d.selections: must name modules of slicejax/study/selection (annotated, ensemble, entropy, fixed, hybrid, passive, random, ual), got 'nope'"),
    ({"study.three_d.reference": True},
     "config.study.three_d.reference: must be () or a one-item tuple (True,) or (False,), got True"),
    ({**WITH_3D, "study.three_d.seeds": (), "study.seeds": ()},
     "config.study.seeds: must not be empty while config.study.budgets is (8,)"),
    ({"study.dims": (3,), "study.three_d.reference": (True,), "study.reference_seeds": ()},
     "config.study.reference_seeds: must not be empty when the reference is trained"),
    # interpolation, eval
    ({"interpolation.weight": -1.0}, "config.interpolation.weight: must be >= 0, got -1.0"),
    ({"interpolation.align_centroids": "no"}, "config.interpolation.align_centroids: must be True or False, got 'no'"),
    ({"eval.batch_size": 0}, "config.eval.batch_size: must be >= 1, got 0"),
    # three_d, with 3 in the dims
    ({**WITH_3D, "three_d.features": 0}, "config.three_d.features: must be >= 1, got 0"),
    ({**WITH_3D, "three_d.num_stages": 0}, "config.three_d.num_stages: must be >= 1, got 0"),
    ({**WITH_3D, "three_d.features": 512}, "config.model.max_features: must be >= config.three_d.features (512), "
     "got 256"),
    ({**WITH_3D, "three_d.patch": (4, 15, 16)}, "config.three_d.patch: must be divisible along each axis by the "
     "product of config.three_d.strides (2, 2, 2), got (4, 15, 16)"),
    ({**WITH_3D, "three_d.strides": ((1, 2, 2),), "three_d.patch": (4, 16, 17)}, "config.three_d.patch: must be "
     "divisible along each axis by the product of config.three_d.strides (1, 2, 2), got (4, 16, 17)"),
    ({**WITH_3D, "three_d.patch": (16, 16)},
     "config.three_d.patch: must be three positive integers (D, H, W), got (16, 16)"),
    ({**WITH_3D, "three_d.kernel_sizes": ((3, 3, 3),)}, "config.three_d.kernel_sizes: must be () or 2 odd kernel "
     "sizes (one per stage, each an int or three ints), got ((3, 3, 3),)"),
    ({**WITH_3D, "three_d.kernel_sizes": (3, (1, 4, 4))}, "config.three_d.kernel_sizes: must be () or 2 odd kernel "
     "sizes (one per stage, each an int or three ints), got (3, (1, 4, 4))"),
    ({**WITH_3D, "three_d.strides": (0,)}, "config.three_d.strides: must be () or 1 strides (one per downsampling, "
     "each a positive int or three), got (0,)"),
    ({**WITH_3D, "three_d.batch_size": 0}, "config.three_d.batch_size: must be >= 1, got 0"),
    ({**WITH_3D, "three_d.foreground_prob": 1.5}, "config.three_d.foreground_prob: must be in [0, 1], got 1.5"),
    ({**WITH_3D, "three_d.overlap": 1.0}, "config.three_d.overlap: must be in [0, 1), got 1.0"),
    ({**WITH_3D, "three_d.eval_batch_size": 0}, "config.three_d.eval_batch_size: must be >= 1, got 0"),
    ({**WITH_3D, "three_d.conv_impl": "cuda"}, "config.three_d.conv_impl: must be one of auto, 2d, 3d, got 'cuda'"),
    # ual, when it makes points of the grid
    ({**WITH_UAL, "ual.method": "kmedoids"},
     "config.ual.method: must be one of kmeans, kcenter, typiclust, got 'kmedoids'"),
    ({**WITH_UAL, "ual.kmeans_inits": 0}, "config.ual.kmeans_inits: must be >= 1, got 0"),
    ({**WITH_UAL, "ual.select_volumes": 1}, "config.ual.select_volumes: must be True or False, got 1"),
    ({**WITH_UAL, ENC + "features": ()},
     "config.ual.encoder.features: must be a non-empty tuple of positive integers, got ()"),
    ({**WITH_UAL, ENC + "norm_groups": 3}, "config.ual.encoder.norm_groups: must divide every stage's channels of "
     "config.ual.encoder.features that it does not exceed; 3 does not divide 16"),
    ({**WITH_UAL, ENC + "steps": 0}, "config.ual.encoder.steps: must be >= 1, got 0"),
    ({**WITH_UAL, ENC + "batch_size": 1}, "config.ual.encoder.batch_size: must be >= 2, got 1"),
    ({**WITH_UAL, ENC + "learning_rate": 0.0}, "config.ual.encoder.learning_rate: must be > 0, got 0.0"),
    ({**WITH_UAL, ENC + "temperature": -0.2}, "config.ual.encoder.temperature: must be > 0, got -0.2"),
    ({**WITH_UAL, ENC + "augment.crop_min_area": 0.0},
     "config.ual.encoder.augment.crop_min_area: must be in (0, 1], got 0.0"),
    ({**WITH_UAL, ENC + "augment.flip_ud_prob": 2.0},
     "config.ual.encoder.augment.flip_ud_prob: must be in [0, 1], got 2.0"),
    ({**WITH_3D, "study.three_d.selections": ("ual",), "ual.method": "kmedoids"},
     "config.ual.method: must be one of kmeans, kcenter, typiclust, got 'kmedoids'"),
    # model_axis
    ({"model_axis.strategy": "vmapp"},
     "config.model_axis.strategy: must be one of auto, vmap, loop, sequential, mesh, got 'vmapp'"),
    ({"model_axis.max_models": -1}, "config.model_axis.max_models: must be >= 0, got -1"),
    ({"model_axis.chunk": 0}, "config.model_axis.chunk: must be >= 1, got 0"),
    ({"model_axis.mesh": (0,)},
     "config.model_axis.mesh: must be () or one or two positive integers (model, data), got (0,)"),
    ({"model_axis.mesh": (1, 2, 4)},
     "config.model_axis.mesh: must be () or one or two positive integers (model, data), got (1, 2, 4)"),
]

# Values that are fine, or bad only in blocks the grid does not use.
GOOD = [
    {"train.warmup_steps": 0},
    {"train.ce_weight": 0.0},
    {"interpolation.weight": 0.0},
    {"data.shape": (16, 32), "study.roi": (0.0, 1.0)},
    {"data.source": "msd", "data.phantom.num_cases": 0},
    {"three_d.patch": (4, 15, 16), "three_d.conv_impl": "cuda"},
    {**WITH_3D, "three_d.strides": ((1, 2, 2),), "three_d.kernel_sizes": ((1, 3, 3), 3), "three_d.patch": (3, 6, 6)},
    {**WITH_3D, "study.dims": (3,), "study.seeds": ()},
    {"ual.method": "kmedoids", "study.three_d.selections": ("ual",)},
    {**WITH_UAL, "study.budgets": (), "ual.method": "kmedoids"},
    {"model.norm": "group", "model.features": 4, "model.max_features": 12},
]


def _config(overrides: dict) -> ml_collections.ConfigDict:
  """The tiny demo config without type checks, with dotted keys set (or removed, for MISSING)."""
  config = ml_collections.ConfigDict(config_lib.load("configs/demo.py:tiny").to_dict(), type_safe=False)
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
      node = node[key]
    if value is MISSING:
      del node[leaf]
    else:
      node[leaf] = value
  return config


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_config_passes(spec):
  config_lib.validate(config_lib.load(f"configs/{spec}"))


@pytest.mark.parametrize("overrides, message", BAD, ids=[", ".join(o) for o, _ in BAD])
def test_bad_value_is_named_with_what_is_allowed(overrides, message):
  with pytest.raises(InputError) as err:
    config_lib.validate(_config(overrides))
  assert str(err.value) == message


@pytest.mark.parametrize("overrides", GOOD, ids=[", ".join(o) for o in GOOD])
def test_allowed_values_and_unused_blocks_pass(overrides):
  config_lib.validate(_config(overrides))


# ---------------------------------------------------------------------------------------------------------------------
# Configs are data: they load, and their values are checked, without JAX.
# ---------------------------------------------------------------------------------------------------------------------

_REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_config_loads_without_importing_jax():
  code = textwrap.dedent("""
      import glob, importlib.util, sys
      from slicejax import config as config_lib
      for path in sorted(glob.glob("configs/*.py")):
        spec = importlib.util.spec_from_file_location(path, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.get_config()
      config_lib.validate(config_lib.load("configs/demo.py:tiny"))
      print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax")))
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_the_config_package_imports_no_other_part_of_slicejax():
  # Its checks read the names they allow (normalisations, selections) from `defaults`, not from the modules that use
  # them, so the config sits below every other part of slicejax.
  code = "import sys; from slicejax import config; print(sorted(m for m in sys.modules if m.startswith('slicejax')))"
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == str(["slicejax", "slicejax.config", "slicejax.config.args", "slicejax.config.checks",
                                    "slicejax.config.defaults", "slicejax.errors"])


def test_check_refuses_a_bad_value_before_jax_is_imported():
  # With JAX made unimportable, `--check`'s config stage still ends with the config's one-line error.
  code = ("import runpy, sys; sys.modules['jax'] = None; sys.argv = ['launch.py', '--config=configs/demo.py:tiny', "
          "'--config.train.steps=0', '--check']; runpy.run_path('launch.py', run_name='__main__')")
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True)
  assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (2, "error: config.train.steps: must be >= 1, got 0")


@pytest.mark.parametrize("selection, message", [
    ("passive", "config.plan.selection: with config.plan.model, must be entropy, ensemble or hybrid, got 'passive'"),
    ("fixed", "config.plan.selection: with config.plan.model, must be entropy, ensemble or hybrid, got 'fixed'"),
    ("entropy", None)])
def test_a_worklist_from_a_model_takes_only_a_selection_that_uses_it(selection, message):
  config = config_lib.load("configs/demo.py:tiny")
  with config.unlocked():
    config.plan = config_lib.plan_block()
    config.plan.update(model="runs/x", annotated="labels", selection=selection, budget=4)
  if message is None:
    config_lib.validate_plan(config)
    return
  with pytest.raises(InputError) as err:
    config_lib.validate_plan(config)
  assert str(err.value) == message
