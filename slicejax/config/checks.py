"""Checks of the config values that do not depend on the data, with one-line errors naming the key.

Imports no JAX: `launch.py --check` runs these before anything heavy is loaded. The model axis's check reads the
run's process count only where JAX is already imported (a run of several processes has started it).
"""

import importlib.util
import math
import numbers
import sys

import ml_collections

from slicejax.config import defaults
from slicejax.errors import InputError


def _process_count() -> int:
  """JAX's process count, or 1 where JAX is not imported (no distributed run has started)."""
  jax = sys.modules.get("jax")
  return jax.process_count() if jax is not None else 1


# ---------------------------------------------------------------------------------------------------------------------
# Validation of the values that do not depend on the data.
# ---------------------------------------------------------------------------------------------------------------------

# Choices that `slicejax.model.unet.UNet` and `slicejax.training.train` accept.
_MODEL_NAMES = ("unet",)
_NORMS = ("instance", "group", "none")
_UPSAMPLES = ("resize", "transpose")
_DTYPES = ("auto", "float32", "bfloat16")  # `slicejax.training.precision.compute_dtype`
_SOURCES = ("msd", "phantom")
_CONV_IMPLS = ("auto", "2d", "3d")
# Group norm in `slicejax.model.unet` uses min(8, channels) groups, which must divide the channels.
_UNET_GROUPS = 8
# The study grid's keys with what their items must be; `reference` is a plain bool (a one-item tuple in `three_d`).
_GRID_ITEMS = {
    "budgets": ("positive integers", lambda v: _is_int(v) and v >= 1),
    "slices_per_volume": ("positive integers", lambda v: _is_int(v) and v >= 1),
    "selections": ("selection names", lambda v: isinstance(v, str)),
    "interpolation": ("booleans", lambda v: isinstance(v, bool)),
    "seeds": ("non-negative integers", lambda v: _is_int(v) and v >= 0),
    "reference_seeds": ("non-negative integers", lambda v: _is_int(v) and v >= 0),
}
# Grid keys that multiply into the sparse points: one left empty while budgets are given leaves no point.
_GRID_FACTORS = ("slices_per_volume", "selections", "interpolation", "seeds")


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and (
      isinstance(value, numbers.Integral) or math.isfinite(value))


def _is_sequence(value) -> bool:
  return isinstance(value, (tuple, list))


def _per_axis(value, ok) -> bool:
  """Whether `value` is an int or three ints (one per axis of a 3D kernel or stride) that all pass `ok`."""
  return ok(value) or (_is_sequence(value) and len(value) == 3 and all(ok(n) for n in value))


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
  if hi is None:
    return f"{'>' if lo_open else '>='} {lo}"
  if lo is None:
    return f"{'<' if hi_open else '<='} {hi}"
  return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _within(value, lo, hi, lo_open: bool, hi_open: bool) -> bool:
  above = lo is None or (value > lo if lo_open else value >= lo)
  below = hi is None or (value < hi if hi_open else value <= hi)
  return above and below


