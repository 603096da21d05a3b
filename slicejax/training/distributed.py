"""Runs over several processes (hosts, or one process per GPU): start-up and who writes what.

Conventions:
- A multi-process run is one JAX program in every process (multi-controller JAX): each process makes the same calls
  in the same order, sees every device of every process (`jax.devices()`), and drives its own
  (`slicejax.training.parallel`
  lays the model axis over all of them).
- Process 0 is the *writer*: it holds the workdir lock and writes config.json, groups.json, plans, results rows and
  summaries, each once. Orbax coordinates checkpoints across processes itself. The others only read the workdir.
- `writer_first` orders work that creates shared files (the phantom, data and encoder caches, config.json): the
  writer runs it first; the others run it afterwards and find the files in place, so nothing is written twice at
  once. When the writer fails there, the others stop with an InputError instead of waiting for it.
- With one process every helper here does nothing, so single-process runs are unchanged.
"""

import contextlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from slicejax.errors import InputError


def initialize(enabled: bool, *, coordinator: str = "", num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the processes of a run into one JAX program, when asked to; call it before anything else uses JAX.

  Args:
    enabled: call `jax.distributed.initialize()`, which takes the coordinator, process count and process id from the
      environment of a Cloud TPU pod slice, a SLURM job step, Open MPI or Kubernetes where it runs in one.
    coordinator: `host:port` of process 0's coordination service; given, it implies `enabled` and needs
      `num_processes` and `process_id` (e.g. for several processes on one machine over 127.0.0.1).
    num_processes: the number of processes, with `coordinator`.
    process_id: this process's index in `[0, num_processes)`, with `coordinator`.

  Raises:
    InputError: an incomplete or inconsistent set of explicit values.
  """
  explicit = {"--coordinator": coordinator or None, "--num_processes": num_processes, "--process_id": process_id}
  given = [name for name, value in explicit.items() if value is not None]
  if given and len(given) < len(explicit):
    missing = ", ".join(name for name in explicit if name not in given)
    raise InputError(given[0], f"needs {missing} too")
  if given:
    if ":" not in coordinator:
      raise InputError("--coordinator", f"must be host:port, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise InputError("--process_id", f"must be in [0, {num_processes}) for --num_processes={num_processes}, "
                       f"got {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif enabled:
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d: %d local of %d devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_writer() -> bool:
  """True in the one process that writes the workdir's records (process 0)."""
  return jax.process_index() == 0


def _share_outcome(succeeded: bool) -> bool:
  """The writer's `succeeded`, received by every process (a collective: every process calls it)."""
  return bool(multihost_utils.broadcast_one_to_all(np.int32(succeeded)))


@contextlib.contextmanager
def writer_first(what: str):
  """`with writer_first("setup"): ...` runs the block in the writer, then in every other process.

  Args:
    what: names the block in the error the other processes raise when the writer failed in it.

  Raises:
    InputError: in the other processes, when the block raised in the writer.
  """
  if jax.process_count() == 1:
    yield
    return
  if is_writer():
    try:
      yield
    except BaseException:
      _share_outcome(False)
      raise
    _share_outcome(True)
  else:
    if not _share_outcome(False):
      raise InputError(what, "process 0 failed there; its log says why")
    yield
