"""Paired statistics of a study: differences between cells by seed and test volume, their uncertainty, verdicts.

The rules the report applies are written once, in `rules_markdown` (printed at the top of every summary.md and kept
in docs/statistics.md); this docstring says how they are computed.

Two cells of one study seed share their annotated volumes, initialisation and data stream, and every seed of a study
is scored on the same test volumes, so a comparison of cell a with cell b uses the paired differences

    d[s, v] = score_a[s, v] - score_b[s, v]            s = 1..S seeds, v = 1..V test volumes

where a score is a volume's mean Dice over its defined classes (`slicejax.evaluation.metrics`). The study seed is the
unit of
replication; the test volumes are a sample of patients shared by every seed. Both vary, crossed, in the model

    d[s, v] = delta + A_s + B_v + E_sv,   A ~ N(0, sa^2), B ~ N(0, sb^2), E ~ N(0, se^2) independent,

the two-way crossed random-effects ANOVA without replication. delta is estimated by the grand mean, whose variance
(V sa^2 + S sb^2 + se^2) / (S V) = (E[MS_seed] + E[MS_volume] - E[MS_residual]) / (S V) is estimated from the mean
squares: MS_seed, plus MS_volume - MS_residual when the volume component is estimated above 0, with Satterthwaite's
degrees of freedom, never fewer than S - 1 and exactly S - 1 while the seed term is more than half of the estimate.
Without a volume component
this is exactly the paired t-interval on the S per-seed mean differences (S - 1 degrees of freedom), and with one
value per seed (rows without per-volume results) it is that interval by construction. Volumes (or seeds) where either
score is
undefined are left out of the pairing first, so the table stays complete (`complete_pairs`).

From the mean, its standard error and degrees of freedom: a two-sided t-test of delta = 0 and its 95% interval, and
the two one-sided tests (TOST) of |delta| < margin, whose p-value is below alpha exactly when the 90% interval lies
inside (-margin, margin). Quantiles and tail probabilities come from `scipy.stats.t` and `scipy.stats.nct`.
"""

import math

import numpy as np
from scipy import stats as scipy_stats

from slicejax.config import defaults
from slicejax.evaluation import metrics

BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, UNDERPOWERED, PENDING = (
    "better", "worse", "equivalent", "inconclusive", "underpowered", "pending")
VERDICTS = (BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, UNDERPOWERED, PENDING)
# Verdicts without a test: their p-values and intervals are not shown (too few seeds make them too narrow to read).
UNTESTED = (UNDERPOWERED, PENDING)
DEFAULTS = defaults.STATS  # the config keys `stats.*`; the report reads the run's own values
MAX_SEEDS = 1000  # seeds_needed searches up to this many


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


def complete_pairs(d) -> tuple:
  """A complete table for the crossed analysis from `d [S, V]` with undefined (NaN) entries.

  Seeds whose differences are all undefined go first. Then either the volumes undefined in any remaining seed go, or
  the seeds undefined in any volume, whichever keeps more pairs (the volumes on a tie). When neither keeps a pair,
  each seed's mean over its defined volumes stands for it (`[S, 1]`): the paired t-test on per-seed means.

  Returns:
    (table, seeds): the complete `[S', V']` table and the indices (into d's rows) of the seeds it keeps.
  """
  d = np.asarray(d, np.float64).reshape(np.shape(d)[0], -1)
  seeds = np.flatnonzero(~np.all(np.isnan(d), axis=1))
  d = d[seeds]
  by_volume = d[:, ~np.any(np.isnan(d), axis=0)]
  whole = ~np.any(np.isnan(d), axis=1)
  if by_volume.size >= d[whole].size:
    if by_volume.size == 0 and d.size:
      return metrics.nan_mean(d, axis=1)[:, None], seeds
    return by_volume, seeds
  return d[whole], seeds[whole]


