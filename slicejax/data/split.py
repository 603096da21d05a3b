"""The seeded split of a dataset's cases into training, validation and test cases."""

import numpy as np

from slicejax.errors import InputError


def split_cases(case_ids, *, num_train: int, num_val: int, num_test: int, seed: int) -> dict:
  """Seeded disjoint split of case ids, independent of the input order.

  The ids are sorted and permuted with `seed`; the test cases are taken first, then validation, then training, so
  the test set for a seed stays the same when only `num_train` or `num_val` changes.

  Args:
    case_ids: iterable of distinct case ids.
    num_train, num_val, num_test: exact sizes; their sum may be less than the number of cases. `num_train` 0 takes
      every case left after the test and validation cases (a training pool that scales with a small dataset).
    seed: integer seed.

  Returns:
    {"train": [...], "val": [...], "test": [...]}, each list sorted.
  """
  ids = sorted(case_ids)
  if len(set(ids)) != len(ids):
    raise InputError("case_ids", "duplicate case ids")
  counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
  for name, n in counts.items():
    if not isinstance(n, (int, np.integer)) or n < 0:
      raise InputError(name, f"must be a non-negative integer, got {n!r}")
  if sum(counts.values()) > len(ids) or (num_train == 0 and num_val + num_test >= len(ids)):
    raise InputError("config.data.split", f"train + val + test = {num_train} + {num_val} + {num_test} "
                     f"{'leaves no training case among' if num_train == 0 else 'exceeds'} the {len(ids)} cases; set "
                     "--config.data.split.train (0: every case left after val and test), .val or .test")
  num_train = num_train or len(ids) - num_test - num_val
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  test = order[:num_test]
  val = order[num_test:num_test + num_val]
  train = order[num_test + num_val:num_test + num_val + num_train]
  return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
