"""Every config key with its default, as plain data: no JAX, no other library than ml_collections.

Every experiment config in `configs/` starts from `base()` and changes what its dataset needs, so every key exists
in every config and a misspelt `--config.key=value` fails (configs are locked). Defaults where the study is silent
are documented in README.md and docs/statistics.md.

A module that owns a default or a set of choices (the augmentation's settings, the streamed input's pipelines, the
model axis's strategies, ...) reads it from here, so that a config, and `launch.py --check`'s config stage, load
without importing that module.
"""

import ml_collections

# Choices owned by other modules; they read them from here.
NORMALIZATIONS = ("zscore", "ct")  # `slicejax.data.normalize`
CHANNEL_NAMES = ("T2", "ADC")  # the phantom's channels (`slicejax.data.phantom`)
PIPELINES = ("auto", "bank", "stream")  # `slicejax.training.inputs.stream`
STREAM_SOURCES = ("volumes", "store", "tfds")  # `slicejax.training.inputs.stream.open_store`
STRATEGIES = ("vmap", "loop", "sequential", "mesh")  # `slicejax.training.parallel`
UAL_METHODS = ("kmeans", "kcenter", "typiclust")  # `slicejax.study.selection.ual`
# The selection strategies, the modules of `slicejax.study.selection` (a test holds the two together), and those that
# choose in rounds (their module's `MODEL_BASED`), with a trained model but for the control `passive`.
SELECTIONS = ("annotated", "ensemble", "entropy", "fixed", "hybrid", "passive", "random", "ual")
MODEL_BASED_SELECTIONS = ("ensemble", "entropy", "hybrid", "passive")
# Defaults of the config keys `stats.*` (`slicejax.report.statistics`); the report reads the run's own values.
STATS = {"alpha": 0.05, "margin": 0.02, "min_seeds": 3, "power": 0.8, "plateau_tolerance": 0.005,
         "max_improving_share": 0.1, "steps_tolerance": 0.005, "steps_seeds": 2}


def augment_config() -> ml_collections.ConfigDict:
  """The `train.augment` block (`slicejax.training.inputs.augment`)."""
  return ml_collections.ConfigDict(dict(
      flip_prob=0.5,             # per spatial axis of the slice plane
      affine_prob=0.3,           # per example: probability of an in-plane rotation and scaling
      rotate_degrees=15.0,       # maximum in-plane rotation
      scale_range=(0.85, 1.15),  # in-plane zoom; the slicing axis is never scaled
      intensity_scale=0.1,       # image * U[1 - s, 1 + s]
      intensity_shift=0.1,       # image + U[-s, s] (in z-score units)
  ))


def encoder_config() -> ml_collections.ConfigDict:
  """The `ual.encoder` block (`slicejax.study.encoder`): settings sized for the hippocampus pool (6,417 slices of
  48 x 64) on a 2-core CPU.

  Measured with `bench/encoder.py`: 56 s training + 2 s embedding on a shared 2-core CPU. On that pool the
  embeddings' 10 nearest slices from other volumes predict whether a slice shows hippocampus with 90% accuracy
  (random-init encoder 77%, majority class 71%) and its relative depth with mean error 0.04 (random-init 0.12);
  1,000 steps improve these only to 91% and 0.035.
  """
  config = ml_collections.ConfigDict()
  config.features = (16, 32, 64)  # Channels per stage; every stage halves H and W.
  config.convs_per_stage = 2
  config.norm_groups = 8
  config.embedding_dim = 64  # F of the returned embeddings.
  config.projection_dim = 64
  config.steps = 400
  config.batch_size = 64  # Slices per step; the loss sees 2 views of each.
  config.learning_rate = 2e-3  # Peak of a cosine decay to 0 over `steps`.
  config.temperature = 0.2
  config.log_every = 50

  config.augment = ml_collections.ConfigDict()
  config.augment.crop_min_area = 0.5  # Crop area as a fraction of the slice, drawn from [crop_min_area, 1].
  config.augment.crop_max_aspect = 4 / 3  # Crop aspect ratio drawn log-uniformly from [1 / max, max].
  config.augment.rotation_degrees = 10.0  # Uniform in [-r, r].
  config.augment.flip_lr_prob = 0.5
  config.augment.flip_ud_prob = 0.0
  config.augment.intensity_scale = 0.2  # Multiply by 1 + U(-s, s).
  config.augment.intensity_shift = 0.2  # Add U(-s, s) (in z-score units).
  config.augment.gamma = 0.3  # Gamma exp(U(-g, g)) on the slice's min-max range.
  config.augment.blur_prob = 0.5
  config.augment.blur_sigma_max = 1.0  # Sigma drawn from U(0.1, max) pixels.
  config.augment.noise_std = 0.1  # Noise std drawn from U(0, max) (z-score units).
  return config


