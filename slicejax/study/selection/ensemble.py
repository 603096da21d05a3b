"""`ensemble`: in rounds (`slicejax.training.rounds`), the unannotated slices on which the point's K = `rounds.members`
models disagree most (`uncertainty.disagreement`, the mutual information). The members train on the same slices from
different seeds, together on the model axis; the first member is the point's own model (its seed, its row).
"""

from slicejax.study.selection.entropy import choose, select  # pylint: disable=unused-import
from slicejax.study import uncertainty

NEEDS_EMBEDDINGS = False
MODEL_BASED = True
NEEDS_MODEL = True


def members(options) -> int:
  return int(options.members)


def scores(probs, valid, options):
  return uncertainty.disagreement(probs, valid, options.foreground)
