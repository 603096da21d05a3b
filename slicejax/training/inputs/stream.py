"""2D training data streamed from the disk, for groups whose slice bank does not fit in memory.

Two input paths feed the same training step (`config.data.pipeline`):
  * "bank" (`slicejax.training.inputs.sampler`): the slices a group's plans reference sit on the device, and the step
  draws its batch
    there. The fast path, as long as the bank fits.
  * "stream" (this module): every slice of the training pool is read where it is, by a background thread that reads
    each step's batch and puts it on the device ahead of the step (`data.prefetch` steps ahead); the step then takes
    the batch instead of drawing it. The rows come from the preprocessed volumes themselves (`data.stream_source =
    "volumes"`, `VolumeRows`: the cache entries the trainer maps, `data.load_volumes(mapped=True)`, fitted a slice at
    a time), from a *slice store* written once into the cache ("store": every fitted slice in one file, for file
    systems where many small reads of many files are slow), or from the dataset folder's TFDS array_record dataset
    read through grain ("tfds", `slicejax.training.inputs.tfds`).
  * "auto" takes the bank when the group's bank (`bank_bytes`) fits `data.memory_budget_gb` (0: a quarter of the
    device's memory, the host's on the CPU), the stream otherwise. 3D groups always train from the bank.

The slice store (`write_store`, `SliceStore`), one folder per training pool and in-plane shape, keyed by content:
  * `images.npy [N, H, W, C]` float16 (the preprocessed volumes' own precision), `labels.npy [N, H, W]` uint8,
    `extents.npy [N, 2]` int32: every slice of every volume, fitted to the static shape (`padding.fit_to_shape`), the
    volumes one after another, as `sampler.slice_bank` would lay them out with every slice kept;
  * `index.json`, written last (a store without it is incomplete): the key, and each case's first row and depth.
The `.npy` files are plain numpy arrays (`np.load(path, mmap_mode="r")` maps them); the trainer reads rows with
positioned reads rather than a mapping, so the process holds the batches in flight, not every page of the store it
has touched: its memory does not grow with the store or with the steps.

Same batches. Which entries a batch holds is drawn by `sampler.sample` itself, with the key the step would use
(`fold_in(rng, step)`, split, the first half), on a bank whose "images" are row numbers (`row_bank`): the draw has
one implementation, and a model trains on exactly the same examples on either path, so its results and resumes are
the same (tests/test_stream.py). The examples' images, labels and weights are then built in the step as the bank
path builds them (`batch_taker`). (A model without entries trains on nothing on either path: its weights are 0,
whichever row its examples show.)

Whole runs. With the streamed input, or when the dataset's arrays exceed the memory budget, the trainer loads the
volumes mapped (`data.load_volumes(mapped=True)`: each stays in its cache entry and is read a part at a time), streams
from those entries (or writes the store a volume at a time), and evaluates a bounded number of slices at a time, so
a run's memory is bounded by the largest volume and the batches in flight, not by the dataset. Interpolated label rows
are computed in memory per model, then moved to a file.
"""

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import queue
import tempfile
import threading

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from slicejax.config import defaults
from slicejax.data import padding
from slicejax import files
from slicejax.training.inputs import sampler
from slicejax.training.inputs import two_d
from slicejax.training import precision

PIPELINES = defaults.PIPELINES
SOURCES = defaults.STREAM_SOURCES  # `open_store`
_FORMAT = 1
# Steps whose rows are drawn in one call of the draw program.
_DRAW_BLOCK = 32


# ---------------------------------------------------------------------------------------------------------------------
# Choosing the path.
# ---------------------------------------------------------------------------------------------------------------------


def bank_bytes(config, sizes: dict, shape, num_channels: int) -> int:
  """Bytes of a 2D group's bank on the device: `sizes` from `two_d.data_sizes`, `shape` the in-plane (H, W)."""
  plane = int(np.prod(shape))
  return sizes["images"] * plane * (num_channels * precision.bank_dtype(config).itemsize) + sizes["labels"] * plane


