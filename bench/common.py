"""Shared pieces of the benchmarks: a synthetic bank, the real training step, timing and machine description."""

import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from slicejax import config as config_lib
from slicejax import environment
from slicejax.training.inputs import sampler
from slicejax.training import train


def step_config(dims: int, features: int = 16, batch_size: int = 8, size: int = 128, stages: int = 4):
  """The benchmark workload: a base-16 U-Net trained on size x size slices (2D) with batch 8 by default."""
  config = config_lib.base()
  config.model.update(features=features, num_stages=stages)
  config.train.update(batch_size=batch_size)
  return config


def synthetic_bank(shape, num_slices: int = 64, num_classes: int = 3, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {"images": jnp.asarray(rng.normal(size=(num_slices,) + tuple(shape) + (1,)), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, num_classes, size=(num_slices,) + tuple(shape)), jnp.uint8),
          "extents": jnp.tile(jnp.asarray(shape, jnp.int32), (num_slices, 1))}


def model_entries(num_models: int, num_slices: int = 64):
  """Each model annotates its own half of the bank (different data per model)."""
  plans = [{"bank": sorted(np.random.default_rng(m).choice(num_slices, num_slices // 2, replace=False).tolist())}
           for m in range(num_models)]
  return jax.tree.map(jnp.asarray, sampler.model_entries(plans, {"bank": np.arange(num_slices)}))


def time_calls(fn, repeats: int = 5, warmup: int = 1) -> dict:
  """Median and spread of `fn()` wall times (fn must block until its results are ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def peak_memory_mb() -> float:
  """Peak memory of this process: device peak on accelerators, resident set on the CPU."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
  """`slicejax.environment.machine()` and the jax version: where a benchmark ran."""
  return {**environment.machine(), "jax": jax.__version__}


def strategies(arg: str) -> list:
  """Model-axis strategies named by a `--strategies` flag: "default", "all" or a comma-separated list."""
  from slicejax.training import parallel  # pylint: disable=g-import-not-at-top
  return {"all": list(parallel.STRATEGIES), "default": [parallel.default_strategy()]}.get(arg, arg.split(","))


def emit(record: dict, as_json: bool) -> None:
  if as_json:
    print(json.dumps(record), flush=True)
  else:
    print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


def synthetic_volume_bank(shape, num_volumes: int = 8, num_classes: int = 3, seed: int = 0):
  """A 3D bank `[V, D, H, W, ...]` of noise volumes with random labels."""
  rng = np.random.default_rng(seed)
  return {"images": jnp.asarray(rng.normal(size=(num_volumes,) + tuple(shape) + (1,)), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, num_classes, size=(num_volumes,) + tuple(shape)), jnp.uint8),
          "extents": jnp.tile(jnp.asarray(shape, jnp.int32), (num_volumes, 1))}


def volume_planes(num_models: int, shape, num_volumes: int = 8):
  """Each model annotates 4 random planes of each volume; `planes [M, V, D]`, `label_rows [M, V]`."""
  planes = np.zeros((num_models, num_volumes, shape[0]), np.float32)
  for m in range(num_models):
    for v in range(num_volumes):
      planes[m, v, np.random.default_rng([m, v]).choice(shape[0], 4, replace=False)] = 1.0
  rows = np.tile(np.arange(num_volumes, dtype=np.int32), (num_models, 1))
  return {"planes": jnp.asarray(planes), "label_rows": jnp.asarray(rows)}


def init_models(config, num_models: int, shape, num_classes: int = 3):
  model = train.make_model(config, num_classes, len(shape))
  tx = train.make_optimizer(config.train)
  state = train.init_state(model, tx, list(range(num_models)), tuple(shape) + (1,))
  return model, tx, state
