"""Segments new volumes with a trained model and writes NIfTI label maps on each input's own grid.

`python launch.py --mode=predict --config=configs/predict.py --config.predict.model=RUN --config.predict.input=IMAGES
--workdir=OUT [--config.predict.point=NAME] [--config.predict.probabilities=True]`

A model is one point of a workdir that trained it (a sparse training run or a study): its resolved config
(`config.json`), `groups.json` (which group and model index it trained as) and the latest checkpoint of that group.
The in-plane shape and the classes come from `model.json` when the run wrote one, else from the run's dataset
(header only), as the run itself derived them.

Each input volume (`slicejax.data.index.index_images`: an MSD or nnU-Net v2 raw folder, or a folder of .nii.gz files) is
read in volume order `[D, H, W, C]` along the model's slicing axis, normalised as in training, resampled to the
training spacing when the run resampled (`data.target_spacing`), and predicted:
  * 2D: slice by slice, `predict.batch_size` (else `eval.batch_size`) slices per call, each slice zero-padded at the
    end to the trained in-plane shape, or to the next size the network divides when larger (never cropped);
  * 3D: Gaussian-weighted sliding windows of the trained patch (`slicejax.evaluation.sliding_window`),
  `three_d.overlap`,
    `predict.batch_size` (else `three_d.eval_batch_size`) windows per call.
Softmax probabilities `[D, H, W, K]` are mapped back to the input grid (linearly when resampled) and the label map
is their argmax, so it holds class values 0..K-1 only. `OUT/<case>.nii.gz` (uint8) and, with
`predict.probabilities`, `OUT/<case>_probabilities.nii.gz` (`[X, Y, Z, K]` float32) carry the input's header
geometry (`nifti.save_like`).
"""

import dataclasses
import json
import pathlib
import re

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from slicejax import config as config_lib
from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import nifti
from slicejax.data import normalize
from slicejax.data import padding
from slicejax.errors import InputError



@dataclasses.dataclass(frozen=True, eq=False)
class TrainedModel:
  """One trained model and what is needed to apply it.

  Attributes:
    config: the run's resolved config.
    point: the point's name.
    dims: 2 or 3.
    model: the U-Net (`slicejax.model.unet.UNet`).
    params: its parameters (one model's, no model axis).
    shape: the trained in-plane shape `(H, W)` (2D) or patch `(pd, ph, pw)` (3D).
    class_names: by label value, background first.
    channel_names: one per channel.
    slicing_axis: the NIfTI axis that is D.
    target_spacing: `()` or the spacing the run resampled to (NIfTI order, 0 = kept).
  """
  config: ml_collections.ConfigDict
  point: str
  dims: int
  model: object
  params: object
  shape: tuple
  class_names: tuple
  channel_names: tuple
  slicing_axis: int
  target_spacing: tuple


# ---------------------------------------------------------------------------------------------------------------------
# What a run records for later use, and loading a model back.
# ---------------------------------------------------------------------------------------------------------------------

