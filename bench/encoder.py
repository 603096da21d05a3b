"""Cost of UAL's encoder: training on the whole hippocampus training pool and embedding every slice.

Loads the first `--cases` images (sorted by file name) of an MSD Task04 folder with nibabel, moves NIfTI axis 2 to
the front (the slicing axis), z-scores each volume, zero-pads H, W to `--height` x `--width` and adds a channel
axis, then trains the encoder with `slicejax.study.encoder.default_config()` and embeds all slices. Prints one JSON
line:
{"benchmark": "encoder", "slices", "train_seconds", "embed_seconds", "total_seconds"}.

  .venv/bin/python bench/encoder.py --data PATH/Task04_Hippocampus --json

Target: total <= 300 s on a 2-core CPU.
"""

import json
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import nibabel as nib
import numpy as np

from slicejax.errors import InputError
from slicejax.study import encoder

_DATA = flags.DEFINE_string("data", None, "MSD Task04 hippocampus folder (with imagesTr/).", required=True)
_CASES = flags.DEFINE_integer("cases", 180, "How many images to load, first by file name.")
_HEIGHT = flags.DEFINE_integer("height", 48, "Padded slice height.")
_WIDTH = flags.DEFINE_integer("width", 64, "Padded slice width.")
_SEED = flags.DEFINE_integer("seed", 0, "Encoder training seed.")
_JSON = flags.DEFINE_bool("json", False, "Print only the JSON line.")


def load_slices(root: pathlib.Path, cases: int, height: int, width: int) -> np.ndarray:
  """Returns `[N, height, width, 1]` float32 slices of the first `cases` volumes, each z-scored and zero-padded."""
  paths = sorted((root / "imagesTr").glob("*.nii.gz"))[:cases]
  if len(paths) < cases:
    raise InputError(root / "imagesTr", f"found {len(paths)} images, need {cases}")
  volumes = []
  for path in paths:
    volume = np.moveaxis(np.asarray(nib.load(path).dataobj, np.float32), 2, 0)
    volume = (volume - volume.mean()) / max(float(volume.std()), 1e-6)
    if volume.shape[1] > height or volume.shape[2] > width:
      raise InputError(path, f"slices {volume.shape[1:]} exceed the padded size {(height, width)}")
    volumes.append(np.pad(volume, ((0, 0), (0, height - volume.shape[1]), (0, width - volume.shape[2]))))
  return np.concatenate(volumes)[..., None]


def main(argv):
  del argv
  if _JSON.value:
    logging.set_verbosity(logging.ERROR)
  slices = load_slices(pathlib.Path(_DATA.value), _CASES.value, _HEIGHT.value, _WIDTH.value)
  config = encoder.default_config()
  start = time.perf_counter()
  params, train_info = encoder.train(slices, config, _SEED.value)
  embed_start = time.perf_counter()
  embeddings = encoder.embed(params, slices, config)
  end = time.perf_counter()
  if not np.isfinite(embeddings).all():
    raise FloatingPointError("non-finite embeddings")
  logging.info("loss: first 10 steps %.3f, last 10 steps %.3f", np.mean(train_info["losses"][:10]),
               np.mean(train_info["losses"][-10:]))
  print(json.dumps({"benchmark": "encoder", "slices": int(slices.shape[0]),
                    "train_seconds": round(embed_start - start, 2), "embed_seconds": round(end - embed_start, 2),
                    "total_seconds": round(end - start, 2)}))


if __name__ == "__main__":
  app.run(main)
