"""The model axis: how M independent models of one sweep group are executed together.

This is the only module that knows about the model axis and devices. Models, losses and the training step are
written for one model; `ModelAxis.map` turns such a per-model function into one over all M models, executed by one of
several strategies:

- `vmap`: `jax.vmap` over the stacked state inside one jitted program. Convolutions become grouped convolutions;
  the natural choice on accelerators, several times slower than separate models on XLA:CPU.
- `loop`: the models are split into chunks of `chunk` models; each chunk is one jitted program that runs its models
  as independent subgraphs (a Python loop unrolled at trace time), and the chunks are dispatched one after another.
  XLA:CPU runs the independent subgraphs of a chunk concurrently, which keeps both cores busy where one model's
  small convolutions do not; compile time grows with the chunk, not with M.
- `sequential`: one single-model program dispatched M times (`loop` with chunks of one model).

`default_strategy()` picks the fastest measured strategy for the backend (see BENCHMARKS.md); the config key
`model_axis.strategy` overrides it. The state lives in an *axis form* that suits the strategy (one stacked pytree
for vmap, a list of stacked chunks for loop and sequential); `from_stacked` / `to_stacked` convert from and to the
stacked form (every leaf with a leading `[M]` axis) used for checkpoints and results.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

STRATEGIES = ("vmap", "loop", "sequential")

# Fastest strategy per backend, as measured by bench/model_axis.py (BENCHMARKS.md).
_DEFAULTS = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}
DEFAULT_CHUNK = 4


def default_strategy(backend: str | None = None) -> str:
  """The strategy to use when the config says "auto"."""
  return _DEFAULTS.get(backend or jax.default_backend(), "vmap")


def stack_trees(trees: Sequence[Any]):
  """Stacks M pytrees of equal structure into one with a leading `[M]` axis on every leaf."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_tree(tree, num_models: int) -> list:
  """Inverse of `stack_trees`."""
  return [jax.tree.map(lambda leaf, m=m: leaf[m], tree) for m in range(num_models)]


class ModelAxis:
  """Executes per-model functions over M models with one strategy.

  A per-model function takes `(model_state, shared, per_model)`: `model_state` is one model's pytree, `shared` is
  the same for every model (e.g. the image bank), `per_model` is one model's inputs that differ per model (e.g. its
  annotated slice list). The mapped function takes the state and the per-model inputs in axis form (`from_stacked`
  of a pytree with a leading `[M]` axis) and `shared`, and returns the new state in axis form and the per-model
  outputs stacked `[M, ...]`.
  """

  def __init__(self, strategy: str, num_models: int, chunk: int = DEFAULT_CHUNK):
    if strategy == "auto":
      strategy = default_strategy()
    if strategy not in STRATEGIES:
      raise ValueError(f"model_axis.strategy must be one of {STRATEGIES} or 'auto', got {strategy!r}")
    self.strategy = strategy
    self.num_models = num_models
    self.chunk = {"vmap": num_models, "loop": max(1, min(chunk, num_models)), "sequential": 1}[strategy]
    self._bounds = [(start, min(start + self.chunk, num_models)) for start in range(0, num_models, self.chunk)]

  def from_stacked(self, stacked):
    """Axis form of a stacked pytree."""
    if self.strategy == "vmap":
      return stacked
    return [jax.tree.map(lambda leaf, a=a, b=b: leaf[a:b], stacked) for a, b in self._bounds]

  def to_stacked(self, state):
    """Stacked pytree of a state in axis form."""
    if self.strategy == "vmap":
      return state
    return jax.tree.map(lambda *chunks: jnp.concatenate(chunks), *state)

  def _unrolled(self, fn: Callable, with_state: bool) -> Callable:
    """One program for a chunk: `fn` applied to each model of the chunk, results stacked."""
    def chunk_fn(*args):
      size = jax.tree.leaves(args[0])[0].shape[0]
      if with_state:
        state, shared, per_model = args
        results = [fn(s, shared, p) for s, p in unstack_tree((state, per_model), size)]
        return stack_trees([r[0] for r in results]), stack_trees([r[1] for r in results])
      params, shared = args
      return stack_trees([fn(p, shared) for p in unstack_tree(params, size)])
    return chunk_fn

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    """Maps `fn(model_state, shared, per_model) -> (new_model_state, outputs)` over the model axis, jitted."""
    donate = (0,) if donate_state else ()
    if self.strategy == "vmap":
      return jax.jit(jax.vmap(fn, in_axes=(0, None, 0)), donate_argnums=donate)
    program = jax.jit(self._unrolled(fn, with_state=True), donate_argnums=donate)

    def chunked(states, shared, per_model):
      results = [program(s, shared, p) for s, p in zip(states, per_model)]
      return [r[0] for r in results], jax.tree.map(lambda *o: jnp.concatenate(o), *[r[1] for r in results])
    return chunked

  def map_apply(self, fn: Callable) -> Callable:
    """Maps a stateless `fn(model_params, shared) -> outputs` over the model axis; params in axis form."""
    if self.strategy == "vmap":
      return jax.jit(jax.vmap(fn, in_axes=(0, None)))
    program = jax.jit(self._unrolled(fn, with_state=False))
    return lambda chunks, shared: jnp.concatenate([program(p, shared) for p in chunks])
