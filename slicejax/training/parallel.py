"""The model axis: how M independent models of one sweep group are executed together.

This is the only module that knows about the model axis and devices. Models, losses and the training step are
written for one model; `ModelAxis(strategy, M)` returns an `Executor` whose `map` turns such a per-model function
into one over all M models. Each strategy is one executor class:

- `vmap` (`VmapExecutor`): `jax.vmap` over the stacked state inside one jitted program. Convolutions become grouped
  convolutions; the natural choice on accelerators, several times slower than separate models on XLA:CPU.
- `loop` (`ChunkedExecutor`): the models are split into chunks of `chunk` models; each chunk is one jitted program
  that runs its models as independent subgraphs (a Python loop unrolled at trace time), and the chunks are
  dispatched one after another. XLA:CPU runs the independent subgraphs of a chunk concurrently, which keeps both
  cores busy where one model's small convolutions do not; compile time grows with the chunk, not with M.
- `sequential`: one single-model program dispatched M times (`loop` with chunks of one model).
- `mesh` (`MeshExecutor`): the models are laid over a device mesh with axes `("model", "data")` (see below), on one
  host or across the processes of a multi-host run (`slicejax.training.distributed`).

`default_strategy()` picks the fastest measured strategy for the backend (see BENCHMARKS.md); "auto" takes `mesh`
when more than one device is visible and `default_strategy()` otherwise; the config key `model_axis.strategy`
overrides it. The state lives in an *axis form* that suits the strategy (one stacked pytree for vmap and mesh, a list
of stacked chunks for loop and sequential); `from_stacked` / `to_stacked` convert from and to the stacked form
(every leaf with a leading `[M]` axis) used for checkpoints and results.

The mesh strategy:

- Layout. The stacked state and the per-model inputs are `jax.Array`s whose leading `[M']` axis is split over the
  mesh axis `model` (`NamedSharding(mesh, P("model"))`) and replicated over `data`; the shared inputs (the image
  bank) are replicated on every device. The step is a `shard_map` whose per-device body runs the device's
  `M' / model` local models with the strategy the backend prefers (`loop` on CPU, `vmap` on GPU and TPU), so each
  device trains its own models and the step needs no traffic between devices of different models. `shard_map`
  rather than sharding annotations on a vmapped program: vmapped convolutions lower to grouped convolutions, which
  XLA's automatic partitioner replicates instead of splitting.
- Padding. When the model-axis size does not divide M, the model axis is padded to `M'`, the next multiple, with
  inert copies of the last model (same state, same inputs). They train like their original, cost devices only, and
  `fetch`, `map_apply` and `to_stacked` drop them; `num_padded` counts them. Choose `model_axis.max_models` as a
  multiple of the model-axis size to have none.
- The data axis, for grids with fewer models than devices. Each model's batch is drawn and augmented identically on
  its `data` devices, each device runs the network on its contiguous share of the batch, the shares' logits are
  gathered over `data` so that the loss is the whole batch's loss, and the per-share parameter gradients are summed
  over `data` (`BatchSplit`). So a (model, data) mesh trains the same models as one device does, up to the
  summation order of floating-point numbers; splitting the loss itself would not, since the soft Dice loss is a
  statistic of the whole batch. These two collectives (an all-gather of logits, an all-reduce of gradients) run
  over `data` only, never over `model`.
- How this is checked. tests/test_mesh.py compiles the mesh step on 8 host devices and reads the optimised HLO
  (`jax.jit(...).lower(...).compile().as_text()`): with data = 1 it holds no all-gather, all-reduce, reduce-scatter,
  all-to-all or collective-permute; with data > 1 every collective's replica groups lie inside one model's data
  devices. The same test trains on (model=8) and (model=4, data=2) meshes and compares with one device.
- Multi-host. The mesh spans every device of every process (`jax.devices()`); per-model inputs are built with
  `jax.make_array_from_callback`, so each process copies only the shards of its own devices, and `fetch` gathers
  outputs to every host. Every process must make the same calls in the same order.
"""

