"""Unsupervised active learning (UAL): pick the slices of a volume that best represent it in embedding space.

Conventions:
  * `embeddings` are `[num_slices, F]`, one row per candidate slice of one volume, in slice order (from
    `slicejax.study.encoder.slice_embeddings`, L2-normalised, though nothing here needs that).
  * Distances are Euclidean. Every method is deterministic given the numpy Generator's state, and ties go to the
    lowest slice index.
  * `select` returns sorted, distinct int64 slice indices, exactly `rho` of them.

Methods (`options.method`):
  * "kmeans" (default): k-means with k = rho (greedy k-means++ initialisation drawn from `rng`, the best of
    `options.kmeans_inits` runs by inertia), then the slices nearest the centroids, matched one-to-one by a minimum
    total distance assignment so that two centroids never claim the same slice.
  * "kcenter": k-center greedy. Start from the slice nearest the volume's mean embedding, then repeatedly add the
    slice farthest from all picked ones (covers outliers; ignores `rng`).
  * "typiclust": TypiClust (Hacohen et al., 2022). k-means into rho clusters, then in each cluster its most typical
    slice: the highest inverse mean distance to its `options.typiclust_neighbors` nearest neighbours in the cluster.

`select_volumes` applies the k-means pick to volume-level embeddings (the mean of a volume's slice embeddings)
to choose which volumes to annotate. The study's default picks volumes at random; this is
the option a config turns on with `select_volumes`. Unlike the random pick, its subsets are not nested across s.
"""

from typing import Optional

import ml_collections
import numpy as np
from scipy import optimize

from slicejax.config import defaults
from slicejax.config.defaults import ual_options as default_options  # the `ual` block
from slicejax.errors import InputError

NEEDS_EMBEDDINGS = True

METHODS = defaults.UAL_METHODS


