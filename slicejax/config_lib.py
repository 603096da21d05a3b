"""The full set of config keys with their defaults, and argument parsing for `get_config(arg)`.

Every experiment config in `configs/` starts from `base()` and changes what its dataset needs, so every key exists
in every config and a misspelt `--config.key=value` fails (configs are locked). Defaults where the study is silent
are documented in STUDY.md and README.md.
"""

import importlib.util
import pathlib

import ml_collections

from slicejax import augment
from slicejax import encoder
from slicejax.selection import ual


def base() -> ml_collections.ConfigDict:
  """All keys with their defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # base of every model's initialisation and data stream; the sweep's `seeds` vary plans and streams.

  c.data = ml_collections.ConfigDict(dict(
      source="msd",             # "msd": an MSD-layout folder at `root`; "phantom": generated in WORKDIR/phantom
      root="",
      missing_root_hint="",     # said when `root` is empty: how to get the data
      slicing_axis=2,           # NIfTI axis along which slices are annotated
      normalization="zscore",   # "zscore" per volume and channel, or "ct" (clip to ct_window, scale to [-1, 1])
      ct_window=(-1000.0, 1000.0),
      shape=(),                 # static in-plane (H, W); () = smallest that holds every volume
      cache_dir="",             # preprocessed-volume cache; "" = WORKDIR/cache
      split=dict(train=180, val=20, test=60, seed=0),
      phantom=dict(num_cases=60, shape=(40, 40, 24), num_channels=1, seed=0),
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="unet", features=16, max_features=256, num_stages=4, norm="instance", upsample="resize",
      dtype="float32"))

  # 3D models (points with dims 3): their network size, training patches and sliding-window inference.
  c.three_d = ml_collections.ConfigDict(dict(
      features=16, num_stages=4,
      kernel_sizes=(),          # per stage, e.g. ((1, 3, 3), (3, 3, 3), ...); () = 3 everywhere
      strides=(),               # per downsampling, e.g. ((1, 2, 2), (2, 2, 2), ...); () = 2 everywhere
      patch=(32, 48, 48),       # (D, H, W) training patch and inference window
      batch_size=2,
      foreground_prob=0.33,     # patches centred on foreground of their annotated plane
      overlap=0.5,              # sliding-window overlap
      eval_batch_size=4,        # windows per inference call
      conv_impl="auto",         # "3d" native convolutions, "2d" as 2D convolutions over depth-stacked planes,
                                # "auto": "2d" on CPU (several times faster on XLA:CPU), "3d" elsewhere
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, learning_rate=3e-3, warmup_steps=50, final_lr_fraction=0.01, weight_decay=1e-4,
      grad_clip=1.0, ce_weight=1.0, dice_weight=1.0, log_every=50, checkpoint_every=500,
      augment=augment.default_config()))

  c.eval = ml_collections.ConfigDict(dict(batch_size=64))

  c.study = ml_collections.ConfigDict(dict(
      dims=(2,),
      budgets=(36, 72, 144, 288),
      slices_per_volume=(1, 2, 4, 8, 16),
      selections=("random", "fixed"),
      interpolation=(False,),
      seeds=(0, 1, 2),
      reference=True,           # also train the fully annotated reference
      reference_seeds=(0,),
      roi=(),                   # () = every slice is a candidate; (lo, hi) fractions of the depth narrow it
      # The 3D points' grid, where it differs: an empty entry takes the value above.
      three_d=dict(budgets=(), slices_per_volume=(), selections=(), interpolation=(), seeds=(), reference=(),
                   reference_seeds=()),
  ))

  # Mask interpolation between annotated slices, for points with `interpolation: True`.
  c.interpolation = ml_collections.ConfigDict(dict(
      weight=1.0,               # loss weight of interpolated voxels (annotated voxels weigh 1)
      align_centroids=False,    # move each mask with its centroid before interpolating distances
  ))

  # Unsupervised active learning: the `ual` selection's options, and the self-supervised slice encoder it uses.
  c.ual = ual.default_options()
  c.ual.seed = 0
  c.ual.encoder = encoder.default_config()

  c.model_axis = ml_collections.ConfigDict(dict(
      strategy="auto",          # "auto" (mesh on several devices, else the fastest for the backend), "mesh",
                                # "vmap", "loop" or "sequential"
      mesh=(),                  # mesh strategy: (model, data) axis sizes; () = every device on the model axis
      max_models=8,             # models trained together; larger groups are split
      chunk=4,                  # loop strategy: models per compiled program
  ))
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every config value that does not depend on the data; raises `InputError` naming the first bad key."""
  del config


def parse_arg(arg: str, **spec) -> ml_collections.ConfigDict:
  """Parses `get_config`'s argument "flag1,key=value,..." against typed defaults.

  Args:
    arg: comma-separated words; a bare word sets a boolean default to True.
    **spec: name -> default value (its type converts the given string).

  Returns:
    ConfigDict with one entry per name in `spec`.
  """
  out = ml_collections.ConfigDict(spec)
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(spec)}")
    default = spec[key]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(default)(value)
  return out


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` the way `--config` does, for notebooks and tests."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