def crossed_mean(d) -> dict:
  """The mean of a complete `[S, V]` table of paired differences, with its standard error under the crossed model.

  Returns:
    dict of `mean`, `se` (None with fewer than 2 seeds), `df` (Satterthwaite; None likewise), `seed_sd` (the
    standard deviation of the per-seed mean differences, ddof 1; None likewise) and `volume_var` (the estimated
    volume component sb^2, 0 when it is estimated below 0 or V is 1; None likewise).
  """
  d = np.asarray(d, np.float64)
  num_seeds, num_volumes = d.shape
  mean = float(d.mean()) if d.size else math.nan
  if num_seeds < 2 or num_volumes == 0:
    return {"mean": mean, "se": None, "df": None, "seed_sd": None, "volume_var": None}
  seed_means = d.mean(axis=1)
  ms_seed = num_volumes * float(np.var(seed_means, ddof=1))
  seed_sd = float(np.std(seed_means, ddof=1))
  if num_volumes == 1:
    return {"mean": mean, "se": math.sqrt(ms_seed / num_seeds), "df": float(num_seeds - 1), "seed_sd": seed_sd,
            "volume_var": 0.0}
  volume_means = d.mean(axis=0)
  ms_volume = num_seeds * float(np.var(volume_means, ddof=1))
  residual = d - seed_means[:, None] - volume_means[None, :] + mean
  df_seed, df_volume, df_residual = num_seeds - 1, num_volumes - 1, (num_seeds - 1) * (num_volumes - 1)
  ms_residual = float(np.sum(residual ** 2)) / df_residual
  # The seed term is always kept (the seed is the unit of replication); the volume component is added when it is
  # estimated above 0.
  terms = [(ms_seed, df_seed, 1.0)]
  if ms_volume > ms_residual:
    terms += [(ms_volume, df_volume, 1.0), (ms_residual, df_residual, -1.0)]
  total = sum(sign * ms for ms, _, sign in terms)
  denominator = sum(ms ** 2 / df for ms, df, _ in terms)
  df = total ** 2 / denominator if denominator > 0 else float(df_seed)
  if ms_seed > total / 2:
    # Satterthwaite is liberal at a few degrees of freedom (6-7% false positives at 3 seeds by simulation, bench/
    # calibration.py): while the seed term is most of the variance, no more degrees of freedom than the seeds give.
    df = min(df, float(df_seed))
  # The estimate is at least the seed term, whose own degrees of freedom are S - 1; Satterthwaite's formula, with
  # its negative residual term, can fall below that (towards 0) when the volume component is barely above 0.
  df = max(df, float(df_seed))
  return {"mean": mean, "se": math.sqrt(total / (num_seeds * num_volumes)), "df": float(df), "seed_sd": seed_sd,
          "volume_var": max(0.0, (ms_volume - ms_residual) / num_seeds)}


def _t_tail(statistic: float, df: float) -> float:
  """P(T > statistic) for Student's t with `df` degrees of freedom (statistic may be infinite)."""
  return float(scipy_stats.t.sf(statistic, df))


def t_test(mean: float, se, df, alpha: float, margin: float) -> dict:
  """Two-sided test of delta = 0, the 1 - alpha interval, and TOST of |delta| < margin with its 1 - 2 alpha interval.

  Returns:
    dict of `p_value`, `ci_low`, `ci_high`, `ci90_low`, `ci90_high` (the 1 - 2 alpha interval) and `p_equivalence`
    (the larger of the two one-sided p-values); all None without a standard error.
  """
  if se is None or math.isnan(mean):
    return dict.fromkeys(("p_value", "ci_low", "ci_high", "ci90_low", "ci90_high", "p_equivalence"))
  if se == 0:  # every pair differs by the same amount
    p_value = 1.0 if mean == 0 else 0.0
    p_equivalence = 0.0 if abs(mean) < margin else 1.0
    return {"p_value": p_value, "ci_low": mean, "ci_high": mean, "ci90_low": mean, "ci90_high": mean,
            "p_equivalence": p_equivalence}
  half = float(scipy_stats.t.ppf(1 - alpha / 2, df)) * se
  half90 = float(scipy_stats.t.ppf(1 - alpha, df)) * se
  return {"p_value": min(1.0, 2 * _t_tail(abs(mean) / se, df)),
          "ci_low": mean - half, "ci_high": mean + half, "ci90_low": mean - half90, "ci90_high": mean + half90,
          "p_equivalence": max(_t_tail((mean + margin) / se, df), _t_tail((margin - mean) / se, df))}


