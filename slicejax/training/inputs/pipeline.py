"""A group's training input, chosen once: the bank on the device, or batches streamed from the disk.

`choose` picks the input class of a group (`stream.choose`: the bank when it fits `data.memory_budget_gb`); both
classes give the trainer the same things, so that the training loop has no branch on the pipeline:
  * `NAME` and `LOOPS` (whether a step may run inside a looped program; streamed batches arrive one step at a time);
  * `sample_fn(config, dims_lib)`: the step's `(key, bank, per_model) -> (images, labels, weights)`;
  * an instance's `shared` (the bank on the device, `{}` when streamed) and `interpolation` (per-model interpolation
    quality), `start(rng, first_step)`, a context that runs while the group trains, and `per_model()`, every
    model's input of the next step;
  * `one_model(...)`: one model's bank and input for compiling and measuring the step (`train.one_model_step`).
"""

import contextlib

import jax
import jax.numpy as jnp

from slicejax.data import load as data_lib
from slicejax.training.inputs import stream


class BankInput:
  """The group's slices (2D) or volumes (3D) on the device; each step draws its batch there (`sampler`, `patches`)."""

  NAME = "bank"
  LOOPS = True

  def __init__(self, config, dims_lib, points, plans, pool, num_classes: int, shape, sizes, axis):
    bank, self._per_model, self.interpolation = dims_lib.training_data(config, points, plans, pool, num_classes,
                                                                       shape, sizes)
    self.shared = axis.put_shared(bank)
    self._axis = axis

  @staticmethod
  def sample_fn(config, dims_lib):
    return dims_lib.batch_sampler(config)

  def start(self, rng, first_step: int):
    """Puts the per-model entries where the model axis reads them; the same input serves every step."""
    del rng, first_step
    self._per_model = self._axis.from_stacked(self._per_model)
    return contextlib.nullcontext()

  def per_model(self):
    return self._per_model

  @staticmethod
  def one_model(config, dims_lib, point, plan, pool, num_classes: int, shape, sizes, num_channels: int) -> tuple:
    """(bank, one model's per-model input, bytes in flight) of the first point's data."""
    del num_channels
    bank, per_model, _ = dims_lib.training_data(config, [point], [plan], pool, num_classes, shape, sizes)
    return bank, jax.tree.map(lambda x: jnp.asarray(x[0]), per_model), 0


class StreamInput:
  """2D slices read from a store on the disk and put on the device a few steps ahead (`stream.Batches`)."""

  NAME = "stream"
  LOOPS = False

  def __init__(self, config, dims_lib, points, plans, pool, num_classes: int, shape, sizes, axis):
    del sizes
    store = stream.open_store(config, pool, shape, data_lib.cache_dir(config), data_lib.dataset_root(config))
    self._source, self._per_model, self.interpolation = stream.training_data(config, points, plans, pool,
                                                                             num_classes, store)
    self.shared = {}
    self._config, self._batch_size, self._axis = config, dims_lib.batch_size(config), axis
    self._batches = None

  @staticmethod
  def sample_fn(config, dims_lib):
    del dims_lib
    return stream.batch_taker(config)

  def start(self, rng, first_step: int):
    """Each step's batches, read ahead from `first_step` on; `rng` is every model's `[M]` stacked key."""
    self._batches = stream.Batches(self._source, self._per_model, rng, self._batch_size, first_step,
                                   self._config.train.steps, self._axis.from_stacked,
                                   depth=self._config.data.prefetch)
    return self._batches

  def per_model(self):
    return next(self._batches)

  @staticmethod
  def one_model(config, dims_lib, point, plan, pool, num_classes: int, shape, sizes, num_channels: int) -> tuple:
    """A batch as `stream.Batches` delivers it (nothing is shared), and the bytes of the batches in flight."""
    del point, plan, pool, num_classes, sizes
    batch = stream.empty_batch(dims_lib.batch_size(config), shape, num_channels)
    in_flight = (config.data.prefetch + 1) * sum(leaf.nbytes for leaf in batch.values())
    return {}, jax.tree.map(jnp.asarray, batch), in_flight


INPUTS = {cls.NAME: cls for cls in (BankInput, StreamInput)}


def choose(config, dims: int, sizes: dict, shape, num_channels: int):
  """The input class of a group of `dims` whose data has `sizes` (`stream.choose` decides)."""
  return INPUTS[stream.choose(config, dims, sizes, shape, num_channels)]