import math
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from slicejax.config import defaults
from slicejax.errors import InputError

STRATEGIES = defaults.STRATEGIES
MODEL, DATA = "model", "data"

# Fastest strategy per backend, as measured by bench/model_axis.py (BENCHMARKS.md).
_DEFAULTS = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}
DEFAULT_CHUNK = 4


def default_strategy(backend: str | None = None) -> str:
  """The fastest single-device strategy for the backend; also how a mesh device runs its local models."""
  return _DEFAULTS.get(backend or jax.default_backend(), "vmap")


def stack_trees(trees: Sequence[Any]):
  """Stacks M pytrees of equal structure into one with a leading `[M]` axis on every leaf."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_tree(tree, num_models: int) -> list:
  """Inverse of `stack_trees`."""
  return [jax.tree.map(lambda leaf, m=m: leaf[m], tree) for m in range(num_models)]


def mesh_shape(num_models: int, num_devices: int, batch_size: int | None = None) -> tuple[int, int]:
  """The default `(model, data)` sizes of the mesh.

  All devices go to `model` when there are at least as many models as devices. With fewer models, `model` is the
  smallest divisor of the device count that holds every model on its own device group, and the rest of the devices
  split each model's batch (`data`), provided the data size divides `batch_size`; otherwise all devices stay on
  `model` (some hold inert copies).

  Args:
    num_models: M, the models of the group.
    num_devices: devices in the mesh.
    batch_size: examples per model and step; None allows no data axis.

  Returns:
    `(model, data)` with `model * data == num_devices`.
  """
  if num_models < num_devices and batch_size:
    for model in range(num_models, num_devices + 1):
      data = num_devices // model
      if num_devices % model == 0 and batch_size % data == 0:
        return model, data
  return num_devices, 1


class BatchSplit:
  """Computes one model's loss and gradients, with its batch split over the mesh axis `data` when it has one.

  Used inside the per-model training step: `value_and_grad(apply_fn, loss_fn, params, images, labels, weights)`
  returns what `jax.value_and_grad(lambda p: loss_fn(apply_fn(p, images), labels, weights), has_aux=True)(params)`
  returns. With a data axis of size D (inside the mesh strategy's `shard_map`), device d runs `apply_fn` on examples
  `[d B / D, (d + 1) B / D)` only; the logits of the D shares are gathered so that every device evaluates the loss of
  the whole batch, and each device's parameter gradient (its share's logits pulled back) is summed over `data`. The
  result equals the unsplit one up to the order of floating-point sums.
  """

  def __init__(self, axis_name: str | None = None, size: int = 1):
    self.axis_name = axis_name
    self.size = size

  def value_and_grad(self, apply_fn: Callable, loss_fn: Callable, params, images, labels, weights):
    """`((loss, aux), grads)` of `loss_fn(apply_fn(params, images [B, ...]), labels [B, ...], weights [B, ...])`."""
    if self.size == 1:
      return jax.value_and_grad(lambda p: loss_fn(apply_fn(p, images), labels, weights), has_aux=True)(params)
    batch = images.shape[0]
    if batch % self.size:
      raise InputError("config.model_axis.mesh", f"the data axis ({self.size} devices) must divide the batch of "
                       f"each model ({batch})")
    share = batch // self.size
    start = jax.lax.axis_index(self.axis_name) * share
    logits, pullback = jax.vjp(lambda p: apply_fn(p, jax.lax.dynamic_slice_in_dim(images, start, share)), params)
    everything = jax.lax.all_gather(logits, self.axis_name, axis=0, tiled=True)
    (loss, aux), dlogits = jax.value_and_grad(loss_fn, has_aux=True)(everything, labels, weights)
    grads, = pullback(jax.lax.dynamic_slice_in_dim(dlogits, start, share))
    return (loss, aux), jax.lax.psum(grads, self.axis_name)


def _unrolled(fn: Callable, in_axes: tuple) -> Callable:
  """`jax.vmap(fn, in_axes)` for in_axes of 0 (split) and None (shared), as one independent subgraph per model."""
  def unrolled(*args):
    size = jax.tree.leaves(args[0])[0].shape[0]
    split = [[arg] * size if axis is None else unstack_tree(arg, size) for arg, axis in zip(args, in_axes)]
    return stack_trees([fn(*model_args) for model_args in zip(*split)])
  return unrolled


# Compiled programs by (how, per-model function, options): executors of every group of a grid map the same per-model
# functions, and reusing one jitted callable keeps jax's cache of compiled programs, so equal shapes compile once.
_PROGRAMS = {}


def _cached_jit(key: tuple, build: Callable) -> Callable:
  if key not in _PROGRAMS:
    _PROGRAMS[key] = build()
  return _PROGRAMS[key]


def _concatenate(trees: Sequence[Any]):
  """Joins chunks' stacked outputs `[chunk, ...]` into `[M, ...]`."""
  return jax.tree.map(lambda *chunks: jnp.concatenate(chunks), *trees)


