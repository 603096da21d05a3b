"""The study: its grid of points and groups, slice selection, sparse annotations, interpolation, the UAL encoder."""
