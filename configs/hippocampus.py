"""MSD Task04 Hippocampus (T1 MRI, 260 labelled volumes of ~35 x 50 x 36 voxels at 1 mm; anterior and posterior
hippocampus) with the default grid of the study (README.md, "What it answers").

    python launch.py --config=configs/hippocampus.py --config.data.root=PATH/Task04_Hippocampus --workdir=runs/hippo
    python launch.py --config=configs/hippocampus.py:reference --config.data.root=PATH --workdir=runs/hippo_ref

Split by case with seed 0: 180 training pool, 20 validation, 60 test. Slices are taken along NIfTI axis 2 (24-47
slices per volume) and padded to 48 x 64. Grid: budgets {36, 72, 144, 288} slices x rho in {1, 2, 4, 8, 16} where
s = B / rho <= 180 x {random, fixed, ual} x seeds {0, 1, 2}, plus the fully annotated reference.
Interpolation is off in the default grid; `--config.study.interpolation='(False, True)'` adds it.

Arguments:
  reference: train only the fully annotated 2D reference (about 9 minutes on 2 CPU cores, dice_mean ~0.86).
  reference3d: train only the fully annotated 3D reference (base-8 3D U-Net, 48^3 patches, 2400 steps of batch 2).
  tiny: a few volumes and steps, for tests.
  converged=PART,budget=B: a part of the converged study (docs/hippocampus_study/converged/): PART "grid" at budget B
    (36, 72, 144 or 288; random and fixed, ual at 36 and 144), "interp" at 72 or 288, "rounds" at 36 or 144, or
    "reference" (3 seeds); base-16 U-Net, batch 16, CONVERGED_STEPS steps for the budget, 5 seeds, validation Dice
    on all 20 validation volumes at 8 points of training.
    "rounds" is the selection in rounds (`slicejax.training.rounds`) to compare with the grid's one-shot cells of the
    same budget (the report merges the two workdirs): entropy, ensemble (4 members) and hybrid at 4 slices per
    volume, and their control passive (the same schedule, random next slices), 2 rounds (in round 0, every other
    slice of the one-shot fixed-interval plan of the same seed at 4 per volume; 2 chosen in round 1), fixed
    allocation; every round trains CONVERGED_STEPS steps from the initialisation, and the last round only the point's
    own model (`rounds.final_members=False`). The points of one seed train together, sharing round 0's models: a
    seed costs 8 trainings (round 0: one model for entropy, hybrid and the ensemble's first member, and the
    ensemble's 3 others; round 1: each point's own). E.g.
        python launch.py --config=configs/hippocampus.py:converged=rounds,budget=144 --workdir=runs/hippo_rounds_144
        python -m slicejax.report --workdir=runs/hippo_grid_144 --workdir=runs/hippo_rounds_144 --out=runs/r144
    "doubling" at 36, 72, 144 or 288: the schedule-doubling check, the budget's extreme allocations (B x 1 and
    B/4 x 4; 144 x 1 and 9 x 16; 72 x 4 and 18 x 16), random, seeds 0-1, at twice CONVERGED_STEPS; against the
    grid's rows of the same points; with more=True the same points for seeds 2-4 (every budget's check is decided
    over the 5 study seeds; the grid gives their rows at the study's steps).
    "retrain" at 36, 72, 144 or 288: a budget whose 5-seed doubling check failed trains again once, at twice
    CONVERGED_STEPS, which are then final (CONVERGED_RETRAINED): the grid's cells that the doubling check did not
    train at those steps, fixed interval (and ual where the grid has it) at every allocation, 5 seeds; with
    middle=True instead the random cells between the extremes (only budget 144 has one, 36 x 4). The doubling
    parts give the random extremes' rows; the report, told so with `--retrained=B` once the retraining has rows,
    takes the budget's rows at the doubled steps (its cells pending until they have every seed; "retrained"). The
    interp and rounds parts of such a budget train at the doubled steps too.
    "grid" with cells=extremes, middle or others: one share of that budget's grid, with the grid's steps: the
    doubling check's random extremes, the random cells between them (only budget 144 has one, 36 x 4), or fixed
    interval (and ual where the grid has it) at every allocation. The three shares hold the grid's points once, so
    that a budget's extremes, and with them its steps check, can be trained before the rest of its grid.
    "grid3d" at 144 or 288: the 3D subset, a base-8 3D U-Net on 32^3 patches (batch 2), fixed interval at 4 and 16
    slices per volume, interpolation off and on, CONVERGED_3D_STEPS steps; "recipe3d": its pilot, the same cells at
    budget 144 and the 3D reference, seed 0, 4,000 steps, validation Dice at 8 points; "reference3d": the 3D
    reference with 3 seeds, CONVERGED_3D_REFERENCE_STEPS steps.
  recipe: the converged study's pilot: the reference and budgets 36 and 288 at 1, 4 and 16 slices per volume,
    random, seeds 0-1, `recipe_steps` (4000) steps of batch 16 with a base-`recipe_features` (8) U-Net, validation
    Dice on all 20 validation volumes every 250 steps.

The first, undertrained study (docs/hippocampus_study/first_study.md; a base-8 2D U-Net, batch 16, seeds 0-4,
fewer budgets and steps than the default grid so that each part runs in about 90 minutes on 2 CPU cores):
  pilot: learning curves of the extreme allocations (budgets 36 and 144 at 1 and the most slices per volume,
    600 steps, validation Dice every 50 steps) that chose the study's step count.
  study2d: budgets 36 and 144 at 1, 4 and 16 slices per volume where they fit, random / fixed / ual, 5 seeds, and
    the reference.
  interp: the fixed-interval cells of study2d with more than one slice per volume, with mask interpolation.
  study3d: a 3D subset: budget 144 at 4 and 16 slices per volume, fixed interval, interpolation off and on, 32^3
    patches.
"""

