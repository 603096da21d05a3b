"""Paired statistics of a study: differences between cells by seed and test volume, their uncertainty, verdicts.

Two cells of one study seed share their annotated volumes, initialisation and data stream (common random numbers)
and are evaluated on the same test volumes, so a comparison of cell a with cell b uses the paired differences

    d[s, v] = score_a[s, v] - score_b[s, v]

over the seeds s both cells have and the test volumes v, where a score is a volume's mean Dice over its defined
classes (`slicejax.metrics`); pairs where either is undefined are left out. From them:
- `hierarchical_bootstrap`: resample seeds with replacement, then test volumes with replacement within each drawn
  seed, and take the mean of d; the percentile interval of 10,000 such means is the 95% interval of the mean
  difference. It needs at least 2 seeds: with one there is no spread between seeds to resample, and no interval.
- `wilcoxon`: the Wilcoxon signed-rank test (scipy.stats) of the per-seed mean differences; with 5 seeds its
  smallest possible two-sided p-value is 2 / 32 = 0.0625, so it is reported beside the interval, not used for verdicts.
- `verdict`: "better" (the interval lies above 0), "worse" (below 0), "no detectable difference" (it covers 0).
- `seeds_needed`: how many seeds would make a difference of the observed size detectable (a 95% interval that
  excludes 0 with 80% power), assuming the bootstrap variance shrinks as 1 / seeds.
"""

import math

import numpy as np
from scipy import stats as scipy_stats

from slicejax import metrics

RESAMPLES = 10_000
BETTER, WORSE, NO_DIFFERENCE, ONE_SEED = "better", "worse", "no detectable difference", "one seed: no interval"
_POWER_Z = 0.8416212335729143  # the standard normal quantile at 0.8 (80% power)


def volume_scores(row, metric: str = "dice") -> dict:
  """{case id: the volume's mean `metric` over its defined classes} of one result row (its `per_volume` results)."""
  per_volume = row.get("per_volume") or {}
  if metric not in per_volume:
    return {}
  values = np.array([[np.nan if v is None else v for v in classes] for classes in per_volume[metric]], np.float64)
  return dict(zip(row["test_cases"], metrics.nan_mean(values.reshape(len(row["test_cases"]), -1), axis=-1)))


def paired_differences(rows_a: dict, rows_b: dict, metric: str = "dice") -> tuple:
  """The paired per-volume differences of two cells.

  Args:
    rows_a, rows_b: {seed: result row} of each cell.
    metric: "dice", "nsd" or "hd95" (a per-volume result of the rows).

  Returns:
    (seeds, d): the shared seeds (sorted) and `d [S, V]` float64, a - b per seed and shared test volume (NaN where
    either volume score is undefined). V is 0 when the rows hold no per-volume results.
  """
  seeds = sorted(set(rows_a) & set(rows_b))
  if not seeds:
    return [], np.zeros((0, 0))
  scores = [(volume_scores(rows_a[s], metric), volume_scores(rows_b[s], metric)) for s in seeds]
  cases = sorted(set.intersection(*[set(a) & set(b) for a, b in scores]))
  d = np.array([[a[c] - b[c] for c in cases] for a, b in scores], np.float64).reshape(len(seeds), len(cases))
  return seeds, d


def hierarchical_bootstrap(d, *, resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0) -> dict:
  """The two-level bootstrap of the mean of paired differences.

  Args:
    d: `[S, V]` differences per seed and test volume; NaN entries are left out of every mean.
    resamples: bootstrap replicates.
    confidence: the interval's coverage.
    seed: of the resampling generator (results are reproducible).

  Returns:
    dict of `mean` (the mean of the defined entries), `low`, `high` (percentile interval; None with fewer than 2
    seeds) and `variance` (of the bootstrap means; None likewise).
  """
  d = np.asarray(d, np.float64)
  mean = float(metrics.nan_mean(d)) if d.size else math.nan
  if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] == 0:
    return {"mean": mean, "low": None, "high": None, "variance": None}
  num_seeds, num_volumes = d.shape
  rng = np.random.default_rng(seed)
  seed_index = rng.integers(0, num_seeds, size=(resamples, num_seeds))
  volume_index = rng.integers(0, num_volumes, size=(resamples, num_seeds, num_volumes))
  means = metrics.nan_mean(d[seed_index[..., None], volume_index].reshape(resamples, -1), axis=-1)
  means = means[~np.isnan(means)]
  alpha = (1 - confidence) / 2
  low, high = np.quantile(means, [alpha, 1 - alpha])
  return {"mean": mean, "low": float(low), "high": float(high), "variance": float(np.var(means))}