def ModelAxis(strategy: str, num_models: int, chunk: int = DEFAULT_CHUNK, *, mesh: Sequence[int] = (),
              batch_size: int | None = None, local_strategy: str | None = None) -> "Executor":
  """The model axis: the executor of `strategy` over M models (a factory, called like the class it makes).

  Args:
    strategy: one of `STRATEGIES` or "auto".
    num_models: M.
    chunk: models per compiled program of the loop strategy.
    mesh: mesh strategy: `(model, data)` sizes, or `(model,)` for data 1; their product must be the number of
      devices. Empty: `mesh_shape(M, devices, batch_size)`.
    batch_size: examples per model and step, to check that the data axis divides it.
    local_strategy: mesh strategy: how a device runs its local models, "loop" or "vmap"; None: the backend's
      `default_strategy()` ("sequential" counts as "loop").
  """
  if strategy == "auto":
    strategy = "mesh" if jax.device_count() > 1 else default_strategy()
  if strategy == "vmap":
    return VmapExecutor(num_models)
  if strategy in ("loop", "sequential"):
    return ChunkedExecutor(strategy, num_models, chunk if strategy == "loop" else 1)
  if strategy == "mesh":
    return MeshExecutor(num_models, tuple(mesh), batch_size, local_strategy or default_strategy())
  raise ValueError(f"model_axis.strategy must be one of {STRATEGIES} or 'auto', got {strategy!r}")


