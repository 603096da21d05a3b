"""The model axis over a device mesh, in one process and across two, against one device.

Tests with several devices run `tests/mesh_worker.py` or `launch.py` in subprocesses with fake host devices
(`--xla_force_host_platform_device_count`), since this process's JAX already has one device. They are started
together when the module's first test needs one, so that they share the cores while this process computes the
one-device reference.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mesh_worker
from slicejax import config as config_lib
from slicejax.errors import InputError
from slicejax.model import losses
from slicejax.report import results
from slicejax.training import distributed
from slicejax.training import parallel
from slicejax.training import train

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 420
# Dice of the same models trained on a mesh and on one device. The steps agree to float rounding (the step test's
# parameters), so the rows are equal on XLA:CPU as measured; the allowance is about one voxel's argmax flipping in
# the 3 test volumes.
DICE_ATOL = 2e-3


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Runs:
  """The subprocesses of this module, started at once."""

  def __init__(self, tmp: pathlib.Path):
    self.tmp = tmp
    worker = [sys.executable, str(REPO / "tests" / "mesh_worker.py")]
    start = lambda args, devices, name: subprocess.Popen(
        args, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "w"), text=True)
    self.step = start(worker + ["step"], 8, "step")
    self.grid = start(worker + ["grid", str(tmp / "grid")], 8, "grid")
    port = _free_port()
    # --verbosity=1: slicejax's INFO records (devices, mesh, lock) in the logs the test reads.
    flags = mesh_worker.grid_flags() + [f"--workdir={tmp / 'two'}", f"--coordinator=127.0.0.1:{port}",
                                        "--num_processes=2", "--verbosity=1"]
    self.two = [start([sys.executable, "launch.py", *flags, f"--process_id={i}"], 4, f"two_{i}") for i in range(2)]

  def result(self, process, name: str) -> str:
    try:
      out, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      process.kill()
      out, _ = process.communicate()
    log = (self.tmp / f"{name}.log").read_text()
    assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{log[-4000:]}"
    return out

  def close(self):
    for process in [self.step, self.grid, *self.two]:
      if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  started = _Runs(tmp_path_factory.mktemp("mesh"))
  yield started
  started.close()


@pytest.fixture(scope="module")
def one_device_rows(runs, tmp_path_factory):
  """The 8-point grid trained on this process's single device, one model after another (the quickest to compile)."""
  assert jax.device_count() == 1
  config = mesh_worker.grid_config()
  with config.unlocked():
    config.model_axis.strategy = "sequential"
  return train.train_and_evaluate(config, tmp_path_factory.mktemp("one_device"))


def _assert_rows_match(got, want):
  assert [r["name"] for r in got] == [r["name"] for r in want]
  for g, w in zip(got, want):
    assert g["diverged"] == w["diverged"] is False
    np.testing.assert_allclose(g["dice_mean"], w["dice_mean"], atol=DICE_ATOL, err_msg=g["name"])
    assert g["dice_per_class"].keys() == w["dice_per_class"].keys()
    for name in w["dice_per_class"]:
      np.testing.assert_allclose(g["dice_per_class"][name], w["dice_per_class"][name], atol=DICE_ATOL)
  # The comparison is not vacuous: the models differ from each other.
  assert len({round(r["dice_mean"], 6) for r in want}) > 1


# ---------------------------------------------------------------------------------------------------------------------
# In this process.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("models,devices,batch,expected", [
    (8, 8, 4, (8, 1)),     # as many models as devices: all on `model`
    (25, 8, 32, (8, 1)),   # more models: all on `model`, 7 inert copies
    (4, 8, 4, (4, 2)),     # fewer: two devices per model
    (3, 8, 4, (4, 2)),     # 3 does not divide 8: 4 model slots, one inert
    (1, 8, 4, (2, 4)),     # data 8 would not divide the batch of 4
    (5, 8, 4, (8, 1)),     # no divisor of 8 between 5 and 7
    (3, 8, None, (8, 1)),  # batch unknown: no data axis
    (2, 1, 4, (1, 1)),
])
def test_mesh_shape(models, devices, batch, expected):
  assert parallel.mesh_shape(models, devices, batch) == expected


