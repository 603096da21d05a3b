"""A TFDS dataset of preprocessed 2D slices (array_record, no TensorFlow needed), read through grain.

`SliceDataset` is a `tensorflow_datasets` builder over a local MSD or nnU-Net v2 folder (`manual_dir`): every slice
of every case, preprocessed by `slicejax.data` exactly as the trainer preprocesses it (`index_msd` and `load_volumes`
with the config's slicing axis, target spacing, normalisation and CT window, one case at a time) and fitted to the
static in-plane shape, one record per slice, cases in case-id order and slices in order; shuffling is off, so record
i is row i of the dataset, as in `slicejax.training.inputs.stream`'s slice store. Records: `image [H, W, C]` float16,
`label [H, W]` uint8, `extent [2]` int32 (the slice's real data before padding).

`TfdsStore` is a store for `stream.Source` (the trainer's stream path with `data.stream_source = "tfds"`): rows are
read from `tfds.data_source` by a `grain.MapDataset` with several threads, and the batches are the bank path's
(tests/test_stream.py). `store_for(config, root, data_dir, shape, channels)` prepares the dataset once (its config
name holds a hash of the preprocessing settings) and opens it.

Needs the `tfds` extra (`pip install 'slicejax[tfds]'`: tensorflow-datasets, array_record, grain).
"""

import dataclasses
import hashlib
import json
import pathlib

import grain
import numpy as np
import tensorflow_datasets as tfds

from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import padding


@dataclasses.dataclass(eq=False)
class SliceConfig(tfds.core.BuilderConfig):
  """The preprocessing of a `SliceDataset` (`settings`: see `settings_of`)."""
  settings: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def make(cls, settings: dict) -> "SliceConfig":
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    shape = settings["shape"]
    return cls(name=f"h{shape[0]}_w{shape[1]}_{digest}", description=json.dumps(settings, sort_keys=True),
               settings=settings)


def settings_of(config, shape, channels: int) -> dict:
  """The preprocessing settings of `config.data` at in-plane `shape` with `channels` image channels."""
  cfg = config.data
  return {"shape": [int(s) for s in shape], "channels": int(channels), "slicing_axis": int(cfg.slicing_axis),
          "target_spacing": [float(s) for s in cfg.target_spacing], "normalization": cfg.normalization,
          "ct_window": [float(w) for w in cfg.ct_window]}


def _index(root, settings: dict):
  return index_lib.index_msd(root, slicing_axis=settings["slicing_axis"],
                             target_spacing=tuple(settings["target_spacing"]))


class SliceDataset(tfds.core.GeneratorBasedBuilder):
  """Every preprocessed slice of a local MSD-layout folder, one record each, in slice-store order."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: a folder with dataset.json, imagesTr/ and labelsTr/ (MSD or nnU-Net v2)."

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")  # random access, without TensorFlow
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    settings = self.builder_config.settings
    shape = tuple(settings["shape"])
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=shape + (settings["channels"],), dtype=np.float16),
        "label": tfds.features.Tensor(shape=shape, dtype=np.uint8),
        "extent": tfds.features.Tensor(shape=(2,), dtype=np.int32)}),
        disable_shuffling=True)  # records keep the order they are generated in: record i is row i

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(dl_manager.manual_dir)}

  def _generate_examples(self, root):
    settings = self.builder_config.settings
    shape = tuple(settings["shape"])
    index = _index(root, settings)
    row = 0
    for case_id in sorted(index.case_ids):
      volume = data_lib.load_volumes(index.select([case_id]), normalization=settings["normalization"],
                                     ct_window=tuple(settings["ct_window"])).volumes[0]
      images = padding.fit_to_shape(volume.image, shape)[0].astype(np.float16)
      labels = padding.fit_to_shape(volume.label, shape)[0].astype(np.uint8)
      extent = np.minimum(volume.label.shape[1:], shape).astype(np.int32)
      for d in range(volume.depth):
        yield row, {"image": images[d], "label": labels[d], "extent": extent}
        row += 1


class TfdsStore:
  """A `SliceDataset`'s records as a store of `stream.Source`, read through grain.

  Attributes:
    rows: case id -> `[D]` record indices of its slices.
    shape: the in-plane `(H, W)`.
    scratch: the folder for a group's temporary files.
  """

  def __init__(self, data_source, rows: dict, shape, scratch, num_threads: int = 4):
    self.data_source, self.rows, self.shape, self.scratch = data_source, rows, tuple(shape), pathlib.Path(scratch)
    self.num_threads = num_threads

  def __len__(self) -> int:
    return len(self.data_source)

  def _records(self, rows) -> list:
    records = grain.MapDataset.source(self.data_source)
    fetched = grain.MapDataset.source(np.asarray(rows, np.int64)).map(lambda i: records[int(i)])
    options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=max(len(rows), 1))
    return list(fetched.to_iter_dataset(options))

  def read_images(self, rows) -> tuple:
    """`(images [R, H, W, C] float16, extents [R, 2] int32)` of `rows [R]`."""
    records = self._records(rows)
    return (np.stack([r["image"] for r in records]).astype(np.float16, copy=False),
            np.stack([r["extent"] for r in records]).astype(np.int32, copy=False))

  def read_labels(self, rows) -> np.ndarray:
    """`labels [R, H, W]` uint8 of `rows [R]`."""
    if not len(rows):
      return np.zeros((0,) + self.shape, np.uint8)
    return np.stack([r["label"] for r in self._records(rows)]).astype(np.uint8, copy=False)

  def close(self) -> None:
    pass


def store_for(config, root, data_dir, shape, channels: int) -> TfdsStore:
  """The `SliceDataset` of the folder `root` with `config.data`'s preprocessing at `shape`, prepared under
  `data_dir` on first use, as a `TfdsStore`."""
  settings = settings_of(config, shape, channels)
  builder = SliceDataset(config=SliceConfig.make(settings), data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  index = _index(root, settings)
  depths = {case.case_id: case.depth for case in index.cases}
  starts = np.cumsum([0] + [depths[c] for c in sorted(depths)])
  rows = {c: np.arange(start, start + depths[c], dtype=np.int32) for c, start in zip(sorted(depths), starts)}
  return TfdsStore(builder.as_data_source(split="train"), rows, shape, data_dir)
