"""Every model-axis strategy trains the same models as training them one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slicejax.config import base
from slicejax.training.inputs import sampler
from slicejax.training.inputs import two_d
from slicejax.training import parallel
from slicejax.training import train

NUM_MODELS, STEPS, SHAPE = 3, 3, (8, 8)


def _setup():
  config = base()
  config.model.update(features=4, num_stages=2)
  config.train.update(batch_size=2, steps=STEPS, warmup_steps=1)
  rng = np.random.default_rng(0)
  bank = {"images": jnp.asarray(rng.normal(size=(12,) + SHAPE + (1,)), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, 3, size=(12,) + SHAPE), jnp.int32),
          "extents": jnp.tile(jnp.asarray(SHAPE, jnp.int32), (12, 1))}
  plans = [{"a": [0, 1]}, {"a": [2], "b": [1, 3]}, {"b": [0]}]
  entries = jax.tree.map(jnp.asarray, sampler.model_entries(plans, {"a": np.arange(6), "b": np.arange(6, 12)}))
  model = train.make_model(config, 3, 2)
  tx = train.make_optimizer(config.train)
  state = train.init_state(model, tx, [11, 12, 13], SHAPE + (1,))
  return train.make_train_step(model, tx, config, two_d.batch_sampler(config)), bank, entries, state


def _one_by_one():
  step, bank, entries, state = _setup()
  single = jax.jit(step)
  params = []
  for m in range(NUM_MODELS):
    s = jax.tree.map(lambda a: a[m], state)
    e = jax.tree.map(lambda a: a[m], entries)
    for _ in range(STEPS):
      s, _ = single(s, bank, e)
    params.append(s["params"])
  return parallel.stack_trees(params)


@pytest.fixture(scope="module")
def reference_params():
  return _one_by_one()


@pytest.mark.parametrize("strategy,chunk", [("vmap", 4), ("loop", 4), ("loop", 2), ("sequential", 4)])
@pytest.mark.slow
def test_strategy_equals_one_by_one(strategy, chunk, reference_params):
  step, bank, entries, state = _setup()
  axis = parallel.ModelAxis(strategy, NUM_MODELS, chunk=chunk)
  mapped = axis.map(step, donate_state=True)
  s, e = axis.from_stacked(state), axis.from_stacked(entries)
  for _ in range(STEPS):
    s, out = mapped(s, bank, e)
  assert out["loss"].shape == (NUM_MODELS,)
  got = axis.to_stacked(s)["params"]
  # Stateless functions map the same way.
  norms = axis.map_apply(lambda p, _: optax.tree.norm(p))(axis.from_stacked(got), None)
  np.testing.assert_allclose(norms, [optax.tree.norm(p) for p in parallel.unstack_tree(got, NUM_MODELS)], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference_params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # The models really differ (different seeds and data), so the comparison is not vacuous.
  leaf = jax.tree.leaves(got)[0]
  assert not np.allclose(leaf[0], leaf[1])


def test_default_strategy_known():
  assert parallel.default_strategy("cpu") in parallel.STRATEGIES
  assert parallel.default_strategy("gpu") in parallel.STRATEGIES
  with pytest.raises(ValueError, match="model_axis.strategy"):
    parallel.ModelAxis("bogus", 2)


def test_model_axis_makes_one_executor_per_strategy():
  made = [parallel.ModelAxis(strategy, NUM_MODELS, chunk=chunk) for strategy, chunk in
          [("vmap", 2), ("loop", 2), ("loop", 5), ("sequential", 2)]]
  assert [(type(axis), axis.strategy, axis.chunk) for axis in made] == [
      (parallel.VmapExecutor, "vmap", 3), (parallel.ChunkedExecutor, "loop", 2),
      (parallel.ChunkedExecutor, "loop", 3), (parallel.ChunkedExecutor, "sequential", 1)]