@pytest.mark.slow
def test_batch_split_is_the_whole_batch_gradient():
  """Split over a data axis of 2 (a named vmap axis here), the loss and gradients are those of the whole batch."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
  images = jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(4, 5)), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 2, size=(4, 5)), jnp.float32)
  apply_fn = lambda p, x: x @ p["w"]
  loss_fn = losses.segmentation_loss
  (want, want_aux), want_grads = jax.jit(parallel.BatchSplit().value_and_grad, static_argnums=(0, 1))(
      apply_fn, loss_fn, params, images, labels, weights)
  split = parallel.BatchSplit("data", 2)
  (loss, aux), grads = jax.jit(jax.vmap(
      lambda _: split.value_and_grad(apply_fn, loss_fn, params, images, labels, weights), axis_name="data"))(
          jnp.arange(2))
  np.testing.assert_allclose(loss, [want, want], rtol=1e-6)
  np.testing.assert_allclose(aux["dice_loss"], [want_aux["dice_loss"]] * 2, rtol=1e-6)
  np.testing.assert_allclose(grads["w"], np.stack([want_grads["w"]] * 2), rtol=1e-5, atol=1e-7)
  # Not the mean of the two halves' gradients: the soft Dice loss is a statistic of the whole batch.
  half_grad = jax.jit(jax.grad(lambda p, x, y, w: loss_fn(apply_fn(p, x), y, w)[0]))
  halves = [half_grad(params, images[s], labels[s], weights[s])["w"] for s in (slice(0, 2), slice(2, 4))]
  assert not np.allclose(np.mean(halves, axis=0), want_grads["w"], rtol=1e-3)
  with pytest.raises(InputError, match="must divide the batch"):
    jax.vmap(lambda _: split.value_and_grad(apply_fn, loss_fn, params, images[:3], labels[:3], weights[:3]),
             axis_name="data")(jnp.arange(2))


def test_distributed_flags_and_single_process():
  with pytest.raises(InputError, match="^--coordinator: needs --num_processes, --process_id too$"):
    distributed.initialize(False, coordinator="127.0.0.1:1234")
  with pytest.raises(InputError, match="^--coordinator: must be host:port"):
    distributed.initialize(False, coordinator="localhost", num_processes=2, process_id=0)
  with pytest.raises(InputError, match=r"^--process_id: must be in \[0, 2\)"):
    distributed.initialize(False, coordinator="127.0.0.1:1234", num_processes=2, process_id=2)
  distributed.initialize(False)
  assert distributed.is_writer()
  with distributed.writer_first("setup"):
    ran = True
  assert ran


def test_auto_and_mesh_sizes_on_one_device():
  # One device: "auto" keeps the backend's single-device strategy.
  assert parallel.ModelAxis("auto", 2).strategy == parallel.default_strategy()
  with pytest.raises(InputError, match=r"^config.model_axis.mesh: \(model, data\) sizes \(2, 1\) must multiply"):
    parallel.ModelAxis("mesh", 4, mesh=(2,))


@pytest.mark.parametrize("strategy", ["vmap", "loop", "sequential"])
def test_a_single_device_strategy_is_refused_in_a_multi_process_run(strategy, monkeypatch):
  config = mesh_worker.grid_config()
  with config.unlocked():
    config.model_axis.strategy = strategy
  config_lib.validate(config)  # one process
  monkeypatch.setattr(jax, "process_count", lambda: 2)  # the checks read it where JAX is imported
  with pytest.raises(InputError) as refused:
    config_lib.validate(config)
  assert str(refused.value) == (f"config.model_axis.strategy: {strategy!r} trains on one device of one process; a run "
                                "of 2 processes needs 'auto' or 'mesh'")
  with config.unlocked():
    config.model_axis.strategy = "auto"
  config_lib.validate(config)


# ---------------------------------------------------------------------------------------------------------------------
# Subprocesses with 8 devices, and two processes with 4 each.
# ---------------------------------------------------------------------------------------------------------------------

def _within_model(groups, data: int) -> bool:
  """True when every group holds devices of one model only (positions m * data ... m * data + data - 1)."""
  return all(len({d // data for d in group}) == 1 for group in groups)


@pytest.mark.slow
def test_grid_on_meshes_equals_one_device(runs, one_device_rows):
  result = json.loads(runs.result(runs.grid, "grid"))
  assert result["devices"] == 8 and set(result) == {"devices", *mesh_worker.MESHES}
  for name in mesh_worker.MESHES:
    _assert_rows_match(result[name], one_device_rows)


@pytest.mark.slow
def test_two_processes_write_each_row_once(runs, one_device_rows):
  outs = [runs.result(process, f"two_{i}") for i, process in enumerate(runs.two)]
  workdir = runs.tmp / "two"
  lines = (workdir / "results.jsonl").read_text().splitlines()
  rows = results.read_rows(workdir / "results.jsonl")
  assert len(lines) == len(rows) == 8
  assert len({r["name"] for r in rows}) == 8
  _assert_rows_match(rows, one_device_rows)
  assert not (workdir / ".lock").exists()
  assert sorted(p.name for p in (workdir / "plans").iterdir()) == sorted(f"{r['name']}.json" for r in rows)
  logs = [(runs.tmp / f"two_{i}.log").read_text() for i in range(2)]
  # One program over both processes' devices; only process 0 locked the workdir and wrote the summary.
  assert all("Process %d of 2: 4 local of 8 devices." % i in log for i, log in enumerate(logs))
  assert all("(model=8, data=1) mesh of 2 processes' devices" in log for log in logs)
  assert ["Locked " in log for log in logs] == [True, False]
  assert ["wrote " in out and "summary.md" in out for out in outs] == [True, False]


@pytest.mark.slow
def test_step_on_mesh_equals_one_by_one_and_has_no_cross_model_collectives(runs):
  result = json.loads(runs.result(runs.step, "step"))
  assert result["devices"] == 8
  strict = result["8@8x1"]
  assert strict["collectives"] == []  # data = 1: no collective at all in the compiled step
  assert (strict["padded"], strict["loss_shape"], strict["state_sharding"]) == (0, [8], "P('model',)")
  padded = result["3@2x4"]
  assert (padded["padded"], padded["loss_shape"], padded["local_strategy"]) == (1, [3], "vmap")
  # data = 4: the logits' all-gather and the gradients' all-reduce, each only among one model's 4 devices.
  assert {c["op"] for c in padded["collectives"]} == {"all-gather", "all-reduce"}
  for c in padded["collectives"]:
    assert sorted(map(sorted, c["groups"])) == [[0, 1, 2, 3], [4, 5, 6, 7]], c
    assert _within_model(c["groups"], padded["data"])
  for case in (strict, padded):
    assert case["tolerance_ratio"] <= 1.0 and case["models_differ"]
