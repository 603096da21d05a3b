"""A dataset's fingerprint and the settings derived from it, so that any MSD or nnU-Net v2 folder runs without a
config of its own (`configs/msd.py`).

The fingerprint holds what the headers say (per case the NIfTI shape and spacing, the channels, classes and ignore
label) and, for CT channels only, intensity statistics of the foreground (the declared classes, ignore label
excluded) of the training pool only, never of validation or test volumes: up to `SAMPLES_PER_CASE` voxel values per
case drawn with a fixed seed, as nnU-Net does. The pool is the derived split's (seed 0); a config whose split keys
differ derives its normalisation from its own pool. MRI and other channels need no voxel, so their fingerprint reads
headers only.

Derived settings, each overridable by its config key (`--config.KEY=...`):
  * data.slicing_axis: the coarsest-spacing NIfTI axis when the median spacing is anisotropic (largest more than
    `resample.ANISOTROPY` times the smallest, e.g. prostate's 0.6 x 0.6 x 3.6 mm), else axis 2;
  * data.target_spacing: the median spacing per axis (nnU-Net's target); `()` when every case already has it;
  * data.shape: the median in-plane size at the target spacing, rounded up to a multiple of
    2**(config.model.num_stages - 1);
  * data.normalization: per channel, "ct:P0.5:P99.5:MEAN:STD" of the foreground samples for a channel named CT
    (clip to the 0.5 and 99.5 percentiles, standardise with the mean and std), else "zscore";
  * data.split: test 20% and validation 10% of the cases (at least 1 each from 4 cases on), the rest for training;
  * study.budgets: b, 2b, 4b, 8b slices with b = 20% of the training pool (the hippocampus grid, 36 to 288 slices
    for 180 volumes), keeping those that fit the pool; study.slices_per_volume: 1, 2, 4, ... up to half the median
    depth and at most 16.

`bind(config)` makes those keys of a config follow `config.data.root` lazily (ml_collections references), so the
values are derived when first read, after `--config.data.root=...` is applied, and an explicit override replaces a
derived value. The fingerprint is computed once per process and folder and logged when computed.
"""

import collections
import dataclasses
import functools
import math
import pathlib

from absl import logging
import ml_collections
import numpy as np

from slicejax import config as config_lib
from slicejax.data import index as index_lib
from slicejax.data import nifti
from slicejax.data import resample as resample_lib
from slicejax.data import split as split_lib
from slicejax.errors import InputError

SAMPLES_PER_CASE = 10000
PERCENTILES = (0.5, 99.5)
_SPLIT_FRACTIONS = (0.1, 0.2)  # validation, test
_BUDGET_FRACTION = 0.2
_MAX_SLICES_PER_VOLUME = 16
# ml_collections applies a FieldReference's op as `op.fn(value, *op.args)`, resolving references in `args`.
_Op = collections.namedtuple("_Op", ["fn", "args"])


@dataclasses.dataclass(frozen=True, eq=False)
class Fingerprint:
  """What a dataset folder holds, as far as settings depend on it.

  Attributes:
    name, root: the dataset's name and folder.
    case_ids: sorted.
    class_names: without the ignore label.
    channel_names: per channel.
    ignore_label: int or None.
    shapes: `[N, 3]` int, per case the NIfTI `(X, Y, Z)` size.
    spacings: `[N, 3]` float, per case the NIfTI `(sX, sY, sZ)` mm.
    intensity: per channel, None or {"percentiles": (p0.5, p99.5), "mean": m, "std": s} of CT foreground samples.
  """
  name: str
  root: str
  case_ids: tuple
  class_names: tuple
  channel_names: tuple
  ignore_label: int | None
  shapes: np.ndarray
  spacings: np.ndarray
  intensity: tuple

  @property
  def num_cases(self) -> int:
    return len(self.case_ids)

  @property
  def median_spacing(self) -> tuple:
    return tuple(float(s) for s in np.median(self.spacings, axis=0))


def is_ct(channel_name: str) -> bool:
  return channel_name.strip().lower() == "ct"


