"""slicejax: which slices of which volumes to annotate, measured with sparse-slice training in JAX."""

import importlib.metadata
import importlib.util
import os

__version__ = "0.1.0"

# XLA:CPU hands each convolution to YNNPACK by default; for U-Net training its own convolutions are faster on CPU
# (1.3x per 2D step, 1.45x per 3D step on the benchmark machine: BENCHMARKS.md). The flag is read once, when JAX
# starts its CPU backend, so it only applies when slicejax is imported before the first JAX computation. It is set
# only for the jaxlib releases known to accept it (XLA aborts on unknown flags), only when JAX runs on the CPU alone
# (a GPU or TPU run gains nothing from it, and its plugin, a separate build of XLA, parses the same XLA_FLAGS), never
# over a user's own `xla_cpu_experimental_ynn_fusion_type`, and not at all with SLICEJAX_XLA_CPU_DEFAULTS=0.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
_FLAG_JAXLIB = ((0, 10), (0, 11))  # [first, past-last) (major, minor) of jaxlib known to accept CPU_FLAGS


def _jaxlib_version():
  try:
    return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def _accelerator_plugins() -> list:
  """The JAX accelerator plugins installed, found without importing JAX.

  CUDA and ROCm plugins (`jax-cuda12-pjrt`, ...) register under the `jax_plugins` entry points and namespace package,
  which is also where JAX looks for them; TPUs run through the `libtpu` package.
  """
  found = [entry.value for entry in importlib.metadata.entry_points(group="jax_plugins")]
  return found + [module for module in ("jax_plugins", "libtpu") if importlib.util.find_spec(module) is not None]


def _cpu_only() -> bool:
  """Whether JAX will run on the CPU alone: JAX_PLATFORMS names only cpu, or it is unset and no plugin is installed."""
  platforms = {p.strip().lower() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()}
  if platforms:
    return platforms == {"cpu"}
  return not _accelerator_plugins()


def _set_cpu_flags():
  flags = os.environ.get("XLA_FLAGS", "")
  version = _jaxlib_version()
  if (os.environ.get("SLICEJAX_XLA_CPU_DEFAULTS", "1") == "0" or version is None
      or not _FLAG_JAXLIB[0] <= version < _FLAG_JAXLIB[1] or not _cpu_only()):
    return
  missing = [f for f in CPU_FLAGS if f.split("=")[0] not in flags]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([flags] + missing).strip()


_set_cpu_flags()
