"""What a launch ran on: the library versions and the machine, recorded beside its rows.

Training is deterministic on one machine with one set of libraries, but not across them: a float32 program compiled
for another CPU, or by another jaxlib, rounds differently, and a long training (the UAL encoder's, a model's) then
ends elsewhere. Each launch of a run that trains a group appends `describe()` to `WORKDIR/launches.jsonl`, and every
row it writes names its line (`launch`), so that two rows that differ can be told apart from a change of code.
"""

import datetime
import importlib.metadata
import os
import platform
import socket

from slicejax import __version__

LAUNCHES_NAME = "launches.jsonl"
# The distributions whose versions decide a run's numbers.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "nibabel")


def _version(distribution: str):
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> dict:
  """{"backend", "device" (its kind), "devices" (count), "cpu", "cores"}: the hardware JAX runs on."""
  import jax  # pylint: disable=g-import-not-at-top  (the report reads launches without JAX)
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
          "devices": jax.device_count(), "cpu": cpu_model(), "cores": os.cpu_count()}


def describe() -> dict:
  """This process's environment: `started` (UTC, ISO 8601), `host`, `python`, `slicejax`, `versions`
  ({distribution: version or None}) and `machine()`'s fields."""
  return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": socket.gethostname(), "python": platform.python_version(), "slicejax": __version__,
          "versions": {name: _version(name) for name in PACKAGES}, **machine()}

