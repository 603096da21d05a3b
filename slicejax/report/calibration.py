"""Result rows with a known truth, and how often the report's comparisons get it right.

A simulated study has two cells, a and b, trained with S seeds and scored on V test volumes. A volume's Dice is

    score[c, s, v] = 0.8 + delta [c = a] + seed[s] + seed_cell[c, s] + volume[v] + volume_cell[c, v] + noise[c, s, v]

with every term normal and independent (and, optionally, an occasional failed seed of cell a: with probability
`failure_prob` a seed's scores of a drop by `failure_drop`, offset so that the true difference stays delta): `seed`
(shared by both cells of a seed: the common random numbers of a
study seed), `seed_cell` (a seed's effect on one cell), `volume` (a test volume's difficulty, shared by every seed
and cell), `volume_cell` (a volume's effect on one cell, shared by every seed: it does not cancel in a - b) and
`noise`. The true difference a - b is `delta`. `calibrate` runs `slicejax.report.comparisons.paired_comparisons`,
the report's own code, on many such studies and counts false verdicts and interval coverage.
"""

import dataclasses

import numpy as np

from slicejax.report import comparisons as comparisons_lib
from slicejax.report import statistics as stats


@dataclasses.dataclass(frozen=True)
class Components:
  """Standard deviations of the terms of the module docstring's model, in Dice."""
  seed: float = 0.02
  seed_cell: float = 0.015
  volume: float = 0.08
  volume_cell: float = 0.02
  noise: float = 0.04
  failure_prob: float = 0.0
  failure_drop: float = 0.0


def simulate_rows(rng: np.random.Generator, num_seeds: int, num_volumes: int, delta: float,
                  components: Components = Components()) -> list[dict]:
  """Result rows (`results`' fields that the report reads) of cells a (`fixed`) and b (`random`) at budget
  8, 4 volumes x 2 slices, seeds 0..S-1, each with per-volume Dice on the same V test volumes."""
  c = components
  seed = rng.normal(0, c.seed, (1, num_seeds, 1))
  seed_cell = rng.normal(0, c.seed_cell, (2, num_seeds, 1))
  volume = rng.normal(0, c.volume, (1, 1, num_volumes))
  volume_cell = rng.normal(0, c.volume_cell, (2, 1, num_volumes))
  noise = rng.normal(0, c.noise, (2, num_seeds, num_volumes))
  scores = 0.8 + np.array([delta, 0.0])[:, None, None] + seed + seed_cell + volume + volume_cell + noise
  if c.failure_prob:
    failed = rng.random(num_seeds) < c.failure_prob
    scores[0] += c.failure_prob * c.failure_drop - c.failure_drop * failed[:, None]
  cases = [f"case_{v:03d}" for v in range(num_volumes)]
  rows = []
  for cell, selection in enumerate(("fixed", "random")):
    for s in range(num_seeds):
      rows.append({"dims": 2, "budget": 8, "volumes": 4, "slices_per_volume": 2, "selection": selection,
                   "interpolation": False, "reference": False, "seed": s,
                   "dice_mean": float(scores[cell, s].mean()), "test_cases": cases,
                   "per_volume": {"dice": [[float(x)] for x in scores[cell, s]]}})
  return rows


def calibrate(num_seeds: int, delta: float, replicates: int, *, num_volumes: int = 60,
              components: Components = Components(), options=None, seed: int = 0) -> dict:
  """How the report's comparison of a with b behaves over `replicates` simulated studies.

  Returns:
    dict of `false_rate` (share of "better"/"worse" verdicts whose sign is wrong, or any such verdict when delta is
    0), `coverage` (share of 1 - alpha intervals that contain delta), `better`, `worse`, `equivalent`,
    `inconclusive` (shares of each verdict) and `mean_width` (of the intervals).
  """
  rng = np.random.default_rng(seed)
  counts = dict.fromkeys(stats.VERDICTS, 0)
  covered, false, width = 0, 0, 0.0
  for _ in range(replicates):
    (comparison,) = comparisons_lib.paired_comparisons(
        simulate_rows(rng, num_seeds, num_volumes, delta, components), options)
    verdict = comparison["verdict"]
    counts[verdict] += 1
    covered += comparison["ci_low"] <= delta <= comparison["ci_high"]
    width += comparison["ci_high"] - comparison["ci_low"]
    false += (verdict in (stats.BETTER, stats.WORSE) and delta == 0) or (
        verdict == stats.WORSE and delta > 0) or (verdict == stats.BETTER and delta < 0)
  return {"false_rate": false / replicates, "coverage": covered / replicates, "mean_width": width / replicates,
          **{name: n / replicates for name, n in counts.items() if name != stats.UNDERPOWERED}}
