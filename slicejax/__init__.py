"""slicejax: which slices of which volumes to annotate, measured with sparse-slice training in JAX."""

__version__ = "0.1.0"
