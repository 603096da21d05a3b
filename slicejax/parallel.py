"""The model axis: how M independent models of one sweep group are executed together.

This is the only module that knows about the model axis and devices. Models, losses and the training step are
written for one model; `ModelAxis.map` turns such a per-model function into one over all M models, executed by one of
several strategies:

- `vmap`: `jax.vmap` over the stacked state inside one jitted program. Convolutions become grouped convolutions;
  fast on accelerators, slow on XLA:CPU.
- `loop`: a Python loop over models unrolled inside one jitted program (one dispatch, M copies of the graph).
- `sequential`: one jitted single-model program dispatched M times per call; the state is kept as a list of
  per-model pytrees so nothing is copied between calls. Dispatch is asynchronous, so independent models may overlap.

`default_strategy()` picks the fastest measured strategy for the backend (see BENCHMARKS.md); the config key
`model_axis.strategy` overrides it. Whatever the strategy, `stack` / `unstack` convert to and from the stacked form
(every leaf with a leading `[M]` axis) used for checkpoints and results.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

STRATEGIES = ("vmap", "loop", "sequential")

# Fastest strategy per backend, as measured by bench/model_axis.py (BENCHMARKS.md).
_DEFAULTS = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}


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
  of a pytree with a leading `[M]` axis: stacked or a list, depending on the strategy) and `shared`, and returns the
  new state in axis form and the per-model outputs stacked `[M, ...]`.
  """

  def __init__(self, strategy: str, num_models: int):
    if strategy == "auto":
      strategy = default_strategy()
    if strategy not in STRATEGIES:
      raise ValueError(f"model_axis.strategy must be one of {STRATEGIES} or 'auto', got {strategy!r}")
    self.strategy = strategy
    self.num_models = num_models

  # State representation.
  def from_stacked(self, stacked):
    """Axis state from a stacked pytree."""
    return unstack_tree(stacked, self.num_models) if self.strategy == "sequential" else stacked

  def to_stacked(self, state):
    """Stacked pytree from the axis state."""
    return stack_trees(state) if self.strategy == "sequential" else state

  def map(self, fn: Callable, *, donate_state: bool = False) -> Callable:
    """Maps `fn(model_state, shared, per_model) -> (new_model_state, outputs)` over the model axis, jitted."""
    donate = (0,) if donate_state else ()
    m_models = self.num_models

    if self.strategy == "vmap":
      return jax.jit(jax.vmap(fn, in_axes=(0, None, 0)), donate_argnums=donate)

    if self.strategy == "loop":
      def looped(state, shared, per_model):
        results = [fn(s, shared, p) for s, p in unstack_tree((state, per_model), m_models)]
        return stack_trees([r[0] for r in results]), stack_trees([r[1] for r in results])
      return jax.jit(looped, donate_argnums=donate)

    single = jax.jit(fn, donate_argnums=donate)

    def sequential(states, shared, per_model):
      results = [single(s, shared, p) for s, p in zip(states, per_model)]
      return [r[0] for r in results], stack_trees([r[1] for r in results])
    return sequential

  def map_apply(self, fn: Callable) -> Callable:
    """Maps a stateless `fn(model_params, shared) -> outputs` over the model axis; params in axis form."""
    if self.strategy == "vmap":
      return jax.jit(jax.vmap(fn, in_axes=(0, None)))
    if self.strategy == "loop":
      def looped(params, shared):
        return stack_trees([fn(jax.tree.map(lambda a, m=m: a[m], params), shared) for m in range(self.num_models)])
      return jax.jit(looped)
    single = jax.jit(fn)
    return lambda params_list, shared: stack_trees([single(p, shared) for p in params_list])

