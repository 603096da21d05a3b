"""Reading datasets into volumes: layouts, NIfTI, normalisation, resampling, the phantom."""