class _Checker:
  """Reads dotted keys of a config and raises `InputError("config.<key>", ...)` for a bad value."""

  def __init__(self, config):
    self._config = config

  def fail(self, key: str, problem: str):
    raise InputError(f"config.{key}", problem)

  def get(self, key: str):
    node = self._config
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError, IndexError):
        self.fail(key, "missing")
    return node

  def integer(self, key: str, lo=None, hi=None) -> int:
    value = self.get(key)
    if not _is_int(value):
      self.fail(key, f"must be an integer, got {value!r}")
    if not _within(value, lo, hi, False, False):
      self.fail(key, f"must be {_interval(lo, hi, False, False)}, got {value!r}")
    return int(value)

  def real(self, key: str, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False) -> float:
    value = self.get(key)
    if not _is_real(value):
      self.fail(key, f"must be a finite number, got {value!r}")
    if not _within(value, lo, hi, lo_open, hi_open):
      self.fail(key, f"must be {_interval(lo, hi, lo_open, hi_open)}, got {value!r}")
    return float(value)

  def boolean(self, key: str) -> bool:
    value = self.get(key)
    if not isinstance(value, bool):
      self.fail(key, f"must be True or False, got {value!r}")
    return value

  def text(self, key: str) -> str:
    value = self.get(key)
    if not isinstance(value, str):
      self.fail(key, f"must be a string, got {value!r}")
    return value

  def choice(self, key: str, choices) -> str:
    value = self.get(key)
    if not (isinstance(value, str) and value in choices):
      self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value

  def items(self, key: str, what: str, ok, lengths=None, *, nonempty: bool = False) -> tuple:
    """A tuple (or list) whose items all pass `ok`; `what` completes "must be ..." in the error."""
    value = self.get(key)
    if not (_is_sequence(value) and (lengths is None or len(value) in lengths) and (value or not nonempty)
            and all(ok(v) for v in value)):
      self.fail(key, f"must be {what}, got {value!r}")
    return tuple(value)


def _check_group_norm(c: _Checker, key: str, features: int, num_stages: int, max_features: int, norm: str) -> None:
  """Every stage's channels, min(features * 2**i, max_features), must split into group norm's groups."""
  if norm != "group":
    return
  for i in range(num_stages):
    channels = min(features * 2**i, max_features)
    if channels % min(_UNET_GROUPS, channels):
      c.fail(key, f"with config.model.norm 'group', every stage's channels must be a multiple of "
             f"{_UNET_GROUPS} (or below it); stage {i} has {channels}")


def _check_model(c: _Checker) -> None:
  c.choice("model.name", _MODEL_NAMES)
  features = c.integer("model.features", lo=1)
  num_stages = c.integer("model.num_stages", lo=1)
  max_features = c.integer("model.max_features", lo=1)
  if max_features < features:
    c.fail("model.max_features", f"must be >= config.model.features ({features}), got {max_features}")
  norm = c.choice("model.norm", _NORMS)
  c.choice("model.upsample", _UPSAMPLES)
  c.choice("model.dtype", _DTYPES)
  _check_group_norm(c, "model.features", features, num_stages, max_features, norm)


def parse_normalization(spec: str) -> tuple:
  """Parses a normalisation setting (`config.data.normalization`, see `slicejax.data.load`) into per-channel items.

  Args:
    spec: "zscore", "ct", or a comma-separated list with one item per channel, each "zscore", "ct" or
      "ct:LO:HI:MEAN:STD".

  Returns:
    A tuple of items, each ("zscore",), ("ct",) or ("ct", lo, hi, mean, std); one item means every channel.

  Raises:
    InputError("normalization", ...) for a malformed setting.
  """
  items = []
  for word in str(spec).split(","):
    parts = word.strip().split(":")
    if (parts[0] not in defaults.NORMALIZATIONS or (parts[0] == "zscore" and len(parts) > 1)
        or len(parts) not in (1, 5)):
      raise InputError("normalization", f"unknown normalisation {word.strip()!r}; per channel one of 'zscore', 'ct' "
                       "or 'ct:LO:HI:MEAN:STD', separated by commas")
    if len(parts) == 5:
      try:
        lo, hi, mean, std = (float(p) for p in parts[1:])
      except ValueError as e:
        raise InputError("normalization", f"{word.strip()!r}: LO, HI, MEAN and STD must be numbers") from e
      if not (all(math.isfinite(v) for v in (lo, hi, mean, std)) and lo < hi and std > 0):
        raise InputError("normalization", f"{word.strip()!r}: needs LO < HI and STD > 0")
      items.append(("ct", lo, hi, mean, std))
    else:
      items.append((parts[0],))
  return tuple(items)


