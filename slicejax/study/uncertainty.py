"""Slice scores from a model's (or an ensemble's) softmax, and picking the next slices by them, for the
model-based selections (`slicejax.study.selection.entropy`, `ensemble`, `hybrid`; `slicejax.training.rounds`).

Conventions:
  * `probs` are softmax probabilities `[E, D, H, W, K]` of E models (one, or an ensemble's members) for the D slices
    of one volume fitted to the trained in-plane shape; `valid [D, H, W]` marks the pixels that hold the volume
    (`padding.fit_to_shape`), so padding never scores. Nothing here sees a label.
  * A slice's score is a mean over its valid pixels of a per-pixel uncertainty in nats. With `foreground` each
    pixel's uncertainty is weighted by its predicted foreground probability (1 - p(background), the ensemble's mean
    for several models), so that a slice of confident background scores low however noisy its edges.
  * Picks are deterministic: the highest score first, ties to the lowest slice index.
"""

import numpy as np


def _entropy(p: np.ndarray) -> np.ndarray:
  """Entropy in nats over the last axis; 0 log 0 = 0."""
  p = np.asarray(p, np.float64)
  return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def _weights(mean_probs: np.ndarray, valid: np.ndarray, foreground: bool) -> np.ndarray:
  return valid * (1.0 - mean_probs[..., 0]) if foreground else valid.astype(np.float64)


def entropy(probs: np.ndarray, valid: np.ndarray, foreground: bool = False) -> np.ndarray:
  """`[D]` mean predictive entropy of each slice under the first model, `probs [E, D, H, W, K]`."""
  p = np.asarray(probs[0], np.float64)
  return _mean_over_valid(_entropy(p), _weights(p, valid, foreground), valid)


def disagreement(probs: np.ndarray, valid: np.ndarray, foreground: bool = False) -> np.ndarray:
  """`[D]` mean mutual information between the prediction and the model (BALD): per pixel the entropy of the
  members' mean softmax minus the members' mean entropy, `probs [E, D, H, W, K]` with E >= 2. It is 0 where the
  members agree, however uncertain they all are."""
  p = np.asarray(probs, np.float64)
  mean = p.mean(0)
  information = np.maximum(_entropy(mean) - _entropy(p).mean(0), 0.0)
  return _mean_over_valid(information, _weights(mean, valid, foreground), valid)


def _mean_over_valid(values: np.ndarray, weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
  return (values * weights).sum(axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)), 1)


def foreground_pixels(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """`[D]` int64: valid pixels whose most probable class (the members' mean) is not the background."""
  mean = np.asarray(probs, np.float64).mean(0)
  return ((mean.argmax(-1) != 0) & valid).sum(axis=(1, 2)).astype(np.int64)


def top(scores: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
  """The `n` candidates (indices into `scores`) of highest score, sorted; ties to the lowest index."""
  candidates = np.asarray(candidates, np.int64)
  order = np.lexsort((candidates, -np.asarray(scores, np.float64)[candidates]))
  return np.sort(candidates[order[:n]])


def farthest_first(features: np.ndarray, candidates: np.ndarray, annotated: np.ndarray, n: int) -> np.ndarray:
  """k-center greedy: `n` of `candidates` (rows of `features [N, F]`), each the farthest (Euclidean) from the
  annotated rows and those already picked; without annotated rows the first is the candidate nearest the candidates'
  mean. Ties to the earliest candidate. Returns sorted indices."""
  features = np.asarray(features, np.float64)
  candidates = np.asarray(candidates, np.int64)
  x = features[candidates]
  if len(annotated):
    nearest = ((x[:, None] - features[np.asarray(annotated)][None]) ** 2).sum(-1).min(1)
  else:
    nearest = np.full(len(candidates), np.inf)
    nearest[((x - x.mean(0)) ** 2).sum(-1).argmin()] = np.finfo(np.float64).max
  picked = []
  for _ in range(min(n, len(candidates))):
    i = int(nearest.argmax())
    picked.append(i)
    nearest = np.minimum(nearest, ((x - x[i]) ** 2).sum(-1))
    nearest[picked] = -np.inf
  return np.sort(candidates[picked])
