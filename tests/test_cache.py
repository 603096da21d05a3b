"""The cache command (`slicejax.cache`): entries listed with their dataset, size and age; pruning by age, dataset
and kind; one-line refusals."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from slicejax import cache
from slicejax.data import index as index_lib
from slicejax.data import load as data
from slicejax.data import phantom


@pytest.fixture()
def filled(tmp_path):
  """A cache holding the preprocessed volumes of two generated datasets and a fake compiled program."""
  folder = tmp_path / "cache"
  roots = [phantom.write_phantom(tmp_path / name, num_cases=3, shape=(16, 16, 8), seed=seed)
           for name, seed in (("first", 0), ("second", 1))]
  for root in roots:
    data.load_volumes(index_lib.index_msd(root), cache_dir=folder)
  (folder / "jax").mkdir()
  (folder / "jax" / "program-cache").write_bytes(b"x" * 1000)
  return folder, roots


def test_entries_name_their_dataset_and_prune_selects(filled):
  folder, (first, second) = filled
  found = cache.entries(folder)
  volumes = [e for e in found if e.kind == "volumes"]
  assert len(volumes) == 6 and {e.dataset for e in volumes} == {str(first), str(second)}
  assert all(e.bytes == e.path.stat().st_size for e in volumes)
  lines = cache.table(found)
  assert any(line.startswith("volumes") and line.endswith(str(first)) and " 3 " in line for line in lines)
  assert lines[-1].startswith("total: 7 entries")
  # Age: a week-old entry is selected by --older_than_days=3, fresh ones are not.
  old = volumes[0].path
  week = time.time() - 7 * 86400
  os.utime(old, (week, week))
  aged = cache.select(cache.entries(folder), older_than_days=3)
  assert [e.path for e in aged] == [old]
  freed = cache.prune(cache.select(cache.entries(folder), dataset=str(second)))
  left = cache.entries(folder)
  assert freed > 0 and {e.dataset for e in left if e.kind == "volumes"} == {str(first)}
  cache.prune(cache.select(left, kind="jax"))
  assert not any(e.kind == "jax" for e in cache.entries(folder))
  # A pruned entry is rebuilt on the next load, identical.
  again = data.load_volumes(index_lib.index_msd(second), cache_dir=folder)
  fresh = data.load_volumes(index_lib.index_msd(second))
  np.testing.assert_array_equal(again.volumes[0].image, fresh.volumes[0].image)
  mapped = data.load_volumes(index_lib.index_msd(second), cache_dir=folder, mapped=True)
  np.testing.assert_array_equal(np.asarray(mapped.volumes[0].label), fresh.volumes[0].label)


@pytest.mark.slow
def test_the_command_lists_and_refuses_in_one_line(filled):
  folder, (first, _) = filled
  run = lambda *flags: subprocess.run([sys.executable, "-m", "slicejax.cache", f"--dir={folder}", *flags],
                                      capture_output=True, text=True)
  listed = run()
  assert listed.returncode == 0 and str(first) in listed.stdout and "total: 7 entries" in listed.stdout
  refused = run("--prune")
  assert refused.returncode == 2 and refused.stderr.strip() == (
      "error: --prune: say what to remove: --older_than_days, --dataset and/or --kind")
  assert len(cache.entries(folder)) == 7
  pruned = run("--prune", "--kind=jax")
  assert pruned.returncode == 0 and pruned.stdout.startswith("removed 1 of 7 entries")
  missing = subprocess.run([sys.executable, "-m", "slicejax.cache", f"--dir={folder / 'nope'}"],
                           capture_output=True, text=True)
  assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no cache folder here" in missing.stderr
