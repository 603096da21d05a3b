"""slicejax: which slices of which volumes to annotate, measured with sparse-slice training in JAX."""

import importlib.metadata
import os

__version__ = "0.1.0"

# XLA:CPU hands each convolution to YNNPACK by default; for U-Net training its own convolutions are faster on CPU
# (1.3x per 2D step, 1.45x per 3D step on the benchmark machine: BENCHMARKS.md). The flag is read once, when JAX
# starts its CPU backend, so it only applies when slicejax is imported before the first JAX computation. It is set
# only for the jaxlib releases known to accept it (XLA aborts on unknown flags), never over a user's own
# `xla_cpu_experimental_ynn_fusion_type`, and not at all with SLICEJAX_XLA_CPU_DEFAULTS=0.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
_FLAG_JAXLIB = ((0, 10), (0, 11))  # [first, past-last) (major, minor) of jaxlib known to accept CPU_FLAGS


def _jaxlib_version():
  try:
    return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def _set_cpu_flags():
  flags = os.environ.get("XLA_FLAGS", "")
  version = _jaxlib_version()
  if (os.environ.get("SLICEJAX_XLA_CPU_DEFAULTS", "1") == "0" or version is None
      or not _FLAG_JAXLIB[0] <= version < _FLAG_JAXLIB[1]):
    return
  missing = [f for f in CPU_FLAGS if f.split("=")[0] not in flags]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([flags] + missing).strip()


_set_cpu_flags()
