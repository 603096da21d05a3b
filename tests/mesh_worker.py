"""Runs the model axis on a mesh of fake host devices and prints one JSON object (for tests/test_mesh.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_worker.py step
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_worker.py grid WORKDIR

The device count must be set before JAX is imported, which is why this runs in its own process.

- `step`: trains 3 steps of tiny models with the mesh strategy on several meshes and one by one, and prints per
  mesh the largest parameter difference over its tolerance (`RTOL`, `ATOL`) and the collectives of the compiled
  step (op and replica groups, as lists of positions in the mesh's flattened device order).
- `grid`: runs a tiny 8-point grid (`grid_config()`) with `train_and_evaluate` on a (model=8) and a (model=4, data=2)
  mesh, and prints the result rows of each.
"""

import json
import pathlib
import re
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slicejax import config as config_lib  # noqa: E402
from slicejax.training.inputs import sampler  # noqa: E402
from slicejax.training.inputs import two_d  # noqa: E402
from slicejax.training import parallel  # noqa: E402
from slicejax.training import train  # noqa: E402

STEPS, SHAPE, BATCH = 3, (8, 8), 4
# (models, mesh, local strategy): every model on its own device; inert copies, a data axis and vmap on each device
# (3 models padded to 4, 2 per model slot, each slot 4 data devices; vmap is what GPUs and TPUs run). The loop over
# several local models is in the `grid` runs' (model=4, data=2) mesh.
STEP_CASES = [(8, (8, 1), "loop"), (3, (2, 4), "vmap")]
# Parameters after STEPS steps agree with the one-by-one models within these (as in tests/test_parallel.py).
RTOL, ATOL = 2e-5, 2e-6
MESHES = {"model8": (8, 1), "model4_data2": (4, 2)}
_COLLECTIVE = re.compile(r"\b(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(")


# The tiny demo narrowed to 8 2D points (2 allocations x 2 selections x 2 seeds) in one group, no reference.
GRID_OVERRIDES = {"study.dims": (2,), "study.budgets": (8,), "study.slices_per_volume": (1, 2),
                  "study.selections": ("random", "fixed"), "study.seeds": (0, 1), "study.reference": False}


def grid_config():
  """The config of `GRID_OVERRIDES`, as `launch.py` makes it from `grid_flags()`."""
  config = config_lib.load(str(REPO / "configs/demo.py:tiny"))
  with config.unlocked():
    for key, value in GRID_OVERRIDES.items():
      section, name = key.split(".")
      config[section][name] = value
  return config


def grid_flags() -> list:
  return ["--config=configs/demo.py:tiny"] + [f"--config.{key}={value!r}" for key, value in GRID_OVERRIDES.items()]