def holm(p_values, size=None) -> list:
  """Holm's step-down adjustment of a family's p-values (None entries are not in the family and stay None).

  `size`: the family's planned number of hypotheses, when some have no p-value yet (an interim analysis); each
  missing one counts as p = 1. Holm's rejections only grow as p-values fall, so what is rejected now stays rejected
  when the missing p-values arrive. None: the p-values given are the whole family.
  """
  indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
  size = len(indexed) if size is None else size
  if size < len(indexed):
    raise ValueError(f"a family of {size} planned hypotheses has {len(indexed)} p-values")
  adjusted, running = [None] * len(p_values), 0.0
  for rank, (p, i) in enumerate(indexed):
    running = max(running, min(1.0, (size - rank) * p))
    adjusted[i] = running
  return adjusted


def verdict(mean, p_adjusted, p_equivalence_adjusted, n_seeds: int, alpha: float, min_seeds: int) -> str:
  """The verdict on a - b: "underpowered" below `min_seeds` seeds, else "better"/"worse" when the adjusted test of
  delta = 0 rejects, else "equivalent" when the adjusted TOST rejects, else "inconclusive"."""
  if n_seeds < min_seeds or p_adjusted is None:
    return UNDERPOWERED
  if p_adjusted < alpha:
    return BETTER if mean > 0 else WORSE
  if p_equivalence_adjusted is not None and p_equivalence_adjusted < alpha:
    return EQUIVALENT
  return INCONCLUSIVE


def power(n_seeds: int, seed_sd: float, volume_var: float, num_volumes: int, margin: float, alpha: float) -> float:
  """Power of the two-sided t-test at level alpha to detect a true difference `margin` with `n_seeds` seeds, when
  a seed's mean difference has standard deviation `seed_sd` and the test volumes add `volume_var / num_volumes`;
  n - 1 degrees of freedom (the seed term's; conservative when the volume term is large)."""
  df = n_seeds - 1
  se = math.sqrt(seed_sd ** 2 / n_seeds + volume_var / max(num_volumes, 1))
  if se == 0:
    return 1.0
  critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
  nc = margin / se
  out = float(scipy_stats.nct.sf(critical, df, nc) + scipy_stats.nct.cdf(-critical, df, nc))
  if not math.isfinite(out):  # scipy's noncentral t fails far in the tail (large df and nc): the normal limit
    out = float(scipy_stats.norm.sf(critical - nc) + scipy_stats.norm.cdf(-critical - nc))
  return out


def seeds_needed(seed_sd, volume_var, num_volumes: int, margin: float, alpha: float, target: float = 0.8,
                 min_seeds: int = 2):
  """The fewest seeds (min_seeds..MAX_SEEDS) whose `power` reaches `target`; None when no standard deviation is
  known, `math.inf` when even MAX_SEEDS seeds do not (`unreachable_by` says why)."""
  if seed_sd is None or volume_var is None or math.isnan(seed_sd):
    return None
  if power(MAX_SEEDS, seed_sd, volume_var, num_volumes, margin, alpha) < target:
    return math.inf
  lo, hi = max(2, min_seeds), MAX_SEEDS  # power grows with the seeds: bisect for the first that reaches the target
  while lo < hi:
    mid = (lo + hi) // 2
    if power(mid, seed_sd, volume_var, num_volumes, margin, alpha) >= target:
      hi = mid
    else:
      lo = mid + 1
  return lo


def unreachable_by(volume_var, num_volumes: int, margin: float, alpha: float, target: float = 0.8) -> str:
  """Which limit makes `seeds_needed` unreachable: "volumes" when the test volumes' variance alone (`power` at
  MAX_SEEDS seeds without any per-seed spread) stays below `target`, so that no number of seeds is enough, else
  "seeds" (the per-seed spread needs more than MAX_SEEDS seeds)."""
  return "volumes" if power(MAX_SEEDS, 0.0, volume_var, num_volumes, margin, alpha) < target else "seeds"


# Seeds are sized on an upper confidence limit of the pooled per-seed SD: a pilot's SD rests on few degrees of
# freedom, and the plain estimate understates the need about half the time.
SD_UPPER_CONFIDENCE = 0.8