def wilcoxon(per_seed) -> float | None:
  """Two-sided Wilcoxon signed-rank p-value of per-seed differences; None with fewer than 2 or all of them 0."""
  per_seed = np.asarray(per_seed, np.float64)
  per_seed = per_seed[~np.isnan(per_seed)]
  if per_seed.size < 2 or not np.any(per_seed):
    return None
  return float(scipy_stats.wilcoxon(per_seed).pvalue)


def verdict(low, high) -> str:
  """"better", "worse" or "no detectable difference" from an interval of a - b; `ONE_SEED` without one."""
  if low is None or high is None:
    return ONE_SEED
  if low > 0:
    return BETTER
  if high < 0:
    return WORSE
  return NO_DIFFERENCE


def seeds_needed(mean: float, variance, num_seeds: int, confidence: float = 0.95) -> int | None:
  """Seeds for a `confidence` interval to exclude 0 with 80% power for a true difference `mean`.

  With the bootstrap variance `variance` measured at `num_seeds` seeds, one seed's variance is num_seeds x variance,
  and n seeds are enough when |mean| >= (z + z_power) sqrt(num_seeds x variance / n). None without a variance or for
  a zero difference.
  """
  if variance is None or not mean or math.isnan(mean):
    return None
  z = scipy_stats.norm.ppf(0.5 + confidence / 2)
  return max(2, math.ceil(num_seeds * variance * ((z + _POWER_Z) / mean) ** 2))


def compare(rows_a: dict, rows_b: dict, *, confidence: float = 0.95, resamples: int = RESAMPLES) -> dict:
  """Everything the report says about cell a against cell b, paired by seed and test volume.

  Args:
    rows_a, rows_b: {seed: result row} of each cell.
    confidence: the interval's coverage.
    resamples: bootstrap replicates.

  Returns:
    dict of `seeds` (shared), `n_pairs` (shared seeds), `n_volumes`, `mean_diff` (of the per-volume Dice
    differences; without per-volume results, of the rows' `dice_mean`), `ci_low`, `ci_high`, `p_wilcoxon`,
    `verdict`, `seeds_needed`, `nsd_diff` and `hd95_diff` (mean differences of those metrics, None without them).
  """
  seeds, d = paired_differences(rows_a, rows_b)
  if d.size == 0:  # rows without per-volume results: one number per seed
    d = np.array([[rows_a[s]["dice_mean"] - rows_b[s]["dice_mean"]] for s in seeds], np.float64).reshape(-1, 1)
    d[np.isnan(d)] = np.nan
  boot = hierarchical_bootstrap(d, resamples=resamples, confidence=confidence) if len(seeds) else {
      "mean": math.nan, "low": None, "high": None, "variance": None}
  per_seed = metrics.nan_mean(d, axis=1) if d.size else np.zeros(0)
  out = {"seeds": seeds, "n_pairs": len(seeds), "n_volumes": int(d.shape[1]) if d.ndim == 2 else 0,
         "mean_diff": boot["mean"], "ci_low": boot["low"], "ci_high": boot["high"], "confidence": confidence,
         "p_wilcoxon": wilcoxon(per_seed), "verdict": verdict(boot["low"], boot["high"]),
         "seeds_needed": seeds_needed(boot["mean"], boot["variance"], len(seeds), confidence)}
  for metric in ("nsd", "hd95"):
    _, dm = paired_differences(rows_a, rows_b, metric)
    out[f"{metric}_diff"] = float(metrics.nan_mean(dm)) if dm.size and not np.all(np.isnan(dm)) else None
  return out