from slicejax import config as config_lib

# The documented study's training steps (batch 16), chosen from the pilot's learning curves.
STUDY_STEPS = 300

# The converged study (docs/hippocampus_study/converged/): one recipe for every cell and the reference, chosen from
# the `recipe` pilot's learning curves; the steps grow with the budget (cells are compared only at equal budget).
CONVERGED = dict(features=16, batch_size=16, learning_rate=3e-3, warmup_steps=50, seeds=(0, 1, 2, 3, 4))
# Budget 72 trained 2,000 steps until its doubling check failed (the extremes' difference moved by +0.010 at 4,000
# steps; docs/hippocampus_study/converged/README.md, amendment of 2026-12-06): by the study's rule it trains again,
# twice as long, and the doubling check follows it to 8,000.
# Budget 144 was set at 3,000 from the pilot; raised to 4,000 on 2026-12-07, before any of its rows, since budget 72
# failed its check at 2,000 and passed at 4,000: no budget trains fewer steps than a smaller one needed.
CONVERGED_STEPS = {36: 1500, 72: 4000, 144: 4000, 288: 4000}
CONVERGED_REFERENCE_STEPS = 6000
CONVERGED_UAL_BUDGETS = (36, 144)  # ual at two budgets
CONVERGED_INTERP_BUDGETS = (72, 288)  # interpolation on against off at two budgets
CONVERGED_ROUND_BUDGETS = (36, 144)  # selection in rounds at the budgets where ual runs
# The schedule-doubling check: the extreme allocations of a budget (random, seeds 0-1) trained twice as long as the
# grid trains them; the steps are confirmed when the difference between the extremes moves by less than 0.005.
CONVERGED_DOUBLING = {36: (1, 4), 72: (1, 4), 144: (1, 16), 288: (4, 16)}
# Every budget's check is decided over the 5 study seeds, seeds 2-4 from `converged=doubling,budget=B,more=True`
# (the grid's rows give the study's side): with 2 seeds the movement's standard error (about 0.006) is as large as
# the tolerance. Amendments of 2026-12-06 (after budget 72's second check) and 2026-12-07 (every budget).
CONVERGED_DOUBLING_MORE = (2, 3, 4)
# Budgets whose 5-seed doubling check failed: they train again once at twice CONVERGED_STEPS (`converged=retrain`),
# and their interp and rounds parts train as long (`converged_steps`).
# Budget 36's 5-seed check moved +0.006 (2026-12-07): it trains again at 3,000 steps.
CONVERGED_RETRAINED = (36,)
# The 3D subset: a base-8 3D U-Net on 32^3 patches (batch 2), fixed interval at 4 and 16 slices per volume,
# interpolation off and on; its steps come from the `recipe3d` pilot's learning curves.
CONVERGED_3D = dict(features=8, patch=(32, 32, 32), batch_size=2, budgets=(144, 288), pilot_steps=4000)
CONVERGED_3D_STEPS = {144: 4000, 288: 4000}
CONVERGED_3D_REFERENCE_STEPS = 4000


