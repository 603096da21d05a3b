"""The XLA:CPU flags slicejax sets on import."""

import importlib.metadata
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

import slicejax


def _set(monkeypatch, flags, version, opt_out=None, platforms="cpu", plugins=()):
  monkeypatch.setattr(slicejax, "_jaxlib_version", lambda: version)
  monkeypatch.setattr(slicejax, "_accelerator_plugins", lambda: list(plugins))
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  monkeypatch.setenv("XLA_FLAGS", flags or "")  # so that monkeypatch restores what _set_cpu_flags writes
  if flags is None:
    monkeypatch.delenv("XLA_FLAGS")
  if opt_out is None:
    monkeypatch.delenv("SLICEJAX_XLA_CPU_DEFAULTS", raising=False)
  else:
    monkeypatch.setenv("SLICEJAX_XLA_CPU_DEFAULTS", opt_out)
  slicejax._set_cpu_flags()  # pylint: disable=protected-access
  return os.environ.get("XLA_FLAGS")


def test_flags_added_to_known_jaxlib(monkeypatch):
  assert _set(monkeypatch, None, (0, 10)) == slicejax.CPU_FLAGS[0]
  assert _set(monkeypatch, "--xla_force_host_platform_device_count=8", (0, 10)) == (
      "--xla_force_host_platform_device_count=8 " + slicejax.CPU_FLAGS[0])


def test_flags_left_alone(monkeypatch):
  assert _set(monkeypatch, None, (0, 9)) is None  # older jaxlib: XLA would abort on the unknown flag
  assert _set(monkeypatch, None, (0, 11)) is None  # newer jaxlib: not known to accept it
  assert _set(monkeypatch, None, None) is None  # jaxlib without package metadata
  assert _set(monkeypatch, None, (0, 10), opt_out="0") is None
  own = "--xla_cpu_experimental_ynn_fusion_type=dot"
  assert _set(monkeypatch, own, (0, 10)) == own


def test_flags_only_for_cpu_runs(monkeypatch):
  assert _set(monkeypatch, None, (0, 10), platforms="") == slicejax.CPU_FLAGS[0]  # unset, no accelerator plugin
  assert _set(monkeypatch, None, (0, 10), platforms="CPU") == slicejax.CPU_FLAGS[0]
  for platforms in ("cuda", "gpu", "tpu", "rocm", "cuda,cpu", "cpu, tpu"):
    assert _set(monkeypatch, None, (0, 10), platforms=platforms) is None, platforms
  cuda = ["jax_plugins.xla_cuda13"]
  assert _set(monkeypatch, None, (0, 10), platforms="", plugins=cuda) is None  # JAX would pick the GPU
  assert _set(monkeypatch, None, (0, 10), platforms="cpu", plugins=cuda) == slicejax.CPU_FLAGS[0]


def test_accelerator_plugins_found(monkeypatch):
  entry = importlib.metadata.EntryPoint("xla_cuda13", "jax_plugins.xla_cuda13", "jax_plugins")
  monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry] if group == "jax_plugins" else [])
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
  assert slicejax._accelerator_plugins() == ["jax_plugins.xla_cuda13", "libtpu"]  # pylint: disable=protected-access
  monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  assert not slicejax._accelerator_plugins()  # pylint: disable=protected-access


def test_convolutions_run_outside_ynnpack():
  """The test process imported slicejax before its first computation, so the flag reached XLA."""
  if jax.default_backend() != "cpu" or slicejax.CPU_FLAGS[0] not in os.environ.get("XLA_FLAGS", ""):
    pytest.skip("flag not set in this process")
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
  # Compiled only: at this size XLA's default hands the convolution to YNNPACK (smaller ones it keeps).
  hlo = conv.lower(jax.ShapeDtypeStruct((8, 64, 64, 32), jnp.float32),
                   jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)).compile().as_text()
  assert "convolution(" in hlo and "__ynn_fusion" not in hlo