def ual_options() -> ml_collections.ConfigDict:
  """The `ual` block of an experiment config (`slicejax.study.selection.ual`)."""
  options = ml_collections.ConfigDict()
  options.method = "kmeans"
  options.kmeans_iterations = 100  # Lloyd iterations per run; stops earlier when the centroids settle.
  options.kmeans_inits = 4  # k-means++ restarts; the lowest inertia wins.
  options.typiclust_neighbors = 20  # As in TypiClust; capped at the cluster size - 1.
  options.select_volumes = False  # Choose the s volumes by k-means on volume embeddings instead of at random.
  return options


def base() -> ml_collections.ConfigDict:
  """All keys with their defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # base of every model's initialisation and data stream; the sweep's `seeds` vary plans and streams.

  c.data = ml_collections.ConfigDict(dict(
      source="msd",             # "msd": an MSD-layout folder at `root`; "phantom": generated once into the cache
      root="",
      missing_root_hint="",     # said when `root` is empty: how to get the data
      download_task="",         # the MSD task (e.g. "Task05_Prostate") that `python -m slicejax.download` fetches
                                # into `root`: a missing `root` names that command
      slicing_axis=2,           # NIfTI axis along which slices are annotated
      normalization="zscore",   # "zscore" per volume and channel, "ct" (clip to ct_window, scale to [-1, 1]), or
                                # per channel, comma-separated: "zscore", "ct" or "ct:LO:HI:MEAN:STD" (slicejax.data)
      ct_window=(-1000.0, 1000.0),
      shape=(),                 # static in-plane (H, W); () = smallest that holds every volume
      target_spacing=(),        # resample to (sX, sY, sZ) mm, NIfTI axes (0 keeps an axis); () = the files' grid
      fingerprint=False,        # settings derived from the dataset's fingerprint (slicejax.data.fingerprint.bind)
      cache_dir="",             # cache of preprocessed volumes, the phantom and UAL encoders; "" = the user cache
      pipeline="auto",          # 2D training input: "bank" (the group's slices on the device), "stream" (read from a
                                # slice store on the disk, prefetched) or "auto": the bank when it fits
                                # memory_budget_gb (slicejax.training.inputs.stream); 3D groups always use the bank
      memory_budget_gb=0.0,     # largest bank kept on the device; 0 = a quarter of the device's (CPU: host) memory
      prefetch=2,               # "stream": steps read ahead
      stream_source="volumes",  # "stream" reads the preprocessed volumes where they are ("volumes": the cache
                                # entries, mapped), a slice store written into the cache ("store") or the folder's
                                # TFDS array_record dataset through grain ("tfds", the tfds extra;
                                # slicejax.training.inputs.tfds)
      split=dict(train=180, val=20, test=60, seed=0),  # cases; train 0 = every case left after val and test
      phantom=dict(num_cases=60, shape=(40, 40, 24), num_channels=1, seed=0),
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="unet", features=16, max_features=256, num_stages=4, norm="instance", upsample="resize",
      dtype="auto",             # "bfloat16" convolutions, activations and device images (parameters, optimiser,
                                # norm statistics, logits and losses stay float32) or "float32"; "auto": bfloat16 on
                                # GPU and TPU, float32 on CPU (slicejax.training.precision)
  ))

  # 3D models (points with dims 3): their network size, training patches and sliding-window inference.
  c.three_d = ml_collections.ConfigDict(dict(
      features=16, num_stages=4,
      kernel_sizes=(),          # per stage, e.g. ((1, 3, 3), (3, 3, 3), ...); () = 3 everywhere
      strides=(),               # per downsampling, e.g. ((1, 2, 2), (2, 2, 2), ...); () = 2 everywhere
      patch=(32, 48, 48),       # (D, H, W) training patch and inference window
      batch_size=2,
      foreground_prob=0.33,     # patches centred on foreground of their annotated plane
      overlap=0.5,              # sliding-window overlap
      eval_batch_size=4,        # windows per inference call
      conv_impl="auto",         # "3d" native convolutions, "2d" as 2D convolutions over depth-stacked planes,
                                # "auto": "2d" on CPU (several times faster on XLA:CPU), "3d" elsewhere
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, learning_rate=3e-3, warmup_steps=50, final_lr_fraction=0.01, weight_decay=1e-4,
      grad_clip=1.0, ce_weight=1.0, dice_weight=1.0, log_every=50, checkpoint_every=500,
      augment=augment_config()))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64,
      surface_metrics=True,     # HD95 and normalised surface Dice per test volume and class (evaluation.metrics)
      nsd_tolerance_mm=1.0,     # normalised surface Dice tolerance
      curve_points=5,           # validation Dice this many times during training (evenly spaced, the last at the
                                # end), for learning curves; 0 = never
      curve_volumes=8,          # on the first this many validation volumes (a fixed subset)
  ))

  c.study = ml_collections.ConfigDict(dict(
      dims=(2,),
      budgets=(36, 72, 144, 288),
      slices_per_volume=(1, 2, 4, 8, 16),
      selections=("random", "fixed"),
      interpolation=(False,),
      seeds=(0, 1, 2),
      reference=True,           # also train the fully annotated reference
      reference_seeds=(0,),
      reference_steps=0,        # the reference's training steps; 0 = train.steps. It sees every slice, so it may
                                # need more steps than the sparse cells to converge; it then trains in a group of its
                                # own (cells are compared with each other at equal steps, never with the reference)
      roi=(),                   # () = every slice is a candidate; (lo, hi) fractions of the depth narrow it
      rounds=(3,),              # rounds of the model-based selections (entropy, ensemble, hybrid;
                                # slicejax.training.rounds)
      round_allocation=("fixed",),  # their allocation rule: "fixed" keeps s x rho, "free" also chooses volumes
      round_budgets=(),         # the budgets and slices per volume at which they run; () = every one of the grid
      round_slices_per_volume=(),
      # The 3D points' grid, where it differs: an empty entry takes the value above.
      three_d=dict(budgets=(), slices_per_volume=(), selections=(), interpolation=(), seeds=(), reference=(),
                   reference_seeds=()),
  ))

  # Mask interpolation between annotated slices, for points with `interpolation: True`.
  c.interpolation = ml_collections.ConfigDict(dict(
      weight=1.0,               # loss weight of interpolated voxels (annotated voxels weigh 1)
      align_centroids=False,    # move each mask with its centroid before interpolating distances
  ))

  # Unsupervised active learning: the `ual` selection's options, and the self-supervised slice encoder it uses.
  c.ual = ual_options()
  c.ual.seed = 0
  c.ual.encoder = encoder_config()

  # Selection in rounds (slicejax.training.rounds): round 0 annotates `first_share` of every volume's slices with the
  # one-shot `first_selection`, then each round trains, scores the unannotated slices with the round's models and
  # adds more.
  c.rounds = ml_collections.ConfigDict(dict(
      first_selection="fixed",  # round 0's one-shot selection: random, fixed or ual
      first_share=0.5,          # share of each volume's rho slices annotated in round 0 (half up; at least 1)
      warm_start=False,         # a round starts from the previous round's parameters (fresh optimiser); False:
                                # every round trains from the same initialisation
      members=4,                # `ensemble`: K models of different seeds trained together on the model axis
      final_members=True,       # the last round trains the members too (for a next `plan` with selection=ensemble);
                                # False: only each point's own model, the row's (members serve only to choose)
      foreground=False,         # weigh each pixel's uncertainty by its predicted foreground probability
      hybrid_candidates=4,      # `hybrid`: k-center among the `hybrid_candidates` x n most uncertain slices
  ))

  # Annotation cost model of the report (slicejax.report): seconds to open and orient a volume, per slice, and per
  # 1,000 foreground pixels of an annotated slice (`seconds_per_kilopixel`; 0 leaves the foreground out).
  # The defaults make the cost the slice budget.
  c.cost = ml_collections.ConfigDict(dict(seconds_per_volume=0.0, seconds_per_slice=1.0, seconds_per_kilopixel=0.0))

  # The report's statistics (slicejax.report.statistics, docs/statistics.md): test level, equivalence margin in Dice,
  # fewest seeds for a verdict, power for the seeds needed, the trust gate's plateau tolerance and share of cells
  # allowed to be still improving, and the steps check's tolerance (the steps stand when the difference between the
  # re-trained extremes moves by less than this at more steps). `pilot`: a finished run folder whose rows give the
  # seeds each family needs; --check warns when the grid has fewer.
  c.stats = ml_collections.ConfigDict(dict(STATS, pilot=""))

  c.model_axis = ml_collections.ConfigDict(dict(
      strategy="auto",          # "auto" (mesh on several devices, else the fastest for the backend), "mesh",
                                # "vmap", "loop" or "sequential"
      mesh=(),                  # mesh strategy: (model, data) axis sizes; () = every device on the model axis
      max_models=8,             # models trained together; larger groups are split; 0 = as many as memory allows
                                # (from the compiled step's memory analysis, at most 64)
      chunk=4,                  # loop strategy: models per compiled program
  ))
  return c


# ---------------------------------------------------------------------------------------------------------------------
# Annotation plans, prediction and nnU-Net export (`launch.py --mode=plan|predict|export`): their own blocks, added by
# their configs (configs/plan.py, configs/predict.py, configs/export.py), so that a study's config is unchanged.
# ---------------------------------------------------------------------------------------------------------------------

def plan_block() -> ml_collections.ConfigDict:
  """The `plan` block of configs/plan.py (`slicejax.modes.plan`)."""
  return ml_collections.ConfigDict(dict(
      budget=32,                # B: slices to annotate in all
      volumes=16,               # s: volumes to annotate (rho = B / s slices each)
      selection="fixed",        # a module of slicejax/study/selection/ (random, fixed, ual; with `model`: entropy,
                                # ensemble, hybrid)
      seed=0,                   # which volumes, and the slices of random/fixed
      roi=(),                   # () or (lo, hi) fractions of the depth that bound the candidate slices
      from_study="",            # a finished study's workdir: take s, rho and the selection of its best cell at B
      dims=0,                   # with from_study: only cells of 2D or 3D models; 0 = any
      classes=(),               # class names, background first, for folders without a dataset.json 'labels'
      sheet_tiles=64,           # slices per contact sheet image
      # The next round's worklist (slicejax.modes.worklist): a trained model chooses among the slices not yet
      # annotated.
      model="",                 # a trained run's workdir; set, `selection` is entropy, ensemble or hybrid
      point="",                 # its point, when it trained several
      annotated="",             # a folder of label files <case>.nii.gz with the ignore value where nothing is annotated
      previous="",              # and/or a previous plan's workdir, whose slices count as annotated
      free=False,               # choose the budget anywhere (new volumes may open); False: budget / s per annotated
                                # volume
      batch_size=0,             # slices per prediction call; 0 = the model's eval settings
  ))


def predict_block() -> ml_collections.ConfigDict:
  """The `predict` block of configs/predict.py (`slicejax.modes.predict`)."""
  return ml_collections.ConfigDict(dict(
      model="",                 # a workdir that trained the model (a sparse training run, or a study)
      point="",                 # the point's name (plans/<point>.json) when the workdir trained several
      input="",                 # images: an MSD / nnU-Net v2 raw folder, or a folder of .nii.gz files
      probabilities=False,      # also write <case>_probabilities.nii.gz, [X, Y, Z, K] float32 softmax
      batch_size=0,             # slices (2D) or windows (3D) per call; 0 = the model's eval settings
  ))


def export_block() -> ml_collections.ConfigDict:
  """The `export` block of configs/export.py (`slicejax.modes.export`)."""
  return ml_collections.ConfigDict(dict(
      plan="",                  # a plan workdir (slicejax.modes.plan) ...
      annotations="",           # ... and the folder of its filled label files <case>.nii.gz ("" = its templates/)
      study="",                 # or a study workdir ...
      point="",                 # ... and one of its points: its plan's slices of the true labels
      verify=False,             # run nnU-Net v2's own integrity check on the result (needs the `nnunet` extra)
  ))