def _check_data(c: _Checker) -> None:
  source = c.choice("data.source", _SOURCES)
  for key in ("data.root", "data.missing_root_hint", "data.cache_dir", "data.download_task"):
    c.text(key)
  c.integer("data.slicing_axis", lo=0, hi=2)
  normalization = c.get("data.normalization")
  if isinstance(normalization, str) and not any(s in normalization for s in ",:"):
    c.choice("data.normalization", defaults.NORMALIZATIONS)
  try:
    parse_normalization(normalization)
  except InputError as e:
    c.fail("data.normalization", str(e).partition(": ")[2])
  c.items("data.target_spacing", "() or three numbers >= 0 (mm, NIfTI axes X, Y, Z; 0 keeps an axis)",
          lambda s: _is_real(s) and s >= 0, (0, 3))
  c.boolean("data.fingerprint")
  c.choice("data.pipeline", defaults.PIPELINES)
  c.real("data.memory_budget_gb", lo=0.0)
  c.integer("data.prefetch", lo=1)
  if c.choice("data.stream_source", defaults.STREAM_SOURCES) == "tfds":
    missing = [m for m in ("tensorflow_datasets", "grain", "array_record") if importlib.util.find_spec(m) is None]
    if missing:
      c.fail("data.stream_source", f"'tfds' needs {', '.join(missing)}: pip install 'slicejax[tfds]'")
  window = c.items("data.ct_window", "two numbers (lo, hi) with lo < hi", _is_real, (2,))
  if not window[0] < window[1]:
    c.fail("data.ct_window", f"must be two numbers (lo, hi) with lo < hi, got {window!r}")
  multiple = 2 ** (c.integer("model.num_stages") - 1)
  c.items("data.shape", f"() or two positive integers divisible by {multiple} (2**(config.model.num_stages - 1))",
          lambda n: _is_int(n) and n >= 1 and n % multiple == 0, (0, 2))
  # train 0: every case left after val and test (slicejax.data.split.split_cases).
  total = c.integer("data.split.train", lo=0) + c.integer("data.split.val", lo=0) + c.integer("data.split.test", lo=1)
  c.integer("data.split.seed", lo=0)
  if source == "phantom":
    num_cases = c.integer("data.phantom.num_cases", lo=1)
    if num_cases < total:
      c.fail("data.phantom.num_cases", f"must be >= the split's train + val + test ({total}), got {num_cases}")
    c.items("data.phantom.shape", "three positive integers (X, Y, Z)", lambda n: _is_int(n) and n >= 1, (3,))
    c.integer("data.phantom.num_channels", lo=1, hi=len(defaults.CHANNEL_NAMES))
    c.integer("data.phantom.seed", lo=0)


def _check_train(c: _Checker) -> None:
  steps = c.integer("train.steps", lo=1)
  c.integer("train.batch_size", lo=1)
  c.real("train.learning_rate", lo=0, lo_open=True)
  warmup = c.integer("train.warmup_steps", lo=0)
  if warmup >= steps:
    c.fail("train.warmup_steps", f"must be < config.train.steps ({steps}), got {warmup}")
  reference_steps = c.integer("study.reference_steps", lo=0)
  if 0 < reference_steps <= warmup:
    c.fail("study.reference_steps", f"must be 0 (train.steps) or > config.train.warmup_steps ({warmup}), got "
                                    f"{reference_steps}")
  c.real("train.final_lr_fraction", 0, 1)
  c.real("train.weight_decay", lo=0)
  c.real("train.grad_clip", lo=0, lo_open=True)
  weights = c.real("train.ce_weight", lo=0), c.real("train.dice_weight", lo=0)
  if weights == (0, 0):
    c.fail("train.dice_weight", "must be > 0 when config.train.ce_weight is 0 (the loss would be 0)")
  c.integer("train.log_every", lo=1)
  c.integer("train.checkpoint_every", lo=1)
  for key in ("flip_prob", "affine_prob"):
    c.real(f"train.augment.{key}", 0, 1)
  c.real("train.augment.rotate_degrees", lo=0)
  scale = c.items("train.augment.scale_range", "two numbers (lo, hi) with 0 < lo <= hi", _is_real, (2,))
  if not 0 < scale[0] <= scale[1]:
    c.fail("train.augment.scale_range", f"must be two numbers (lo, hi) with 0 < lo <= hi, got {scale!r}")
  for key in ("intensity_scale", "intensity_shift"):
    c.real(f"train.augment.{key}", lo=0)