def budget_bytes(config) -> int:
  """`data.memory_budget_gb` in bytes; 0: a quarter of this process's first device's memory (the host's on the
  CPU). Only a process's own devices report memory, so a multi-process run asks a local one."""
  if config.data.memory_budget_gb > 0:
    return int(config.data.memory_budget_gb * 2**30)
  limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  return int((limit or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4)


def choose(config, dims: int, sizes: dict, shape, num_channels: int) -> str:
  """The input path of a group: "bank" or "stream" (see the module docstring)."""
  if dims != 2 or config.data.pipeline == "bank":
    return "bank"
  if config.data.pipeline == "stream":
    return "stream"
  needed, budget = bank_bytes(config, sizes, shape, num_channels), budget_bytes(config)
  if needed <= budget:
    return "bank"
  logging.info("The bank needs %.2f GB, more than the budget of %.2f GB: streaming from the disk.",
               needed / 2**30, budget / 2**30)
  return "stream"


# ---------------------------------------------------------------------------------------------------------------------
# The slice store.
# ---------------------------------------------------------------------------------------------------------------------


def _write_npy(path: pathlib.Path, dtype, shape, parts) -> None:
  """Writes the `.npy` file of an array given as consecutive row blocks (`parts`), without holding it whole."""
  def write(f):
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_2_0(f, header)
    rows = 0
    for part in parts:
      f.write(np.ascontiguousarray(part, dtype).tobytes())
      rows += len(part)
    if rows != shape[0]:
      raise ValueError(f"{path}: wrote {rows} rows, expected {shape[0]}")
  files.atomic_writer(path, write)


def _first_rows(depths) -> np.ndarray:
  """`[V]` the row of each volume's first slice, the volumes one after another (the store's and `VolumeRows`' order)."""
  return np.concatenate([[0], np.cumsum(depths)[:-1]]).astype(int)


def write_store(folder, volumes, shape, key: str = "") -> "SliceStore":
  """Writes every slice of `volumes` into a slice store at `folder` (see the module docstring); one volume at a time.

  Args:
    folder: the store's folder, created if missing.
    volumes: a sequence of `data.Volume`s (images `[D, H, W, C]`, labels `[D, H, W]`), iterated three times.
    shape: the static in-plane shape `(H', W')`.
    key: recorded in `index.json` (`store_for` uses it to recognise a store).

  Returns:
    The store, opened.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  shape = tuple(int(s) for s in shape)
  depths = [v.depth for v in volumes]
  rows, channels = sum(depths), volumes[0].image.shape[-1]
  _write_npy(folder / "images.npy", np.float16, (rows,) + shape + (channels,),
             (padding.fit_to_shape(v.image, shape)[0] for v in volumes))
  _write_npy(folder / "labels.npy", np.uint8, (rows,) + shape,
             (padding.fit_to_shape(v.label, shape)[0] for v in volumes))
  _write_npy(folder / "extents.npy", np.int32, (rows, 2),
             (np.tile(np.minimum(v.label.shape[1:], shape), (v.depth, 1)) for v in volumes))
  starts = _first_rows(depths)
  index = {"format": _FORMAT, "key": key, "shape": list(shape), "channels": int(channels),
           "cases": [[v.case_id, int(s), int(d)] for v, s, d in zip(volumes, starts, depths)]}
  files.atomic_write(folder / "index.json", json.dumps(index))
  return SliceStore(folder)


def store_key(volumes, shape) -> str:
  """The content key of a store of `volumes` at in-plane `shape`: every case id, array shape and voxel, or, for a
  volume loaded through the cache, its cache entry's key (which hashes its files and their preprocessing)."""
  digest = hashlib.sha256(json.dumps({"format": _FORMAT, "shape": [int(s) for s in shape]}).encode())
  for volume in volumes:
    digest.update(json.dumps([volume.case_id, volume.image.shape, str(volume.image.dtype), volume.label.shape,
                              str(volume.label.dtype)]).encode())
    if volume.key is not None:
      digest.update(volume.key.encode())
      continue
    for array in (volume.image, volume.label):
      for plane in array:  # a slice at a time: a memory-mapped volume is never copied whole
        digest.update(np.ascontiguousarray(plane).tobytes())
  return digest.hexdigest()


def store_for(cache_dir, volumes, shape) -> "SliceStore":
  """The slice store of `volumes` at `shape` under `cache_dir/slices/`, written on first use."""
  key = store_key(volumes, shape)
  folder = pathlib.Path(cache_dir) / "slices" / key[:32]
  with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
    store = SliceStore(folder)
    if store.key == key:
      return store
  logging.info("Writing the slice store of %d volumes to %s.", len(volumes), folder)
  return write_store(folder, volumes, shape, key)


class RowFile:
  """Reads rows of a `.npy` array (C order) by positioned reads: `read(rows) -> [len(rows), ...]`."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    with open(self.path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, fortran, self.dtype = read_header(f)
      self.offset = f.tell()
    if fortran:
      raise ValueError(f"{self.path}: Fortran-ordered arrays are not read by rows")
    self.shape = tuple(shape)
    self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
    self._fd = os.open(self.path, os.O_RDONLY)

  def __len__(self) -> int:
    return self.shape[0]

  def read(self, rows) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows),) + self.shape[1:], self.dtype)
    flat = out.reshape(len(rows), -1).view(np.uint8)
    for i, row in enumerate(rows):
      if not 0 <= row < self.shape[0]:
        raise IndexError(f"{self.path}: row {row} outside [0, {self.shape[0]})")
      if os.preadv(self._fd, [flat[i]], self.offset + int(row) * self.row_bytes) != self.row_bytes:
        raise OSError(f"{self.path}: short read at row {row}")
    return out

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


class SliceStore:
  """An opened slice store: `images`, `labels`, `extents` (`RowFile`s), `rows` (case id -> `[D]` row numbers)."""

  def __init__(self, folder):
    self.folder = pathlib.Path(folder)
    index = json.loads((self.folder / "index.json").read_text())
    if index.get("format") != _FORMAT:
      raise ValueError(f"{self.folder}: store format {index.get('format')}, expected {_FORMAT}")
    self.key, self.shape, self.channels = index["key"], tuple(index["shape"]), index["channels"]
    self.rows = {case: np.arange(start, start + depth, dtype=np.int32) for case, start, depth in index["cases"]}
    self.images, self.labels, self.extents = (RowFile(self.folder / f"{name}.npy")
                                              for name in ("images", "labels", "extents"))

  @property
  def scratch(self) -> pathlib.Path:
    """Where a group's temporary files go: beside the store."""
    return self.folder.parent

  def __len__(self) -> int:
    return len(self.images)

  def read_images(self, rows) -> tuple:
    """`(images [R, H, W, C] float16, extents [R, 2] int32)` of `rows [R]`."""
    return self.images.read(rows), self.extents.read(rows)

  def read_labels(self, rows) -> np.ndarray:
    """`labels [R, H, W]` uint8 of `rows [R]`."""
    return self.labels.read(rows)

  def close(self) -> None:
    for rows in (self.images, self.labels, self.extents):
      rows.close()


class VolumeRows:
  """The rows of a slice store read from the pool's volumes where they are (`data.stream_source = "volumes"`): their
  arrays in memory, or mapped from their cache entries (`data.load_volumes(mapped=True)`), each row fitted to the
  static shape when it is read. The same rows as the pool's `SliceStore`, without writing one.

  Row r is slice `d` of the volume that holds it, the volumes one after another in the pool's order.
  """

  def __init__(self, volumes, shape, scratch):
    self.shape, self.scratch = tuple(int(s) for s in shape), pathlib.Path(scratch)
    self._volumes = list(volumes)
    depths = [v.depth for v in self._volumes]
    starts = _first_rows(depths)
    self.rows = {v.case_id: np.arange(s, s + d, dtype=np.int32) for v, s, d in zip(self._volumes, starts, depths)}
    self._volume_of = np.repeat(np.arange(len(depths)), depths)
    self._slice_of = np.arange(sum(depths)) - np.repeat(starts, depths)
    self.channels = self._volumes[0].image.shape[-1]

  def __len__(self) -> int:
    return len(self._volume_of)

  def _planes(self, rows, name: str, dtype, tail=()) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows),) + self.shape + tuple(tail), dtype)
    for i, row in enumerate(rows):
      if not 0 <= row < len(self):
        raise IndexError(f"row {row} outside [0, {len(self)})")
      d = int(self._slice_of[row])
      out[i] = padding.fit_to_shape(getattr(self._volumes[self._volume_of[row]], name)[d:d + 1], self.shape)[0][0]
    return out

  def read_images(self, rows) -> tuple:
    """`(images [R, H, W, C] float16, extents [R, 2] int32)` of `rows [R]`."""
    extents = np.array([np.minimum(self._volumes[self._volume_of[r]].label.shape[1:], self.shape)
                        for r in np.asarray(rows, np.int64)], np.int32).reshape(-1, 2)
    return self._planes(rows, "image", np.float16, (self.channels,)), extents

  def read_labels(self, rows) -> np.ndarray:
    """`labels [R, H, W]` uint8 of `rows [R]`."""
    return self._planes(rows, "label", np.uint8)

  def close(self) -> None:
    """Nothing to close: the volumes belong to the caller."""


