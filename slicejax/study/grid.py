"""The study grid: sweep points, groups of points that train together, and annotation plans.

A *point* is one trained model: dims, budget B, allocation (s volumes x rho slices per volume), selection strategy,
interpolation on/off and seed, or the fully annotated reference. A model-based selection (`entropy`, `ensemble`,
`hybrid`) reaches its budget in `rounds` rounds (`slicejax.training.rounds`), keeping s x rho or, `free`, choosing
volumes
too; every other point is selected in one shot (rounds 1). Points that share every shape-changing setting
(here: dims; network, patch and batch size are per-config) form a *group* that trains together on the model axis,
in chunks of at most `model_axis.max_models`.

An *annotation plan* maps case id -> sorted slice indices (along the slicing axis). For one seed the annotated
volumes are nested: the s volumes of a smaller s are the first s of one seeded permutation of the training pool,
so allocations differ only in what the study varies. Slice choices inside a volume come from a generator seeded by
(seed, case, rho), so every strategy sees the same random stream for the same volume.
"""

import dataclasses
import itertools
import json
import pathlib
import zlib
from typing import Mapping, Optional, Sequence

from absl import logging
import numpy as np

from slicejax.errors import InputError
from slicejax.study import selection as selection_lib


@dataclasses.dataclass(frozen=True)
class Point:
  """One model of the study grid. `slices_per_volume` is None for the fully annotated reference."""
  dims: int
  budget: int
  volumes: int
  slices_per_volume: Optional[int]
  selection: str
  interpolation: bool
  seed: int
  reference: bool = False
  rounds: int = 1
  free: bool = False

  @property
  def name(self) -> str:
    if self.reference:
      return f"{self.dims}d_reference_seed{self.seed}"
    interp = "_interp" if self.interpolation else ""
    schedule = f"_r{self.rounds}" + ("_free" if self.free else "") if self.rounds > 1 else ""
    return (f"{self.dims}d_b{self.budget}_s{self.volumes}_rho{self.slices_per_volume}_{self.selection}{interp}"
            f"{schedule}_seed{self.seed}")

  def fields(self) -> dict:
    """The point's fields for its result row; a one-shot point's row has no round fields."""
    fields = dataclasses.asdict(self)
    if self.rounds == 1:
      del fields["rounds"], fields["free"]
    return fields


def _log_left_out(reason: str, quiet: bool) -> None:
  if not quiet:
    logging.info("%s: left out.", reason)