def get_config(arg=""):
  arg = config_lib.parse_arg(arg, reference=False, reference3d=False, tiny=False, pilot=False, study2d=False,
                             interp=False, study3d=False, recipe=False, recipe_features=8, recipe_steps=4000,
                             converged="", budget=0, more=False, middle=False, cells="")
  config = config_lib.base()
  config.data.update(
      source="msd", slicing_axis=2, normalization="zscore", shape=(48, 64),
      root="data/Task04_Hippocampus", download_task="Task04_Hippocampus",
      missing_root_hint=("no data folder: run `python -m slicejax.download --task=Task04_Hippocampus --dest=data`, "
                         "or pass --config.data.root=PATH to a copy of Task04_Hippocampus"))
  config.data.split.update(train=180, val=20, test=60, seed=0)

  config.model.update(features=16, num_stages=4)
  config.train.update(steps=2000, batch_size=32, learning_rate=3e-3, warmup_steps=50, log_every=100)
  config.eval.batch_size = 128

  config.study.update(budgets=(36, 72, 144, 288), slices_per_volume=(1, 2, 4, 8, 16),
                      selections=("random", "fixed", "ual"), seeds=(0, 1, 2), reference=True, reference_seeds=(0,))
  config.model_axis.max_models = 8

  # 3D: the whole padded volume (at most 47 x 43 x 59) fits in two overlapping windows along W.
  config.three_d.update(features=8, num_stages=4, patch=(48, 48, 48), batch_size=2, foreground_prob=0.33,
                        overlap=0.5, eval_batch_size=2)

  if arg.reference:
    config.study.update(budgets=(), reference=True)
  if arg.reference3d:
    config.study.update(dims=(3,), budgets=(), reference=True)
    config.train.update(steps=2400, log_every=100)
  if arg.pilot or arg.study2d or arg.interp or arg.study3d:
    # A base-8 2D U-Net (about half the time of base 16 per step on 2 CPU cores) so that 5 seeds fit.
    config.model.features = 8
    config.train.update(steps=STUDY_STEPS, batch_size=16, log_every=50, checkpoint_every=100)
    config.study.update(budgets=(36, 144), slices_per_volume=(1, 4, 16), seeds=(0, 1, 2, 3, 4), reference=False)
    config.eval.update(curve_points=5, curve_volumes=8)
  if arg.pilot:
    config.train.steps = 600
    config.eval.curve_points = 12
    config.study.update(slices_per_volume=(1, 4, 16), selections=("random",), seeds=(0,))
  if arg.study2d:
    config.study.update(reference=True, reference_seeds=(0,))
  if arg.interp:
    config.study.update(slices_per_volume=(4, 16), selections=("fixed",), interpolation=(True,))
  if arg.study3d:
    config.study.update(dims=(3,), budgets=(144,), slices_per_volume=(4, 16), selections=("fixed",),
                        interpolation=(False, True))
    # 32^3 patches (about a third of the time of 48^3 per step here); whole volumes by sliding windows.
    config.three_d.patch = (32, 32, 32)
  if arg.recipe:
    # The converged study's recipe pilot: the fully annotated reference and the extreme allocations of the smallest
    # and largest budgets, two seeds, trained long with dense learning curves on every validation volume, so that
    # the steps each budget needs to reach its plateau can be read off.
    config.model.features = arg.recipe_features
    config.train.update(steps=arg.recipe_steps, batch_size=16, log_every=250, checkpoint_every=250)
    config.study.update(budgets=(36, 288), slices_per_volume=(1, 4, 16), selections=("random",), seeds=(0, 1),
                        reference=True, reference_seeds=(0,))
    config.eval.update(curve_points=arg.recipe_steps // 250, curve_volumes=20)
    config.model_axis.max_models = 2  # groups of a few minutes: a stop loses little
  if arg.converged:
    # One part of the converged study, each budget a launch of its own: "grid" (random and fixed, with ual at
    # CONVERGED_UAL_BUDGETS, rho 1, 4 and 16 where whole), "interp" (fixed interval with interpolation at
    # CONVERGED_INTERP_BUDGETS, rho 4 and 16; its "off" cells are the grid's), "rounds", "reference" (every slice,
    # 3 seeds), "doubling" (the steps check), and the 3D parts "grid3d", "recipe3d" and "reference3d" (the module
    # docstring says what each trains).
    if arg.converged not in ("grid", "interp", "rounds", "reference", "grid3d", "recipe3d", "doubling", "retrain",
                             "reference3d"):
      raise ValueError(f"converged must be grid, interp, rounds, reference, grid3d, recipe3d, reference3d, "
                       f"doubling or retrain, got {arg.converged!r}")
    if arg.more and arg.converged != "doubling":
      raise ValueError(f"more extends the doubling check only, got converged={arg.converged!r}")
    if arg.middle and arg.converged != "retrain":
      raise ValueError(f"middle is a part of retrain only, got converged={arg.converged!r}")
    if arg.converged in ("doubling", "retrain") and arg.budget not in CONVERGED_DOUBLING:
      raise ValueError(f"{arg.converged} runs at budgets {tuple(CONVERGED_DOUBLING)}, got {arg.budget}")
    if arg.cells and arg.converged != "grid":
      raise ValueError(f"cells splits the grid only, got converged={arg.converged!r}")
    if arg.cells and arg.cells not in ("extremes", "middle", "others"):
      raise ValueError(f"cells must be extremes, middle or others, got {arg.cells!r}")
    if arg.cells and arg.budget not in CONVERGED_DOUBLING:
      raise ValueError(f"cells runs at budgets {tuple(CONVERGED_DOUBLING)}, got {arg.budget}")
    if (arg.middle or arg.cells == "middle") and not _middle(arg.budget):
      raise ValueError(f"budget {arg.budget} has no random cell between its extremes "
                       f"{CONVERGED_DOUBLING[arg.budget]}")
    if arg.converged == "rounds" and arg.budget not in CONVERGED_ROUND_BUDGETS:
      raise ValueError(f"rounds runs at budgets {CONVERGED_ROUND_BUDGETS}, got {arg.budget}")
    _check_steps_grow(arg.budget if arg.converged in ("grid", "interp", "rounds", "doubling", "retrain") else None)
    config.model.features = CONVERGED["features"]
    if arg.converged == "reference":
      steps = CONVERGED_REFERENCE_STEPS
    elif arg.converged == "recipe3d":
      steps = CONVERGED_3D["pilot_steps"]
    elif arg.converged == "reference3d":
      steps = CONVERGED_3D_REFERENCE_STEPS
    elif arg.converged == "grid3d":
      steps = CONVERGED_3D_STEPS.get(arg.budget)
    elif arg.converged == "grid":
      steps = CONVERGED_STEPS.get(arg.budget)
    else:
      steps = converged_steps(arg.budget, check=arg.converged in ("doubling", "retrain"))
    if steps is None:
      known = sorted(CONVERGED_3D_STEPS if arg.converged == "grid3d" else CONVERGED_STEPS)
      raise ValueError(f"budget must be one of {known}, got {arg.budget}")
    config.train.update(steps=steps, batch_size=CONVERGED["batch_size"], learning_rate=CONVERGED["learning_rate"],
                        warmup_steps=CONVERGED["warmup_steps"], log_every=100, checkpoint_every=250)
    config.eval.update(curve_points=8, curve_volumes=20)
    config.model_axis.max_models = 2  # groups of minutes: a stop loses little
    config.study.update(seeds=CONVERGED["seeds"], slices_per_volume=(1, 4, 16), reference=False)
    if arg.converged == "grid" and arg.cells:
      config.study.update(budgets=(arg.budget,), **_grid_cells(arg.budget, arg.cells))
    elif arg.converged == "grid":
      config.study.update(budgets=(arg.budget,), selections=("random", "fixed") + (
          ("ual",) if arg.budget in CONVERGED_UAL_BUDGETS else ()))
    elif arg.converged == "doubling":
      config.study.update(budgets=(arg.budget,), slices_per_volume=CONVERGED_DOUBLING[arg.budget],
                          selections=("random",), seeds=CONVERGED_DOUBLING_MORE if arg.more else (0, 1))
    elif arg.converged == "retrain":
      config.study.update(budgets=(arg.budget,), **_grid_cells(arg.budget, "middle" if arg.middle else "others"))
    elif arg.converged == "rounds":
      config.study.update(budgets=(arg.budget,), slices_per_volume=(4,),
                          selections=("entropy", "ensemble", "hybrid", "passive"), rounds=(2,),
                          round_allocation=("fixed",))
      config.rounds.update(first_selection="fixed", first_share=0.5, warm_start=False, members=4,
                           final_members=False)
    elif arg.converged == "reference3d":
      config.study.update(dims=(3,), budgets=(), reference=True, reference_seeds=(0, 1, 2))
      config.three_d.update(features=CONVERGED_3D["features"], patch=CONVERGED_3D["patch"],
                            batch_size=CONVERGED_3D["batch_size"])
    elif arg.converged in ("grid3d", "recipe3d"):
      config.study.update(dims=(3,), budgets=(arg.budget,) if arg.converged == "grid3d" else (144,),
                          slices_per_volume=(4, 16), selections=("fixed",), interpolation=(False, True))
      if arg.converged == "recipe3d":
        # Learning curves of the 3D cells at one budget and the 3D reference, one seed, along a long schedule.
        config.study.update(seeds=(0,), reference=True, reference_seeds=(0,))
        config.eval.update(curve_points=steps // 500)
      config.three_d.update(features=CONVERGED_3D["features"], patch=CONVERGED_3D["patch"],
                            batch_size=CONVERGED_3D["batch_size"])
    elif arg.converged == "interp":
      config.study.update(budgets=(arg.budget,), slices_per_volume=(4, 16), selections=("fixed",),
                          interpolation=(True,))
    else:
      config.study.update(budgets=(), reference=True, reference_seeds=(0, 1, 2))
  if arg.tiny:
    config.data.split.update(train=6, val=1, test=2)
    config.model.update(features=4, num_stages=2)
    config.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    config.study.update(budgets=(6,), slices_per_volume=(1, 2), selections=("fixed",), seeds=(0,))
    config.eval.batch_size = 16
    config.model_axis.chunk = 1  # runs this short are mostly compilation: one program of one model
  config.lock()
  return config


def converged_steps(budget: int, check: bool = False):
  """The training steps of the 2D parts at `budget` after its doubling check: CONVERGED_STEPS, twice that for a
  budget in CONVERGED_RETRAINED or for the check itself (`check`); None for a budget not in the study."""
  steps = CONVERGED_STEPS.get(budget)
  return None if steps is None else steps * (2 if check or budget in CONVERGED_RETRAINED else 1)


def _check_steps_grow(budget) -> None:
  """No 2D budget trains fewer steps than a smaller one needed (`converged_steps`, after the smaller one's check):
  a part at `budget` (None: not a 2D budget's part) is refused until CONVERGED_STEPS says so."""
  if budget not in CONVERGED_STEPS:
    return
  for smaller in sorted(b for b in CONVERGED_STEPS if b < budget):
    if converged_steps(smaller) > converged_steps(budget):
      raise ValueError(f"budget {budget} trains {converged_steps(budget)} steps, fewer than budget {smaller}'s "
                       f"{converged_steps(smaller)}: raise CONVERGED_STEPS[{budget}] first (no budget trains fewer "
                       "steps than a smaller one needed)")


def _grid_cells(budget: int, cells: str) -> dict:
  """The `study` keys of one share of budget `budget`'s grid: "extremes", its doubling check's random extremes
  (CONVERGED_DOUBLING); "middle", the random cells between them; "others", fixed interval (and ual where the grid has
  it) at every allocation. The three hold every point of the grid once."""
  if cells == "extremes":
    return {"selections": ("random",), "slices_per_volume": CONVERGED_DOUBLING[budget]}
  if cells == "middle":
    return {"selections": ("random",), "slices_per_volume": _middle(budget)}
  return {"selections": ("fixed",) + (("ual",) if budget in CONVERGED_UAL_BUDGETS else ())}


def _middle(budget: int) -> tuple:
  """The grid's slices per volume at `budget` between the doubling check's extremes (random there is `retrain`'s
  with middle=True)."""
  low, high = CONVERGED_DOUBLING.get(budget, (1, 1))
  return tuple(rho for rho in (1, 4, 16) if low < rho < high and budget % rho == 0)


# The parts of the converged study whose rows make its document (the doubling checks and the pilots check the recipe
# and make no cell of it), as `converged=PART` arguments.
CONVERGED_PARTS = ("grid,budget=36", "grid,budget=72", "grid,budget=144", "grid,budget=288", "interp,budget=72",
                   "interp,budget=288", "reference", "grid3d,budget=144", "grid3d,budget=288", "reference3d",
                   "rounds,budget=36", "rounds,budget=144")
POOL_MIN_DEPTH = 24  # the fewest slices along axis 2 of a Task04 volume: every rho of the study fits every volume


def converged_families() -> dict:
  """{Holm family: planned comparisons} of the whole converged study: its parts' points (`CONVERGED_PARTS`, on a pool
  of the split's size) through the report's own comparison rules (`grid_family_sizes`). The study's document passes
  them to the report (`--families=docs/hippocampus_study/converged/families.json`) while parts are still running, so
  that an interim verdict stays when the rest of its family arrives."""
  from slicejax.report import comparisons  # pylint: disable=g-import-not-at-top
  from slicejax.study import grid  # pylint: disable=g-import-not-at-top
  points = []
  for part in CONVERGED_PARTS:
    config = get_config(f"converged={part}")
    points += grid.expand(config.study, {f"case_{i}": POOL_MIN_DEPTH for i in range(config.data.split.train)})
  return comparisons.grid_family_sizes(points)
