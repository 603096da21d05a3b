"""`entropy`: in rounds (`slicejax.training.rounds`), the unannotated slices of highest mean predictive entropy under
the round's model (`uncertainty.entropy`; with `rounds.foreground`, weighted by the predicted foreground).

Model-based selections share this interface, next to the one-shot `select` that they refuse:

    MODEL_BASED = True
    NEEDS_MODEL = True                     # False: chooses without a model (`passive`), so `scores` is not called
    def members(options) -> int            # models trained per point (an ensemble's K, else 1)
    def scores(probs, valid, options) -> [D] float   # probs [E, D, H, W, K] of the point's E models, one volume
    def choose(scores, candidates, n, *, embeddings, annotated, options, rng) -> sorted [n] indices

`rng` is a numpy Generator seeded by the point's seed and the round (`rounds.round_rng`).
"""

from slicejax.errors import InputError
from slicejax.study import uncertainty

NEEDS_EMBEDDINGS = False
MODEL_BASED = True
NEEDS_MODEL = True


def select(num_slices, rho, rng, *, embeddings=None, options=None):
  del num_slices, rho, rng, embeddings, options
  raise InputError("selection", "model-based selections choose in rounds (slicejax.training.rounds), not in one shot")


def members(options) -> int:
  del options
  return 1


def scores(probs, valid, options):
  return uncertainty.entropy(probs, valid, options.foreground)


def choose(scores_, candidates, n, *, embeddings=None, annotated=(), options=None, rng=None):
  """The `n` candidates of highest score."""
  del embeddings, annotated, options, rng
  return uncertainty.top(scores_, candidates, n)