def open_store(config, pool, shape, cache_dir, root):
  """The rows a stream reads, by `data.stream_source`: "volumes", the pool's volumes where they are (`VolumeRows`,
  temporary files in `cache_dir`); "store", the pool's `SliceStore` in the cache (`store_for`); "tfds", the
  array_record dataset of the folder `root` read through grain (`slicejax.training.inputs.tfds`, the `tfds` extra),
  prepared
  once under `cache_dir/tfds`."""
  if config.data.stream_source == "tfds":
    from slicejax.training.inputs import tfds as tfds_builder  # pylint: disable=g-import-not-at-top  (optional)
    return tfds_builder.store_for(config, root, pathlib.Path(cache_dir) / "tfds", shape, pool[0].image.shape[-1])
  if config.data.stream_source == "store":
    return store_for(cache_dir, pool, shape)
  pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
  return VolumeRows(pool, shape, cache_dir)


# ---------------------------------------------------------------------------------------------------------------------
# A group's streamed training data.
# ---------------------------------------------------------------------------------------------------------------------


class Source:
  """A group's training examples on the disk: the store's rows, and after them the label rows of interpolated slices
  (a temporary file in the store's `scratch` folder). `close` closes the store and removes that file.

  A store is a `SliceStore` or anything with its `rows`, `shape`, `scratch`, `__len__`, `read_images`, `read_labels`
  and `close` (`tfds_builder.TfdsStore`).
  """

  def __init__(self, store, extra_labels: np.ndarray | None = None):
    self.store, self._extra, self._tmp = store, None, None
    if extra_labels is not None and len(extra_labels):
      self._tmp = tempfile.TemporaryDirectory(dir=store.scratch, prefix=".interpolated-")
      path = pathlib.Path(self._tmp.name) / "labels.npy"
      _write_npy(path, np.uint8, extra_labels.shape, [extra_labels])
      self._extra = RowFile(path)

  @property
  def num_images(self) -> int:
    return len(self.store)

  @property
  def num_labels(self) -> int:
    return len(self.store) + (len(self._extra) if self._extra else 0)

  def read(self, image_rows, label_rows, weight) -> dict:
    """The examples of `image_rows`, `label_rows` (`[...]` ints) as host arrays: `images [..., H, W, C]` float16,
    `labels [..., H, W]` uint8, `extents [..., 2]` int32, and `weight [...]` float32 as given."""
    image_rows, label_rows = np.asarray(image_rows), np.asarray(label_rows)
    flat_images, flat_labels = image_rows.ravel(), label_rows.ravel()
    labels = np.empty((flat_labels.size,) + tuple(self.store.shape), np.uint8)
    stored = flat_labels < len(self.store)
    labels[stored] = self.store.read_labels(flat_labels[stored])
    if not stored.all():
      labels[~stored] = self._extra.read(flat_labels[~stored] - len(self.store))
    images, extents = self.store.read_images(flat_images)
    lead = image_rows.shape
    return {"images": images.reshape(lead + images.shape[1:]), "labels": labels.reshape(lead + labels.shape[1:]),
            "extents": extents.reshape(lead + (2,)), "weight": np.asarray(weight, np.float32)}

  def close(self) -> None:
    self.store.close()
    if self._extra is not None:
      self._extra.close()
    if self._tmp is not None:
      self._tmp.cleanup()


