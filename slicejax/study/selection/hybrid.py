"""`hybrid`: in rounds (`slicejax.training.rounds`), uncertainty weighted by diversity: among the
`rounds.hybrid_candidates` x n unannotated slices of highest entropy, k-center greedy in the UAL encoder's embedding space
(`uncertainty.farthest_first`), each pick the farthest from the annotated slices and the picks before it.
"""

from slicejax.study.selection.entropy import members, scores, select  # pylint: disable=unused-import
from slicejax.study import uncertainty

NEEDS_EMBEDDINGS = True
MODEL_BASED = True
NEEDS_MODEL = True


def choose(scores_, candidates, n, *, embeddings=None, annotated=(), options=None, rng=None):
  """`n` diverse slices among the most uncertain candidates; `embeddings [N, F]` indexed like `scores_`."""
  del rng
  shortlist = uncertainty.top(scores_, candidates, n * int(options.hybrid_candidates))
  return uncertainty.farthest_first(embeddings, shortlist, annotated, n)
