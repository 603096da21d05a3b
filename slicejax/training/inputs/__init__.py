"""Training inputs: 2D slices and 3D patches, sampled on device, augmented, or streamed from the disk."""