def _foreground_samples(case, channel: int, num_classes: int, ignore_label, rng) -> np.ndarray:
  """Up to SAMPLES_PER_CASE intensities of one channel at the voxels of declared classes of one case.

  Raises:
    InputError: the label file holds values dataset.json does not declare.
  """
  json_path = case.label_path.parent.parent / "dataset.json"
  label = nifti.decode(case.label_path, nifti.read_bytes(case.label_path, json_path))
  declared = set(range(num_classes)) | ({ignore_label} if ignore_label is not None else set())
  undeclared = sorted(set(np.unique(label).tolist()) - declared)
  if undeclared:
    raise InputError(case.label_path, f"label values {undeclared} are not declared in dataset.json 'labels' "
                                      f"(0..{num_classes - 1})")
  if len(case.image_paths) > 1:
    path = case.image_paths[channel]
    image = nifti.decode(path, nifti.read_bytes(path, json_path))
  else:
    image = nifti.decode(case.image_path, nifti.read_bytes(case.image_path, json_path))
    image = image[..., channel] if image.ndim == 4 else image
  mask = (label > 0) & (label < num_classes)
  values = np.asarray(image[mask], np.float64)
  if values.size > SAMPLES_PER_CASE:
    values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
  return values


def compute(root, *, seed: int = 0) -> Fingerprint:
  """The fingerprint of an MSD or nnU-Net v2 folder (see the module docstring).

  Raises:
    InputError: as `index.index_msd` (and, for CT channels, as reading the voxels would).
  """
  index = index_lib.index_msd(root, slicing_axis=2)
  # With slicing axis 2, volume order (D, H, W) is NIfTI (Z, X, Y).
  shapes = np.array([c.original_shape for c in index.cases], np.int64)[:, [1, 2, 0]]
  spacings = np.array([c.original_spacing for c in index.cases], np.float64)[:, [1, 2, 0]]
  pool = _training_pool(index.case_ids, split_counts(len(index.case_ids)), 0)
  return Fingerprint(name=index.name, root=index.root, case_ids=index.case_ids, class_names=index.class_names,
                     channel_names=index.channel_names, ignore_label=index.ignore_label, shapes=shapes,
                     spacings=spacings, intensity=_intensity(index, pool, seed))


def _training_pool(case_ids, counts: dict, split_seed: int) -> tuple:
  return tuple(split_lib.split_cases(case_ids, num_train=counts["train"], num_val=counts["val"],
                                     num_test=counts["test"], seed=split_seed)["train"])


def _intensity(index, pool, seed: int) -> tuple:
  """Per channel, None or the foreground statistics of CT channels over the cases `pool`."""
  cases = [c for c in index.cases if c.case_id in set(pool)]
  intensity = []
  for channel, channel_name in enumerate(index.channel_names):
    if not is_ct(channel_name):
      intensity.append(None)
      continue
    rng = np.random.default_rng(seed)
    values = np.concatenate([_foreground_samples(c, channel, len(index.class_names), index.ignore_label, rng)
                             for c in cases])
    if not values.size:
      intensity.append(None)
      continue
    lo, hi = np.percentile(values, PERCENTILES)
    intensity.append({"percentiles": (float(lo), float(hi)), "mean": float(values.mean()),
                      "std": float(values.std())})
  return tuple(intensity)


