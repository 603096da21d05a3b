"""Reading datasets into volumes: layouts and cases, NIfTI, the index and the loader (cached), splits, normalisation,
resampling, the phantom."""