def pooled_variability(comparisons) -> dict | None:
  """Pools the comparisons' variability: {`seed_sd` (root of the df-weighted mean of the per-seed variances),
  `seed_df` (its degrees of freedom), `seed_sd_upper` (its `SD_UPPER_CONFIDENCE` upper confidence limit, chi-square),
  `volume_var` (mean volume component), `num_volumes` (the largest V)}; None when no comparison has 2 seeds."""
  usable = [c for c in comparisons if c.get("seed_sd") is not None and c["n_pairs"] >= 2]
  if not usable:
    return None
  weights = np.array([c["n_pairs"] - 1 for c in usable], np.float64)
  variances = np.array([c["seed_sd"] ** 2 for c in usable], np.float64)
  df = float(np.sum(weights))
  variance = float(np.sum(weights * variances) / df)
  upper = variance * df / float(scipy_stats.chi2.ppf(1 - SD_UPPER_CONFIDENCE, df))
  return {"seed_sd": math.sqrt(variance), "seed_df": df, "seed_sd_upper": math.sqrt(upper),
          "volume_var": float(np.mean([c["volume_var"] for c in usable])),
          "num_volumes": max(c["n_volumes"] for c in usable)}


def compare(rows_a: dict, rows_b: dict, *, alpha: float = DEFAULTS["alpha"],
            margin: float = DEFAULTS["margin"]) -> dict:
  """Everything the report says about cell a against cell b before the family's adjustment.

  Args:
    rows_a, rows_b: {seed: result row} of each cell.
    alpha: the test level (the interval's coverage is 1 - alpha).
    margin: the equivalence margin in Dice.

  Returns:
    dict of `seeds` (shared, with a defined difference), `n_pairs` (their number), `n_volumes` (complete test
    volumes), `mean_diff` (of the per-volume Dice differences; without per-volume results, of the rows'
    `dice_mean`), `se`, `df`, `seed_sd`, `volume_var` (`crossed_mean`), the fields of `t_test`, `nsd_diff` and
    `hd95_diff` (mean differences of those metrics, None without them). The verdict comes with the family
    (`adjust_family`).
  """
  seeds, d = paired_differences(rows_a, rows_b)
  if d.size == 0:  # rows without per-volume results: one number per seed
    d = np.array([[math.nan if rows_a[s]["dice_mean"] is None or rows_b[s]["dice_mean"] is None
                   else rows_a[s]["dice_mean"] - rows_b[s]["dice_mean"]] for s in seeds], np.float64)
  d = np.asarray(d, np.float64).reshape(len(seeds), -1)
  d, kept = complete_pairs(d) if d.size else (np.zeros((0, 0)), [])
  kept_seeds = [seeds[i] for i in kept]
  estimate = crossed_mean(d)
  out = {"seeds": kept_seeds, "n_pairs": int(d.shape[0]), "n_volumes": int(d.shape[1]) if d.ndim == 2 else 0,
         "mean_diff": estimate["mean"], "se": estimate["se"], "df": estimate["df"], "seed_sd": estimate["seed_sd"],
         "volume_var": estimate["volume_var"], "alpha": alpha, "margin": margin,
         **t_test(estimate["mean"], estimate["se"], estimate["df"], alpha, margin)}
  for metric in ("nsd", "hd95"):
    _, dm = paired_differences(rows_a, rows_b, metric)
    out[f"{metric}_diff"] = float(metrics.nan_mean(dm)) if dm.size and not np.all(np.isnan(dm)) else None
  return out


def adjust_family(comparisons, *, alpha: float, min_seeds: int, unmade: int = 0) -> None:
  """Adds `p_adjusted`, `p_equivalence_adjusted` (Holm within the family: `holm`'s `size` m counts the comparisons
  with at least `min_seeds` seeds, the `pending` ones and `unmade` more, those the family's plan holds but has not
  made yet), `family_size` (m) and `verdict` to each comparison of one family, in place. A comparison made with fewer
  seeds whose cells have all their planned seeds is `underpowered` for good: it is not counted.

  A comparison marked `pending` (a cell still misses planned seeds) is `pending`: not tested until its seeds are
  in, and counted in the family's m as p = 1, so that testing it again as seeds arrive is no repeated look and a
  rejection reached now stays when they do (a cell that has no row yet makes no comparison: only `unmade` counts
  it).
  """
  eligible = [c["n_pairs"] >= min_seeds and c["p_value"] is not None and not c.get("pending") for c in comparisons]
  size = sum(eligible) + sum(bool(c.get("pending")) for c in comparisons) + unmade
  p = holm([c["p_value"] if ok else None for c, ok in zip(comparisons, eligible)], size)
  q = holm([c["p_equivalence"] if ok else None for c, ok in zip(comparisons, eligible)], size)
  for c, p_adj, q_adj in zip(comparisons, p, q):
    c["p_adjusted"], c["p_equivalence_adjusted"], c["family_size"] = p_adj, q_adj, size
    c["verdict"] = PENDING if c.get("pending") else verdict(c["mean_diff"], p_adj, q_adj, c["n_pairs"], alpha,
                                                             min_seeds)