def _check_selection(c: _Checker, key: str, name: str) -> None:
  if name not in defaults.SELECTIONS:
    c.fail(key, f"must name modules of slicejax/study/selection ({', '.join(defaults.SELECTIONS)}), got {name!r}")


def _model_based(name: str) -> bool:
  """Whether the selection `name` chooses in rounds with a trained model."""
  return name in defaults.MODEL_BASED_SELECTIONS


def _check_grid_entry(c: _Checker, key: str, name: str) -> None:
  what, ok = _GRID_ITEMS[name]
  for item in c.items(key, f"a tuple of {what}", ok):
    if name == "selections":
      _check_selection(c, key, item)


def _check_study(c: _Checker) -> tuple:
  """Checks the study block; returns (dims, the selections of the sparse points of the grid)."""
  dims = c.items("study.dims", "a non-empty subset of (2, 3)", lambda d: _is_int(d) and d in (2, 3), (1, 2))
  if len(set(dims)) != len(dims):
    c.fail("study.dims", f"must be a non-empty subset of (2, 3), got {dims!r}")
  for name in _GRID_ITEMS:
    _check_grid_entry(c, f"study.{name}", name)
  c.boolean("study.reference")
  c.items("study.rounds", "a non-empty tuple of integers >= 2", lambda v: _is_int(v) and v >= 2, nonempty=True)
  c.items("study.round_allocation", 'a non-empty subset of ("fixed", "free")', lambda v: v in ("fixed", "free"),
          (1, 2), nonempty=True)
  for key in ("study.round_budgets", "study.round_slices_per_volume"):
    c.items(key, "() or positive integers", lambda v: _is_int(v) and v >= 1)
  roi = c.items("study.roi", "() or two fractions (lo, hi) with 0 <= lo < hi <= 1", _is_real, (0, 2))
  if roi and not 0 <= roi[0] < roi[1] <= 1:
    c.fail("study.roi", f"must be () or two fractions (lo, hi) with 0 <= lo < hi <= 1, got {roi!r}")
  # The 3D grid: an empty entry takes the value above (see `slicejax.study`).
  for name in _GRID_ITEMS:
    if c.get(f"study.three_d.{name}") != ():
      _check_grid_entry(c, f"study.three_d.{name}", name)
  if c.get("study.three_d.reference") != ():
    c.items("study.three_d.reference", "() or a one-item tuple (True,) or (False,)", lambda v: isinstance(v, bool),
            (1,))

  selections, any_point = set(), False
  for d in dims:
    # Where each grid value comes from for this dims.
    keys = {name: f"study.{name}" for name in (*_GRID_ITEMS, "reference")}
    if d == 3:
      keys.update({name: f"study.three_d.{name}" for name in keys if c.get(f"study.three_d.{name}") != ()})
    grid = {name: c.get(key) for name, key in keys.items()}
    reference = grid["reference"] if keys["reference"] == "study.reference" else grid["reference"][0]
    if grid["budgets"]:
      for name in _GRID_FACTORS:
        if not grid[name]:
          c.fail(keys[name], f"must not be empty while config.{keys['budgets']} is {tuple(grid['budgets'])!r}")
      selections.update(grid["selections"])
      in_rounds = [s for s in grid["selections"] if _model_based(s)]
      if d == 3 and in_rounds:
        c.fail(keys["selections"], f"{in_rounds[0]!r} selects in rounds, which only 2D points do")
    elif "annotated" in grid["selections"]:
      # Real sparse annotations (`slicejax.study.sparse`): the plan, not a budget, makes the points.
      selections.add("annotated")
      any_point = True
    if reference and not grid["reference_seeds"]:
      c.fail(keys["reference_seeds"], "must not be empty when the reference is trained")
    any_point = any_point or bool(grid["budgets"]) or reference
  if not any_point:
    c.fail("study", "the grid is empty: no budgets and no reference")
  return dims, selections