def training_data(config, points, plans, pool, num_classes: int, store) -> tuple:
  """The streamed counterpart of `two_d.training_data`: the same entries, in the same order, over the store's rows.

  Args:
    config: the experiment config.
    points: the group's `study.Point`s, `[M]`.
    plans: their annotation plans (case id -> annotated slice indices), `[M]`.
    pool: the training pool's `data.Volume`s (read for mask interpolation only).
    num_classes: K.
    store: the rows to read (`open_store`): every slice of the pool's cases; the returned source owns it.

  Returns:
    (source, entries, quality): a `Source`; the stacked entries of `sampler.model_entries` over the store's rows (label
    rows past the store's for interpolated slices); per model index with interpolation, the
    `interpolation.pooled_interpolation_dice` of its plan.
  """
  extra, label_rows, quality = two_d.interpolated_entries(config, points, plans, pool, num_classes, store.rows,
                                                         store.shape, first_row=len(store))
  source = Source(store, np.concatenate(label_rows) if label_rows else None)
  return source, sampler.model_entries(plans, store.rows, extra), quality


# ---------------------------------------------------------------------------------------------------------------------
# Drawing, reading ahead, and the step's side.
# ---------------------------------------------------------------------------------------------------------------------


def empty_batch(batch_size: int, shape, num_channels: int) -> dict:
  """One model's batch as `Source.read` gives it, every example weighing 1 over the whole plane and every voxel 0:
  the stream step's input for compiling and measuring it (`train.one_model_step`)."""
  return {"images": np.zeros((batch_size,) + tuple(shape) + (num_channels,), np.float16),
          "labels": np.zeros((batch_size,) + tuple(shape), np.uint8),
          "extents": np.tile(np.asarray(shape, np.int32), (batch_size, 1)),
          "weight": np.ones(batch_size, np.float32)}