def flip(comparison) -> dict:
  """The same comparison read as b - a (p-values and the equivalence test are symmetric)."""
  flipped = dict(comparison, a=comparison["b"], b=comparison["a"])
  for name in ("mean_diff", "nsd_diff", "hd95_diff"):
    if flipped.get(name) is not None:
      flipped[name] = -flipped[name]
  for low, high in (("ci_low", "ci_high"), ("ci90_low", "ci90_high")):
    if comparison.get(low) is not None:
      flipped[low], flipped[high] = -comparison[high], -comparison[low]
  flipped["verdict"] = {BETTER: WORSE, WORSE: BETTER}.get(comparison.get("verdict"), comparison.get("verdict"))
  return flipped


def rules_markdown(options: dict) -> str:
  """The report's rules with a run's `stats` options filled in: printed at the top of every summary.md, and, with
  the defaults, the text of docs/statistics.md."""
  o = dict(DEFAULTS, **(options or {}))
  a, m = o["alpha"], o["margin"]
  source = ("the whole study's planned families (`--families`)" if o.get("families") else
            "its runs' own grids' families (`families.json`, written when a launch starts)" if o.get("run_families")
            else "")
  declared = (": here budget" + ("s " if len(o["retrained"]) > 1 else " ") + ", ".join(map(str, o["retrained"]))
              if o.get("retrained") else "")
  planned = "" if not source else (
      f"\n  The plan: {source}."
      "\n  Holm's rejections only grow as p-values fall, so a rejection reached before a family is complete stays"
      "\n  when the rest arrive: a `better` or `worse` stays, an `equivalent` stays within the margin (it may still"
      "\n  turn `better` or `worse`), an `inconclusive` may still resolve.")
  return f"""## How this report decides

- **Unit of replication: the study seed.** A seed fixes a cell's annotated volumes and slices, the network's
  initialisation and the data stream; every cell of a seed shares them, and every seed is scored on the same test
  volumes. A comparison of cell a with cell b pairs them by seed and test volume: d[s, v] = Dice_a[s, v] −
  Dice_b[s, v], a volume's Dice being its mean over the classes defined in it. Where some d are undefined, either
  the volumes or the seeds holding them are left out, whichever keeps more pairs (without any complete pair, each
  seed's mean over its defined volumes stands in).
- **Interval and test.** Δ is the mean of d. Its standard error comes from the two-way crossed random-effects model
  d[s, v] = Δ + seed + volume + residual (seeds and test volumes both random: the test volumes are a sample of
  patients shared by all seeds), estimated from the ANOVA mean squares with the volume component added only when
  it is estimated above 0, and Satterthwaite's degrees of freedom, never fewer than seeds − 1 and exactly seeds − 1
  while the seed term is most of the variance. Without a volume component this is the paired t-interval on the
  per-seed mean differences. The {100 * (1 - a):g}% interval and the two-sided p-value of Δ = 0 come from Student's
  t (scipy.stats).
- **Margin and equivalence.** δ = {m:g} Dice. Two one-sided tests (TOST) of |Δ| < δ; their p-value is below {a:g}
  exactly when the {100 * (1 - 2 * a):g}% interval lies inside (−δ, +δ).
- **Comparisons, fixed in advance.** Never a comparison against a cell chosen after looking at the results:
  `allocation` — at equal dims, budget and selection, without interpolation, the allocation with the fewest slices
  per volume (the most volumes) against each other allocation; `selection` — at equal dims, budget, allocation and
  interpolation, each pair of selection methods (ual − random, ual − fixed, fixed − random; a selection in rounds
  against its control `passive` on the same schedule as method − passive), except fixed − random at one slice per
  volume, a check (below); `interpolation` — at equal dims, budget, allocation and selection, interpolation on − off.
- **Multiplicity.** Holm's step-down adjustment within each finding's family, i.e. over exactly the comparisons
  its verdict rests on: `allocation` (random and fixed interval, finding 1), `allocation, ual` (UAL's allocations,
  reported apart), `selection, ual` (finding 2), `selection` (fixed − random), `selection, rounds, control` (each
  model-based selection in rounds against `passive`, the rounds' primary contrasts), `selection, rounds, one-shot`
  (each model-based selection in rounds against one-shot random and fixed interval), `selection, rounds` (the other
  comparisons of selections in rounds), `interpolation, 2D` (finding 3) and `interpolation, 3D`; separately for the
  test of Δ = 0 and for the equivalence test. 3D comparisons are never in a 2D family: their families carry ", 3D"
  (`allocation, 3D`, `selection, ual, 3D`, ...). Adjusted p-values are shown; intervals are not adjusted. A
  family's m counts its tested comparisons, its pending ones and those its plan holds but has not made yet, each of
  the last two as p = 1; a comparison with fewer than {o['min_seeds']} seeds whose cells have all their planned seeds
  is underpowered for good and not counted.{planned}
- **Verdicts.** A cell whose runs have not trained every seed they plan for it yet, at any step count of its
  budget: each of its comparisons is `pending` (no test; it counts in its family's m as p = 1, so that a rejection
  reached now stays when the seeds arrive; for cells without rows, the plan does that).
  Fewer than {o['min_seeds']} shared seeds: `underpowered` (no verdict; its p-values and intervals are not shown).
  Else `better` or `worse` when the adjusted p of Δ = 0 is below {a:g} (by the sign of Δ); else `equivalent` when
  the adjusted equivalence p is below {a:g}; else `inconclusive`.
- **Seeds needed (for planning).** Per family, the fewest seeds (at least {o['min_seeds']}) for {100 * o['power']:g}%
  power to detect |Δ| = δ with a two-sided t-test at the family's Bonferroni level {a:g} / m (m: the family's
  comparisons), from the pooled standard deviation of the per-seed mean differences, taken at its 80% upper
  confidence limit, and the volume component (noncentral t, seeds − 1 degrees of freedom). `--check` sizes a grid's
  own families this way from a pilot run (`stats.pilot`) and warns when the grid has fewer seeds; in a finished
  study's report the figure is computed from its own results, so it plans the next study rather than judging this
  one. A budget's recommendation sizes only its unresolved comparisons, from their own spread. Beside it, on the
  same basis, the power the family's tests have now at the most seeds one of its comparisons shares: how likely
  they were to show a true difference of δ, which is what its `inconclusive` verdicts are worth.
- **Findings.** 1, fewer slices per volume over more volumes, on the `allocation` family: `reproduced` when the
  fewest-slices allocation is better in most comparisons and worse in none, `reversed` when worse in most and
  better in none, `mixed` when better in some and worse in others, `not reproduced: equivalent` when every
  comparison is equivalent, else `inconclusive`; each selection method also gets this verdict on its own
  comparisons. 2, UAL is not better than random or fixed interval (`selection, ual`), and 3, interpolation rarely
  helps (`interpolation, 2D`; 3D listed by density): `reproduced` when none is better and most are worse or
  equivalent, `not reproduced` when more are better than worse or equivalent, `mixed` when some are better and
  some support the claim, else `inconclusive`. A difference that no test resolves never counts as support; one
  resolved as better but inside the margin (its equivalence test rejects too) does not count against the claim.
  Findings 1 and 2 are judged per dims, 3D on its own families (`allocation, 3D`, `selection, ual, 3D`): with 2D
  and 3D comparisons, the verdict names each ("2D: ...; 3D: ...").
- **Recommendation per budget.** Read off the verdicts above, with no test of its own. At each dims and budget with
  two or more cells, a cell is a candidate unless a comparison there shows it worse than another cell (`worse` as a,
  `better` as b); a cell that selects in rounds takes part only when shown `better` than its control `passive` (the
  control never does; a cell that does not neither rules another out nor counts below), and a cell still missing
  planned seeds takes no part until they are in; the recommendation is the candidate with the highest mean Dice. The
  case rests on the only candidate's comparisons, or on those between two candidates: `best` when it is the only
  candidate and `better` in each of its comparisons; `equivalent within ±δ: any of them` when there are two or more
  candidates, every comparison between two of them is `equivalent`, and these comparisons link them all (candidates
  not compared directly are linked through others, each link within ±δ), so the cheapest will do; else `not
  separated`, at this number of seeds when some of them are `inconclusive` or `underpowered`, with the seeds their
  families need a priori; while a cell at the budget still misses planned seeds, the case reads `inconclusive: seeds
  pending` (what the complete cells say is shown beside it). Per budget, the `allocation` (in 3D `allocation, 3D`)
  comparisons there, by finding 1's rule, say which prior study the dataset agrees with: the MIDL 2025 study (fewer
  slices per volume better) when `reproduced`, the cardiac study (more slices per volume better) when `reversed`,
  neither when `not reproduced: equivalent`, else `mixed` or `inconclusive`.
- **Trust gate.** A cell is `still improving` when its mean validation Dice rose by more than
  {o['plateau_tolerance']:g} over the last learning-curve interval. When a fully annotated reference is still
  improving, or more than {100 * o['max_improving_share']:g}% of the cells with learning curves are, every finding
  and every case and prior study of the recommendation per budget is `inconclusive: undertrained`, with the
  reason. A reference below the best sparse cell, and cells without learning curves (whose convergence cannot be
  checked), are flagged.
- **A/A check.** With one slice per volume, fixed interval's random offset picks a uniformly random slice among a
  volume's candidates, as random selection does, in the same volumes: fixed − random at one slice per volume
  compares two draws of one distribution, its true Δ is 0. These comparisons are in no family, finding or
  recommendation; "Checks" shows each with its Δ and {100 * (1 - a):g}% interval. When the statistics are
  right, such an interval excludes 0 in {100 * a:g}% of studies; one that excludes 0 is a warning that they are
  anti-conservative (intervals too narrow, p-values too small).
- **Steps check.** A study confirms its training length by training some of its points (the same dims, budget,
  allocation, selection, interpolation and seed) again at more steps, in another run. At a budget whose rows hold
  such a point at two or more step counts, the cells, comparisons, findings and recommendation use only the
  study's rows: those of the budget's shortest step count, its grid's (a check never moves them, whatever it
  trains again), or, for a budget declared trained again in full at more steps after its check said more steps
  are needed (`--retrained`{declared}), those of the longest step count at which every cell of the budget has
  every seed it has at any step count (the longest present while none is). For each longer step count,
  "Checks" shows the mean validation Dice of each re-trained allocation over the seeds that have all of them at
  both step counts, and the difference between the extremes (fewest slices per volume − most): validation, so that
  the training length is not chosen on the test volumes (test Dice at a budget whose rows have no validation
  Dice, and "Checks" says so). The budget's
  steps stand when that difference moves by less than {o['steps_tolerance']:g} (`stats.steps_tolerance`) at
  every longer step count; else more steps are needed, and that budget's comparisons are left out of the findings
  and its recommendation is `inconclusive: more steps needed` (the comparisons themselves stay, with their
  verdicts). The check decides over at least {o['steps_seeds']} seeds (`stats.steps_seeds`); with fewer it is
  `pending` and holds its budget the same way (`inconclusive: steps check pending`), unless a comparison that has
  them already fails. A budget declared trained again (at every dims with that budget; the fully annotated reference
  keeps its shortest step count) has the verdict `retrained` once its study rows are longer than its grid's, with a
  warning where the check that led there stands or has not decided, and "Checks" shows how the difference moved
  on the way there, without holding the budget. Declare a budget once its retraining has rows: before, its study
  rows would be the check's alone. The check does not close the trust gate.
- **Limits.** The calibration below holds for seed effects that are roughly symmetric. A model that fails now and
  then (one seed in ten collapsing) makes a mean over 3-10 seeds unreliable in a way no test on those seeds can see:
  such a seed shows as a diverged model or an outlying per-seed difference, and is worth rerunning or reporting
  apart.
"""