def _check_three_d(c: _Checker) -> None:
  """The 3D network, patches and inference (points with dims 3)."""
  features = c.integer("three_d.features", lo=1)
  num_stages = c.integer("three_d.num_stages", lo=1)
  max_features = c.integer("model.max_features")
  if max_features < features:
    c.fail("model.max_features", f"must be >= config.three_d.features ({features}), got {max_features}")
  _check_group_norm(c, "three_d.features", features, num_stages, max_features, c.get("model.norm"))
  odd = lambda n: _is_int(n) and n >= 1 and n % 2 == 1
  positive = lambda n: _is_int(n) and n >= 1
  c.items("three_d.kernel_sizes", f"() or {num_stages} odd kernel sizes (one per stage, each an int or three ints)",
          lambda k: _per_axis(k, odd), (0, num_stages))
  strides = c.items("three_d.strides", f"() or {num_stages - 1} strides (one per downsampling, each a positive "
                    "int or three)", lambda s: _per_axis(s, positive), (0, num_stages - 1))
  strides = strides or (2,) * (num_stages - 1)
  factor = tuple(math.prod(s if _is_int(s) else s[axis] for s in strides) for axis in range(3))
  patch = c.items("three_d.patch", "three positive integers (D, H, W)", lambda n: _is_int(n) and n >= 1, (3,))
  if any(n % f for n, f in zip(patch, factor)):
    c.fail("three_d.patch", f"must be divisible along each axis by the product of config.three_d.strides {factor}, "
           f"got {patch!r}")
  c.integer("three_d.batch_size", lo=1)
  c.real("three_d.foreground_prob", 0, 1)
  c.real("three_d.overlap", 0, 1, hi_open=True)
  c.integer("three_d.eval_batch_size", lo=1)
  c.choice("three_d.conv_impl", _CONV_IMPLS)


def _check_ual(c: _Checker) -> None:
  """The `ual` selection's options and its slice encoder (`slicejax.study.encoder.default_config`)."""
  c.choice("ual.method", defaults.UAL_METHODS)
  for key in ("kmeans_iterations", "kmeans_inits", "typiclust_neighbors"):
    c.integer(f"ual.{key}", lo=1)
  c.boolean("ual.select_volumes")
  c.integer("ual.seed", lo=0)
  e = "ual.encoder."
  features = c.items(e + "features", "a non-empty tuple of positive integers", lambda n: _is_int(n) and n >= 1,
                     nonempty=True)
  for key in ("convs_per_stage", "norm_groups", "embedding_dim", "projection_dim", "steps", "log_every"):
    c.integer(e + key, lo=1)
  groups = c.integer(e + "norm_groups")
  for f in features:
    if f % min(groups, f):
      c.fail(e + "norm_groups", f"must divide every stage's channels of config.ual.encoder.features that it does "
             f"not exceed; {groups} does not divide {f}")
  c.integer(e + "batch_size", lo=2)
  c.real(e + "learning_rate", lo=0, lo_open=True)
  c.real(e + "temperature", lo=0, lo_open=True)
  a = e + "augment."
  c.real(a + "crop_min_area", 0, 1, lo_open=True)
  c.real(a + "crop_max_aspect", lo=1)
  for key in ("flip_lr_prob", "flip_ud_prob", "blur_prob"):
    c.real(a + key, 0, 1)
  for key in ("rotation_degrees", "intensity_scale", "intensity_shift", "gamma", "blur_sigma_max", "noise_std"):
    c.real(a + key, lo=0)