def row_bank(num_images: int, num_labels: int) -> dict:
  """A bank whose images and labels are their own row numbers: `sampler.sample` on it returns the rows it draws."""
  return {"images": jnp.arange(num_images, dtype=jnp.int32)[:, None, None, None],
          "labels": jnp.arange(num_labels, dtype=jnp.int32)[:, None, None],
          "extents": jnp.ones((num_images, 2), jnp.int32)}


@functools.partial(jax.jit, static_argnums=3)
def _draw_block(rngs, steps, entries, batch_size, numbered):
  """Rows of `steps [S]` for every model (`rngs [M, 2]`, stacked entries): `[S, M, B]` image rows, label rows,
  weights (the entry's weight, 0 for a model without entries)."""
  def one(rng, step, model_entries):
    k_sample, _ = jax.random.split(jax.random.fold_in(rng, step))  # as `train.make_train_step` derives it
    images, labels, weights = sampler.sample(k_sample, numbered, model_entries, batch_size)
    return images[:, 0, 0, 0], labels[:, 0, 0], weights[:, 0, 0]

  per_model = jax.vmap(one, in_axes=(0, None, 0))
  return jax.vmap(per_model, in_axes=(None, 0, None))(rngs, steps, entries)


def draw_rows(rngs, steps, entries, batch_size: int, numbered) -> tuple:
  """The (image row, label row, weight) of every example of `steps` for every model, as the bank path draws them.

  Args:
    rngs: `[M, 2]` uint32, each model's `rng` of its training state (`train.make_init`).
    steps: `[S]` the steps.
    entries: stacked `sampler.model_entries` `[M, ...]`.
    batch_size: B.
    numbered: `row_bank(num_images, num_labels)` of the bank the entries index.

  Returns:
    numpy `[S, M, B]` int32 image rows, int32 label rows, float32 weights.
  """
  out = _draw_block(jnp.asarray(rngs, jnp.uint32), jnp.asarray(steps, jnp.int32),
                    jax.tree.map(jnp.asarray, dict(entries)), batch_size, numbered)
  return tuple(np.asarray(x) for x in out)


def batch_taker(config):
  """The stream path's `sample_fn` of `train.make_train_step`: `(key, bank, batch) -> (images, labels, weights)`.

  `batch` is one model's `Source.read` output on the device (`images [B, H, W, C]` float16, `labels [B, H, W]` uint8,
  `extents [B, 2]`, `weight [B]`); the images and weights are built as `sampler.sample` builds them from a bank.
  """
  dtype = precision.bank_dtype(config)

  def take(key, bank, batch):
    del key, bank  # the batch was drawn on the host with the step's key (`draw_rows`)
    images = batch["images"].astype(dtype)
    weights = sampler.in_extent(batch["extents"], images.shape[1:3]) * batch["weight"][:, None, None]
    return images, batch["labels"].astype(jnp.int32), weights
  return take


class Batches:
  """Each step's batches of a group's M models, read and put on the device ahead of the step by a background thread.

  `next(batches)` returns the per-model input of the next step (in axis form, through `put`), from `first_step` on.
  Use as a context manager (or call `close`) to stop the thread.
  """

  def __init__(self, source: Source, entries, rngs, batch_size: int, first_step: int, last_step: int, put,
               depth: int = 2):
    self._source, self._entries, self._rngs = source, entries, np.asarray(rngs)
    self._batch_size, self._put = batch_size, put
    self._row_bank = row_bank(source.num_images, source.num_labels)
    self._queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(first_step, last_step), daemon=True,
                                    name="slicejax-batches")
    self._thread.start()

  def _run(self, first_step: int, last_step: int) -> None:
    try:
      for start in range(first_step, last_step, _DRAW_BLOCK):
        steps = np.arange(start, min(start + _DRAW_BLOCK, last_step))
        image_rows, label_rows, weights = draw_rows(self._rngs, steps, self._entries, self._batch_size,
                                                    self._row_bank)
        for i in range(len(steps)):
          batch = self._put(self._source.read(image_rows[i], label_rows[i], weights[i]))
          if not self._offer(batch):
            return
    except BaseException as e:  # handed to the training loop, which raises it
      self._offer(e)

  def _offer(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the thread and closes the source."""
    self._stop.set()
    self._thread.join()
    self._source.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