def _card_from_data(config) -> dict:
  """`model_card`'s fields, derived from the run's dataset headers the way the run derived them."""
  from slicejax.training import train
  index = index_lib.index_msd(data_lib.dataset_root(config), slicing_axis=int(config.data.slicing_axis),
                              **({"target_spacing": tuple(config.data.target_spacing)}
                                 if config.data.get("target_spacing") else {}))
  split = train.split_index(config, index)
  used = set(split["train"] + split["val"] + split["test"])
  if config.data.shape:
    shape = [int(n) for n in config.data.shape]
  else:
    multiple = 2 ** (int(config.model.num_stages) - 1)
    largest = np.max([c.shape[1:] for c in index.cases if c.case_id in used], axis=0)
    shape = [int(-(-int(s) // multiple) * multiple) for s in largest]
  return {"class_names": list(index.class_names), "channel_names": list(index.channel_names),
          "slicing_axis": int(config.data.slicing_axis),
          "target_spacing": list(config.data.get("target_spacing", ()) or ()), "shape_2d": shape,
          "patch_3d": [int(n) for n in config.three_d.patch]}


def _as_tuples(node):
  """JSON lists -> tuples, throughout a config dict (configs hold tuples)."""
  if isinstance(node, dict):
    return {k: _as_tuples(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(_as_tuples(v) for v in node)
  return node


def _find_point(rundir: pathlib.Path, point: str) -> tuple:
  """(group index, model index, the group's point names) of `point` (or of the run's only point)."""
  path = rundir / "groups.json"
  if not path.is_file():
    raise InputError("config.predict.model", f"{rundir} is not a workdir of a trained run (no groups.json)")
  groups = [[names[str(m)] for m in range(len(names))] for names in json.loads(path.read_text())]
  every = [name for names in groups for name in names]
  if not point:
    if len(every) != 1:
      raise InputError("config.predict.point", f"{rundir} trained {len(every)} models; name one, e.g. {every[0]}")
    point = every[0]
  for g, names in enumerate(groups):
    if point in names:
      return g, names.index(point), names
  raise InputError("config.predict.point", f"{rundir} has no point {point!r} (e.g. {', '.join(every[:3])})")


def load_model(workdir, point: str = "") -> TrainedModel:
  """Loads one trained model of a run's workdir (see the module docstring)."""
  from slicejax.training import checkpoint
  from slicejax.training import train
  rundir = pathlib.Path(workdir).expanduser()
  if not (rundir / "config.json").is_file():
    raise InputError("config.predict.model", f"{rundir} is not a workdir of a trained run (no config.json)")
  config = ml_collections.ConfigDict(_as_tuples(json.loads((rundir / "config.json").read_text())))
  group, index, names = _find_point(rundir, point)
  point = names[index]
  seeds = []
  for name in names:
    match = re.search(r"_seed(\d+)$", name)
    if not match or not re.match(r"^[23]d_", name):
      raise InputError(rundir / "groups.json", f"point name {name!r} is not <dims>d_..._seed<n>")
    seeds.append(int(match.group(1)))
  dims = int(point[0])
  card_path = rundir / train.MODEL_CARD
  card = json.loads(card_path.read_text()) if card_path.is_file() else _card_from_data(config)
  shape = tuple(card["shape_2d"] if dims == 2 else card["patch_3d"])
  model = train.make_model(config, len(card["class_names"]), dims)
  tx = train.make_optimizer(config.train)
  template = train.init_state(model, tx, seeds, shape + (len(card["channel_names"]),), base_seed=int(config.seed))
  folder = rundir / "checkpoints" / f"group_{group}"
  restored = checkpoint.GroupCheckpoints(folder).restore_latest(template) if folder.is_dir() else None
  if restored is None:
    raise InputError("config.predict.model", f"{folder} holds no checkpoint of {point}")
  step = int(np.asarray(restored["step"])[index])
  if step < int(config.train.steps):
    logging.warning("%s: the checkpoint is of step %d of %d (training did not finish).", point, step,
                    config.train.steps)
  params = jax.tree.map(lambda leaf: jnp.asarray(leaf[index]), restored["params"])
  return TrainedModel(config=config, point=point, dims=dims, model=model, params=params, shape=shape,
                      class_names=tuple(card["class_names"]), channel_names=tuple(card["channel_names"]),
                      slicing_axis=int(card["slicing_axis"]), target_spacing=tuple(card["target_spacing"] or ()))


# ---------------------------------------------------------------------------------------------------------------------
# Probabilities of one volume.
# ---------------------------------------------------------------------------------------------------------------------

def _softmax_fn(trained: TrainedModel):
  return jax.jit(lambda params, x: jax.nn.softmax(
      trained.model.apply({"params": params}, x).astype(jnp.float32), axis=-1))


def probabilities_2d(trained: TrainedModel, image: np.ndarray, batch_size: int) -> np.ndarray:
  """`image [D, H, W, C]` float32 -> softmax `[D, H, W, K]` float32, slice by slice (see the module docstring)."""
  multiple = 2 ** (int(trained.config.model.num_stages) - 1)
  size = tuple(max(s, -(-n // multiple) * multiple) for n, s in zip(image.shape[1:3], trained.shape))
  padded, _, _ = padding.fit_to_shape(image, size)
  softmax = _softmax_fn(trained)
  out = []
  for start in range(0, len(padded), batch_size):
    chunk = np.zeros((batch_size,) + padded.shape[1:], np.float32)
    part = padded[start:start + batch_size]
    chunk[:len(part)] = part
    out.append(np.asarray(softmax(trained.params, chunk))[:len(part)])
  return np.concatenate(out)[:, :image.shape[1], :image.shape[2]]


def probabilities_3d(trained: TrainedModel, image: np.ndarray, batch_size: int) -> np.ndarray:
  """`image [D, H, W, C]` float32 -> softmax `[D, H, W, K]` float32 by Gaussian-weighted sliding windows."""
  from slicejax.evaluation import sliding_window
  grid = tuple(max(n, p) for n, p in zip(image.shape[:3], trained.shape))
  padded = padding.pad_volume(image, grid)
  apply = jax.jit(lambda params, windows: trained.model.apply({"params": params}, windows)[None])
  logits = sliding_window.sliding_window_logits(lambda windows: apply(trained.params, windows), padded,
                                                trained.shape, overlap=float(trained.config.three_d.overlap),
                                                batch_size=batch_size)
  probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))
  return probs[:image.shape[0], :image.shape[1], :image.shape[2]]


def predict_case(trained: TrainedModel, case: index_lib.ImageCase, batch_size: int = 0) -> np.ndarray:
  """Softmax probabilities `[X, Y, Z, K]` float32 of one case on its files' grid (NIfTI order)."""
  from slicejax.data import resample
  cfg = trained.config
  raw = index_lib.read_case(case, trained.slicing_axis)
  if raw.shape[3] != len(trained.channel_names):
    raise InputError(case.paths[0], f"has {raw.shape[3]} channel(s); the model was trained on "
                     f"{len(trained.channel_names)} ({', '.join(trained.channel_names)})")
  image = normalize.normalize(raw, cfg.data.normalization, tuple(cfg.data.ct_window)).astype(np.float32)
  order = [trained.slicing_axis] + [a for a in range(3) if a != trained.slicing_axis]
  target = tuple(trained.target_spacing[a] for a in order) if trained.target_spacing else ()
  shape, _ = resample.target_grid(case.shape, case.spacing, target)
  if shape != case.shape:
    image = resample.resample_image(image, shape, case.spacing)
  if trained.dims == 2:
    probs = probabilities_2d(trained, image, batch_size or int(cfg.eval.batch_size))
  else:
    probs = probabilities_3d(trained, image, batch_size or int(cfg.three_d.eval_batch_size))
  if shape != case.shape:
    probs = resample.resample_image(probs, case.shape, tuple(n * s / m for n, s, m in zip(case.shape, case.spacing,
                                                                                          shape)), order=1,
                                    order_coarse=1)
  return np.ascontiguousarray(nifti.to_nifti_order(probs, trained.slicing_axis))


def run(config, workdir) -> list:
  """`--mode=predict`: segments every volume of `config.predict.input` into `workdir`; returns the paths written."""
  config_lib.validate_predict(config)
  cfg = config.predict
  trained = load_model(cfg.model, cfg.point)
  images = index_lib.index_images(cfg.input, slicing_axis=trained.slicing_axis)
  for case in images.cases:  # every input is checked before the workdir is made
    if case.num_channels != len(trained.channel_names):
      raise InputError(case.paths[0], f"has {case.num_channels} channel(s) but the model was trained on "
                       f"{len(trained.channel_names)} ({', '.join(trained.channel_names)})")
  out = pathlib.Path(workdir).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for case in images.cases:
    probs = predict_case(trained, case, cfg.batch_size)
    reference = nifti.load(case.paths[0])
    label = np.argmax(probs, axis=-1).astype(np.uint8)
    written.append(nifti.save_like(out / f"{case.case_id}.nii.gz", label, reference))
    if cfg.probabilities:
      written.append(nifti.save_like(out / f"{case.case_id}_probabilities.nii.gz", probs.astype(np.float32),
                                     reference))
    logging.info("%s: %s", case.case_id, ", ".join(
        f"{name} {int((label == k).sum())}" for k, name in enumerate(trained.class_names)))
  logging.info("Predicted %d volumes with %s (%s) into %s.", len(images.cases), trained.point, cfg.model, out)
  return written