class Executor:
  """Executes per-model functions over M models with one strategy; `ModelAxis` makes one.

  A per-model function takes `(model_state, shared, per_model)`: `model_state` is one model's pytree, `shared` is
  the same for every model (e.g. the image bank), `per_model` is one model's inputs that differ per model (e.g. its
  annotated slice list). The mapped function takes the state and the per-model inputs in axis form (`from_stacked`
  of a pytree with a leading `[M]` axis) and `shared` (`put_shared`), and returns the new state in axis form and the
  per-model outputs stacked `[M, ...]` (`[M', ...]` with the mesh strategy's inert copies; `fetch` drops them).
  A per-model training step computes its gradients with `batch_split.value_and_grad`, which splits the batch over
  the mesh's data axis when there is one.
  """

  num_padded = 0
  batch_split = BatchSplit()

  def __init__(self, strategy: str, num_models: int):
    self.strategy = strategy
    self.num_models = num_models

  def from_stacked(self, stacked):
    """Axis form of a stacked pytree (numpy or jax leaves with a leading `[M]` axis)."""
    raise NotImplementedError

  def to_stacked(self, state):
    """Stacked pytree `[M, ...]` of a state in axis form (mesh: on `stacked_sharding`)."""
    raise NotImplementedError

  def put_shared(self, tree):
    """Places inputs that every model shares (numpy or jax leaves) where the mapped functions read them."""
    return jax.tree.map(jnp.asarray, tree)

  def fetch(self, tree):
    """Host copy of per-model values in stacked or axis form, as numpy `[M, ...]` (inert copies dropped)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf)[:self.num_models], tree)

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    """Maps `fn(model_state, shared, per_model) -> (new_model_state, outputs)` over the model axis, jitted."""
    raise NotImplementedError

  def map_apply(self, fn: Callable) -> Callable:
    """Maps a stateless `fn(params, shared) -> outputs` over the model axis: params in axis form, outputs `[M, ...]`."""
    raise NotImplementedError


class VmapExecutor(Executor):
  """`vmap`: one program over the stacked state; the axis form is the stacked form."""

  def __init__(self, num_models: int):
    super().__init__("vmap", num_models)
    self.chunk = num_models

  def from_stacked(self, stacked):
    return jax.tree.map(jnp.asarray, stacked)

  def to_stacked(self, state):
    return state

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    return _cached_jit(("vmap", fn, donate_state), lambda: jax.jit(jax.vmap(fn, in_axes=(0, None, 0)),
                                                                   donate_argnums=(0,) if donate_state else ()))

  def map_apply(self, fn: Callable) -> Callable:
    return _cached_jit(("vmap_apply", fn), lambda: jax.jit(jax.vmap(fn, in_axes=(0, None))))


class ChunkedExecutor(Executor):
  """`loop` and `sequential` (chunks of one model): one unrolled program per chunk; axis form: a list of chunks."""

  def __init__(self, strategy: str, num_models: int, chunk: int):
    super().__init__(strategy, num_models)
    self.chunk = max(1, min(chunk, num_models))
    # Stateless programs (evaluation) always see chunks of the configured size, a short chunk padded with copies of
    # its last model: they are cheap, and every group of a grid then shares one compiled evaluation program.
    self._apply_chunk = max(1, chunk)
    self._bounds = [(start, min(start + self.chunk, num_models)) for start in range(0, num_models, self.chunk)]

  def from_stacked(self, stacked):
    stacked = jax.tree.map(jnp.asarray, stacked)
    return [jax.tree.map(lambda leaf, a=a, b=b: leaf[a:b], stacked) for a, b in self._bounds]

  def to_stacked(self, state):
    return _concatenate(state)

  def fetch(self, tree):
    return super().fetch(self.to_stacked(tree) if isinstance(tree, list) else tree)

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    program = _cached_jit(("unrolled", fn, donate_state), lambda: jax.jit(
        _unrolled(fn, in_axes=(0, None, 0)), donate_argnums=(0,) if donate_state else ()))

    def chunked(states, shared, per_model):
      states, outputs = zip(*[program(s, shared, p) for s, p in zip(states, per_model)])
      return list(states), _concatenate(outputs)
    return chunked

  def map_apply(self, fn: Callable) -> Callable:
    program = _cached_jit(("unrolled_apply", fn), lambda: jax.jit(_unrolled(fn, in_axes=(0, None))))

    def padded(params):
      size = jax.tree.leaves(params)[0].shape[0]
      if size == self._apply_chunk:
        return params
      return jax.tree.map(lambda leaf: jnp.concatenate([leaf] + [leaf[-1:]] * (self._apply_chunk - size)), params)

    def apply(chunks, shared):
      outputs = [jax.tree.map(lambda o, n=jax.tree.leaves(p)[0].shape[0]: o[:n], program(padded(p), shared))
                 for p in chunks]
      return _concatenate(outputs)
    return apply


class MeshExecutor(Executor):
  """`mesh`: the padded stacked state over a `(model, data)` device mesh; each device runs its local models."""

  def __init__(self, num_models: int, sizes: tuple, batch_size: int | None, local_strategy: str):
    super().__init__("mesh", num_models)
    devices = jax.device_count()
    if not sizes:
      sizes = mesh_shape(num_models, devices, batch_size)
    sizes = tuple(int(s) for s in sizes) + (1,) * (2 - len(sizes))
    if len(sizes) != 2 or min(sizes) < 1 or math.prod(sizes) != devices:
      raise InputError("config.model_axis.mesh", f"(model, data) sizes {sizes} must multiply to the {devices} "
                       "visible devices")
    if batch_size and batch_size % sizes[1]:
      raise InputError("config.model_axis.mesh", f"the data axis ({sizes[1]} devices) must divide the batch of each "
                       f"model ({batch_size})")
    self.mesh = jax.make_mesh(sizes, (MODEL, DATA), axis_types=(AxisType.Auto, AxisType.Auto))
    self.local_strategy = "vmap" if local_strategy == "vmap" else "loop"
    self._local = jax.vmap if self.local_strategy == "vmap" else _unrolled
    self.padded_models = -(-num_models // sizes[0]) * sizes[0]
    self.num_padded = self.padded_models - num_models
    self.batch_split = BatchSplit(DATA, sizes[1])
    self._by_model = NamedSharding(self.mesh, P(MODEL))
    self._replicated = NamedSharding(self.mesh, P())
    # Checkpoints and results hold exactly M models; a leading axis that `model` does not divide is replicated.
    self.stacked_sharding = self._replicated if self.num_padded else self._by_model
    self._pad = jax.jit(lambda tree: jax.tree.map(self._pad_leaf, tree), out_shardings=self._by_model)
    self._unpad = jax.jit(lambda tree: jax.tree.map(lambda leaf: leaf[:num_models], tree),
                          out_shardings=self.stacked_sharding)
    self._gather = jax.jit(lambda tree: tree, out_shardings=self._replicated)
    logging.info("Model axis: %d models on a (model=%d, data=%d) mesh of %d processes' devices, %s on each device, "
                 "%d inert copies.", num_models, *sizes, jax.process_count(), self.local_strategy, self.num_padded)

  def _pad_leaf(self, leaf):
    """`[M, ...]` -> `[M', ...]`, the inert copies repeating the last model."""
    if not self.num_padded:
      return leaf
    xp = np if isinstance(leaf, np.ndarray) else jnp
    return xp.concatenate([leaf, xp.repeat(leaf[-1:], self.num_padded, axis=0)])

  @staticmethod
  def _from_host(array: np.ndarray, sharding):
    if jax.process_count() == 1:
      return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def from_stacked(self, stacked):
    if all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(stacked)):
      # Host data: each process copies only the shards of its own devices.
      return jax.tree.map(lambda leaf: self._from_host(self._pad_leaf(leaf), self._by_model), stacked)
    if not self.num_padded and all(leaf.sharding == self._by_model for leaf in jax.tree.leaves(stacked)):
      return stacked
    return self._pad(stacked)

  def to_stacked(self, state):
    return self._unpad(state) if self.num_padded else state

  def put_shared(self, tree):
    return jax.tree.map(lambda leaf: self._from_host(np.asarray(leaf), self._replicated), tree)

  def fetch(self, tree):
    """Gathers from every host: across processes, every process must call it."""
    return super().fetch(self._gather(tree))

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    # check_vma=False: outputs are identical on a model's data devices by construction (BatchSplit), which the
    # replication checker cannot see through the gathered logits.
    def build():
      body = jax.shard_map(self._local(fn, in_axes=(0, None, 0)), mesh=self.mesh,
                           in_specs=(P(MODEL), P(), P(MODEL)), out_specs=(P(MODEL), P(MODEL)), check_vma=False)
      return jax.jit(body, donate_argnums=(0,) if donate_state else ())
    return _cached_jit(("mesh", fn, donate_state, self.mesh, self.local_strategy), build)

  def map_apply(self, fn: Callable) -> Callable:
    """Outputs as numpy arrays on every host (inert copies dropped): each host evaluates every model's predictions.

    `shared` is not split over `data`: a model's data devices compute the same outputs.
    """
    def build():
      body = jax.shard_map(self._local(fn, in_axes=(0, None)), mesh=self.mesh, in_specs=(P(MODEL), P()),
                           out_specs=P(MODEL), check_vma=False)
      num_models = self.num_models
      return jax.jit(lambda params, shared: jax.tree.map(lambda o: o[:num_models], body(params, shared)),
                     out_shardings=self._replicated)
    program = _cached_jit(("mesh_apply", fn, self.mesh, self.local_strategy, self.num_models), build)
    return lambda params, shared: jax.tree.map(np.asarray, program(params, self.put_shared(shared)))