def _groups(line: str) -> list:
  """The device groups of one collective in HLO text: explicit `{{0,1},...}` or iota `[a,b]<=[dims]T(perm)`."""
  pairs = re.search(r"source_target_pairs=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
  if pairs:
    return [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", pairs.group(1))]
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if iota:
    shape = [int(i) for i in iota.group(1).split(",")]
    dims = [int(i) for i in iota.group(2).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if iota.group(3):
      ids = ids.transpose([int(i) for i in iota.group(3).split(",")])
    return ids.reshape(shape[0], -1).tolist()
  explicit = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)?\}", line)
  if explicit:
    return [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", explicit.group(1) or "")]
  return []


def collectives(hlo: str) -> list:
  """`[{"op", "groups"}]` for every collective instruction of an HLO module's text."""
  found = []
  for line in hlo.splitlines():
    match = _COLLECTIVE.search(line)
    if match and "=" in line.split(match.group(0))[0]:
      found.append({"op": match.group(1), "groups": _groups(line)})
  return found


def _step_setup():
  """Config, model, optimiser, bank, and the stacked entries and initial states (numpy) of `max(STEP_CASES)` models.

  Model m's seed and plan do not depend on how many models there are, so every case takes the first models.
  """
  num_models = max(n for n, _, _ in STEP_CASES)
  config = config_lib.base()
  config.model.update(features=4, num_stages=2)
  config.train.update(batch_size=BATCH, steps=STEPS, warmup_steps=1)
  rng = np.random.default_rng(0)
  bank = {"images": rng.normal(size=(12,) + SHAPE + (1,)).astype(np.float32),
          "labels": rng.integers(0, 3, size=(12,) + SHAPE).astype(np.int32),
          "extents": np.tile(np.asarray(SHAPE, np.int32), (12, 1))}
  plans = [{"a": [m % 6]} if m % 3 == 0 else {"a": [1, 2], "b": [m % 6]} for m in range(num_models)]
  entries = sampler.model_entries(plans, {"a": np.arange(6), "b": np.arange(6, 12)})
  model = train.make_model(config, 3, 2)
  tx = train.make_optimizer(config.train)
  state = jax.device_get(train.init_state(model, tx, [100 + m for m in range(num_models)], SHAPE + (1,)))
  return config, model, tx, bank, entries, state


def _first(tree, num_models: int):
  return jax.tree.map(lambda leaf: leaf[:num_models], tree)


def _one_by_one(config, model, tx, bank, entries, state):
  """Parameters `[M, ...]` of each model trained by itself with a single-model program."""
  step = jax.jit(train.make_train_step(model, tx, config, two_d.batch_sampler(config)))
  params = []
  for m in range(len(entries["count"])):
    s, e = jax.tree.map(lambda leaf: leaf[m], (state, entries))
    for _ in range(STEPS):
      s, _ = step(s, bank, e)
    params.append(jax.device_get(s["params"]))
  return jax.tree.map(lambda *leaves: np.stack(leaves), *params)


def run_step() -> dict:
  out = {}
  config, model, tx, bank, entries, state = _step_setup()
  want = _one_by_one(config, model, tx, bank, entries, state)
  for num_models, mesh, local in STEP_CASES:
    axis = parallel.ModelAxis("mesh", num_models, mesh=mesh, batch_size=BATCH, local_strategy=local)
    mapped = axis.map(train.make_train_step(model, tx, config, two_d.batch_sampler(config), axis.batch_split),
                      donate_state=True)
    axis_state = axis.from_stacked(_first(state, num_models))
    shared, per_model = axis.put_shared(bank), axis.from_stacked(_first(entries, num_models))
    hlo = mapped.lower(axis_state, shared, per_model).compile().as_text()
    for _ in range(STEPS):
      axis_state, outputs = mapped(axis_state, shared, per_model)
    got = axis.fetch(axis.to_stacked(axis_state)["params"])
    # Each difference over its tolerance: at most 1 where the parameters agree.
    ratios = [float(np.max(np.abs(a - b) / (ATOL + RTOL * np.abs(b))))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_first(want, num_models)))]
    leaf = jax.tree.leaves(got)[0]
    out[f"{num_models}@{mesh[0]}x{mesh[1]}"] = {
        "padded": axis.num_padded, "loss_shape": list(axis.fetch(outputs["loss"]).shape),
        "tolerance_ratio": max(ratios), "models_differ": bool(not np.allclose(leaf[0], leaf[-1])),
        "collectives": collectives(hlo), "data": mesh[1], "local_strategy": axis.local_strategy,
        "state_sharding": str(jax.tree.leaves(axis_state)[0].sharding.spec)}
  return out


def run_grid(workdir: pathlib.Path) -> dict:
  out = {}
  for name, mesh in MESHES.items():
    config = grid_config()
    with config.unlocked():
      config.model_axis.strategy = "mesh"
      config.model_axis.mesh = mesh
    out[name] = train.train_and_evaluate(config, workdir / name)
  return out


if __name__ == "__main__":
  mode = sys.argv[1]
  result = run_step() if mode == "step" else run_grid(pathlib.Path(sys.argv[2]))
  print(json.dumps({"devices": jax.device_count(), **result}))
