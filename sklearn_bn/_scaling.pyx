"""Per-column affine transform kernels for BatchNormScaler (placeholder)."""