def _option(options, name: str):
  if options is not None and name in options:
    return options[name]
  return default_options()[name]


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`[A, B]` squared Euclidean distances between rows of `a` `[A, F]` and `b` `[B, F]`."""
  d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
  return np.maximum(d, 0.0)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """Greedy k-means++ seeding: `[k]` distinct row indices of `x`.

  Each next seed is the best (lowest summed D^2) of 2 + log(k) candidates drawn with probability ~ D^2, as in
  scikit-learn; plain k-means++ too often puts two seeds in one large run of similar slices and none in a short one.
  """
  n = x.shape[0]
  trials = 2 + int(np.log(k))
  chosen = [int(rng.integers(n))]
  nearest = _squared_distances(x, x[chosen])[:, 0]
  for _ in range(k - 1):
    weights = nearest.copy()
    weights[chosen] = 0.0
    if weights.sum() <= 0:
      # Every remaining row coincides with a chosen one: any unchosen row is as good as another.
      weights = np.ones(n)
      weights[chosen] = 0.0
    candidates = rng.choice(n, size=trials, p=weights / weights.sum())
    potentials = np.minimum(nearest[None, :], _squared_distances(x[candidates], x))
    best = int(potentials.sum(1).argmin())
    chosen.append(int(candidates[best]))
    nearest = potentials[best]
  return np.asarray(chosen)


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Nearest-centroid labels `[N]`, with no cluster left empty (k <= N).

  An empty cluster takes the point farthest from its own centroid among clusters that can spare one, which is what
  keeps exactly k clusters when points coincide or a centroid is stranded.
  """
  k = centroids.shape[0]
  distances = _squared_distances(x, centroids)
  labels = distances.argmin(1)
  counts = np.bincount(labels, minlength=k)
  for cluster in np.flatnonzero(counts == 0):
    spare = counts[labels] > 1
    own = np.where(spare, distances[np.arange(len(labels)), labels], -np.inf)
    point = int(own.argmax())
    counts[labels[point]] -= 1
    labels[point] = cluster
    counts[cluster] = 1
  return labels


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 100,
           inits: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding, best of `inits` runs.

  Args:
    x: `[N, F]` points, N >= k >= 1.
    k: number of clusters.
    rng: numpy Generator; the only source of randomness.
    iterations: Lloyd iterations per run at most.
    inits: independent seedings; the run with the lowest inertia is kept (the first on ties).

  Returns:
    `(centroids [k, F], labels [N])`; every cluster has at least one point.
  """
  x = np.asarray(x, np.float64)
  best = None
  for _ in range(inits):
    centroids = x[_kmeans_plus_plus(x, k, rng)]
    for _ in range(iterations):
      labels = _assign(x, centroids)
      one_hot = labels[:, None] == np.arange(k)[None, :]
      updated = (one_hot.T @ x) / one_hot.sum(0)[:, None]
      converged = np.array_equal(updated, centroids)
      centroids = updated
      if converged:
        break
    labels = _assign(x, centroids)
    inertia = _squared_distances(x, centroids)[np.arange(x.shape[0]), labels].sum()
    if best is None or inertia < best[0]:
      best = (inertia, centroids, labels)
  return best[1], best[2]


def _nearest_distinct(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """`[k]` distinct rows of `x`, one per centroid, minimising the summed distance (Hungarian assignment)."""
  _, rows = optimize.linear_sum_assignment(_squared_distances(centroids, x))
  return rows


def _kcenter(x: np.ndarray, k: int) -> np.ndarray:
  x = np.asarray(x, np.float64)
  first = int(_squared_distances(x, x.mean(0, keepdims=True))[:, 0].argmin())
  picked = [first]
  nearest = _squared_distances(x, x[picked])[:, 0]
  for _ in range(k - 1):
    nearest[picked] = -np.inf  # Never pick a slice twice, even when embeddings coincide.
    picked.append(int(nearest.argmax()))
    nearest = np.minimum(nearest, _squared_distances(x, x[picked[-1:]])[:, 0])
  return np.asarray(picked)


def _typiclust(x: np.ndarray, k: int, rng: np.random.Generator, options) -> np.ndarray:
  x = np.asarray(x, np.float64)
  _, labels = kmeans(x, k, rng, _option(options, "kmeans_iterations"), _option(options, "kmeans_inits"))
  picked = []
  for cluster in range(k):
    members = np.flatnonzero(labels == cluster)
    neighbours = min(int(_option(options, "typiclust_neighbors")), members.size - 1)
    if neighbours < 1:
      picked.append(int(members[0]))
      continue
    distances = np.sqrt(_squared_distances(x[members], x[members]))
    np.fill_diagonal(distances, np.inf)
    mean_knn = np.sort(distances, axis=1)[:, :neighbours].mean(1)
    picked.append(int(members[(1.0 / (mean_knn + 1e-12)).argmax()]))
  return np.asarray(picked)


def select(num_slices: int, rho: int, rng: np.random.Generator, *, embeddings=None,
           options: Optional[ml_collections.ConfigDict] = None) -> np.ndarray:
  """Chooses rho representative slices of one volume from their embeddings.

  Args:
    num_slices: candidate slices in the volume.
    rho: slices to choose, 1 <= rho <= num_slices.
    rng: numpy Generator (k-means++ seeding).
    embeddings: `[num_slices, F]` slice embeddings.
    options: the `ual` config block (see `default_options`); None means the defaults.

  Returns:
    `[rho]` sorted distinct int64 slice indices in [0, num_slices).
  """
  if rho < 1 or rho > num_slices:
    raise InputError("rho", f"need 1 <= rho <= {num_slices} slices, got {rho}")
  if embeddings is None:
    raise InputError("embeddings", "ual selection needs the volume's slice embeddings")
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2 or embeddings.shape[0] != num_slices:
    raise InputError("embeddings", f"expected [{num_slices}, F], got shape {embeddings.shape}")
  if not np.isfinite(embeddings).all():
    raise InputError("embeddings", "contains NaN or infinite values")
  method = _option(options, "method")
  if method not in METHODS:
    raise InputError("ual.method", f"unknown method {method!r}; expected one of {', '.join(METHODS)}")

  if rho == num_slices:
    return np.arange(num_slices, dtype=np.int64)
  if method == "kmeans":
    centroids, _ = kmeans(embeddings, rho, rng, _option(options, "kmeans_iterations"), _option(options, "kmeans_inits"))
    picked = _nearest_distinct(np.asarray(embeddings, np.float64), centroids)
  elif method == "kcenter":
    picked = _kcenter(embeddings, rho)
  else:
    picked = _typiclust(embeddings, rho, rng, options)
  return np.sort(np.asarray(picked, np.int64))


def select_volumes(volume_embeddings: dict, s: int, rng: np.random.Generator,
                   options: Optional[ml_collections.ConfigDict] = None) -> list:
  """Chooses s representative volumes: k-means (k = s) over volume embeddings, the volume nearest each centroid.

  Args:
    volume_embeddings: case_id -> `[F]` volume embedding (the mean of its slice embeddings).
    s: volumes to choose, 1 <= s <= number of volumes.
    rng: numpy Generator (k-means++ seeding).
    options: the `ual` config block; `kmeans_iterations` and `kmeans_inits` apply.

  Returns:
    The chosen case ids, sorted.
  """
  case_ids = sorted(volume_embeddings)
  if s < 1 or s > len(case_ids):
    raise InputError("s", f"need 1 <= s <= {len(case_ids)} volumes, got {s}")
  shapes = {np.shape(volume_embeddings[c]) for c in case_ids}
  if len(shapes) != 1 or len(next(iter(shapes))) != 1:
    raise InputError("volume_embeddings", f"expected [F] vectors of one length, got shapes {sorted(shapes)}")
  x = np.stack([np.asarray(volume_embeddings[c], np.float64) for c in case_ids])
  if not np.isfinite(x).all():
    raise InputError("volume_embeddings", "contains NaN or infinite values")
  if s == len(case_ids):
    return case_ids
  centroids, _ = kmeans(x, s, rng, _option(options, "kmeans_iterations"), _option(options, "kmeans_inits"))
  return sorted(case_ids[i] for i in _nearest_distinct(x, centroids))