@functools.lru_cache(maxsize=8)
def _pool_intensity(root: str, stamp, pool: tuple) -> tuple:
  del stamp  # part of the cache key only
  return _intensity(index_lib.index_msd(root, slicing_axis=2), pool, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Derived settings.
# ---------------------------------------------------------------------------------------------------------------------


def slicing_axis(fp: Fingerprint) -> int:
  coarse = resample_lib.coarse_axis(fp.median_spacing)
  return 2 if coarse is None else coarse


def target_spacing(fp: Fingerprint) -> tuple:
  """The median spacing (NIfTI order), or () when every case has it already (nothing to resample)."""
  target = fp.median_spacing
  return () if np.allclose(fp.spacings, np.array(target)[None], rtol=0, atol=1e-6) else target


def coarse_target_spacing(fp: Fingerprint, max_in_plane: int) -> tuple:
  """`target_spacing`, coarsened in-plane so that the median plane is at most `max_in_plane` voxels a side (the slicing
  axis keeps its spacing): a quick look at a dataset of large slices. () when nothing needs resampling."""
  axis = slicing_axis(fp)
  spacing = list(fp.median_spacing)
  sizes = np.median(np.array(fp.shapes, np.float64) * np.array(fp.spacings) / np.array(spacing)[None], axis=0)
  factor = max(sizes[a] for a in range(3) if a != axis) / max_in_plane  # one factor: the plane keeps its aspect
  for a in range(3):
    if a != axis and factor > 1:
      spacing[a] *= factor
  spacing = tuple(float(x) for x in spacing)
  return () if np.allclose(fp.spacings, np.array(spacing)[None], rtol=0, atol=1e-6) else spacing


def grid_shapes(fp: Fingerprint, spacing) -> np.ndarray:
  """`[N, 3]` per case the NIfTI size once resampled to `spacing` (`()` keeps it)."""
  return np.array([resample_lib.target_grid(n, s, tuple(spacing))[0] for n, s in zip(fp.shapes, fp.spacings)])


def in_plane_shape(fp: Fingerprint, axis: int, spacing, num_stages: int) -> tuple:
  """The median in-plane `(H, W)` at `spacing`, rounded up to a multiple of 2**(num_stages - 1)."""
  multiple = 2 ** max(num_stages - 1, 0)
  shapes = grid_shapes(fp, spacing)
  plane = [a for a in range(3) if a != axis]
  return tuple(int(math.ceil(np.median(shapes[:, a]) / multiple) * multiple) for a in plane)


def normalization(fp: Fingerprint, train=None, val=None, test=None, split_seed: int = 0) -> str:
  """The per-channel normalisation; CT statistics from the training pool of the split (train, val, test, seed),
  by default the derived one."""
  intensity = fp.intensity
  if train is not None and any(is_ct(n) for n in fp.channel_names):
    counts = {"train": train, "val": val, "test": test}
    if counts != split(fp) or split_seed:
      train = train or fp.num_cases - val - test
      pool = _training_pool(fp.case_ids, dict(counts, train=train), split_seed)
      intensity = _pool_intensity(fp.root, _stamp(fp.root), pool)
  items = []
  for stats in intensity:
    if stats is None:
      items.append("zscore")
    else:
      lo, hi = stats["percentiles"]
      items.append(f"ct:{lo:.6g}:{hi:.6g}:{stats['mean']:.6g}:{max(stats['std'], 1e-6):.6g}")
  return "zscore" if set(items) == {"zscore"} else ",".join(items)


def split(fp: Fingerprint) -> dict:
  """{"train", "val", "test"} case counts."""
  return split_counts(fp.num_cases)


def split_counts(n: int) -> dict:
  """{"train", "val", "test"} case counts of a dataset of `n` cases."""
  val = max(1, round(_SPLIT_FRACTIONS[0] * n)) if n >= 4 else 0
  test = max(1, round(_SPLIT_FRACTIONS[1] * n)) if n >= 2 else 0
  return {"train": max(n - val - test, 1), "val": val, "test": test}


def slices_per_volume(fp: Fingerprint, axis: int, spacing) -> tuple:
  depth = float(np.median(grid_shapes(fp, spacing)[:, axis]))
  rhos = [1]
  while rhos[-1] * 2 <= min(_MAX_SLICES_PER_VOLUME, depth / 2):
    rhos.append(rhos[-1] * 2)
  return tuple(rhos)


def budgets(fp: Fingerprint, axis: int, spacing, pool: int) -> tuple:
  """b, 2b, 4b, 8b with b = 20% of the pool, those that some allocation fits (s = B / rho <= pool, B <= slices)."""
  rhos = slices_per_volume(fp, axis, spacing)
  total = pool * int(np.min(grid_shapes(fp, spacing)[:, axis]))
  base = max(1, round(_BUDGET_FRACTION * pool))
  fits = lambda b: b <= total and any(b % r == 0 and b // r <= pool for r in rhos)
  return tuple(b for b in (base, 2 * base, 4 * base, 8 * base) if fits(b)) or (1,)


def describe(fp: Fingerprint, num_stages: int = 4, config=None) -> list[str]:
  """The fingerprint and what is derived from it, as lines: with `config` (bound to `fp`'s folder), the values the
  config resolves to, overrides and recipe arguments included."""
  axis, spacing = slicing_axis(fp), target_spacing(fp)
  fmt = lambda values: " x ".join(f"{v:.3g}" for v in values)
  lines = [f"fingerprint of {fp.root} ({fp.name}): {fp.num_cases} cases, channels {', '.join(fp.channel_names)}, "
           f"classes {', '.join(fp.class_names[1:])}"
           + ("" if fp.ignore_label is None else f", ignore label {fp.ignore_label}"),
           f"  size (NIfTI X x Y x Z): median {fmt(np.median(fp.shapes, axis=0))}, "
           f"min {fmt(fp.shapes.min(axis=0))}, max {fmt(fp.shapes.max(axis=0))}",
           f"  spacing (mm): median {fmt(fp.median_spacing)}, min {fmt(fp.spacings.min(axis=0))}, "
           f"max {fmt(fp.spacings.max(axis=0))}"]
  for name, stats in zip(fp.channel_names, fp.intensity):
    if stats is not None:
      lines.append(f"  {name} foreground: percentiles {PERCENTILES[0]}/{PERCENTILES[1]} "
                   f"{stats['percentiles'][0]:.4g}/{stats['percentiles'][1]:.4g}, mean {stats['mean']:.4g}, "
                   f"std {stats['std']:.4g}")
  counts = split(fp)
  if config is None:
    shape, norm = in_plane_shape(fp, axis, spacing, num_stages), normalization(fp)
    grid = budgets(fp, axis, spacing, counts["train"]), slices_per_volume(fp, axis, spacing)
  else:
    d = config.data
    axis, spacing, shape, norm = d.slicing_axis, tuple(d.target_spacing), tuple(d.shape), d.normalization
    counts = dict(d.split)
    grid = tuple(config.study.budgets), tuple(config.study.slices_per_volume)
  lines.append(f"  derived: slicing_axis {axis}, target_spacing {fmt(spacing) if spacing else '() (kept)'}, "
               f"shape {shape}, normalization {norm!r}, split {counts['train']}/{counts['val']}/{counts['test']}, "
               f"budgets {grid[0]}, slices_per_volume {grid[1]}")
  return lines


# ---------------------------------------------------------------------------------------------------------------------
# Binding a config to the fingerprint of `config.data.root`.
# ---------------------------------------------------------------------------------------------------------------------


def _stamp(root: str) -> tuple:
  """What identifies a folder's state cheaply: its dataset.json's modification time and size."""
  try:
    stat = (pathlib.Path(root) / "dataset.json").stat()
    return stat.st_mtime_ns, stat.st_size
  except OSError:
    return None


@functools.lru_cache(maxsize=8)
def _cached(root: str, stamp) -> Fingerprint:
  del stamp  # part of the cache key only
  return compute(root)


def of_root(root: str) -> Fingerprint:
  """`compute(root)`, once per process and state of the folder."""
  root = str(pathlib.Path(root).expanduser())
  return _cached(root, _stamp(root))


def of_config(config):
  """The fingerprint a bound config derives from, or None (not bound, or no root yet)."""
  if not config.data.get("fingerprint") or not config.data.root:
    return None
  return of_root(config.data.root)


def bind(config, *, tiny: bool = False, max_in_plane: int = 0, split_and_grid: bool = True) -> None:
  """Makes the derived keys of `config` (see the module docstring) follow `config.data.root`; before `lock()`.

  Until a root is set they hold their current values. `tiny` keeps the first budget and the first two
  slices-per-volume values of the derived grid (for tests). Without `split_and_grid` only the data keys are derived
  (slicing axis, spacing, shape, normalisation from the config's own split): for configs whose split and study are
  their own (configs/sparse.py).
  """
  config.data.fingerprint = True
  root = ml_collections.FieldReference(config.data.root, field_type=str)
  config.data.root = root
  refs = {}

  def derive(key, fn, *deps):
    node, name = _parent(config, key)
    default = node[name]
    lazy = lambda value, r, *rest: value if not r else fn(of_root(r), *rest)
    # An override (`FieldReference.set`) drops the op and keeps the given value.
    refs[key] = ml_collections.FieldReference(default, field_type=type(default),
                                              op=_Op(lazy, [root] + [refs[d] for d in deps]))
    node[name] = refs[key]

  derive("data.slicing_axis", slicing_axis)
  derive("data.target_spacing", (lambda fp: coarse_target_spacing(fp, max_in_plane)) if max_in_plane
         else target_spacing)
  for part in ("train", "val", "test"):
    if split_and_grid:
      derive(f"data.split.{part}", lambda fp, part=part: split(fp)[part])
    else:
      refs[f"data.split.{part}"] = ml_collections.FieldReference(config.data.split[part], field_type=int)
      config.data.split[part] = refs[f"data.split.{part}"]
  refs["model.num_stages"] = ml_collections.FieldReference(config.model.num_stages, field_type=int)
  config.model.num_stages = refs["model.num_stages"]
  derive("data.shape", in_plane_shape, "data.slicing_axis", "data.target_spacing", "model.num_stages")
  refs["data.split.seed"] = ml_collections.FieldReference(config.data.split.seed, field_type=int)
  config.data.split.seed = refs["data.split.seed"]
  derive("data.normalization", normalization, "data.split.train", "data.split.val", "data.split.test",
         "data.split.seed")
  if not split_and_grid:
    return
  keep = (lambda t, n: t[:n]) if tiny else (lambda t, n: t)
  derive("study.slices_per_volume", lambda fp, a, s: keep(slices_per_volume(fp, a, s), 2), "data.slicing_axis",
         "data.target_spacing")
  derive("study.budgets", lambda fp, a, s, pool: keep(budgets(fp, a, s, pool), 1), "data.slicing_axis",
         "data.target_spacing", "data.split.train")


def _parent(config, key: str) -> tuple:
  *path, name = key.split(".")
  node = config
  for part in path:
    node = node[part]
  return node, name


# The quick recipe's largest median in-plane size (voxels a side).
QUICK_MAX_IN_PLANE = 128


def dataset_config(missing_root_hint: str, *, tiny: bool = False, quick: bool = False, model=None, train=None,
                   eval_batch_size: int = 64) -> ml_collections.ConfigDict:
  """The locked config of a dataset whose data settings follow its fingerprint (configs/msd.py and the configs of
  converted datasets): `config_lib.base()` with random / fixed / ual selections, seeds 0-2 and the reference,
  `model` and `train` updates of those blocks, `tiny` shrinking network, steps and grid for tests, `quick` a first
  look at any dataset in minutes (a base-8 network, 100 steps of batch 4, slices resampled to at most
  `QUICK_MAX_IN_PLANE` voxels a side, the first budget at two allocations with every selection, one seed, the
  reference, a 50-step UAL encoder, two learning-curve points on two validation volumes, Dice without the surface
  metrics), and `bind`."""
  config = config_lib.base()
  config.data.update(source="msd", missing_root_hint=missing_root_hint)
  config.model.update(model or {})
  config.train.update(train or {})
  config.eval.batch_size = eval_batch_size
  config.study.update(selections=("random", "fixed", "ual"), seeds=(0, 1, 2), reference=True, reference_seeds=(0,))
  if quick:
    config.model.features = 8
    config.train.update(steps=100, batch_size=4, warmup_steps=10, log_every=25, checkpoint_every=50)
    config.study.update(seeds=(0,))
    config.ual.encoder.update(steps=50, batch_size=16, log_every=25)
    # HD95 and NSD on large volumes take longer than the training (minutes per volume on 2 cores): Dice only.
    config.eval.update(curve_points=2, curve_volumes=2, batch_size=8, surface_metrics=False)
  if tiny:
    config.model.update(features=4, num_stages=2)
    config.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    config.study.update(selections=("random",), seeds=(0,), reference=False)
    config.eval.batch_size = 16
    config.model_axis.chunk = 1  # runs this short are mostly compilation: one program of one model
  bind(config, tiny=tiny or quick, max_in_plane=QUICK_MAX_IN_PLANE if quick else 0)
  config.lock()
  return config
