"""`passive`: in rounds (`slicejax.training.rounds`), the control of the model-based selections: round 0 as theirs,
then unannotated slices drawn uniformly at random, without a model (passive learning). Against `entropy`,
`ensemble` or `hybrid` on the same schedule it isolates what the model's choice adds; against a one-shot cell it
shows what the schedule alone changes (round 0's spacing).

Its intermediate rounds train nothing unless `rounds.warm_start` needs their parameters (`NEEDS_MODEL`); the draw of
a round is seeded by the point's seed and the round (`rounds.round_rng`).
"""

import numpy as np

from slicejax.study.selection.entropy import members, select  # pylint: disable=unused-import

NEEDS_EMBEDDINGS = False
MODEL_BASED = True
NEEDS_MODEL = False


def choose(scores_, candidates, n, *, embeddings=None, annotated=(), options=None, rng=None):
  """`n` of the candidates, uniformly at random (`scores_` unused), sorted."""
  del scores_, embeddings, annotated, options
  return np.sort(rng.choice(np.asarray(candidates), n, replace=False))