def expand(study, depths: Mapping[str, int], left_out: Optional[list] = None, quiet: bool = False) -> list:
  """All points of a config's `study` block, in a fixed order.

  Args:
    study: the config's `study` ConfigDict (dims, budgets, slices_per_volume, selections, interpolation, seeds,
      reference, reference_seeds; `three_d` overrides any of them for 3D points; `rounds`, `round_allocation`,
      `round_budgets` and `round_slices_per_volume` for the model-based selections, 2D only and without
      interpolation).
    depths: case id -> number of candidate slices, for every volume of the training pool.
    left_out: if given, a list that receives one sentence per allocation left out, saying why.
    quiet: do not log the allocations left out.

  Returns:
    list of Point. An allocation whose s = B / rho is not an integer or exceeds the pool is left out (logged), and
    so are interpolation at one slice per volume (it would train as without) and a round schedule with more rounds
    than slices per volume (a round would add nothing); a budget that no allocation fits is an error.
  """
  pool = len(depths)
  total = sum(depths.values())
  points = []
  for dims in study.dims:
    grid = _grid(study, dims)
    for budget in grid["budgets"]:
      if budget > total:
        raise InputError("study.budgets", f"budget {budget} exceeds the {total} slices of the {pool}-volume pool")
      fitting = []
      for rho in grid["slices_per_volume"]:
        if budget % rho or budget // rho > pool:
          reason = (f"{dims}D budget {budget} at {rho} slices per volume: needs {budget / rho:g} volumes, "
                    + ("not a whole number" if budget % rho else f"the pool has {pool}"))
          _log_left_out(reason, quiet)
          if left_out is not None:
            left_out.append(reason)
          continue
        fitting.append(rho)
      if not fitting:
        raise InputError("study.budgets", f"budget {budget} splits into no allocation with s <= {pool} volumes and "
                         f"rho in {tuple(grid['slices_per_volume'])}")
      for rho, sel, interp, seed in itertools.product(fitting, grid["selections"], grid["interpolation"],
                                                      grid["seeds"]):
        if not getattr(selection_lib.get(sel), "MODEL_BASED", False):
          if interp and rho < 2:  # nothing lies between annotated slices: the point would train as without
            if sel == grid["selections"][0] and seed == grid["seeds"][0]:
              reason = (f"{dims}D budget {budget} at 1 slice per volume with interpolation: no slice lies between "
                        "two annotated ones")
              _log_left_out(reason, quiet)
              if left_out is not None:
                left_out.append(reason)
            continue
          points.append(Point(dims, budget, budget // rho, rho, sel, bool(interp), seed))
          continue
        if dims != 2:
          raise InputError("study.three_d.selections", f"{sel!r} selects in rounds, which 3D points do not")
        if ((study.round_budgets and budget not in study.round_budgets)
            or (study.round_slices_per_volume and rho not in study.round_slices_per_volume)):
          continue
        for rounds, rule in itertools.product(study.rounds, study.round_allocation) if not interp else ():
          if rounds > rho:
            reason = f"{dims}D budget {budget} at {rho} slices per volume in {rounds} rounds: a round would add nothing"
            if seed == grid["seeds"][0] and rule == study.round_allocation[0]:
              _log_left_out(reason, quiet)
              if left_out is not None:
                left_out.append(reason)
            continue
          points.append(Point(dims, budget, budget // rho, rho, sel, False, seed, rounds=rounds, free=rule == "free"))
    if grid["reference"]:
      points += [Point(dims, total, pool, None, "all", False, seed, reference=True) for seed in grid["reference_seeds"]]
  if not points:
    raise InputError("study", "the grid is empty")
  return points


_GRID_KEYS = ("budgets", "slices_per_volume", "selections", "interpolation", "seeds", "reference", "reference_seeds")


def _grid(study, dims: int) -> dict:
  """The grid of one dims: `study`'s values, with `study.three_d`'s non-empty entries for 3D (a ConfigDict, or the
  plain dict of a run's config.json, whose tuples are lists)."""
  grid = {key: study[key] for key in _GRID_KEYS}
  if dims == 3:
    for key in _GRID_KEYS:
      value = study["three_d"][key]
      if tuple(value) != ():
        grid[key] = value[0] if key == "reference" else value
  return grid


def planned_seeds(study, dims: int, reference: bool) -> list:
  """The seeds `expand` trains every point of a dims for: `study.seeds` (`study.reference_seeds` for the reference),
  or `study.three_d`'s for 3D where given."""
  return list(_grid(study, dims)["reference_seeds" if reference else "seeds"])


def group(points: Sequence[Point], max_models: int, size_of=len, steps_of=lambda point: 0,
          family_of=lambda point: None) -> list:
  """Splits points into groups that share shapes (dims), round count and training steps (`steps_of`, e.g. a
  reference that trains longer), each of at most `max_models` models (`size_of(points)`: the models a group of these
  points trains at once, e.g. with an ensemble's members); the points of one family (equal `family_of(point)`, not
  None: e.g. round points that share round 0's models) join one group at the place of its first point; a group holds
  at least one point, or one family; order kept otherwise."""
  groups = []
  kind = lambda p: (p.dims, p.rounds, steps_of(p))
  for key in sorted({kind(p) for p in points}):
    units = {}
    for index, point in enumerate(p for p in points if kind(p) == key):
      family = family_of(point)
      units.setdefault(("point", index) if family is None else ("family", family), []).append(point)
    group_points = []
    for unit in units.values():
      if group_points and size_of(group_points + unit) > max_models:
        groups.append(group_points)
        group_points = []
      group_points = group_points + unit
    groups.append(group_points)
  return groups


def choose_volumes(pool: Sequence[str], s: int, seed: int) -> list:
  """The s annotated volumes for a seed: the first s of a seeded permutation of the sorted pool (nested in s)."""
  if s > len(pool):
    raise InputError("study.budgets", f"s = {s} volumes exceeds the training pool of {len(pool)}")
  order = np.random.default_rng([seed, 0x5e1ec7]).permutation(sorted(pool))
  return sorted(order[:s].tolist())


def slice_rng(seed: int, case_id: str, rho: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(case_id.encode()), rho])


def candidate_range(depth: int, roi: Sequence[float]) -> tuple:
  """`[lo, hi)` candidate slices of a volume of `depth` slices; roi is () (all) or fractions (lo, hi)."""
  if not roi:
    return 0, depth
  lo, hi = int(np.floor(roi[0] * depth)), int(np.ceil(roi[1] * depth))
  return lo, max(hi, lo + 1)


def make_plan(point: Point, depths: Mapping[str, int], *, roi=(), options=None,
              embeddings: Optional[Mapping[str, np.ndarray]] = None,
              offered: Optional[Mapping[str, tuple]] = None) -> dict:
  """The annotation plan of one point: case id -> sorted list of annotated slice indices.

  Args:
    point: the sweep point.
    depths: case id -> depth for the training pool.
    roi: () or (lo, hi) fractions of the depth that bound the candidate slices.
    options: the strategy's config block, passed to `select`; with `select_volumes` set (ual), the s volumes are
      chosen from their embeddings by the strategy's `select_volumes` instead of at random.
    embeddings: case id -> `[depth, F]` slice embeddings, for strategies that need them.
    offered: case id -> `[lo, hi)`, the slices a volume offers (e.g. its nonzero region); roi then narrows that
      range. None: every slice.
  """
  if point.reference:
    return {case: list(range(depth)) for case, depth in sorted(depths.items())}
  strategy = selection_lib.get(point.selection)
  if options is not None and options.get("select_volumes"):
    volume_embeddings = {case: embeddings[case].mean(axis=0) for case in sorted(depths)}
    chosen = strategy.select_volumes(volume_embeddings, point.volumes, np.random.default_rng([point.seed, 0x5e1ec7]),
                                     options)
  else:
    chosen = choose_volumes(list(depths), point.volumes, point.seed)
  plan = {}
  for case in chosen:
    start, stop = offered[case] if offered is not None else (0, depths[case])
    lo, hi = candidate_range(stop - start, roi)
    lo, hi = lo + start, hi + start
    if point.slices_per_volume > hi - lo:
      raise InputError("study.slices_per_volume",
                       f"rho = {point.slices_per_volume} exceeds the {hi - lo} candidate slices of volume {case}")
    features = None
    if strategy.NEEDS_EMBEDDINGS:
      features = embeddings[case][lo:hi]
    picked = strategy.select(hi - lo, point.slices_per_volume, slice_rng(point.seed, case, point.slices_per_volume),
                             embeddings=features, options=options)
    plan[case] = [int(i) + lo for i in picked]
  return plan


def read_plan(path, point: Point, depths: Mapping[str, int]) -> dict:
  """The plan `path` records for `point` (`plans/<point>.json` of a workdir), checked against the training pool's
  `depths`: the point's volumes, each with its slices per volume, distinct and inside the volume.

  Raises:
    InputError: naming the file and the problem.
  """
  path = pathlib.Path(path)
  try:
    plan = json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise InputError(path, f"unreadable plan: {err}") from None
  if not isinstance(plan, dict) or not all(isinstance(s, list) and all(type(i) is int for i in s)
                                           for s in plan.values()):
    raise InputError(path, "not a plan: expected an object of case id -> list of slice indices")
  unknown = sorted(set(plan) - set(depths))
  if unknown:
    raise InputError(path, f"plans case(s) {unknown[:3]} that the training pool does not hold")
  if len(plan) != point.volumes:
    raise InputError(path, f"plans {len(plan)} volumes where {point.name} has {point.volumes}")
  for case, slices in sorted(plan.items()):
    if (len(slices) != point.slices_per_volume or len(set(slices)) != len(slices)
        or not all(0 <= i < depths[case] for i in slices)):
      raise InputError(path, f"{case}: slices {slices} are not {point.slices_per_volume} distinct slices of its "
                       f"{depths[case]}")
  return {case: sorted(slices) for case, slices in sorted(plan.items())}