def _check_rounds(c: _Checker) -> None:
  """The round schedule and the model-based selections' options (`slicejax.training.rounds`)."""
  first = c.text("rounds.first_selection")
  _check_selection(c, "rounds.first_selection", first)
  if _model_based(first) or first == "annotated":
    c.fail("rounds.first_selection", f"must be a one-shot selection (random, fixed or ual), got {first!r}")
  c.real("rounds.first_share", 0, 1, lo_open=True, hi_open=True)
  c.boolean("rounds.warm_start")
  c.integer("rounds.members", lo=2)
  c.boolean("rounds.final_members")
  c.boolean("rounds.foreground")
  c.integer("rounds.hybrid_candidates", lo=1)


def _check_model_axis(c: _Checker) -> None:
  strategy = c.choice("model_axis.strategy", ("auto",) + defaults.STRATEGIES)
  processes = _process_count()
  if processes > 1 and strategy not in ("auto", "mesh"):
    c.fail("model_axis.strategy", f"{strategy!r} trains on one device of one process; a run of "
           f"{processes} processes needs 'auto' or 'mesh'")
  c.items("model_axis.mesh", "() or one or two positive integers (model, data)", lambda n: _is_int(n) and n >= 1,
          (0, 1, 2))
  c.integer("model_axis.max_models", lo=0)
  c.integer("model_axis.chunk", lo=1)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every config value that does not depend on the data, before anything is read or written (the model
  axis's strategy also against the run's processes).

  Blocks that only some grids use are checked when used: `three_d` when 3 is in `study.dims`, a selection's
  options block (`ual`) when that selection makes points of the grid.

  Args:
    config: a config built on `base()`.

  Raises:
    InputError: for the first bad value, naming its full key (e.g. `config.train.warmup_steps`) and what is allowed.
  """
  c = _Checker(config)
  c.integer("seed", lo=0)
  _check_model(c)
  _check_data(c)
  _check_train(c)
  c.integer("eval.batch_size", lo=1)
  c.boolean("eval.surface_metrics")
  c.real("eval.nsd_tolerance_mm", lo=0, lo_open=True)
  c.integer("eval.curve_points", lo=0)
  c.integer("eval.curve_volumes", lo=1)
  dims, selections = _check_study(c)
  c.real("interpolation.weight", lo=0)
  c.boolean("interpolation.align_centroids")
  if 3 in dims:
    _check_three_d(c)
  in_rounds = [s for s in selections if _model_based(s)]
  if in_rounds:
    _check_rounds(c)
  if "ual" in selections or (in_rounds and c.get("rounds.first_selection") == "ual") or "hybrid" in selections:
    _check_ual(c)
  _check_model_axis(c)
  c.real("cost.seconds_per_volume", lo=0)
  c.real("cost.seconds_per_slice", lo=0)
  c.real("cost.seconds_per_kilopixel", lo=0)
  c.real("stats.alpha", lo=0, hi=0.5, lo_open=True, hi_open=True)
  c.real("stats.margin", lo=0, lo_open=True)
  c.integer("stats.min_seeds", lo=2)
  c.real("stats.power", lo=0, hi=1, lo_open=True, hi_open=True)
  c.real("stats.plateau_tolerance", lo=0)
  c.real("stats.max_improving_share", lo=0, hi=1)
  c.real("stats.steps_tolerance", lo=0, lo_open=True)
  c.integer("stats.steps_seeds", lo=1)


def _check_data_source(c: _Checker) -> None:
  source = c.choice("data.source", _SOURCES)
  for key in ("data.root", "data.cache_dir"):
    c.text(key)
  c.integer("data.slicing_axis", lo=0, hi=2)
  c.choice("data.normalization", defaults.NORMALIZATIONS)
  if source == "phantom":
    c.integer("data.phantom.num_cases", lo=1)
    c.items("data.phantom.shape", "three positive integers (X, Y, Z)", lambda n: _is_int(n) and n >= 1, (3,))
    c.integer("data.phantom.num_channels", lo=1, hi=len(defaults.CHANNEL_NAMES))
    c.integer("data.phantom.seed", lo=0)
  elif not c.get("data.root"):
    c.fail("data.root", "set it to the folder of images to plan")


def validate_plan(config) -> None:
  """Checks the keys `slicejax.modes.plan` reads (data source, the plan block, `ual` when it selects)."""
  c = _Checker(config)
  _check_data_source(c)
  budget = c.integer("plan.budget", lo=1)
  study = c.text("plan.from_study")
  c.integer("plan.dims", lo=0, hi=3)
  if c.get("plan.dims") == 1:
    c.fail("plan.dims", "must be 0, 2 or 3, got 1")
  for key in ("plan.model", "plan.point", "plan.annotated", "plan.previous"):
    c.text(key)
  c.boolean("plan.free")
  c.integer("plan.batch_size", lo=0)
  if c.get("plan.model"):
    if study:
      c.fail("plan.from_study", "applies to a first plan; with config.plan.model the model chooses")
    if not (c.get("plan.annotated") or c.get("plan.previous")):
      c.fail("plan.annotated", "say what is annotated so far: a folder of label files, or config.plan.previous")
    _check_selection(c, "plan.selection", c.text("plan.selection"))
    if not _model_based(c.get("plan.selection")) or c.get("plan.selection") == "passive":
      c.fail("plan.selection", "with config.plan.model, must be entropy, ensemble or hybrid, got "
             f"{c.get('plan.selection')!r}")
    _check_rounds(c)
    if c.get("plan.selection") == "hybrid":
      _check_ual(c)
  elif not study:
    volumes = c.integer("plan.volumes", lo=1)
    if volumes > budget:
      c.fail("plan.volumes", f"must be <= config.plan.budget ({budget}), got {volumes}")
    _check_selection(c, "plan.selection", c.text("plan.selection"))
    if c.get("plan.selection") == "ual":
      _check_ual(c)
  c.integer("plan.seed", lo=0)
  roi = c.items("plan.roi", "() or two fractions (lo, hi) with 0 <= lo < hi <= 1", _is_real, (0, 2))
  if roi and not 0 <= roi[0] < roi[1] <= 1:
    c.fail("plan.roi", f"must be () or two fractions (lo, hi) with 0 <= lo < hi <= 1, got {roi!r}")
  names = c.items("plan.classes", "() or at least two class names, background first",
                  lambda n: isinstance(n, str) and n != "", (0, *range(2, 256)))
  if "ignore" in names or len(set(names)) != len(names):
    c.fail("plan.classes", f"must be distinct names other than 'ignore' (the ignore label's), got {names!r}")
  c.integer("plan.sheet_tiles", lo=1)


def validate_predict(config) -> None:
  """Checks the `predict` block (the model's own config is checked when it is loaded)."""
  c = _Checker(config)
  if not c.text("predict.model"):
    c.fail("predict.model", "set it to the workdir of a trained model")
  c.text("predict.point")
  if not c.text("predict.input"):
    c.fail("predict.input", "set it to a folder of images")
  c.boolean("predict.probabilities")
  c.integer("predict.batch_size", lo=0)


def validate_export(config) -> None:
  """Checks the `export` block: a plan (with annotations) or a study point, not both."""
  c = _Checker(config)
  plan, study = c.text("export.plan"), c.text("export.study")
  c.text("export.annotations")
  point = c.text("export.point")
  if bool(plan) == bool(study):
    c.fail("export.plan", "set exactly one of config.export.plan (a plan workdir) and config.export.study")
  if study and not point:
    c.fail("export.point", "name the study point to export (a file name of STUDY/plans/ without .json)")
  if plan and point:
    c.fail("export.point", "applies to config.export.study only")
  c.boolean("export.verify")
